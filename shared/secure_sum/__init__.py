"""Secure summation with distributed noise: the server learns a noisy sum, never a device's input.

Why: with ``privacy = user`` and the server adding the noise (central DP), the server holds every
user's statistic, that is, their interaction set, in the clear. Here each device adds its own
share of integer noise and masks the result, so the server can unmask only the sum over at least
a threshold of devices (Bonawitz et al., CCS 2017; sparse neighbour graph as in SecAgg+, Bell et
al., CCS 2020), and that sum already carries the noise the privacy claim needs (the distributed
Skellam mechanism, Agarwal, Kairouz and Liu, NeurIPS 2021).

- :mod:`~shared.secure_sum.quantise`: scale, conditional randomised rounding with its norm
  bound (Kairouz, Liu and Steinke, ICML 2021), the field Z_{2^32} and the overflow condition;
- :mod:`~shared.secure_sum.skellam`: the noise each device adds and its RDP accounting;
- :mod:`~shared.secure_sum.masks`: key agreement, mask streams, share encryption and Shamir
  sharing, all from ``cryptography`` / Flower's helpers (no hand-written primitive);
- :mod:`~shared.secure_sum.plan`: the parameters server and devices both derive (threshold,
  neighbours, minimum survivors, noise shares), so a device can refuse a server that cheats;
- :mod:`~shared.secure_sum.session`: the device's side of the protocol, with its refusals;
- :mod:`~shared.secure_sum.unmask`: the server's (and the audit's) unmasking arithmetic;
- :mod:`~shared.secure_sum.identity` and :mod:`~shared.secure_sum.spend`: the devices' identity
  keys and roster, and each device's durable record of what it released.

The mechanism is this folder, whole: its registry entry (:mod:`~shared.secure_sum.mechanism`,
``user-noise = distributed``), the server's side of each release
(:mod:`~shared.secure_sum.server`), the device's handler of each stage
(:mod:`~shared.secure_sum.device`, numpy only), the stage messages both read
(:mod:`~shared.secure_sum.records`) and the audit's checks (:mod:`~shared.secure_sum.audit`). Nothing here is imported when the package is: the device
loads only what it uses.
"""
