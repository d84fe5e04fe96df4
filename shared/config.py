"""Run configuration: every ``[tool.flwr.app.config]`` key, its default and its meaning.

The defaults live here (so the package works when installed without its pyproject) and are
mirrored in ``pyproject.toml``; a test checks the two agree. Keys are kebab-case, as in
Flower's examples. The ServerApp is the single source of truth: it sends the training keys to
clients in every message, so a device never trains with settings the server did not choose.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from shared.models.recommender import ModelSpec
from shared.training import TrainConfig

# key -> (default, meaning); order is the README table's order.
RUN_CONFIG: dict[str, tuple[Any, str]] = {
    "num-server-rounds": (30, "federated rounds"),
    "fraction-train": (0.3, "fraction of clients (users) sampled to train each round"),
    "fraction-evaluate": (1.0, "fraction of clients that have trained which evaluate each round"),
    "strategy": ("fedavg", "server aggregation: fedavg, fedadam, or robust: fedmedian, fedtrimmedavg, krum"),
    "byzantine-fraction": (0.2, "robust strategies: share of sampled clients assumed malicious (trimmed from each end; Krum's f)"),
    "round-timeout": (0.0, "seconds the server waits for a round's replies; clients that have not answered are dropped; 0: an hour"),
    "min-replies": (1, "fewest valid train replies for a round to update the model; a round with fewer is skipped (not under central DP)"),
    "server-lr": (0.01, "FedAdam server learning rate (eta)"),
    "server-tau": (1e-3, "FedAdam's adaptivity (tau, added to the root of the second moment); item id parts get updates of ~1e-4, which a tau of 1e-3 all but freezes"),
    "local-epochs": (2, "passes over the local data per round"),
    "batch-size": (8, "expected DP-SGD batch (Poisson sample rate = batch-size / local examples)"),
    "lr": (0.5, "client SGD learning rate of the private user embedding"),
    "item-lr": (0.01, "client SGD learning rate of the shared item tower"),
    "eval-refit-steps": (0, "evaluation: the device first fits its user vector to the current item tower for this many full-batch steps (not stored, not released); 0: rank with the stored DP-trained vector"),
    "negatives": (8, "BPR negatives per positive, drawn from the catalog on the device"),
    "privacy": ("user", "where DP applies: user (two noisy releases of device statistics, per user; shared/cooccurrence.py), local (DP-SGD on each device, per interaction), central (DP-FedAvg at the server, per user), both, or none (NOT PRIVATE)"),
    "user-epsilon": (8.0, "privacy = user: the user-level epsilon budget at delta, spent by the two releases; inf: no noise (NOT PRIVATE, for the utility reference)"),
    "popularity-budget-share": (0.1, "privacy = user: share of the budget (of mu^2 in Gaussian DP) for the popularity release; the rest goes to the co-occurrence release"),
    "selection-budget-share": (0.1, "privacy = user: share of the budget for the selection release, in which each device scores candidate (popularity, content) weights on its own most recent interaction; 0: no selection, popularity-weight and no content"),
    "cooccurrence-items": (600, "privacy = user: the M most popular items (by the popularity release) whose co-occurrence is released"),
    "max-factors": (24, "privacy = user: most item factors kept; fewer when the noise is larger (eigenvalues below its spectral norm are dropped)"),
    "popularity-weight": (0.3, "privacy = user with selection-budget-share = 0: weight of the (normalised) DP popularity added to each item's personal score"),
    "noise-multiplier": (0.8, "DP-SGD noise std / clip norm"),
    "clip-norm": (1.0, "DP-SGD per-example gradient clip norm (L2, total over all parameters)"),
    "item-clip-fraction": (0.3, "share of the clip norm given to the item tower (the rest: user embedding)"),
    "delta": (1e-5, "delta of the reported (epsilon, delta) per client"),
    "epsilon-cap": (0.0, "per-client epsilon budget: a client whose next round would exceed it declines; 0: no cap"),
    "server-noise-multiplier": (1.0, "central DP: Gaussian noise std / server-clip-norm, added to the sum of client updates"),
    "server-clip-norm": (0.05, "central DP: L2 bound on each client's item-tower update"),
    "server-epsilon-cap": (0.0, "central DP: user-level epsilon budget; the run stops before a round that would exceed it; 0: no cap"),
    "canaries": (0, "central DP: canary clients for the empirical privacy audit, each included with probability 1/2; 0: none"),
    "accountant": ("rdp", "Opacus accountant: rdp or prv"),
    "dp-engine": ("fast", "local DP-SGD implementation: fast (per-example clipping in closed form, one backward) or opacus (Opacus' PrivacyEngine); the same mechanism and accounting"),
    "fusion": ("concat", "fusion head: concat, gated or attention"),
    "modalities": ("text,image", "item modalities used: text, image or text,image"),
    "item-ids": (False, "items also get a learned id offset and popularity bias (federated with the tower, as in FedMF); items never trained on are scored from content alone"),
    "dim": (32, "item and user embedding size"),
    "hidden": (64, "adapter hidden size per modality"),
    "data-dir": ("", "dataset folder; empty: the embedded synthetic dataset (generated on first use)"),
    "cold-start-items": (0.0, "share of the catalog's items held out of training entirely (seeded by seed); users whose last interaction is one test cold start"),
    "synth-users": (100, "users of the generated synthetic dataset"),
    "synth-items": (500, "items of the generated synthetic dataset"),
    "synth-seed": (0, "seed of the generated synthetic dataset"),
    "feature-cache": ("", "folder of cached backbone features; empty: ~/.cache/fedmmrec/features"),
    "run-dir": ("runs", "parent folder of run directories"),
    "run-id": ("", "run directory name; empty: a timestamp"),
    "resume": ("", "run directory to continue from the last round its ledger committed (after a crash); keeps its saved config"),
    "device-state-dir": ("", "simulation: where each simulated device keeps its state (partition-<id>/); empty: <run directory>/devices"),
    "faults": ("", "simulation only: inject faults, e.g. 'nan:0 flip:1,2 crash:3 slow:4' (kind:partition ids; simulations/faults.py)"),
    "deployment": (False, "real SuperNodes that hold their own data: data-dir is the server's catalog (items.csv, images/) and its interactions are not read; the run waits for min-nodes SuperNodes"),
    "min-nodes": (2, "deployment: SuperNodes that must be connected before round 1 (the server waits up to 10 minutes)"),
    "seed": (0, "seed for client sampling of negatives and initial weights"),
}

PRIVACY_MODES = ("user", "local", "central", "both", "none")
DP_ENGINES = ("fast", "opacus")
STRATEGIES = ("fedavg", "fedadam", "fedmedian", "fedtrimmedavg", "krum")

DEFAULTS: dict[str, Any] = {key: default for key, (default, _) in RUN_CONFIG.items()}


def resolve(run_config: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, then ``run_config`` (Flower's), then ``overrides``; unknown keys are an error."""
    merged = dict(DEFAULTS)
    for source in (run_config or {}, overrides or {}):
        for key, value in source.items():
            if key not in DEFAULTS:
                raise ValueError(f"unknown run config key {key!r}; known keys: {', '.join(DEFAULTS)}")
            default = DEFAULTS[key]
            if isinstance(default, bool):
                value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
            else:
                value = str(value)
            merged[key] = value
    if merged["dp-engine"] not in DP_ENGINES:
        raise ValueError(f"dp-engine {merged['dp-engine']!r}: choose one of {', '.join(DP_ENGINES)}")
    if merged["strategy"] not in STRATEGIES:
        raise ValueError(f"strategy {merged['strategy']!r}: choose one of {', '.join(STRATEGIES)}")
    if merged["faults"]:
        from shared.faults import parse_faults

        parse_faults(merged["faults"])
    if merged["privacy"] not in PRIVACY_MODES:
        raise ValueError(f"privacy {merged['privacy']!r}: choose one of {', '.join(PRIVACY_MODES)}")
    if central_dp(merged) and merged["strategy"] != "fedavg":
        raise ValueError("central DP (privacy = central or both) aggregates with DP-FedAvg: use strategy = fedavg")
    if merged["canaries"] and not central_dp(merged):
        raise ValueError("canaries audit the server-side mechanism: they need privacy = central or both")
    if merged["privacy"] == "user":
        if not (merged["user-epsilon"] > 0):
            raise ValueError("user-epsilon must be positive (inf: no noise, NOT PRIVATE)")
        if not 0.0 < merged["popularity-budget-share"] < 1.0 or not 0.0 <= merged["selection-budget-share"] < 1.0 or (
            merged["popularity-budget-share"] + merged["selection-budget-share"] >= 1.0
        ):
            raise ValueError(
                "popularity-budget-share must be in (0, 1), selection-budget-share in [0, 1), and their sum below 1 "
                "(the rest is the co-occurrence release's)"
            )
        if merged["cooccurrence-items"] < 1 or merged["max-factors"] < 1:
            raise ValueError("cooccurrence-items and max-factors must be at least 1")
    if not 0.0 < merged["fraction-train"] <= 1.0:
        raise ValueError("fraction-train must be in (0, 1]")
    model_spec(merged, num_items=1)  # validates fusion and modalities
    return merged


def model_spec(config: dict[str, Any], num_items: int = 0) -> ModelSpec:
    """The architecture the config asks for; ``num_items`` (the catalog size) sizes the id parts."""
    from shared.models.fusion import FUSION_HEADS

    if config["fusion"] not in FUSION_HEADS:
        raise ValueError(f"fusion {config['fusion']!r}: choose one of {', '.join(FUSION_HEADS)}")
    modalities = tuple(m.strip() for m in str(config["modalities"]).split(",") if m.strip())
    id_items = int(num_items) if config.get("item-ids") else 0
    if config.get("item-ids") and id_items <= 0:
        raise ValueError("item-ids: the model needs the catalog size (num_items) to size its id parts")
    return ModelSpec(
        modalities=modalities, dim=int(config["dim"]), hidden=int(config["hidden"]), fusion=config["fusion"], id_items=id_items
    )


def local_dp(config: dict[str, Any]) -> bool:
    """Whether devices train with DP-SGD (example-level privacy)."""
    return config["privacy"] in ("local", "both")


def central_dp(config: dict[str, Any]) -> bool:
    """Whether the server clips and noises client updates (user-level privacy)."""
    return config["privacy"] in ("central", "both")


def train_config(config: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)} - {"dp"}
    return TrainConfig(dp=local_dp(config), **{name: config[name.replace("_", "-")] for name in names})
