"""Deployment tooling: a TLS SuperLink and authenticated SuperNodes on one machine, and the
report of such a run (``fedmmrec deploy localhost``)."""
