"""``privacy = local``: each device trains the item tower with DP-SGD (Opacus), example-level.

Every device clips each interaction's gradient and adds Gaussian noise before its update
leaves it, and keeps its own accountant; the server aggregates noised updates with the
configured Flower strategy. The claim protects one interaction of one device, not a user."""

from __future__ import annotations

from server.mechanisms.rounds import RoundsMechanism


class DPSGD(RoundsMechanism):
    name = "dp-sgd"
    mode = "local"
    unit = "example (one interaction) on each device"
    neighbours = "add or remove one interaction of one device's local dataset"
    trust = "nobody for the example-level claim: each device adds its own DP-SGD noise; the server sees each device's noised update"
    local_dp = True
