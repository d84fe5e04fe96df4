"""The privacy ledger: an append-only, hash-chained SQLite file in the run directory.

Why: an auditor must be able to answer from the files a run leaves behind what privacy was
spent, by whom, under which assumptions, and whether it is true. Each entry is canonical JSON
(never pickle). Each entry stores the hash of the previous one, so editing, deleting or
reordering an entry breaks the chain unless every later entry is rewritten too. To guard
against that, publish the head hash: the run prints it and writes it to ``summary.json``.
A round's entries are written in one transaction, so a crash loses at most that round.

Entry kinds:
- ``header``: one per run. Privacy unit, neighbouring relation, delta and how it was chosen,
  population, accountant, library versions.
- ``client-round``: one per client per round (also for a decline or a rejected reply).
  Pseudonymous client id (chosen by the device, kept across restarts), local examples, sample
  rate, Poisson sampling, local steps, noise multiplier, clip norm, accountant history,
  cumulative epsilon.
- ``server-round``: one per round. Clients sampled and replies received, server-side noise
  (none without central DP), norm of the released update, user-level epsilon (central DP).
- ``client-rejected``: a reply rejected before aggregation whose accounting fields could not be
  read (a readable one is a ``client-round`` entry with ``rejected``: its spend is real).
- ``stop``: the server stopped before a round that would exceed its user-level budget.
- ``resume``: the run was resumed after the round it names.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    round INTEGER NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
"""


def canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)


def entry_hash(prev_hash: str, kind: str, round_: int, body: str) -> str:
    return hashlib.sha256(f"{prev_hash}|{kind}|{round_}|{body}".encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: str
    round: int
    body: dict[str, Any]
    prev_hash: str
    hash: str
    raw_body: str


class Ledger:
    """Appender for one run's ledger; an existing ledger is continued, never truncated."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def head(self) -> tuple[int, str]:
        row = self._db.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))

    def append(self, entries: list[tuple[str, int, dict[str, Any]]]) -> str:
        """Append ``(kind, round, body)`` entries in one transaction; return the new head hash."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            seq, prev = self.head()
            for kind, round_, body in entries:
                raw = canonical(body)
                digest = entry_hash(prev, kind, round_, raw)
                seq += 1
                self._db.execute(
                    "INSERT INTO entries (seq, kind, round, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, kind, round_, raw, prev, digest),
                )
                prev = digest
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return prev

    def close(self) -> None:
        self._db.close()


def read_entries(path: str | Path) -> list[Entry]:
    """All entries of the ledger file ``path`` in sequence order (read-only; never modified)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no privacy ledger in this run directory")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, kind, round, body, prev_hash, hash FROM entries ORDER BY seq").fetchall()
    finally:
        db.close()
    entries = []
    for seq, kind, round_, raw, prev, digest in rows:
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: entry {seq} body is not JSON: {exc}") from exc
        entries.append(Entry(int(seq), str(kind), int(round_), body, str(prev), str(digest), str(raw)))
    return entries


def verify_chain(entries: list[Entry]) -> list[str]:
    """Problems with the hash chain (empty when intact)."""
    problems = []
    prev = GENESIS
    for expected_seq, entry in enumerate(entries, start=1):
        if entry.seq != expected_seq:
            problems.append(f"entry {entry.seq}: expected sequence number {expected_seq} (entry missing)")
        if entry.prev_hash != prev:
            problems.append(f"entry {entry.seq}: previous-hash link broken")
        if entry_hash(entry.prev_hash, entry.kind, entry.round, entry.raw_body) != entry.hash:
            problems.append(f"entry {entry.seq} ({entry.kind}, round {entry.round}): content does not match its hash (edited)")
        prev = entry.hash
    return problems
