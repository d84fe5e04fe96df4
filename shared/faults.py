"""The fault-injection spec of the ``faults`` run config (read by ``simulations/faults.py``)."""

from __future__ import annotations

FAULT_KINDS = ("nan", "shape", "missing", "extra", "scale", "flip", "crash", "slow", "nonoise", "lownoise", "noclip",
               "noshare", "dropshare", "dropinput", "dropunmask")


def parse_faults(spec: str) -> dict[int, str]:
    """``"nan:0,1 flip:2"`` -> {0: "nan", 1: "nan", 2: "flip"}; a bad spec is a clear error."""
    out: dict[int, str] = {}
    for part in spec.split():
        kind, _, ids = part.partition(":")
        if kind not in FAULT_KINDS or not ids:
            raise ValueError(f"faults: {part!r}: expected KIND:ID[,ID...] with KIND one of {', '.join(FAULT_KINDS)}")
        try:
            out.update({int(pid): kind for pid in ids.split(",")})
        except ValueError:
            raise ValueError(f"faults: {part!r}: partition ids must be integers") from None
    return out
