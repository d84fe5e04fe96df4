"""The run directory ``runs/<run-id>/``: everything a later command (audit, export) reads.

- ``config.json``: the resolved run config, written at start;
- ``ledger.sqlite``: the hash-chained privacy ledger (:mod:`shared.privacy.ledger`);
- ``metrics.jsonl``: one JSON line per round, appended and flushed as each round ends, so a
  crash keeps every finished round;
- ``clients.jsonl``: one line per client per round (pseudonym, local examples, DP steps,
  sample rate, cumulative epsilon, bytes sent);
- ``checkpoints/``: the global item tower after each round (``round-NNNN.pt``, ``latest.pt``)
  and at the end (``final.pt``), written atomically (temp file + rename);
- ``model.npz``, ``releases.npz`` (``privacy = user``): the released statistics and the model
  fitted to them; ``secure-sum.npz`` (``user-noise = distributed``): the key stages' and each
  release's evidence, the arrays :mod:`shared.secure_sum.evidence` names; ``canaries.json`` (runs with canaries);
- ``devices/partition-<id>/`` (simulations): each simulated device's own state;
- ``summary.json``: final metrics, epsilon, config and library versions, written at the end;
- ``audit.md``, ``audit.html``: what ``fedmmrec audit`` found.

:class:`RunDirectory` is the one place that knows these names: every other module reads and
writes a run through it.
"""

from __future__ import annotations

import io
import json
import os
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.privacy.ledger import Entry, Ledger, read_entries

if TYPE_CHECKING:  # checkpoints need torch; devices read only their folder names from here
    import torch

VERSIONED_PACKAGES = ("flwr", "torch", "torchvision", "opacus", "transformers", "numpy")
DEVICE_STATE_FILE = "device-state.json"
MODEL_FILE = "model.npz"  # privacy = user: the served model
RELEASES_FILE = "releases.npz"  # privacy = user: the noisy released statistics
CATALOG_FILE = "catalog.npz"  # privacy = user: the public catalog the model was fitted with
SECURE_FILE = "secure-sum.npz"  # user-noise = distributed: the secure aggregation's evidence


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
    """One run's directory: its file names, its writers and its readers.

    ``RunDirectory(parent, run_id)`` starts a run (refusing to overwrite one);
    ``resume=True`` continues one; :meth:`open` reads an existing one.
    """

    def __init__(self, parent: str | Path, run_id: str = "", resume: bool = False) -> None:
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
        self.path = Path(parent).resolve() / run_id
        if self.metrics_path.exists() and not resume:
            raise FileExistsError(f"{self.path}: run directory already holds a run; choose another run-id or resume it")
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id

    @classmethod
    def open(cls, path: str | Path) -> "RunDirectory":
        """An existing run directory, for reading (nothing is created)."""
        path = Path(path).resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: not a run directory")
        run = cls.__new__(cls)
        run.path, run.run_id = path, path.name
        return run

    # --- names -----------------------------------------------------------------------------
    config_path = property(lambda self: self.path / "config.json")
    summary_path = property(lambda self: self.path / "summary.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    clients_path = property(lambda self: self.path / "clients.jsonl")
    ledger_path = property(lambda self: self.path / "ledger.sqlite")
    canaries_path = property(lambda self: self.path / "canaries.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    devices = property(lambda self: self.path / "devices")
    audit_markdown_path = property(lambda self: self.path / "audit.md")
    audit_html_path = property(lambda self: self.path / "audit.html")

    def file(self, name: str) -> Path:
        """A top-level file of the run (``model.npz``, ``releases.npz``)."""
        return self.path / name

    def checkpoint_path(self, name: str) -> Path:
        return self.checkpoints / name

    def final_checkpoint(self) -> Path | None:
        """``final.pt``, else ``latest.pt`` (a run stopped early), else None."""
        for name in ("final.pt", "latest.pt"):
            if self.checkpoint_path(name).is_file():
                return self.checkpoint_path(name)
        return None

    # --- writers ---------------------------------------------------------------------------
    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        path = self.path / name
        _atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n").encode())
        return path

    def write_config(self, config: dict[str, Any]) -> Path:
        return self.write_json(self.config_path.name, config)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return self.write_json(self.summary_path.name, summary)

    def open_ledger(self) -> Ledger:
        """The run's ledger, to append to (created on first use, never truncated)."""
        return Ledger(self.ledger_path)

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def append_client_row(self, row: dict[str, Any]) -> None:
        """One line per client per round in ``clients.jsonl`` (pseudonym, spend)."""
        with self.clients_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
            handle.flush()

    def save_checkpoint(self, name: str, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
        buffer = io.BytesIO()
        import torch

        torch.save({"item_tower": state, "meta": meta}, buffer)
        path = self.checkpoint_path(name)
        _atomic_write_bytes(path, buffer.getvalue())
        return path

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> Path:
        """``NAME.npz`` in the run directory (released DP statistics and the model fitted to
        them: numpy only, so a device can read them without torch)."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path = self.file(name)
        _atomic_write_bytes(path, buffer.getvalue())
        return path

    def save_round_checkpoint(self, server_round: int, state: dict[str, torch.Tensor], strategy: dict[str, Any]) -> Path:
        """``checkpoints/round-NNNN.pt``: the model and server optimiser state after a round."""
        return self.save_checkpoint(f"round-{server_round:04d}.pt", state, {"round": server_round, "strategy": strategy})

    def round_checkpoint(self, server_round: int) -> Path:
        """The checkpoint a resume after ``server_round`` starts from (0: the initial model)."""
        return self.checkpoint_path(f"round-{server_round:04d}.pt" if server_round else "initial.pt")

    def prune_round_checkpoints(self, keep: int) -> None:
        """Delete round checkpoints before ``keep`` (once ``keep`` is committed to the ledger)."""
        for path in self.checkpoints.glob("round-*.pt"):
            if int(path.stem.split("-")[1]) < keep:
                path.unlink()

    def rewrite_jsonl(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Replace a JSONL file atomically (a resume drops rows of an uncommitted round)."""
        _atomic_write_bytes(self.path / name, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())

    def write_audit(self, markdown: str, html: str) -> None:
        self.audit_markdown_path.write_text(markdown, encoding="utf-8")
        self.audit_html_path.write_text(html, encoding="utf-8")

    # --- readers ---------------------------------------------------------------------------
    def _json(self, path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not in this run directory")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from exc

    def read_config(self) -> dict[str, Any]:
        return self._json(self.config_path)

    def read_summary(self) -> dict[str, Any]:
        return self._json(self.summary_path)

    def has_summary(self) -> bool:
        return self.summary_path.is_file()

    def read_metrics(self, lenient_tail: bool = False) -> list[dict[str, Any]]:
        """The rounds recorded in ``metrics.jsonl``; ``lenient_tail``: a last line cut short by
        a crash is dropped."""
        return read_jsonl(self.metrics_path, lenient_tail)

    def read_clients(self, lenient_tail: bool = False) -> list[dict[str, Any]]:
        return read_jsonl(self.clients_path, lenient_tail)

    def read_ledger(self) -> list[Entry]:
        return read_entries(self.ledger_path)

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        import torch

        return torch.load(path, map_location="cpu")

    def load_arrays(self, name: str) -> dict[str, np.ndarray]:
        path = self.file(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not in this run directory")
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def device_folders(self) -> dict[int, Path]:
        """Simulated devices' state folders by partition id (``devices/partition-<id>/``)."""
        if not self.devices.is_dir():
            return {}
        return {int(p.name.split("-", 1)[1]): p for p in sorted(self.devices.glob("partition-*")) if p.is_dir()}


    def trained_partitions(self) -> list[int]:
        """The simulated devices that kept a state, i.e. took part in training."""
        return sorted(k for k, p in self.device_folders().items() if (p / DEVICE_STATE_FILE).is_file())


def simulated_device_folder(root: str | Path, partition: int) -> Path:
    """Where simulated device ``partition`` keeps its state under ``root`` (a run's ``devices/``)."""
    return Path(root) / f"partition-{int(partition)}"


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
    run = RunDirectory.open(run_dir)
    if not run.metrics_path.is_file():
        raise FileNotFoundError(f"{run.metrics_path}: no metrics in this run directory")
    return run.read_metrics()


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return RunDirectory.open(run_dir).read_summary()


def read_ledger(run_dir: str | Path) -> list[Entry]:
    """A run directory's ledger entries, in order."""
    return RunDirectory.open(run_dir).read_ledger()
