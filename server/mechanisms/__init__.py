"""The privacy mechanisms, by name: every privacy mode goes through :class:`PrivacyMechanism`.

A new mechanism is one new file (a subclass of :class:`~server.mechanisms.base.PrivacyMechanism`,
or of its rounds or releases base) plus one line in :data:`MECHANISMS`; the run's set-up, the
summary and the audit find it here by the run config (or the ledger header's), and
``simulate`` checks a config with it before Flower starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.mechanisms.base import NOT_APPLICABLE, Outcome, PrivacyMechanism
from server.mechanisms.dp_fedavg import DPFedAvg
from server.mechanisms.dp_sgd import DPSGD
from server.mechanisms.dp_sgd_and_dp_fedavg import DPSGDAndDPFedAvg
from server.mechanisms.gaussian_releases import GaussianReleases
from server.mechanisms.no_privacy import NoPrivacy
from shared.secure_sum.mechanism import SecureReleases
from shared.config import RunConfig

MECHANISMS: dict[str, type[PrivacyMechanism]] = {
    m.name: m for m in (SecureReleases, GaussianReleases, DPSGD, DPFedAvg, DPSGDAndDPFedAvg, NoPrivacy)
}


def mechanism_class(config: Mapping[str, Any]) -> type[PrivacyMechanism]:
    """The mechanism a flat run config asks for (``privacy``, and a variant key where a mode has
    several); an error that lists the choices otherwise."""
    chosen = [m for m in MECHANISMS.values() if m.selects(config)]
    if len(chosen) == 1:
        return chosen[0]
    mode = config.get("privacy")
    same_mode = [m for m in MECHANISMS.values() if m.mode == mode]
    if not same_mode:
        modes = dict.fromkeys(m.mode for m in MECHANISMS.values())
        raise ValueError(f"privacy {mode!r}: choose one of {', '.join(modes)}")
    key = same_mode[0].variant[0] if same_mode[0].variant else "privacy"
    values = [m.variant[1] for m in same_mode if m.variant]
    raise ValueError(f"{key} {config.get(key)!r}: choose one of {', '.join(values)}")


def mechanism_for(config: RunConfig) -> PrivacyMechanism:
    """The run's mechanism, its settings checked (an error that says the fix)."""
    return mechanism_class(config.flat())(config)


def mechanism_of_ledger(header: Mapping[str, Any]) -> type[PrivacyMechanism]:
    """The mechanism a ledger's header was written by, from the run config it records (a header
    from before ``privacy`` existed is the example-level mode, DP-SGD; one from before
    ``user-noise`` existed, the server's Gaussian releases)."""
    config = dict(header.get("config") or {})
    config.setdefault("privacy", header.get("privacy-mode", "local"))
    if config["privacy"] == "user":
        config.setdefault("user-noise", "central")  # ledgers written before the secure sum existed
    return mechanism_class(config)


__all__ = ["MECHANISMS", "NOT_APPLICABLE", "GaussianReleases", "SecureReleases", "Outcome", "PrivacyMechanism", "mechanism_class", "mechanism_for", "mechanism_of_ledger"]
