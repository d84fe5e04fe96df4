"""``privacy = none``: federated training with no noise anywhere, loudly marked NOT PRIVATE.

The utility reference the private modes are compared against; nothing is protected."""

from __future__ import annotations

from server.mechanisms.rounds import RoundsMechanism


class NoPrivacy(RoundsMechanism):
    name = "none"
    mode = "none"
    unit = "none: NOT PRIVATE"
    neighbours = "none"
    trust = "NOT PRIVATE: nothing is protected"
    warning = "privacy = none: this run is NOT differentially private"
