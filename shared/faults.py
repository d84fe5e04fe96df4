"""The fault-injection spec of a simulation (``fedmmrec run --faults``, read by
``simulations/engines/faults.py``): test machinery, not a run-config key."""

from __future__ import annotations

FAULT_KINDS = ("nan", "shape", "missing", "extra", "scale", "flip", "crash", "slow", "nonoise", "lownoise", "noclip",
               "noshare", "dropshare", "dropinput", "dropconfirm", "dropunmask")


def parse_faults(spec: str) -> dict[int, str]:
    """``"nan:0,1 flip:2 dropinput:10-12"`` -> {0: "nan", 1: "nan", 2: "flip", 10: ..., 12:
    "dropinput"} (``A-B``: partitions A to B inclusive, for the dropout studies of a tenth of 943
    devices); a bad spec is a clear error."""
    out: dict[int, str] = {}
    for part in spec.split():
        kind, _, ids = part.partition(":")
        if kind not in FAULT_KINDS or not ids:
            raise ValueError(f"faults: {part!r}: expected KIND:ID[,ID or A-B...] with KIND one of {', '.join(FAULT_KINDS)}")
        for item in ids.split(","):
            first, dash, last = item.partition("-")
            try:
                span = range(int(first), int(last) + 1) if dash else [int(first)]
            except ValueError:
                raise ValueError(f"faults: {part!r}: partition ids must be integers or ranges A-B") from None
            if dash and not span:
                raise ValueError(f"faults: {part!r}: the range {item} is empty")
            out.update({pid: kind for pid in span})
    return out
