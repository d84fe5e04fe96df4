"""The ledger's header: what a run protects, against which neighbour, under which assumptions.

It is the first ledger entry, so the audit and a reader of the ledger alone know the privacy
unit, delta, the mechanisms and the trust model the run's figures are stated under.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.config import RunConfig
from shared.run_directory import library_versions

PRIVACY_UNITS = {
    "user": "user (all of one device's interactions), at the server",
    "local": "example (one interaction) on each device",
    "central": "user (all of one device's interactions), at the server",
    "both": "example (one interaction) on each device, and user (all of a device's interactions) at the server",
    "none": "none: NOT PRIVATE",
}


def privacy_unit(config: RunConfig) -> str:
    """The unit and where the noise is added: with ``user-noise = distributed`` it is the devices'."""
    if config.privacy.privacy == "user" and config.privacy.user_noise == "distributed":
        return "user (all of one device's interactions), noise added by the devices under secure aggregation"
    return PRIVACY_UNITS[config.privacy.privacy]


NEIGHBOURS = {
    "user": "add or remove one user (a device and all its data) from the population",
    "local": "add or remove one interaction of one device's local dataset",
    "central": "add or remove one user (a device and all its data) from the population",
    "both": "local DP: add or remove one interaction of one device; central DP: add or remove one user",
    "none": "none",
}


def secure_header(config: RunConfig) -> dict[str, Any]:
    """``user-noise = distributed``: the devices add the noise, the server sees only the masked sum."""
    p = config.privacy
    return {
        "client-sampling": "every device, once per release (full participation)",
        "local-sampling": "none: each device sends one statistic of all its interactions per release",
        "user-level-mechanism": "distributed Skellam mechanism under secure aggregation: each device clips its statistic "
        "(the same three as the central mechanism) to L2 norm 1, scales and rounds it (conditional randomised rounding, "
        "the rounded norm bound is the sensitivity), adds its share of Skellam noise, and masks it modulo 2^32 (pairwise "
        "X25519 masks expanded by ChaCha20, Shamir-shared with its neighbours); the server unmasks only the sum",
        "user-level-accounting": "Skellam RDP (Agarwal, Kairouz, Liu 2021, Theorem 3.5) at the noise of the devices that "
        "sent their input less the tolerated colluders, composed over the releases, converted as Opacus' RDP accountant",
        "user-epsilon": p.user_epsilon if p.user_epsilon != float("inf") else -1.0,
        "trust": "no single party: the server sees each device's statistic only masked (uniform modulo 2^32) and unmasks only "
        f"sums over at least {1 - p.secure_dropout:.0%} of the devices, which already carry the devices' noise. Assumed: an "
        f"honest-but-curious server that follows the protocol, and at most {p.secure_colluders:.0%} of devices colluding "
        "with it (their noise is not counted). A malicious server could lie about who dropped out to two groups of "
        "devices, or forge public keys (no PKI); devices are not checked to clip (no zero-knowledge proofs)",
    }


def ledger_header(config: RunConfig, population: int, canary_commitment: str | None) -> dict[str, Any]:
    """The ledger's header: what is protected, against which neighbour, under which assumptions."""
    header = {
        "privacy-mode": config.privacy.privacy,
        "privacy-unit": privacy_unit(config),
        "neighbouring-relation": NEIGHBOURS[config.privacy.privacy],
        "delta": config.privacy.delta,
        "delta-rationale": f"fixed by the run config; below 1/population (1/{population}) and below 1/n for every device's n",
        "population": population,
        "client-sampling": (
            f"Poisson: each client independently with probability {config.federation.fraction_train} each round (OS entropy)"
            if config.privacy.central_dp
            else f"each round a uniform fraction {config.federation.fraction_train} of clients, without replacement; "
            "clients at their cap are replaced by others not yet asked"
        ),
        "local-sampling": "Poisson, rate 1/ceil(n / batch-size) (Opacus DPDataLoader)" if config.privacy.local_dp else "shuffled batches",
        "accountant": config.privacy.accountant,
        "epsilon-cap": config.privacy.epsilon_cap or None,
        "server-dp": config.privacy.central_dp,
        "versions": library_versions(),
        "config": {k: (str(v) if isinstance(v, float) and not np.isfinite(v) else v) for k, v in config.items()},
    }
    if config.privacy.privacy == "user" and config.privacy.user_noise == "distributed":
        header.update(secure_header(config))
    elif config.privacy.privacy == "user":
        from server.user_level import noise_stds, planned_releases

        header.update(
            {
                "client-sampling": "every device, once per release (full participation)",
                "local-sampling": "none: each device sends one statistic of all its interactions per release",
                "user-level-mechanism": "Gaussian releases of sensitivity 1: (1) the sum of unit-norm interaction "
                "vectors, (2) the sum of unit-Frobenius co-occurrence matrices over the cooccurrence-items most "
                "popular items of release 1, (3) with selection-budget-share > 0, the sum of unit-norm vectors of "
                "reciprocal ranks of each device's most recent interaction under candidate weightings; each "
                "contribution clipped to L2 norm 1 by the server",
                "user-level-releases": [
                    {"release": n, "noise-std": std} for n, std in zip(planned_releases(config), noise_stds(config))
                ],
                "user-level-accounting": "composition of Gaussian mechanisms, exact in mu-GDP (mu^2 = sum 1/std^2), "
                "cross-checked by dp-accounting PLD",
                "user-epsilon": config.privacy.user_epsilon if config.privacy.user_epsilon != float("inf") else -1.0,
                "trust": "the server adds the noise and sees each contribution (central DP); contributions are "
                "fixed-size vectors that secure aggregation could sum",
            }
        )
    if config.privacy.central_dp:
        header.update(
            {
                "server-mechanism": "DP-FedAvg: clip each update to server-clip-norm, equal weights, Gaussian noise "
                "std server-noise-multiplier * server-clip-norm on the sum, divided by the expected count "
                "fraction-train * population",
                "server-accounting": "sampled Gaussian mechanism (Poisson rate fraction-train, noise multiplier "
                "server-noise-multiplier) composed over the rounds run",
                "server-epsilon-cap": config.privacy.server_epsilon_cap or None,
                "canaries": config.privacy.canaries,
                "canary-commitment": canary_commitment,
            }
        )
    return header
