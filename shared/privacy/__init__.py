"""The privacy room: everything an auditor reviews, in one place.

- :mod:`~shared.privacy.accounting`: epsilon from a mechanism's history (Opacus RDP/PRV,
  dp-accounting PLD) and the Gaussian-DP closed forms of the user-level releases;
- :mod:`~shared.privacy.ledger`: the hash-chained ledger every spend is written to;
- :mod:`~shared.privacy.gaussian`: the clip and the Gaussian noise every mechanism uses;
- :mod:`~server.mechanisms.dp_fedavg.noise`: the server's DP-FedAvg mechanism (sample, clip, sum, noise);
- :mod:`~shared.privacy.canaries`: canary updates and their commitment, for the one-run audit;
- :mod:`~shared.privacy.empirical`: the one-run empirical lower bound on epsilon;
- :mod:`~shared.privacy.spend_signature`: devices' signatures over what they spent.

The audit (:mod:`server.audit`) depends only on this room, the run directory reader and its
own report.
"""
