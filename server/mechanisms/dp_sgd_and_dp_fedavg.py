"""``privacy = both``: DP-SGD on each device (example-level) and DP-FedAvg at the server
(user-level), two claims with two trust models, each accounted and audited on its own."""

from __future__ import annotations

from server.mechanisms.dp_fedavg import DPFedAvg


class DPSGDAndDPFedAvg(DPFedAvg):
    name = "dp-sgd+dp-fedavg"
    mode = "both"
    unit = "example (one interaction) on each device, and user (all of a device's interactions) at the server"
    neighbours = "local DP: add or remove one interaction of one device; central DP: add or remove one user"
    trust = "each device for the example-level claim; the server for the user-level one (it sees the updates and adds that noise)"
    local_dp = True
