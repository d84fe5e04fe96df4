"""``fedmmrec bench``: our overheads measured side by side with their floors, in one process run.

Every figure is a ratio or rate measured in the same run, with repeats and the median:

1. client update cost: wall seconds per client update of our ClientApp in a Flower simulation
   against a no-op ClientApp returning the same payload (``simulations/bench/noop_client.py``);
2. DP overhead: seconds per local step with DP against the same step without DP, for our
   closed-form engine (``dp-engine = "fast"``) and for Opacus' engine in each grad-sample mode;
3. communication: bytes per client per round against the full model (backbones included);
4. feature extraction: items per second per backbone, and the cache hit against the first run;
5. scale: 100 clients (10 per round) against 1,000 clients (100 per round), wall time and peak
   memory, and peak memory of 3 rounds against 6 (it must not grow with rounds);
6. quality at speed: NDCG@10 of the main job per minute of its wall time;
7. online response on the device: milliseconds from a new interaction to the next top-10
   (the user's vector updated, the catalog ranked) on an exported model, p50 and p99, for the
   user-level model and for the item tower, beside the time of a top-10 alone;
8. the secure sum on the device (``user-noise = distributed``): CPU seconds and bytes one device
   spends on the whole protocol at 943 devices and MovieLens' release sizes, beside the bytes
   the same device sends under the central mechanism.

Prints a table and writes ``bench.json``. Not part of the test run.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from shared.run_directory import read_summary

GIB = 2**30


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _synth(root: Path, users: int, items: int = 200, seed: int = 11) -> Path:
    from shared.data.synth import SynthConfig, generate

    return generate(root / f"u{users}-i{items}-s{seed}", SynthConfig(users=users, items=items, seed=seed))


def _run(overrides: dict[str, Any], client_app=None) -> tuple[Path, float]:
    from simulations.engines.simulate import simulate

    started = time.perf_counter()
    # The bench measures DP-SGD clients: the example-level mode, whatever the default.
    run_dir = simulate({"privacy": "local", **overrides}, client_app=client_app)
    return run_dir, time.perf_counter() - started


def _per_update_seconds(run_dir: Path) -> float:
    """Median over rounds 2.. of train-phase seconds per client update (round 1 warms up)."""
    from shared.run_directory import read_metrics

    rows = read_metrics(run_dir)[1:]
    return statistics.median(r["train-seconds"] / max(1, r["clients-trained"] + r.get("clients-rejected", 0)) for r in rows)


def client_update_cost(work: Path, cache: Path, repeats: int) -> dict[str, Any]:
    from simulations.bench.noop_client import app as noop

    data = _synth(work, 50)
    common = {"data-dir": str(data), "feature-cache": str(cache), "run-dir": str(work / "runs"),
              "num-server-rounds": 4, "fraction-train": 1.0, "fraction-evaluate": 0.1}
    ours, floor = [], []
    for i in range(repeats):  # alternate, so drift in the machine hits both alike
        ours.append(_per_update_seconds(_run({**common, "run-id": f"ours-{i}"})[0]))
        floor.append(_per_update_seconds(_run({**common, "run-id": f"noop-{i}"}, client_app=noop)[0]))
    ours_s, floor_s = statistics.median(ours), statistics.median(floor)
    # The training itself (the same clients' DP-SGD, in this process on one core), spread over
    # the simulation's workers: what no ClientApp that trains can avoid on top of Flower's floor.
    workers = os.cpu_count() or 1
    train_s = _training_seconds_per_update(data, cache) / workers
    return {"ours-s-per-update": ours_s, "floor-s-per-update": floor_s, "ratio": ours_s / floor_s, "target": 1.3,
            "training-s-per-update-per-worker": train_s, "ratio-to-floor-plus-training": ours_s / (floor_s + train_s)}


def _local_training_inputs(overrides: dict[str, Any], cache: Path | None):
    """(config, dataset, split, catalog tensors) for timing ``train_local`` in this process, on
    one core as a simulated client runs."""
    import torch

    from shared.config import resolve
    from shared.data import leave_last_out, load_dataset
    from shared.data.prepare import resolve_data_dir
    from shared.features import load_or_compute_features
    from shared.models.recommender import catalog_tensors

    torch.set_num_threads(1)
    config = resolve(None, {"privacy": "local", **overrides})  # DP-SGD clients, whatever the default
    dataset = load_dataset(resolve_data_dir(config))
    catalog = catalog_tensors(load_or_compute_features(dataset, cache, progress=False))
    return config, dataset, leave_last_out(dataset), catalog


def _training_seconds_per_update(data: Path, cache: Path) -> float:
    """Median seconds of one client's local round (default config, DP) over the dataset's users."""
    from shared.models.recommender import model_spec
    from shared.training import train_config
    from shared.models.recommender import Recommender
    from shared.training import train_local

    config, dataset, split, catalog = _local_training_inputs({"data-dir": str(data)}, cache)
    tc = train_config(config)
    times = []
    for k, items in enumerate(split.train_items):
        started = time.perf_counter()
        model = Recommender(model_spec(config, dataset.num_items), num_users=1)
        train_local(model, catalog, items, tc, [], seed=k, noise_seed=k)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def dp_overhead(repeats: int) -> dict[str, Any]:
    from shared.models.recommender import model_spec
    from shared.training import train_config
    from shared.models.recommender import Recommender
    from shared.training import train_local

    config, dataset, split, catalog = _local_training_inputs({"local-epochs": 5}, None)
    items = split.train_items[0]

    def per_step(privacy: str, engine: str = "fast", mode: str = "hooks") -> float:
        tc = train_config({**config.flat(), "privacy": privacy, "dp-engine": engine})

        def once() -> None:
            model = Recommender(model_spec(config, dataset.num_items), num_users=1)
            result = train_local(model, catalog, items, tc, [], seed=0, noise_seed=0, grad_sample_mode=mode)
            once.steps = result.steps

        once()  # warm up
        return _median_time(once, 3) / once.steps

    # Interleaved, so drift in the machine hits every variant alike; medians per variant.
    variants = {"no-dp": ("none", "fast", "hooks"), "dp-fast": ("local", "fast", "hooks")}
    variants.update({f"dp-opacus-{mode}": ("local", "opacus", mode) for mode in ("hooks", "functorch", "ew")})
    times: dict[str, list[float]] = {name: [] for name in variants}
    out: dict[str, Any] = {}
    for _ in range(repeats):
        for name, variant in variants.items():
            if name in out:  # failed before
                continue
            try:
                times[name].append(per_step(*variant))
            except Exception as exc:  # a mode this model cannot use: report why
                out[name] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
    floor = statistics.median(times["no-dp"])
    out["no-dp-s-per-step"] = floor
    for name, values in times.items():
        if name != "no-dp" and values:
            out[f"{name}-s-per-step"] = statistics.median(values)
            out[f"ratio-{name}"] = statistics.median(values) / floor
    out["target"] = 1.5
    return out


def communication(run_dir: Path) -> dict[str, Any]:
    from torchvision.models import mobilenet_v2
    from transformers import AutoModel

    from shared.features.text import text_model_path

    summary = read_summary(run_dir)
    sent = float(summary["communication"]["bytes-sent-per-client-per-round"])
    received = float(summary["communication"]["item-tower-bytes"])
    text = AutoModel.from_pretrained(text_model_path())
    backbone_bytes = sum(p.numel() * p.element_size() for p in text.parameters())
    backbone_bytes += sum(p.numel() * p.element_size() for p in mobilenet_v2().parameters())
    full = backbone_bytes + received
    return {"bytes-sent-per-round": sent, "bytes-received-per-round": received, "full-model-bytes": full,
            "ratio-to-full-model": sent / full, "target-ratio": 0.02, "target-bytes": 1_000_000}


def feature_extraction(work: Path) -> dict[str, Any]:
    from shared.config import resolve
    from shared.data import load_dataset
    from shared.data.prepare import resolve_data_dir
    from shared.features import load_or_compute_features

    dataset = load_dataset(resolve_data_dir(resolve()))
    cache = work / "fresh-feature-cache"
    text_s = _median_time(lambda: load_or_compute_features(dataset, cache / "t", progress=False, modalities=("text",)), 1)
    image_s = _median_time(lambda: load_or_compute_features(dataset, cache / "i", progress=False, modalities=("image",)), 1)
    load_or_compute_features(dataset, cache / "t", progress=False)  # fill both modalities
    hit_s = _median_time(lambda: load_or_compute_features(dataset, cache / "t", progress=False), 5)
    first_s = text_s + image_s
    return {"items": dataset.num_items, "text-items-per-s": dataset.num_items / text_s,
            "image-items-per-s": dataset.num_items / image_s, "first-run-s": first_s, "cache-hit-s": hit_s,
            "speedup": first_s / hit_s, "target-speedup": 50}


def scale(work: Path, cache: Path) -> dict[str, Any]:
    from simulations.bench.memory import PeakMemory

    out: dict[str, Any] = {}
    for users, rounds in ((100, 3), (100, 6), (1000, 3)):
        data = _synth(work, users)
        with PeakMemory() as peak:
            _, wall = _run({"data-dir": str(data), "feature-cache": str(cache), "run-dir": str(work / "runs"),
                            "run-id": f"scale-{users}-{rounds}", "num-server-rounds": rounds,
                            "fraction-train": 0.1, "fraction-evaluate": 0.1})
        out[f"{users}-clients-{rounds}-rounds"] = {"wall-s": wall, "peak-gib": peak.bytes / GIB}
    small, large = out["100-clients-3-rounds"], out["1000-clients-3-rounds"]
    out["time-ratio-1000-vs-100"] = large["wall-s"] / small["wall-s"]
    out["clients-per-round-ratio"] = 10.0
    out["memory-ratio-6-vs-3-rounds"] = out["100-clients-6-rounds"]["peak-gib"] / small["peak-gib"]
    return out


def quality(work: Path) -> tuple[dict[str, Any], Path]:
    run_dir, wall = _run({"run-dir": str(work / "runs"), "run-id": "main-job"})
    summary = read_summary(run_dir)
    ndcg = summary["final"]["ndcg@10"]
    return {"ndcg@10": ndcg, "wall-minutes": wall / 60, "ndcg-per-minute": ndcg / (wall / 60)}, run_dir


MOVIELENS_PACK = Path(__file__).resolve().parents[3] / "shared" / "data" / "movielens-100k-mm"
QUICK_GRID = Path(__file__).resolve().parents[1] / "grids" / "movielens-100k-quick.toml"


def movielens_quick_grid(work: Path) -> dict[str, Any]:
    """The reduced MovieLens-100K grid (one seed, few rounds) on the team's pack, when present."""
    import csv

    from simulations.studies.experiment import run_experiment

    pack = Path(os.environ.get("FEDMMREC_MOVIELENS", MOVIELENS_PACK))
    if not (pack / "items.csv").is_file():
        print(f"fedmmrec bench: skipping movielens: no pack at {pack} (set FEDMMREC_MOVIELENS)", flush=True)
        return {"skipped": f"no MovieLens-100K pack at {pack}"}
    started = time.time()
    out = run_experiment(QUICK_GRID, base={"data-dir": str(pack)}, out_dir=work / "experiments")
    rows = list(csv.DictReader((out / "results.csv").open(encoding="utf-8")))
    figures: dict[str, Any] = {"grid-minutes": (time.time() - started) / 60}
    for row in rows:
        figures[row["setting"]] = {m: float(row[m]) for m in ("ndcg@10", "hr@10-warm", "rank-percentile-cold")}
    return figures


def online_latency(work: Path, cache: Path, events: int = 200, runs: dict[str, Path] | None = None) -> dict[str, Any]:
    """p50 / p99 milliseconds of ``observe`` + ``top(10)`` on exports of a user-level run and of
    an item-tower run of the default data, each new interaction an item the user had not seen;
    beside them the same percentiles of ``top(10)`` alone (the floor). ``runs``: finished run
    directories by kind (``user-level``, ``item-tower``) to export instead of running them."""
    import numpy as np

    from client.online import OnlineUser
    from client.exports import load_export
    from server.export import export_run
    from shared.config import from_saved
    from shared.data import load_dataset, split_for
    from shared.run_directory import RunDirectory
    from simulations.engines.simulate import simulate

    out: dict[str, Any] = {}
    for kind, privacy in (("user-level", "user"), ("item-tower", "none")):
        run_dir = runs[kind] if runs else simulate({"privacy": privacy, "num-server-rounds": 3, "feature-cache": str(cache),
                                                    "run-dir": str(work / "online-runs"), "run-id": kind})
        export = load_export(export_run(run_dir, work / f"online-{kind}"))  # verified once, not per event
        saved = RunDirectory.open(run_dir).read_config()
        config = from_saved(saved)
        dataset = load_dataset(config.data.data_dir)
        split = split_for(dataset, config)
        rng = np.random.default_rng(0)
        update, alone = [], []
        for event in range(events):
            k = event % len(split.users)
            user = OnlineUser(export, [dataset.item_ids[i] for i in split.train_items[k]])
            new = dataset.item_ids[int(rng.choice(np.setdiff1d(np.arange(dataset.num_items), split.train_items[k])))]
            started = time.perf_counter()
            user.top(10)
            alone.append(time.perf_counter() - started)
            started = time.perf_counter()
            user.observe(new)
            user.top(10)
            update.append(time.perf_counter() - started)
        for name, times in (("update-and-top10", update), ("top10-alone", alone)):
            ms = np.asarray(times) * 1000
            out[f"{kind}-{name}-ms-p50"] = float(np.percentile(ms, 50))
            out[f"{kind}-{name}-ms-p99"] = float(np.percentile(ms, 99))
    return out


MOVIELENS_RELEASES = (1682, 180_300, 15)  # popularity, co-occurrence over 600 items, selection


def secure_device_cost(devices: int = 943, dimensions: tuple[int, ...] = MOVIELENS_RELEASES) -> dict[str, Any]:
    """One device's CPU seconds and bytes sent over the whole secure-sum protocol (signed keys,
    shares, and each release's masked input, survivor-set signature and unmasking, with the
    minimum of the other devices' signatures verified) at ``devices`` devices, beside what the
    same device sends under the central mechanism (its statistics as float32). The device and
    its 32 neighbours run in this process; the statistic itself (the same work in both
    mechanisms) is not timed. Caches are cleared first: a device draws its own sketch matrix."""
    import numpy as np

    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    from shared.config import resolve
    from shared.privacy.spend_signature import public_pem, sign_record
    from shared.secure_sum import identity, masks
    from shared.secure_sum.session import DeviceSession
    from shared.secure_sum.plan import participant_graph
    from shared.releases import secure_plan

    run = "bench"
    plan = secure_plan(resolve(None, {"privacy": "user", "user-noise": "distributed"}), devices, list(dimensions))
    ids = [ed25519.Ed25519PrivateKey.generate() for _ in range(devices)]
    roster = identity.Roster(frozenset(identity.public_hex(k) for k in ids), seed="00" * 32)
    participants = {i: identity.public_hex(k) for i, k in enumerate(ids)}
    graph = participant_graph(roster.graph_seed(run), participants, plan.neighbours, roster)
    sessions = {i: DeviceSession(index=i, devices=devices, run=run) for i in range(devices)}
    publics = {i: s.public_keys(len(plan.releases)) for i, s in sessions.items()}
    bundles = {i: identity.sign(ids[i], identity.key_bundle_message(run, i, *publics[i])) for i in range(devices)}

    def forwarded(them: list[int]):
        return ([publics[v][0] for v in them], [publics[v][1] for v in them], [identity.public_hex(ids[v]) for v in them],
                [bundles[v] for v in them])

    masks.sketch_matrix.cache_clear()
    me, key = sessions[0], ec.generate_private_key(ec.SECP384R1())
    started = time.process_time()
    mask_public, channel_public = me.public_keys(len(plan.releases))
    signed_keys = identity.sign(ids[0], identity.key_bundle_message(run, 0, mask_public, channel_public))
    key_bytes = len(mask_public) + len(channel_public) + len(signed_keys) + 64  # and the identity key, in hex
    mine = me.share_keys(plan, graph[0], *forwarded(graph[0]), roster, identity.public_hex(ids[0]), participants)
    share_bytes = sum(len(c) for c in mine)
    cpu = time.process_time() - started
    for v in graph[0]:  # the neighbours' shares for device 0, as the server forwards them
        theirs = sessions[v].share_keys(plan, graph[v], *forwarded(graph[v]), roster, identity.public_hex(ids[v]), participants)
        me.held.append(theirs[graph[v].index(0)])
    rng = np.random.default_rng(0)
    everyone = list(range(devices))
    signers = [identity.public_hex(k) for k in ids]
    digest = identity.participants_digest(participants)
    committed = "ab" * 32  # the masked sum's digest the server commits to (its value does not change the work)
    confirmations = {r.name: [identity.sign(k, identity.survivors_message(run, r.name, everyone, digest, committed))
                              for k in ids[: plan.min_survivors]]
                     for r in plan.releases}  # the others', made apart from device 0's time
    masked_bytes = unmask_bytes = record_bytes = confirm_bytes = 0
    started = time.process_time()
    for release in plan.releases:
        statistic = rng.random(release.dimension)
        vector, record = me.masked_input(plan, release, everyone, statistic)
        masked_bytes += vector.nbytes
        signature = sign_record(key, record)
        record_bytes += len(json.dumps({**record, "signature": signature, "public-key": public_pem(key)}))
        confirm_bytes += sum(len(part) for part in me.confirm(plan, release.name, everyone, committed, ids[0], keep_sketch_matrix=False)) + 64
        seeds, keys = me.unmask(plan, release.name, everyone, [], signers[: plan.min_survivors], confirmations[release.name], roster)
        unmask_bytes += sum(len(v) for v in seeds.values()) + sum(len(v) for v in keys.values())
    cpu += time.process_time() - started
    sent = key_bytes + share_bytes + masked_bytes + record_bytes + confirm_bytes + unmask_bytes
    central = 4 * sum(dimensions)
    return {
        "devices": devices, "neighbours": plan.neighbours, "threshold": plan.threshold, "cpu-seconds-per-device": cpu,
        "bytes-sent-per-device": sent, "public-key-bytes": key_bytes, "encrypted-share-bytes": share_bytes,
        "masked-input-bytes": masked_bytes, "signed-record-bytes": record_bytes, "confirmation-bytes": confirm_bytes,
        "unmask-share-bytes": unmask_bytes, "central-bytes-sent-per-device": central, "bytes-ratio-to-central": sent / central,
    }


BENCH_PARTS = ("quality", "communication", "features", "dp", "clients", "scale", "movielens", "online", "secure")
OPT_IN_PARTS = ("secure-scale",)  # run only when named: tens of minutes


def run_bench(out: str | Path = "bench.json", repeats: int = 3, parts: tuple[str, ...] = ()) -> dict[str, Any]:
    unknown = [p for p in parts if p not in BENCH_PARTS + OPT_IN_PARTS]
    if unknown:
        raise ValueError(f"unknown bench part(s) {', '.join(unknown)}; choose from {', '.join(BENCH_PARTS + OPT_IN_PARTS)}")
    parts = parts or BENCH_PARTS
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fedmmrec-bench-") as tmp:
        work = Path(tmp)
        cache = work / "feature-cache"
        main_run = None
        if "quality" in parts or "communication" in parts:
            results["quality"], main_run = quality(work)
        if "communication" in parts:
            results["communication"] = communication(main_run)
        if "features" in parts:
            results["features"] = feature_extraction(work)
        if "dp" in parts:
            results["dp-overhead"] = dp_overhead(repeats)
        if "clients" in parts:
            results["client-update"] = client_update_cost(work, cache, repeats)
        if "scale" in parts:
            results["scale"] = scale(work, cache)
        if "movielens" in parts:
            results["movielens-quick-grid"] = movielens_quick_grid(work)
        if "online" in parts:
            results["online-response"] = online_latency(work, cache)
        if "secure" in parts:
            results["secure-sum-device"] = secure_device_cost()
        if "secure-scale" in parts:
            from simulations.bench.secure_scale import secure_scale

            results["secure-scale"] = secure_scale(work, cache)
    Path(out).write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")
    print(format_table(results))
    print(f"fedmmrec: wrote {out}")
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = ["| measure | figure |", "| --- | --- |"]
    for section, figures in results.items():
        for key, value in figures.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v:.3g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in value.items())
            elif isinstance(value, float):
                value = f"{value:.4g}"
            lines.append(f"| {section}: {key} | {value} |")
    return "\n".join(lines)
