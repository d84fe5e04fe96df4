"""What both user-level release mechanisms are audited for alike: the served model refitted from
the recorded releases, the summary's claim, and the least norm a noisy release keeps.

- ``release-model``: the served model (``model.npz``) is post-processing of the recorded
  releases and the public catalog (``catalog.npz``: content matrix and the items that existed
  at release time, its SHA-256 in the popularity release's ledger entry). The audit refits it
  with the server's own function: the top items are the ones the recorded popularity ranks
  highest; every item's factors (top items from the co-occurrence release, new items placed by
  content) span what the configured ``item-model`` makes of the releases (eigenvectors compared
  as projections, EASE weights as they are); the popularity is the recorded one shrunk toward
  the catalog's content; the weights are the candidate the selection release voted for (or
  the configured ones without it). A server that serves a model fitted to anything but what it
  released (the raw counts, a top list from them, say) fails. Whether ``catalog.npz`` is the
  real public catalog the audit cannot see: anyone holding the catalog can recompute it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from shared.checksums import arrays_sha256
from shared.item_model import CooccurrenceModel
from shared.releases import TOP_ITEMS, refit
from shared.run_directory import CATALOG_FILE, MODEL_FILE, RELEASES_FILE, RunDirectory
from shared.secure_sum.plausible import FALSE_ALARM_PER_RUN, chi_square_interval  # noqa: F401 - the audit's modules read them here

MODEL_TOLERANCE = 1e-4  # the served factors travel as float32


def check_summary_epsilon(report, check: str, run: RunDirectory, last: float) -> None:
    """``summary.json`` must claim the ledger's last user-level epsilon (both modes of noise)."""
    if not run.has_summary():
        return
    said = run.read_summary().get("privacy", {}).get("user-level-epsilon")
    said = math.inf if said is None or said == "inf" else float(said)
    if not math.isclose(said, last, rel_tol=1e-9) and not (math.isinf(said) and math.isinf(last)):
        report.fail(check, f"summary.json claims user-level epsilon {said}, the ledger {last}")


def released_norm_floor(noise_std: float, dimension: int, tail: float) -> float:
    """The least norm a release ``s + noise`` has, with probability ``1 - tail``, whatever the
    sum ``s`` of the contributions, when ``noise`` is Gaussian of std ``noise_std`` over
    ``dimension`` values drawn apart from ``s`` (as an honest server draws it).

    Anderson's inequality: a centred Gaussian puts no more mass on a ball shifted by ``s`` than
    on the ball itself, so ``P(||s + noise|| < r) <= P(||noise|| < r)`` for every ``s``; and
    ``||noise||^2 / noise_std^2`` is chi-square with ``dimension`` degrees of freedom. A released
    vector below ``noise_std sqrt(chi2_low)`` did not carry the claimed noise, whatever the
    server's measurements say."""
    low, _ = chi_square_interval(dimension, tail)
    return noise_std * math.sqrt(low)


def audit_release_model(report, releases, config: dict[str, Any], run: RunDirectory) -> None:
    """``release-model``: refit the served model from the recorded releases and the recorded
    public catalog, as the server's own post-processing does, and compare."""
    check = "release-model"
    paths = [run.file(MODEL_FILE), run.file(RELEASES_FILE), run.file(CATALOG_FILE)]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        report.fail(check, f"{missing[0]}: missing: the served model cannot be traced to the releases")
        return
    model_path = paths[0]
    stored, catalog = run.load_arrays(RELEASES_FILE), run.load_arrays(CATALOG_FILE)
    model = CooccurrenceModel.from_arrays(run.load_arrays(MODEL_FILE))
    bodies = {str(e.body.get("release")): e.body for e in releases}
    recorded = releases[0].body.get("catalog-sha256") if releases else None
    if set(catalog) != {"content", "known"} or arrays_sha256(catalog) != recorded:
        report.fail(check, f"{paths[2]}: not the public catalog the first release recorded (catalog-sha256)")
        return
    noise = {name: float(body.get("fitted-noise-std", body["noise-std"])) for name, body in bodies.items()}
    try:
        fit = refit(stored, noise, catalog, config)
    except KeyError as exc:
        report.fail(check, f"{paths[1]}: holds no {exc.args[0]} release to fit the model to")
        return
    expected, top = fit.model, fit.top_items
    if not np.array_equal(np.asarray(stored.get(TOP_ITEMS, [])), top) or not np.array_equal(model.top_items, top):
        report.fail(check, f"{model_path}: serves factors for other items than the {len(top)} the popularity release ranked highest")
        return
    item_model = fit.settings.item_model
    if model.factors.shape != expected.factors.shape:
        report.fail(check, f"{model_path}: {model.factors.shape[1]} factors per item; the co-occurrence release gives {expected.factors.shape[1]}")
        return
    # Eigenvectors are defined up to sign (and rotation within a repeated eigenvalue), and the
    # content-placed items follow them linearly: compare the Gram matrices they span. EASE's
    # weights are unique: compare them as they are.
    served, wanted = model.factors, expected.factors
    pair = (served @ served.T, wanted @ wanted.T) if item_model == "factors" else (served, wanted)
    gap = float(np.abs(pair[0] - pair[1]).max())
    if gap > MODEL_TOLERANCE * max(1.0, float(np.abs(pair[1]).max())):
        report.fail(check, f"{model_path}: the served {item_model} differ from those of the recorded co-occurrence release and catalog by up to {gap:.3g}: the model was not fitted to what was released")
    if model.factor_map is None:
        report.fail(check, f"{model_path}: serves no content-to-factor map, which the releases and catalog give")
    elif item_model == "factors":  # the content-to-factor map turns with the factors: compare its Gram too
        stacked = [np.vstack([m.factors, m.factor_map]) for m in (model, expected)]
        gap = float(np.abs(stacked[0] @ stacked[0].T - stacked[1] @ stacked[1].T).max()) if model.factor_map.shape == expected.factor_map.shape else math.inf
        scale = float(np.abs(stacked[1] @ stacked[1].T).max()) if math.isfinite(gap) else 1.0
    else:
        gap = float(np.abs(model.factor_map - expected.factor_map).max()) if model.factor_map.shape == expected.factor_map.shape else math.inf
        scale = float(np.abs(expected.factor_map).max()) if math.isfinite(gap) else 1.0
    if model.factor_map is not None and gap > MODEL_TOLERANCE * max(1.0, scale):
        report.fail(check, f"{model_path}: the served content-to-factor map differs from the one the releases and catalog give (by up to {gap:.3g})")
    if (
        model.popularity_map is None or model.popularity_map.shape != expected.popularity_map.shape
        or float(np.abs(model.popularity_map - expected.popularity_map).max()) > MODEL_TOLERANCE * max(1.0, float(np.abs(expected.popularity_map).max()))
        or not np.array_equal(np.asarray(model.from_content, dtype=bool), np.asarray(expected.from_content, dtype=bool))
        or bool(model.item_item) != bool(expected.item_item)
    ):
        report.fail(check, f"{model_path}: the served content-to-popularity map, content-placed items or model kind are not the ones the releases and catalog give")
    gap = float(np.abs(model.popularity - expected.popularity).max())
    if gap > MODEL_TOLERANCE * max(1.0, float(np.abs(expected.popularity).max())):
        report.fail(check, f"{model_path}: the served popularity differs from the recorded popularity release shrunk toward the catalog's content by up to {gap:.3g}")
    wanted_weights = (expected.popularity_weight, expected.content_weight)
    if (model.popularity_weight, model.content_weight) != tuple(map(float, wanted_weights)):
        report.fail(check, f"{model_path}: weights {model.popularity_weight:g} / {model.content_weight:g}; the selection gives {wanted_weights[0]:g} / {wanted_weights[1]:g}")
    report.ok(check)
