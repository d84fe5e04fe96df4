"""Resolve the dataset a run uses; generate the embedded synthetic one on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.data.synth import SynthConfig, generate


def default_synth_dir(users: int, items: int, seed: int) -> Path:
    """Where the embedded dataset lives: ``$FEDMMREC_DATA`` or ``./data``, one folder per size."""
    import os

    base = Path(os.environ.get("FEDMMREC_DATA", "data"))
    return (base / f"synth-u{users}-i{items}-s{seed}").resolve()


def resolve_data_dir(config: dict[str, Any]) -> Path:
    """The run's dataset folder (absolute); the synthetic default is generated if missing."""
    if config["data-dir"]:
        return Path(config["data-dir"]).resolve()
    out = default_synth_dir(config["synth-users"], config["synth-items"], config["synth-seed"])
    if not (out / "interactions.csv").is_file():
        print(f"fedmmrec: generating the synthetic dataset in {out}", flush=True)
        tmp = out.with_name(out.name + ".partial")
        generate(tmp, SynthConfig(users=config["synth-users"], items=config["synth-items"], seed=config["synth-seed"]))
        if out.exists():
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)
    return out
