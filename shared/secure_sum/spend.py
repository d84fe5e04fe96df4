"""What a device has released of its user's data, kept durably, and the cap it will not pass.

A device's secure-sum session (:mod:`shared.secure_sum.session`) lives as long as one key stage:
it refuses a second input for a release it already masked, but a server that starts a new key
stage gets a fresh session, and with it a second noisy copy of the same statistic (two draws of
the noise: their mean has ``1 / sqrt(2)`` of it). So the device keeps, apart from any session,
every release it sent an input for: which run asked, which release, and what the plan promised
the release costs (its integer sensitivities and the noise the honest minimum adds together,
the variance the claim counts). Before it masks a new input it

- refuses a release of a run it already answered (the same run asking again);
- composes the Skellam RDP of everything it answered plus the new release (Agarwal, Kairouz and
  Liu 2021, the accounting the plan itself uses) and refuses when that user-level epsilon would
  pass its cap: the node config's ``user-epsilon-cap``; on a real device without one, the code's
  default ``user-epsilon``; in a simulation without one, the run's own budget.

The record is written (atomically: write, fsync, rename) before the masked input leaves the
device, in ``<state>/user-spend.json`` beside the device's other state, so it survives a new
session, a restart of the SuperNode and a new run. Without a state folder it is kept in the
node's ``context.state`` for the run. A corrupt file, or one of another user, is an error: it is
never silently replaced, which would forget the privacy already spent. numpy only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.file_lock import locked
from shared.secure_sum.session import ProtocolRefusal
from shared.secure_sum.plan import ReleasePlan, SecurePlan
from shared.secure_sum.skellam import SkellamRelease, skellam_epsilon

SPEND_FILE = "user-spend.json"
SPEND_FORMAT = "fedmmrec-user-spend/1"
TOLERANCE = 1e-9  # relative: the plan spends exactly its budget at the minimum


class SpendFileError(ValueError):
    """The device's spend file cannot be trusted; the message names the file and the problem."""


@dataclass(frozen=True)
class Answered:
    """One release this device sent its input for, as the accounting sees it."""

    run: str
    release: str
    l2: float
    l1: float
    variance: float  # per coordinate, integer domain: the noise the plan's honest minimum adds together

    def accounted(self) -> SkellamRelease:
        return SkellamRelease(self.l2, self.l1, self.variance)


def answered_for(run: str, release: ReleasePlan) -> Answered:
    return Answered(str(run), release.name, float(release.bound), float(release.l1), float(release.central_variance))


@dataclass
class UserSpend:
    """The releases one user's device answered, over its whole life."""

    user: str
    answered: list[Answered]

    def epsilon(self, delta: float, extra: tuple[Answered, ...] = ()) -> float:
        """User-level epsilon at ``delta`` of everything answered (and ``extra``)."""
        return skellam_epsilon([a.accounted() for a in (*self.answered, *extra)], delta)

    def admit(self, run: str, plan: SecurePlan, release: ReleasePlan, cap: float) -> Answered:
        """The record of answering ``release`` of ``run``; a :class:`ProtocolRefusal` when it is a
        repeat or would take the user past ``cap``."""
        if any(a.run == str(run) and a.release == release.name for a in self.answered):
            raise ProtocolRefusal(f"this device already answered release {release.name!r} of run {run}: refusing a second noisy copy")
        new = answered_for(run, release)
        after = self.epsilon(plan.delta, (new,))
        if not after <= cap * (1 + TOLERANCE) and not (math.isinf(cap) and math.isinf(after)):
            raise ProtocolRefusal(
                f"release {release.name!r} would take this device to user-level epsilon {after:.4g} at delta {plan.delta:g} "
                f"({len(self.answered)} releases answered before, {self.epsilon(plan.delta):.4g} spent), past its cap {cap:g}"
            )
        return new

    def to_json(self) -> dict[str, Any]:
        return {"format": SPEND_FORMAT, "user": self.user, "answered": [asdict(a) for a in self.answered]}

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str) -> "UserSpend":
        try:
            if raw["format"] != SPEND_FORMAT:
                raise ValueError(f"format {raw['format']!r}, expected {SPEND_FORMAT!r}")
            answered = [Answered(str(a["run"]), str(a["release"]), float(a["l2"]), float(a["l1"]), float(a["variance"])) for a in raw["answered"]]
            return cls(str(raw["user"]), answered)
        except (KeyError, TypeError, ValueError) as exc:
            raise SpendFileError(f"{where}: corrupt spend record ({exc}); not replacing it: it is the record of the privacy already spent") from None


def load_spend(path: Path | None, kept: str | None, user: str) -> UserSpend:
    """The spend in ``path`` (a state folder's file), else ``kept`` (the run's node state), else none."""
    if path is not None and path.exists():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpendFileError(f"{path}: unreadable spend record ({exc}); not replacing it: it is the record of the privacy already spent") from None
        spend = UserSpend.from_json(raw, str(path))
    elif kept:
        spend = UserSpend.from_json(json.loads(kept), "the node state's spend record")
    else:
        return UserSpend(user, [])
    if spend.user != user:
        raise SpendFileError(f"{path}: the spend of user {spend.user!r}, but this device's data is user {user!r}")
    return spend


@contextlib.contextmanager
def spend_lock(path: Path | None) -> Iterator[None]:
    """Hold the spend file's lock across load, check and save: two runs on one device cannot both
    be admitted on the same record (unlocked without ``fcntl``, on Windows)."""
    if path is None:
        yield
        return
    with locked(path):
        yield


def save_spend(path: Path | None, spend: UserSpend) -> str:
    """Write ``spend`` to ``path`` atomically (when there is one); return it as the node state keeps it."""
    text = json.dumps(spend.to_json(), sort_keys=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    return text
