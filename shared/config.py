"""Run configuration: every key, its default, its meaning and its group, defined once.

``RUN_CONFIG`` is the one table of defaults and meanings: ``pyproject.toml``'s
``[tool.flwr.app.config]`` and the README's table are checked against it by the tests
(``python -m shared.config`` prints the README's). Keys are kebab-case, as in Flower's examples.

:func:`resolve` turns Flower's run config (and overrides) into a :class:`RunConfig`: frozen,
typed, in groups (federation, training, privacy, model, data, run) that code reads as
attributes (``config.federation.num_server_rounds``). It also reads as the flat kebab-case
mapping that Flower records and ``config.json`` carry. The ServerApp is the single source of
truth: it sends a device the settings it needs (:meth:`RunConfig.device_settings`) in every
message, so a device never trains with settings the server did not choose, and never learns
the server's own paths and budgets.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# key -> (default, meaning); order is the README table's order.
RUN_CONFIG: dict[str, tuple[Any, str]] = {
    "num-server-rounds": (30, "federated rounds"),
    "fraction-train": (0.3, "fraction of clients (users) sampled to train each round"),
    "fraction-evaluate": (1.0, "fraction of clients that have trained which evaluate each round (at least one; 0: none, the final evaluation only)"),
    "strategy": ("fedavg", "server aggregation: `fedavg`, `fedadam`, or robust: `fedmedian`, `fedtrimmedavg`, `krum` (Flower's)"),
    "byzantine-fraction": (0.2, "robust strategies: share of sampled clients assumed malicious (FedTrimmedAvg trims it from each end; Krum's f)"),
    "round-timeout": (0.0, "seconds the server waits for a round's replies; clients that have not answered are dropped; 0: an hour"),
    "min-replies": (1, "fewest valid train replies for a round to update the model; a round with fewer is skipped with a log line (not under central DP, whose guarantee assumes every round is released)"),
    "server-lr": (0.01, "FedAdam server learning rate (eta)"),
    "server-tau": (1e-3, "FedAdam's adaptivity tau (added to the root of the second moment). The per-item parts of `item-ids` get updates of about 1e-4 per round, which a tau of 1e-3 all but freezes; the MovieLens grid uses 1e-6"),
    "local-epochs": (2, "passes over the local data per round"),
    "batch-size": (8, "expected DP-SGD batch (Poisson sample rate = batch-size / local examples)"),
    "lr": (0.5, "client SGD learning rate of the private user embedding"),
    "item-lr": (0.01, "client SGD learning rate of the shared item tower"),
    "eval-refit-steps": (0, "evaluation: before ranking, the device fits its user vector to the current item tower for this many full-batch Adam steps (tower frozen). The refitted vector is not stored, never trained on and never sent; 0: rank with the stored DP-trained vector, which was fitted to the tower of the last round this user trained in"),
    "negatives": (8, "BPR negatives per positive, drawn from the catalog on the device"),
    "privacy": ("user", "where DP applies: `user` (user-level DP from three noisy releases of bounded device statistics; see \"Privacy, stated plainly\"), `local` (DP-SGD on each device, per interaction), `central` (DP-FedAvg at the server, per user), `both`, or `none` (not private, loudly marked)"),
    "user-epsilon": (8.0, "`privacy = user`: the user-level epsilon budget at `delta`, spent by the releases; `inf`: the same pipeline without noise (NOT PRIVATE, the utility reference)"),
    "user-noise": ("distributed", "`privacy = user`: who adds the noise. `distributed`: each device adds its share of Skellam noise and masks its statistic, and secure aggregation lets the server unmask only the noisy sum over at least `1 - secure-dropout` of the devices (no single party is trusted; needs 3 devices or more). `central`: devices send their statistics in the clear and the server adds Gaussian noise (the server is trusted)"),
    "secure-neighbours": (32, "`user-noise = distributed`: each device's neighbours in the secure-aggregation graph (pairwise masks and Shamir shares; any half of them plus one rebuild a dropped device's masks)"),
    "secure-dropout": (0.1, "`user-noise = distributed`: fraction of devices that may drop out of a release; the noise shares are sized so the claim holds at the rest, and a release with fewer survivors is aborted"),
    "secure-roster": ("", "`user-noise = distributed`, deployment: the roster of the devices' identity keys (`fedmmrec deploy roster`) the server draws the neighbour graph from, as every device does from its own copy; empty in a simulation: the simulated devices' own keys"),
    "secure-colluders": (0.05, "`user-noise = distributed`: fraction of devices that may reveal their own noise to the server; their shares are not counted as noise"),
    "secure-groups": (1, "`user-noise = distributed`: the roster cut into this many groups (arcs of an order drawn from the roster's own seed; a simulation's roster has none and the run id seeds it), each its own secure sum with the noise a user-level guarantee needs on its own; 1: one sum over every device. More groups bound what devices that lie about their input can do (`secure-combine = median`, 3 groups or more) or keep each sum small (cohorts, `sum`), at about sqrt(groups) times the noise; a real device takes part only up to its node config's `secure-groups` (default 1)"),
    "secure-combine": ("median", "`secure-groups` above 1: how the group sums become the release: `median` (groups times the coordinate-wise median: while fewer than half the groups hold a lying device, each value stays within the honest groups' range) or `sum` (their total: cohorts, no bound on a liar)"),
    "popularity-budget-share": (0.1, "`privacy = user`: share of the budget (of mu^2 in Gaussian DP) for the popularity release"),
    "selection-budget-share": (0.1, "`privacy = user`: share for the selection release, in which each device scores 15 candidate (popularity, content) weightings on its own most recent interaction; 0: no selection (`popularity-weight`, no content). The co-occurrence release gets the rest"),
    "cooccurrence-items": (600, "`privacy = user`: the M most popular items (by the popularity release) whose co-occurrence is released (M(M+1)/2 values, 704 KiB per device at 600)"),
    "max-factors": (24, "`privacy = user`: most item factors kept; fewer when the noise is larger (eigenvalues below the noise's spectral norm are dropped)"),
    "item-model": ("factors", "`privacy = user`: what the co-occurrence release becomes: `factors` (its top eigenvectors; the private default) or `ease` (item-to-item weights in closed form, EASE; the best without noise, `user-epsilon = inf`; under noise no better than `factors` and 25x the download)"),
    "ease-lambda": (2.0, "`item-model = ease`: the ridge penalty added to the released co-occurrence of rows at unit norm (2: chosen on validation items of MovieLens-100K without noise)"),
    "cold-weight": (1.0, "`privacy = user`: multiplier on the personal term of items placed from their content (cold start); higher puts cold items in top-10 lists more often at the cost of warm hits (docs/movielens-100k.md measures the trade)"),
    "popularity-weight": (0.3, "`privacy = user` with `selection-budget-share = 0`: weight of the normalised DP popularity in each score"),
    "noise-multiplier": (0.8, "DP-SGD noise std / clip norm"),
    "clip-norm": (1.0, "DP-SGD per-example gradient clip norm (L2, total over all parameters)"),
    "item-clip-fraction": (0.3, "share of the clip norm given to the item tower (the rest goes to the user embedding)"),
    "delta": (1e-5, "delta of the reported (epsilon, delta) per client"),
    "epsilon-cap": (0.0, "per-client epsilon budget: a client whose next round would exceed it declines; 0: no cap"),
    "server-noise-multiplier": (1.0, "central DP: Gaussian noise std / `server-clip-norm`, added to the sum of client updates"),
    "server-clip-norm": (0.05, "central DP: L2 bound on each client's item-tower update (non-private updates of the default model have norm about 0.04)"),
    "server-epsilon-cap": (0.0, "central DP: user-level epsilon budget; the run stops before a round that would exceed it; 0: no cap"),
    "canaries": (0, "central DP: canary clients for the empirical privacy audit, each included with probability 1/2; 0: none"),
    "accountant": ("rdp", "Opacus accountant: `rdp` or `prv`"),
    "dp-engine": ("fast", "local DP-SGD implementation: `fast` (per-example clipping in closed form, one backward) or `opacus` (Opacus' PrivacyEngine); the same mechanism and accounting"),
    "fusion": ("concat", "fusion head: `concat`, `gated` or `attention`"),
    "modalities": ("text,image", "item modalities used: `text`, `image` or `text,image`"),
    "item-ids": (False, "items also get a learned offset vector and popularity bias each (FedMF-style), federated with the tower; an item the model was never trained on (a new item, or one held out by `cold-start-items`) is scored from its content alone"),
    "dim": (32, "item and user embedding size"),
    "hidden": (64, "adapter hidden size per modality"),
    "data-dir": ("", "dataset folder; empty: the embedded synthetic dataset (generated on first use)"),
    "cold-start-items": (0.0, "share of the catalog's items held out of training entirely (seeded by `seed`); users whose last interaction is one of them test cold start (the `-cold` metrics)"),
    "evaluate-on": ("test", "`test`: each user's last interaction is held out (the figures you report); `validation`: the split one step earlier, for choosing settings without a test item: the test interaction is dropped, each user's most recent other interaction is held out, and a second, disjoint `cold-start-items` share of the films is held out as pseudo-cold"),
    "time-cut": (0.0, "above 0: the global time split instead of leave-last-out: the cut is the timestamp at this quantile of all interactions, everything before it trains, each user's first interaction after it is the test item (the next film after today; films first seen after the cut are new), and `evaluate-on = validation` applies the same cut to what came before the test cut"),
    "synth-users": (100, "users of the generated synthetic dataset"),
    "synth-items": (500, "items of the generated synthetic dataset"),
    "synth-seed": (0, "seed of the generated synthetic dataset"),
    "feature-cache": ("", "folder of cached backbone features; empty: `$FEDMMREC_CACHE` or `~/.cache/fedmmrec/features`"),
    "run-dir": ("runs", "parent folder of run directories"),
    "run-id": ("", "run directory name; empty: a timestamp"),
    "resume": ("", "run directory to continue from the last round its ledger committed (after a crash); keeps its saved config, except `num-server-rounds` when given"),
    "device-state-dir": ("", "simulation: where each simulated device keeps its state (`partition-<id>/device-state.json`); empty: `<run directory>/devices`"),
    "deployment": (False, "real SuperNodes that hold their own data: `data-dir` is the server's catalog (`items.csv`, `images/`) and its interactions are not read; the run waits for `min-nodes` SuperNodes (see \"Deploy on devices\")"),
    "min-nodes": (2, "deployment: SuperNodes that must be connected before round 1 (the server waits up to 10 minutes)"),
    "seed": (0, "seed for client sampling, negatives, noise and initial weights"),
}


# group -> keys, in the table's order within each group
GROUPS: dict[str, tuple[str, ...]] = {
    "federation": (
        "num-server-rounds", "fraction-train", "fraction-evaluate", "strategy", "byzantine-fraction", "round-timeout",
        "min-replies", "server-lr", "server-tau", "deployment", "min-nodes",
    ),
    "training": ("local-epochs", "batch-size", "lr", "item-lr", "eval-refit-steps", "negatives", "dp-engine"),
    "privacy": (
        "privacy", "user-epsilon", "user-noise", "secure-neighbours", "secure-dropout", "secure-colluders", "secure-roster", "secure-groups", "secure-combine", "popularity-budget-share", "selection-budget-share",
        "cooccurrence-items", "max-factors",
        "item-model", "ease-lambda", "cold-weight", "popularity-weight", "noise-multiplier", "clip-norm", "item-clip-fraction", "delta", "epsilon-cap",
        "server-noise-multiplier", "server-clip-norm", "server-epsilon-cap", "canaries", "accountant",
    ),
    "model": ("fusion", "modalities", "item-ids", "dim", "hidden"),
    "data": ("data-dir", "cold-start-items", "evaluate-on", "time-cut", "synth-users", "synth-items", "synth-seed", "feature-cache"),
    "run": ("run-dir", "run-id", "resume", "device-state-dir", "seed"),
}
GROUP_OF: dict[str, str] = {key: group for group, keys in GROUPS.items() for key in keys}

# What a device needs to train and rank: its data, the model, local training and DP-SGD, the
# seed; never the server's paths, budgets or aggregation settings.
DEVICE_KEYS: frozenset[str] = frozenset(
    GROUPS["data"] + GROUPS["model"] + GROUPS["training"]
    + ("privacy", "noise-multiplier", "clip-norm", "item-clip-fraction", "delta", "epsilon-cap", "accountant")
    + ("seed", "device-state-dir")
    # user-noise = distributed: each device recomputes the secure plan (its noise share, the
    # threshold, the minimum) from the budget itself, so the server cannot talk it down
    + ("user-epsilon", "user-noise", "secure-neighbours", "secure-dropout", "secure-colluders", "secure-groups", "popularity-budget-share",
       "selection-budget-share")
)

def field_name(key: str) -> str:
    return key.replace("-", "_")


@dataclass(frozen=True)
class FederationConfig:
    num_server_rounds: int
    fraction_train: float
    fraction_evaluate: float
    strategy: str
    byzantine_fraction: float
    round_timeout: float
    min_replies: int
    server_lr: float
    server_tau: float
    deployment: bool
    min_nodes: int


@dataclass(frozen=True)
class TrainingConfig:
    local_epochs: int
    batch_size: int
    lr: float
    item_lr: float
    eval_refit_steps: int
    negatives: int
    dp_engine: str


@dataclass(frozen=True)
class PrivacyConfig:
    privacy: str  # user, local, central, both or none
    user_epsilon: float
    user_noise: str  # distributed (secure aggregation, device noise) or central (the server's)
    secure_neighbours: int
    secure_dropout: float
    secure_colluders: float
    secure_roster: str
    secure_groups: int
    secure_combine: str  # median or sum
    popularity_budget_share: float
    selection_budget_share: float
    cooccurrence_items: int
    max_factors: int
    item_model: str
    ease_lambda: float
    cold_weight: float
    popularity_weight: float
    noise_multiplier: float
    clip_norm: float
    item_clip_fraction: float
    delta: float
    epsilon_cap: float
    server_noise_multiplier: float
    server_clip_norm: float
    server_epsilon_cap: float
    canaries: int
    accountant: str


@dataclass(frozen=True)
class ModelConfig:
    fusion: str
    modalities: str
    item_ids: bool
    dim: int
    hidden: int


@dataclass(frozen=True)
class DataConfig:
    data_dir: str
    cold_start_items: float
    evaluate_on: str
    time_cut: float
    synth_users: int
    synth_items: int
    synth_seed: int
    feature_cache: str


@dataclass(frozen=True)
class RunSettings:
    run_dir: str
    run_id: str
    resume: str
    device_state_dir: str
    seed: int


GROUP_TYPES = {
    "federation": FederationConfig, "training": TrainingConfig, "privacy": PrivacyConfig, "model": ModelConfig,
    "data": DataConfig, "run": RunSettings,
}


@dataclass(frozen=True)
class RunConfig(Mapping):
    """One run's settings, typed and frozen; also the flat kebab-case mapping of them."""

    federation: FederationConfig
    training: TrainingConfig
    privacy: PrivacyConfig
    model: ModelConfig
    data: DataConfig
    run: RunSettings

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> "RunConfig":
        """From a complete flat mapping of every key (no conversion, no checks: see :func:`resolve`)."""
        return cls(**{
            group: kind(**{field_name(key): flat[key] for key in GROUPS[group]}) for group, kind in GROUP_TYPES.items()
        })

    def __getitem__(self, key: str) -> Any:
        if key not in GROUP_OF:
            raise KeyError(key)
        return getattr(getattr(self, GROUP_OF[key]), field_name(key))

    def __iter__(self) -> Iterator[str]:
        return iter(RUN_CONFIG)

    def __len__(self) -> int:
        return len(RUN_CONFIG)

    def flat(self) -> dict[str, Any]:
        """Every key and value, kebab-case (``config.json``, the ledger header, Flower records)."""
        return {key: self[key] for key in RUN_CONFIG}

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with ``changes`` (snake_case keys: ``data_dir=...``), checked by :func:`resolve`."""
        return resolve(None, {**self.flat(), **{key.replace("_", "-"): value for key, value in changes.items()}})

    def device_settings(self) -> dict[str, Any]:
        """What every message to a device carries: :data:`DEVICE_KEYS`."""
        return {key: self[key] for key in RUN_CONFIG if key in DEVICE_KEYS}

DP_ENGINES = ("fast", "opacus")
EVALUATE_ON = ("test", "validation")  # shared/data/split.py's, kept here so a device resolves numpy-free
STRATEGIES = ("fedavg", "fedadam", "fedmedian", "fedtrimmedavg", "krum")

DEFAULTS: dict[str, Any] = {key: default for key, (default, _) in RUN_CONFIG.items()}


def resolve(run_config: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Defaults, then ``run_config`` (Flower's), then ``overrides``; unknown keys and invalid
    choices are errors that name the key and the valid choices. numpy-free and torch-free: a
    default-mode device resolves the settings the server sent it. The privacy mechanism checks
    its own settings (``privacy`` and what it reads, the item tower's architecture among them):
    :func:`server.mechanisms.mechanism_for`."""
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
    if merged["evaluate-on"] not in EVALUATE_ON:
        raise ValueError(f"evaluate-on {merged['evaluate-on']!r}: choose one of {', '.join(EVALUATE_ON)}")
    if not 0.0 <= merged["time-cut"] < 1.0:
        raise ValueError(f"time-cut {merged['time-cut']:g}: a quantile in [0, 1) (0: leave-last-out)")
    if not 0.0 < merged["fraction-train"] <= 1.0:
        raise ValueError("fraction-train must be in (0, 1]")
    if not 0.0 <= merged["fraction-evaluate"] <= 1.0:
        raise ValueError("fraction-evaluate must be in [0, 1] (0: no evaluation during the rounds, the final one only)")
    return RunConfig.from_flat(merged)


def parse_modalities(value: Any) -> tuple[str, ...]:
    """``"text,image"`` -> ``("text", "image")``."""
    return tuple(m.strip() for m in str(value).split(",") if m.strip())


def from_saved(saved: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """A finished run's config (its ``config.json``) with ``overrides``: keys this version does
    not know (a run written by another version) are left out, not errors."""
    return resolve(None, {**{key: value for key, value in saved.items() if key in DEFAULTS}, **(overrides or {})})


def markdown_table() -> str:
    """The README's run-config table, from :data:`RUN_CONFIG`."""
    def shown(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        return '""' if value == "" else str(value)

    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{key}` | {shown(default)} | {meaning} |" for key, (default, meaning) in RUN_CONFIG.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
