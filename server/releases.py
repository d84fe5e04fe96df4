"""``privacy = user``: user-level DP from a few noisy releases of device statistics (two, or
three with ``selection-budget-share > 0``), driven by :func:`run_releases`.

One round per release of :data:`shared.releases.RELEASES` (the math and its reasons are in
:mod:`shared.cooccurrence`): the server sends each release's request (what it made of the
earlier ones), every device sends its statistic, and the server post-processes the noisy sum
(with the public catalog content) toward the served model; every device then ranks the catalog
with its own history, which never leaves it.

Each device contributes once to each release: the user-level epsilon composes mechanisms of
sensitivity 1, with the noise split from the ``user-epsilon`` budget
(``popularity-budget-share`` and ``selection-budget-share``). Who adds the noise is the
mechanism's releaser: the server's Gaussian (:mod:`server.mechanisms.gaussian_releases`) or the
devices' Skellam shares under secure aggregation (:mod:`shared.secure_sum.mechanism`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp import Grid

from server.catalog_shipment import CatalogShipment
from shared.config import parse_modalities
from shared.checksums import arrays_sha256
from shared.item_content import content_matrix
from shared.privacy.ledger import Ledger
from shared.releases import Fit, ModelSettings, planned_releases
from shared.run_directory import CATALOG_FILE, MODEL_FILE, RELEASES_FILE, RunDirectory

if TYPE_CHECKING:
    from server.mechanisms.releases import ReleasesMechanism


def _arrays(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in values.items()})


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
    releases = planned_releases(config)
    content = content_matrix(
        features.text, features.text_mask, features.image, features.image_mask, parse_modalities(config.model.modalities)
    )
    fit = Fit(content, np.asarray(known, dtype=bool), ModelSettings.of(config))
    # The public catalog the model is fitted with (content, and which items exist at release
    # time), saved before any release and hashed into the first: the audit refits the served
    # model from the releases and this file alone.
    catalog = {"content": content, "known": fit.known}
    run_dir.save_arrays(CATALOG_FILE, catalog)
    catalog_digest = arrays_sha256(catalog)
    if config.federation.deployment:  # devices get the content matrix from here, not from images
        grid = CatalogShipment(grid, content)
    rows: list[dict[str, Any]] = []
    releaser = mechanism.releaser(grid, nodes, {r.name: r.dimension(fit) for r in releases}, ledger, log)
    releaser.start()
    for server_round, release in enumerate(releases, start=1):
        started, dimension = time.time(), release.dimension(fit)
        released_now = releaser.release(server_round, release.name, dimension, _arrays(release.request(fit)))
        who, epsilon, std, body = released_now.contributors, released_now.epsilon, released_now.fitted_std, released_now.body
        if server_round == 1:
            body["catalog-sha256"] = catalog_digest
        sent = dimension * 4 if who else 0  # float32 (central) or uint32 (secure) on the wire
        head = ledger.append([("release", server_round, body)])
        fit = release.post_process(fit, released_now.noisy, std)
        rows.append(
            {
                "round": server_round,
                "release": release.name,
                "clients-sampled": len(nodes),
                "clients-trained": len(who),
                "bytes-sent-per-client": float(sent),
                "user-level-epsilon": epsilon,
                "round-seconds": round(time.time() - started, 3),
                "ledger-head": head,  # anchors the ledger: the audit compares
            }
        )
        log(
            f"[round {server_round}/{len(releases)}] {release.name} release: {len(who)} devices, noise std {std:.3f} "
            f"over {dimension} values, user-level epsilon {epsilon:.2f} at delta {config.privacy.delta:g}, "
            f"{sent / 1024:.0f} KiB sent per device"
        )
    run_dir.save_arrays(RELEASES_FILE, {key: value for r in releases for key, value in r.recorded(fit).items()})
    releaser.finish(run_dir)
    model = fit.model
    run_dir.save_arrays(MODEL_FILE, model.to_arrays())
    evaluation = evaluate(grid, _arrays(model.to_arrays()), len(releases))
    rows[-1].update(
        {"factors": fit.rank, "popularity-weight": model.popularity_weight, "content-weight": model.content_weight, **evaluation}
    )
    for row in rows:
        run_dir.append_metrics(row)
    log(
        f"fedmmrec: model: {'EASE item-to-item weights' if model.item_item else f'{fit.rank} factors'} over {fit.m} items, "
        f"cold weight {config.privacy.cold_weight:g}, popularity weight {model.popularity_weight:g}, content "
        f"weight {model.content_weight:g}; HR@10 {evaluation.get('hr@10', float('nan')):.3f} "
        f"NDCG@10 {evaluation.get('ndcg@10', float('nan')):.3f} ({evaluation.get('clients-evaluated', 0)} devices)"
    )
    return evaluation, rows, rows[-1]["user-level-epsilon"]
