"""DP-FedAvg (``privacy = central``), whole: the mechanism class (:mod:`.mechanism`), the server's
clip, Gaussian noise and fixed denominator (:mod:`.noise`, McMahan et al., ICLR 2018), the
aggregation that applies them each round (:mod:`.aggregation`) and the audit's checks of the
server's rounds and canaries (:mod:`.audit`). Its devices train the item tower as in every
round-based mode: it has no device side of its own."""

from server.mechanisms.dp_fedavg.mechanism import DPFedAvg

__all__ = ["DPFedAvg"]
