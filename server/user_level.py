"""``privacy = user``: user-level DP from three noisy releases of device statistics.

The round structure (the math and its reasons are in :mod:`shared.cooccurrence`):

- round 1, **popularity**: every device sends its interaction vector at unit norm;
- round 2, **co-occurrence**: the server names the ``cooccurrence-items`` most popular known
  items of the noisy popularity; every device sends its unit-Frobenius co-occurrence over them;
- round 3, **selection**: every device votes for the weights of popularity and content that
  rank its own last interaction best;
- the server post-processes the releases (and the public catalog content) into the served
  model, and every device ranks the catalog with its own history, which never leaves it.

Each device contributes once to each release: the user-level epsilon composes three mechanisms
of sensitivity 1, with the noise stds split from the ``user-epsilon`` budget
(``popularity-budget-share`` and ``selection-budget-share``).

Who adds the noise (``user-noise``):

- ``central``: the server clips each contribution to norm 1 (the guarantee never rests on an
  honest device), sums, adds Gaussian noise and releases; composed exactly in Gaussian DP,
  cross-checked by ``dp-accounting``'s PLD accountant. The server sees every contribution.
- ``distributed``: :mod:`server.secure_release`: each device clips, rounds and adds its share of
  Skellam noise, and masks its statistic; the server only unmasks the noisy sum over at least
  ``1 - secure-dropout`` of the devices (Skellam RDP at the count that sent its noise).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.serverapp import Grid

from server.catalog_shipment import CatalogShipment
from server.replies import MESSAGE_TIMEOUT_S, ok_replies
from shared.config import RunConfig, parse_modalities
from shared.cooccurrence import (
    CANDIDATES,
    CooccurrenceModel,
    content_matrix,
    fit_model,
    matrix_from_triangle,
    top_items,
    triangle_size,
)
from shared.messages import (
    CONTRIBUTION_KEY,
    TASK_KEY,
    client_id,
    server_messages,
    update_of,
)
from shared.privacy.accounting import gaussian_epsilon, split_budget
from shared.privacy.dp_fedavg import clip, gaussian_noise
from shared.privacy.ledger import Ledger
from server.secure_release import SecureAggregation, SecureAggregationAborted, SecureRelease
from shared.checksums import arrays_sha256
from shared.run_directory import CATALOG_FILE, MODEL_FILE, RELEASES_FILE, SECURE_FILE, RunDirectory
from shared.secure_sum.plan import ReleasePlan, SecurePlan
from shared.user_releases import budget_shares, planned_releases

SENSITIVITY = 1.0


@dataclass(frozen=True)
class ReleaseRecord:
    """What one Gaussian release did, as measured by the server (the audit's evidence)."""

    release: str
    dimension: int
    sensitivity: float
    noise_std: float
    contributions: int
    contributions_clipped: int
    contribution_norm_max: float
    noise_norm: float
    released_norm: float
    user_level_epsilon: float

    def ledger_body(self, contributors: list[str]) -> dict[str, Any]:
        body = {key.replace("_", "-"): value for key, value in asdict(self).items()}
        body["contributors"] = contributors
        if not np.isfinite(body["user-level-epsilon"]):
            body["user-level-epsilon"] = -1.0
        return body


def noise_stds(config: RunConfig) -> list[float]:
    """The releases' noise stds (of the sum) for the configured budget, in release order."""
    return split_budget(float(config.privacy.user_epsilon), float(config.privacy.delta), budget_shares(config))


def gaussian_release(
    contributions: Iterable[np.ndarray], dimension: int, noise_std: float, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, float]]:
    """Sum of contributions clipped to L2 norm 1, plus Gaussian noise of ``noise_std``.

    Also the measurements the ledger keeps: how many were clipped, the largest norm after
    clipping, and the norm of the noise actually added (released minus clipped sum)."""
    total = np.zeros(dimension)
    clipped, largest = 0, 0.0
    for contribution in contributions:
        bounded, norm = clip(contribution, SENSITIVITY)
        clipped += int(norm > SENSITIVITY * (1 + 1e-6))
        largest = max(largest, float(np.linalg.norm(bounded)))
        total += bounded
    released = total + gaussian_noise(rng, dimension, noise_std)
    return released, {
        "contributions-clipped": clipped,
        "contribution-norm-max": largest,
        "noise-norm": float(np.linalg.norm(released - total)),
        "released-norm": float(np.linalg.norm(released)),
    }


def secure_ledger_body(plan: SecurePlan, release: ReleasePlan, result: SecureRelease, epsilon: float) -> dict[str, Any]:
    """A secure release's ledger entry: the plan it ran under, who took part, what each device
    signed it added, and the epsilon at the honest noise the signed shares realised."""
    return {
        "release": release.name,
        "mechanism": "secure sum, distributed Skellam noise",
        "dimension": release.dimension,
        "sensitivity": SENSITIVITY,
        "scale": release.scale,
        "rounding-bound": release.bound,
        "field-bits": 32,
        "share-variance": release.share_variance,
        "devices": plan.devices,
        "min-survivors": plan.min_survivors,
        "threshold": plan.threshold,
        "colluders": plan.colluders,
        "participants": len(result.participants),
        "contributions": len(result.survivors),
        "dropped": len(result.dropped),
        "honest-variance": result.honest_variance,
        "noise-std": float(np.sqrt(result.honest_variance)) / release.scale,
        "user-level-epsilon": epsilon if np.isfinite(epsilon) else -1.0,
        "contributors": [str(r["client"]) for r in result.records],
        "signed": result.records,
    }


def _ask(grid: Grid, nodes: list[int], task: str, arrays: ArrayRecord, config: RunConfig, server_round: int):
    messages = server_messages(nodes, arrays, {**config.device_settings(), TASK_KEY: task}, server_round)
    return ok_replies(grid.send_and_receive(messages, timeout=MESSAGE_TIMEOUT_S))


def _contributions(replies: list[Message], dimension: int, who: list[str]) -> Iterator[np.ndarray]:
    """One contribution per device pseudonym, of the right size, converted one at a time as the
    sum consumes them (943 co-occurrence triangles at float64 would hold 1.4 GB at once); each
    counted device's pseudonym is appended to ``who``.

    A second reply under a pseudonym already counted is dropped: each user is in each sum once,
    which is what the sensitivity of 1 assumes."""
    seen: set[str] = set()
    for reply in replies:
        name = client_id(reply)
        vector = update_of(reply)[CONTRIBUTION_KEY].numpy().astype(np.float64).ravel()
        if name in seen or vector.size != dimension or not np.all(np.isfinite(vector)):
            print(f"  node {reply.metadata.src_node_id}: contribution dropped (duplicate, wrong size or not finite)", flush=True)
            continue
        seen.add(name)
        who.append(name)
        yield vector


def _model_arrays(model: CooccurrenceModel) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in model.to_arrays().items()})


def run_user_level(
    grid: Grid,
    config: RunConfig,
    features,
    known: np.ndarray,
    run_dir: RunDirectory,
    ledger: Ledger,
    evaluate,
    log=print,
) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Run the releases, fit and save the model, evaluate; return (final evaluation, metric
    rows, user-level epsilon). ``evaluate(grid, arrays, round)`` asks the devices to rank."""
    nodes = sorted(grid.get_node_ids())
    rng = np.random.default_rng(secrets.randbits(128))  # noise from OS entropy, never the run seed
    names, stds = planned_releases(config), noise_stds(config)
    num_items = len(known)
    m = min(int(config.privacy.cooccurrence_items), int(known.sum()))
    dimensions = {"popularity": num_items, "cooccurrence": triangle_size(m), "selection": len(CANDIDATES)}
    content = content_matrix(
        features.text, features.text_mask, features.image, features.image_mask, parse_modalities(config.model.modalities)
    )
    # The public catalog the model is fitted with (content, and which items exist at release
    # time), saved before any release and hashed into the first: the audit refits the served
    # model from the releases and this file alone.
    catalog = {"content": content, "known": np.asarray(known, dtype=bool)}
    run_dir.save_arrays(CATALOG_FILE, catalog)
    catalog_digest = arrays_sha256(catalog)
    if config.federation.deployment:  # devices get the content matrix from here, not from images
        grid = CatalogShipment(grid, content)
    released: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    model, rank = None, 0
    arrays = ArrayRecord()  # the first release needs nothing but the task: a device counts its own items
    secure = None
    if config.privacy.user_noise == "distributed":
        secure = SecureAggregation(grid, nodes, config, [dimensions[name] for name in names], log)
        secure.setup(server_round=1)
        log(
            f"[secure aggregation] {len(secure.participants)} of {len(nodes)} devices shared their keys with "
            f"{secure.plan.neighbours} neighbours each (threshold {secure.plan.threshold}); a release needs "
            f"{secure.plan.min_survivors} devices, {secure.plan.colluders} may collude"
        )
    honest: list[float] = []
    fitted_stds: list[float] = []
    evidence: dict[str, np.ndarray] = {}
    for server_round, name in enumerate(names, start=1):
        started, dimension, std = time.time(), dimensions[name], stds[server_round - 1]
        who: list[str] = []
        if secure is None:
            replies = _ask(grid, nodes, name, arrays, config, server_round)
            noisy, measured = gaussian_release(_contributions(replies, dimension, who), dimension, std, rng)
            epsilon = gaussian_epsilon(stds[:server_round], float(config.privacy.delta))
            record = ReleaseRecord(
                release=name, dimension=dimension, sensitivity=SENSITIVITY, noise_std=std,
                contributions=len(who), user_level_epsilon=epsilon,
                **{key.replace("-", "_"): value for key, value in measured.items()},
            )
            body = record.ledger_body(who)
        else:
            try:
                result = secure.release(name, arrays, server_round)
            except SecureAggregationAborted as exc:
                ledger.append([("release-aborted", server_round, {"release": name, "reason": str(exc)})])
                raise
            noisy, who = result.noisy, [str(r["client"]) for r in result.records]
            honest.append(result.honest_variance)
            epsilon = secure.plan.epsilon(honest)
            plan = secure.plan.release(name)
            std = float(np.sqrt(result.total_variance)) / plan.scale  # the noise in the sum, for the model's fit
            evidence.update(result.evidence)
            body = {**secure_ledger_body(secure.plan, plan, result, epsilon), "fitted-noise-std": std}
        if name == "popularity":
            body["catalog-sha256"] = catalog_digest
        fitted_stds.append(std)
        sent = dimension * 4 if who else 0  # float32 (central) or uint32 (secure) on the wire
        released[name] = noisy
        head = ledger.append([("release", server_round, body)])
        if name == "popularity":
            released["top-items"] = top_items(noisy, known, m)
            arrays = ArrayRecord({"top-items": Array(np.ascontiguousarray(released["top-items"]))})
        elif name == "cooccurrence":
            model, rank = fit_model(
                released["popularity"], fitted_stds[0], released["top-items"], matrix_from_triangle(noisy, m), std,
                content, known, int(config.privacy.max_factors), float(config.privacy.popularity_weight),
                item_model=config.privacy.item_model, ease_lambda=float(config.privacy.ease_lambda),
                cold_weight=float(config.privacy.cold_weight),
            )
            arrays = _model_arrays(model)
        else:
            model = model.with_weights(*CANDIDATES[int(np.argmax(noisy))])
        rows.append(
            {
                "round": server_round,
                "release": name,
                "clients-sampled": len(nodes),
                "clients-trained": len(who),
                "bytes-sent-per-client": float(sent),
                "user-level-epsilon": epsilon,
                "round-seconds": round(time.time() - started, 3),
                "ledger-head": head,  # anchors the ledger: the audit compares
            }
        )
        log(
            f"[round {server_round}/{len(names)}] {name} release: {len(who)} devices, noise std {std:.3f} "
            f"over {dimension} values, user-level epsilon {epsilon:.2f} at delta {config.privacy.delta:g}, "
            f"{sent / 1024:.0f} KiB sent per device"
        )
    run_dir.save_arrays(RELEASES_FILE, released)
    if secure is not None:
        run_dir.save_arrays(SECURE_FILE, {**evidence, **secure.key_evidence()})
    run_dir.save_arrays(MODEL_FILE, model.to_arrays())
    evaluation = evaluate(grid, _model_arrays(model), len(names))
    rows[-1].update(
        {"factors": rank, "popularity-weight": model.popularity_weight, "content-weight": model.content_weight, **evaluation}
    )
    for row in rows:
        run_dir.append_metrics(row)
    log(
        f"fedmmrec: model: {'EASE item-to-item weights' if model.item_item else f'{rank} factors'} over {m} items, "
        f"cold weight {config.privacy.cold_weight:g}, popularity weight {model.popularity_weight:g}, content "
        f"weight {model.content_weight:g}; HR@10 {evaluation.get('hr@10', float('nan')):.3f} "
        f"NDCG@10 {evaluation.get('ndcg@10', float('nan')):.3f} ({evaluation.get('clients-evaluated', 0)} devices)"
    )
    return evaluation, rows, rows[-1]["user-level-epsilon"]
