"""``privacy = user``: user-level DP from a few noisy releases of device statistics (two, or
three with ``selection-budget-share > 0``), driven by :func:`run_releases`.

The round structure (the math and its reasons are in :mod:`shared.cooccurrence`):

- round 1, **popularity**: every device sends its interaction vector at unit norm;
- round 2, **co-occurrence**: the server names the ``cooccurrence-items`` most popular known
  items of the noisy popularity; every device sends its unit-Frobenius co-occurrence over them;
- round 3, **selection**: every device votes for the weights of popularity and content that
  rank its own last interaction best;
- the server post-processes the releases (and the public catalog content) into the served
  model, and every device ranks the catalog with its own history, which never leaves it.

Each device contributes once to each release: the user-level epsilon composes mechanisms of
sensitivity 1, with the noise split from the ``user-epsilon`` budget
(``popularity-budget-share`` and ``selection-budget-share``). Who adds the noise is the
mechanism's releaser: the server's Gaussian (:mod:`server.mechanisms.gaussian_releases`) or the
devices' Skellam shares under secure aggregation (:mod:`server.mechanisms.secure_releases`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp import Grid

from server.catalog_shipment import CatalogShipment
from shared.config import parse_modalities
from shared.cooccurrence import CANDIDATES, fit_model, matrix_from_triangle, top_items, triangle_size
from shared.item_content import content_matrix
from shared.item_model import CooccurrenceModel
from shared.checksums import arrays_sha256
from shared.privacy.ledger import Ledger
from shared.run_directory import CATALOG_FILE, MODEL_FILE, RELEASES_FILE, RunDirectory
from shared.user_releases import planned_releases

if TYPE_CHECKING:
    from server.mechanisms.releases import ReleasesMechanism


def _model_arrays(model: CooccurrenceModel) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in model.to_arrays().items()})


def run_releases(
    grid: Grid,
    mechanism: "ReleasesMechanism",
    features,
    known: np.ndarray,
    run_dir: RunDirectory,
    ledger: Ledger,
    evaluate,
    log=print,
) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Run the releases, fit and save the model, evaluate; return (final evaluation, metric
    rows, user-level epsilon). ``evaluate(grid, arrays, round)`` asks the devices to rank."""
    config = mechanism.config
    nodes = sorted(grid.get_node_ids())
    names = planned_releases(config)
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
    releaser = mechanism.releaser(grid, nodes, {name: dimensions[name] for name in names}, ledger, log)
    releaser.start()
    fitted_stds: list[float] = []
    for server_round, name in enumerate(names, start=1):
        started, dimension = time.time(), dimensions[name]
        released_now = releaser.release(server_round, name, dimension, arrays)
        noisy, who, epsilon, std, body = (
            released_now.noisy, released_now.contributors, released_now.epsilon, released_now.fitted_std, released_now.body
        )
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
    releaser.finish(run_dir)
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
