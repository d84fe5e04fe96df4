"""``fedmmrec bench --parts secure-scale``: what the secure default costs as the population grows,
and where it first breaks (issue 42's cost curve).

Two measurements, each a figure beside its growth:

- **whole runs** of the default (``privacy = user``, ``user-noise = distributed``) through the
  in-process engine (Flower's message layer in this process, every device's real handler) on
  synthetic populations with one fixed catalog, so the releases' sizes stay put and only the
  population grows: the wall time of the three releases, the process's peak memory (server and
  simulated devices together: in-process they share it), and the server's own buffer for one
  sum (the masked vectors it keeps until the devices' sketches arrive, ``4 n d`` bytes). The
  largest population runs as cohorts (``secure-groups``, ``secure-combine = sum``), which cap
  that buffer and the signatures each device checks at a cohort's size;
- **one device's** CPU seconds and bytes over the whole protocol
  (:func:`simulations.bench.overheads.secure_device_cost`) at each population and up to 10^5:
  a device verifies the minimum's survivor-set signatures (about 90% of its sum's devices) in
  every release, the one part of its work that grows with the population.

Each figure's growth is a least-squares slope in log-log (1: linear), and the table projects
the whole run to 10^5 and 10^6 devices. Not part of the test run: minutes of CPU.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

GIB = 2**30
CATALOG = 200  # items of the synthetic catalog: releases of 200, 20,100 and 15 values
RUNS = ((100, 1), (300, 1), (1000, 1), (3000, 3))  # (devices, cohorts)
DEVICE_POPULATIONS = (100, 1000, 10_000, 100_000)
DEVICE_CPU_TARGET = 1.0  # issue 42: per-device CPU at most 1 s per release


def _run(work: Path, cache: Path, devices: int, cohorts: int, dimension: int) -> dict[str, Any]:
    from shared.data.synth import SynthConfig, generate
    from shared.run_directory import read_metrics, read_summary
    from simulations.bench.memory import PeakMemory
    from simulations.engines.simulate import simulate

    data = generate(work / f"scale-{devices}", SynthConfig(users=devices, items=CATALOG, seed=11))
    config = {"data-dir": str(data), "feature-cache": str(cache), "run-dir": str(work / "runs"),
              "run-id": f"secure-{devices}-{cohorts}", "privacy": "user", "user-noise": "distributed"}
    if cohorts > 1:
        config.update({"secure-groups": cohorts, "secure-combine": "sum"})
    started = time.perf_counter()
    with PeakMemory() as peak:
        run = simulate(config, engine="in-process")
    wall = time.perf_counter() - started
    releases = read_metrics(run)
    return {
        "devices": devices, "cohorts": cohorts, "wall-s": wall,
        "release-s": float(sum(float(r["round-seconds"]) for r in releases)),
        "process-peak-gib": peak.bytes / GIB,
        "server-sum-buffer-gib": 4.0 * math.ceil(devices / cohorts) * dimension / GIB,
        "hr@10": float(read_summary(run)["final"]["hr@10"]),
    }


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(ys) on log(xs): the growth exponent (1: linear)."""
    return float(np.polyfit(np.log(np.asarray(xs, dtype=float)), np.log(np.asarray(ys, dtype=float)), 1)[0])


def project(xs: list[float], ys: list[float], at: float) -> float:
    """``ys`` at ``at`` by the log-log fit through ``xs``, ``ys``."""
    k, c = np.polyfit(np.log(np.asarray(xs, dtype=float)), np.log(np.asarray(ys, dtype=float)), 1)
    return float(math.exp(c + k * math.log(at)))


def secure_scale(work: Path, cache: Path, runs=RUNS, device_populations=DEVICE_POPULATIONS) -> dict[str, Any]:
    from simulations.bench.overheads import secure_device_cost

    dimensions = (CATALOG, CATALOG * (CATALOG + 1) // 2, 15)
    out: dict[str, Any] = {}
    measured = [_run(work, cache, devices, cohorts, dimensions[1]) for devices, cohorts in runs]
    for row in measured:
        out[f"run {row['devices']} devices, {row['cohorts']} cohort(s)"] = {k: v for k, v in row.items() if k not in ("devices", "cohorts")}
    single = [r for r in measured if r["cohorts"] == 1]
    xs = [r["devices"] for r in single]
    per_device, refused = {}, {}
    for n in device_populations:
        try:
            per_device[n] = secure_device_cost(n, dimensions)
        except ValueError as exc:  # the plan itself cannot hold at this population (the field, the graph)
            refused[n] = str(exc)
    for n, reason in refused.items():
        out[f"one device at {n} devices"] = {"no plan": reason}
    for n, cost in per_device.items():
        out[f"one device at {n} devices"] = {
            "cpu-s": cost["cpu-seconds-per-device"], "cpu-s-per-release": cost["cpu-seconds-per-device"] / len(dimensions),
            "bytes-sent": cost["bytes-sent-per-device"],
        }
    ns = list(per_device)
    cpu = [per_device[n]["cpu-seconds-per-device"] / len(dimensions) for n in ns]
    growth = {
        "release wall time (one sum)": slope(xs, [r["release-s"] for r in single]),
        "process peak memory (one sum)": slope(xs, [r["process-peak-gib"] for r in single]),
        "device CPU per release": slope(ns, cpu),
        "device bytes sent": slope(ns, [per_device[n]["bytes-sent-per-device"] for n in ns]),
    }
    out["growth exponent (log-log slope)"] = growth
    out["projection, one sum"] = {
        f"{n:.0e} devices": f"{project(xs, [r['release-s'] for r in single], n) / 3600:.3g} h of releases, "
                            f"{4.0 * n * dimensions[1] / GIB:.3g} GiB of masked vectors held, "
                            f"{project(ns, cpu, n):.3g} s device CPU per release"
        for n in (1e5, 1e6)
    }
    over = [n for n, c in zip(ns, cpu) if c > DEVICE_CPU_TARGET]
    first = over[0] if over else project_crossing(ns, cpu, DEVICE_CPU_TARGET)
    out["first bottleneck"] = {
        "device CPU per release passes 1 s at": f"{first:.3g} devices in one sum (the survivor-set signatures it verifies)",
        "server buffer passes 24 GiB at": f"{24 * GIB / (4.0 * dimensions[1]):.3g} devices in one sum (the masked vectors kept for the sketches)",
    }
    return out


def project_crossing(xs: list[float], ys: list[float], level: float) -> float:
    """Where the log-log fit through ``xs``, ``ys`` reaches ``level``."""
    k, c = np.polyfit(np.log(np.asarray(xs, dtype=float)), np.log(np.asarray(ys, dtype=float)), 1)
    return float(math.exp((math.log(level) - c) / k)) if k > 0 else math.inf
