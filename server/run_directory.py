"""The run directory ``runs/<run-id>/``: everything a later command (audit, export) reads.

- ``config.json``: the resolved run config, written at start;
- ``metrics.jsonl``: one JSON line per round, appended and flushed as each round ends, so a
  crash keeps every finished round;
- ``clients.jsonl``: one line per client per round (pseudonymous node id, local examples,
  DP steps, sample rate, cumulative epsilon, bytes sent);
- ``checkpoints/``: the global item tower after each round (``latest.pt``) and at the end
  (``final.pt``), written atomically (temp file + rename);
- ``summary.json``: final metrics, epsilon, config and library versions, written at the end.
"""

from __future__ import annotations

import json
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

VERSIONED_PACKAGES = ("flwr", "torch", "torchvision", "opacus", "transformers", "numpy")


def library_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


class RunDirectory:
    """Writer for one run's directory; refuses to overwrite an existing run's files."""

    def __init__(self, parent: str | Path, run_id: str = "", resume: bool = False) -> None:
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
        self.path = Path(parent).resolve() / run_id
        if (self.path / "metrics.jsonl").exists() and not resume:
            raise FileExistsError(f"{self.path}: run directory already holds a run; choose another run-id or resume it")
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.run_id = run_id

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        path = self.path / name
        _atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n").encode())
        return path

    def append_metrics(self, row: dict[str, Any]) -> None:
        with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def append_client_row(self, row: dict[str, Any]) -> None:
        """One line per client per round in ``clients.jsonl`` (pseudonymous node id, spend)."""
        with (self.path / "clients.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
            handle.flush()

    def save_checkpoint(self, name: str, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
        import io

        buffer = io.BytesIO()
        torch.save({"item_tower": state, "meta": meta}, buffer)
        path = self.path / "checkpoints" / name
        _atomic_write_bytes(path, buffer.getvalue())
        return path


    def save_arrays(self, name: str, arrays: dict[str, "np.ndarray"]) -> Path:
        """``NAME.npz`` in the run directory (released DP statistics and the model fitted to
        them: numpy only, so a device can read them without torch)."""
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path = self.path / name
        _atomic_write_bytes(path, buffer.getvalue())
        return path

    def load_arrays(self, name: str) -> dict[str, "np.ndarray"]:
        import numpy as np

        path = self.path / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not in this run directory")
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def save_round_checkpoint(self, server_round: int, state: dict[str, torch.Tensor], strategy: dict[str, Any]) -> Path:
        """``checkpoints/round-NNNN.pt``: the model and server optimiser state after a round."""
        return self.save_checkpoint(f"round-{server_round:04d}.pt", state, {"round": server_round, "strategy": strategy})

    def prune_round_checkpoints(self, keep: int) -> None:
        """Delete round checkpoints before ``keep`` (once ``keep`` is committed to the ledger)."""
        for path in (self.path / "checkpoints").glob("round-*.pt"):
            if int(path.stem.split("-")[1]) < keep:
                path.unlink()

    def rewrite_jsonl(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Replace a JSONL file atomically (a resume drops rows of an uncommitted round)."""
        _atomic_write_bytes(self.path / name, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def read_jsonl(path: Path, lenient_tail: bool = False) -> list[dict[str, Any]]:
    """Rows of a JSONL file; with ``lenient_tail``, a last line cut short by a crash is dropped."""
    rows = []
    if not path.exists():
        return rows
    lines = path.read_text(encoding="utf-8").splitlines()
    for line_no, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if lenient_tail and line_no == len(lines):
                    break
                raise ValueError(f"{path}, line {line_no}: not JSON: {exc}") from exc
    return rows


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rounds recorded in a run directory's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics in this run directory")
    return read_jsonl(path)
