"""The audit's ``noise-conformance`` check: was the noise the ledger claims really in what the
server received (device DP-SGD) or released (DP-FedAvg)?

Each device signs the L2 norm of the update it sends (reply minus the model it received) with
its spend; the server measures the same norm of what it received (the two must be equal) and
the L2 norm of every aggregate it releases, with their number of coordinates d. What the mechanism
claims bounds that norm from both sides:

- the noise part is Gaussian with a known per-coordinate std s, so its norm lies in
  ``[s sqrt(chi2_lo(d)), s sqrt(chi2_hi(d))]`` but for a false-alarm rate we choose;
- the signal part is bounded by clipping: device DP-SGD, item-tower update after ``steps``
  steps of SGD at ``item-lr``: ``item-lr * (C * item-clip-fraction) * K / B``, where K is the
  number of examples Poisson sampling drew in all steps (bounded by a Bernstein tail bound on
  Binomial(n * steps, q)) and B the expected batch; DP-FedAvg: ``updates * C_server / (q N)``.

By the triangle inequality the measured norm lies in ``[noise_lo - signal_max, noise_hi +
signal_max]``. The per-coordinate noise std: device, ``item-lr * sigma * C * sqrt(steps) / B``
(one Gaussian draw of std ``sigma * C`` per coordinate per step, the sum divided by B);
DP-FedAvg, ``server-noise-std / (q N)``. The false-alarm rate is 1e-6 per run, split
(Bonferroni) over every bound tested. Noise switched off or cut far below the claim fails; the
report prints, per mode, the largest noise cut an entry would still pass.

The measured norms are the server's word. For DP-FedAvg the checkpoints hold the evidence
itself: the final model minus the initial one is the sum of the rounds' releases, whose noises
are independent, so its norm lies in ``[s_T sqrt(chi2_lo(d)) - signal, s_T sqrt(chi2_hi(d)) +
signal]`` with ``s_T`` the rounds' per-coordinate stds added in quadrature and ``signal`` the
rounds' clipped sums added up (triangle inequality: later rounds' updates depend on earlier
noise). A server that cuts the noise and records full-size norms fails there, when the rounds'
clipped signal is small beside their noise (the report gives the noise cut it would show).

Device DP-SGD aggregated by FedAvg (``privacy = local``, ``strategy = fedavg``) is held the same
way: each round's model change is the counted updates averaged with weights ``num-examples``, so
the final model minus the initial one carries noise of per-coordinate variance
``sum_rounds sum_i w_i^2 s_i^2`` (the devices' draws are independent) and a signal of norm at most
``sum_rounds sum_i w_i signal_i``. A server that rescales the devices' signed norms (and re-signs
them with keys it holds) to fit the claim is caught by its own checkpoints. Other strategies
(FedAdam's moments, the median and trimmed means) are not linear in the updates: not compared.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from server.audit.release_model import chi_square_interval
from shared.privacy.ledger import Entry

CHECK = "noise-conformance"
FALSE_ALARM_PER_RUN = 1e-6


def binomial_upper(trials: int, p: float, tail: float) -> float:
    """A K with P(Binomial(trials, p) >= K) <= tail (Bernstein: mean + t, t from
    ``tail = exp(-t^2 / (2 (var + t / 3)))``, valid for every trial count)."""
    mean, var = trials * p, trials * p * (1 - p)
    log_term = math.log(1.0 / tail)
    t = log_term / 3 + math.sqrt((log_term / 3) ** 2 + 2 * var * log_term)
    return min(float(trials), mean + t)


def _interval(noise_std: float, dimension: int, signal_max: float, tail: float) -> tuple[float, float, float]:
    """(lowest, highest norm allowed, the noise cut that still passes) for one measurement."""
    low, high = chi_square_interval(dimension, tail)
    noise_low, noise_high = noise_std * math.sqrt(low), noise_std * math.sqrt(high)
    expected = noise_std * math.sqrt(dimension)
    passing_cut = max(0.0, noise_low - signal_max) / expected  # noise below this x claimed cannot pass ...
    return noise_low - signal_max, noise_high + signal_max, passing_cut


def _check(report, where: str, norm: float, noise_std: float, signal_max: float, body: dict, tail: float, claim: str) -> float:
    """Fail when ``norm`` is outside what the claim allows; return the noise cut that passes."""
    dimension = int(body["update-dimension"])
    low, high, cut = _interval(noise_std, dimension, signal_max, tail)
    if not low <= norm <= high:
        report.fail(
            CHECK,
            f"{where} {norm:.4g} outside [{max(low, 0):.4g}, {high:.4g}] for {claim} "
            f"(noise alone {noise_std * math.sqrt(dimension):.4g})",
        )
    return cut


def audit_conformance(report, header: dict[str, Any], entries: list[Entry], run=None) -> None:
    config = header.get("config", {})
    trained = [
        e for e in entries
        if e.kind == "client-round" and float(e.body["noise-multiplier"]) > 0
        and int(e.body["steps"]) > 0 and not e.body.get("declined") and not e.body.get("rejected")
    ]
    devices = [e for e in trained if float(e.body.get("update-norm", -1.0)) >= 0 and "update-dimension" in e.body]
    for e in trained:
        if e not in devices:
            report.fail(CHECK, f"client {e.body['client']} round {e.round}: a counted DP-SGD update without its norm or size: its noise cannot be checked")
    servers = [e for e in entries if e.kind == "server-round" and e.body.get("server-dp")]
    for e in servers:
        if "update-dimension" not in e.body or "released-update-norm" not in e.body:
            report.fail(CHECK, f"server round {e.round}: a DP-FedAvg release without its measured norm or size")
    servers = [e for e in servers if "update-dimension" in e.body and "released-update-norm" in e.body]
    initial, final, distance_rounds = _checkpoints(report, run, servers)
    _check_counts(report, servers, entries)
    local = _local_checkpoints(report, run, config, header, entries, devices) if not servers else None
    tests = 2 * (len(devices) + len(servers)) + (2 if final is not None else 0) + (2 if local is not None else 0)
    if not tests:
        report.figures["noise conformance"] = "not applicable: no DP-SGD update or DP-FedAvg release with measured norms"
        return
    tail = FALSE_ALARM_PER_RUN / tests
    device_cuts, server_cuts = [], []
    for entry in devices:
        body = entry.body
        noise_std, signal_max = device_bounds(body, config, tail)
        where = f"client {body['client']} round {entry.round}: update norm"
        claim = f"noise multiplier {body['noise-multiplier']}"
        measured = body.get("measured-update-norm")
        if measured is None or not math.isclose(float(measured), float(body["update-norm"]), rel_tol=1e-9, abs_tol=1e-12):
            report.fail(CHECK, f"{where} {float(body['update-norm']):.6g} (the device's word) but the server measured {measured} of the update it received")
        device_cuts.append(_check(report, where, float(body["update-norm"]), noise_std, signal_max, body, tail, claim))
    for entry in servers:
        body = entry.body
        denominator = float(body["denominator"])
        noise_std = float(body["server-noise-std"]) / denominator
        signal_max = int(body["updates-aggregated"]) * float(body["server-clip-norm"]) / denominator
        where, claim = f"server round {entry.round}: released update norm", f"server noise std {body['server-noise-std']}"
        server_cuts.append(_check(report, where, float(body["released-update-norm"]), noise_std, signal_max, body, tail, claim))
    model_cut = None
    if final is not None:
        model_cut = _check_model_distance(report, distance_rounds, initial, final, tail)
    if local is not None:
        model_cut = _check_local_distance(report, config, *local, tail)
    report.ok(CHECK)
    power = []
    if device_cuts:
        power.append(f"device DP-SGD ({len(devices)} updates): an update fails when its noise is below "
                     f"{statistics.median(device_cuts):.2f}x the claim (median entry)")
    if server_cuts:
        power.append(f"DP-FedAvg ({len(servers)} releases): below {statistics.median(server_cuts):.2f}x (median round)")
    if model_cut is not None:
        power.append(f"final minus initial model: below {model_cut:.2f}x")
    elif devices and not servers:
        power.append("final minus initial model: not compared (" + report.figures.pop("local drift", "no checkpoints") + ")")
    report.figures["noise conformance"] = "; ".join(power) + f"; false alarm {FALSE_ALARM_PER_RUN:g} per run"


def device_bounds(body: dict[str, Any], config: dict[str, Any], tail: float) -> tuple[float, float]:
    """(per-coordinate noise std, largest signal norm) of one device's DP-SGD update, from its
    signed spend and the run's item learning rate and clip fraction."""
    n, q, steps = int(body["num-examples"]), float(body["sample-rate"]), int(body["steps"])
    expected_batch = max(1, int(n * q))
    lr, clip = float(config["item-lr"]), float(body["clip-norm"])
    noise_std = lr * float(body["noise-multiplier"]) * clip * math.sqrt(steps) / expected_batch
    drawn = binomial_upper(n * steps, q, tail)
    return noise_std, lr * clip * float(config["item-clip-fraction"]) * drawn / expected_batch


def _local_checkpoints(report, run, config: dict[str, Any], header: dict[str, Any], entries: list[Entry], devices: list[Entry]):
    """(initial, final, the counted device entries by round) of a device-DP-SGD run aggregated by
    FedAvg, for the drift check; None where it does not apply (the reason in the figures)."""
    if run is None or not devices:
        return None
    if str(config.get("strategy", "fedavg")) != "fedavg":
        report.figures["local drift"] = f"strategy {config.get('strategy')} is not a weighted mean of the updates"
        return None
    initial_path, final_path = run.round_checkpoint(0), run.final_checkpoint()
    if final_path is None or not initial_path.is_file():
        report.fail(CHECK, f"{run.checkpoints}: initial.pt or the final checkpoint is missing: the trained model cannot be held to the devices' claimed noise")
        return None
    from server.mechanisms.dp_fedavg.noise import flatten

    final_state = run.load_checkpoint(final_path)
    initial, final = flatten(run.load_checkpoint(initial_path)["item_tower"]), flatten(final_state["item_tower"])
    if initial.size != final.size:
        report.flags.append("noise-conformance: the model grew during the run (continued on new data): final minus initial not compared")
        return None
    last = int(final_state.get("meta", {}).get("round", max(e.round for e in devices)))
    skipped = {e.round for e in entries if e.kind == "server-round" and e.body.get("round-skipped")}
    rounds: dict[int, list[Entry]] = {}
    for e in entries:
        if e.kind == "client-round" and not e.body.get("declined") and not e.body.get("rejected") and e.round <= last and e.round not in skipped:
            rounds.setdefault(e.round, []).append(e)
    return initial.astype(np.float64), final.astype(np.float64), rounds


def _check_local_distance(report, config: dict[str, Any], initial, final, rounds: dict[int, list[Entry]], tail: float) -> float:
    """The final model's distance from the initial one against the devices' claimed noise,
    averaged as FedAvg averages it (weights ``num-examples``)."""
    variance, signal = 0.0, 0.0
    for counted in rounds.values():
        total = float(sum(int(e.body["num-examples"]) for e in counted))
        for e in counted:
            if float(e.body.get("noise-multiplier", 0.0)) <= 0 or int(e.body.get("steps", 0)) <= 0:
                continue
            weight = int(e.body["num-examples"]) / total
            noise_std, signal_max = device_bounds(e.body, config, tail)
            variance += (weight * noise_std) ** 2
            signal += weight * signal_max
    where = f"final minus initial model ({len(rounds)} FedAvg rounds of device DP-SGD): norm"
    return _check(report, where, float(np.linalg.norm(final - initial)), math.sqrt(variance), signal,
                  {"update-dimension": final.size}, tail, "the devices' claimed noise, averaged")


def _checkpoints(report, run, servers: list[Entry]):
    """(initial, final, rounds) flat models of a DP-FedAvg run and the rounds between them;
    (None, None, []) when there is nothing to compare. A missing checkpoint of a run with DP
    rounds fails (it is the evidence); a model that grew (a run continued on new data) is
    flagged, its distance not comparable coordinate by coordinate."""
    if run is None or not servers:
        return None, None, []
    initial_path, final_path = run.round_checkpoint(0), run.final_checkpoint()
    if final_path is None or not initial_path.is_file():
        report.fail(CHECK, f"{run.checkpoints}: initial.pt or the final checkpoint is missing: the released model cannot be held to the claimed noise")
        return None, None, []
    from server.mechanisms.dp_fedavg.noise import flatten

    final_state = run.load_checkpoint(final_path)
    last = int(final_state.get("meta", {}).get("round", servers[-1].round))  # latest.pt may lag the ledger by a round
    rounds = [e for e in servers if e.round <= last]
    initial, final = (flatten(run.load_checkpoint(initial_path)["item_tower"]), flatten(final_state["item_tower"]))
    if initial.size != final.size:
        report.flags.append("noise-conformance: the model grew during the run (continued on new data): final minus initial not compared")
        return None, None, []
    return initial.astype(np.float64), final.astype(np.float64), rounds


def _check_model_distance(report, servers: list[Entry], initial, final, tail: float) -> float:
    """The final model's distance from the initial one against the rounds' claimed noise."""
    variance = sum((float(e.body["server-noise-std"]) / float(e.body["denominator"])) ** 2 for e in servers)
    signal = sum(int(e.body["updates-aggregated"]) * float(e.body["server-clip-norm"]) / float(e.body["denominator"]) for e in servers)
    body = {"update-dimension": final.size}
    where = f"final minus initial model ({len(servers)} DP-FedAvg rounds): norm"
    claim = "the rounds' claimed noise"
    return _check(report, where, float(np.linalg.norm(final - initial)), math.sqrt(variance), signal, body, tail, claim)


def _check_counts(report, servers: list[Entry], entries: list[Entry]) -> None:
    """Each round's ``updates-aggregated`` (the clipped signal the bounds allow for) is the
    round's counted device entries plus its canaries: a server that inflates it to widen the
    bounds fails."""
    counted: dict[int, int] = {}
    for e in entries:
        if e.kind == "client-round" and not e.body.get("declined") and not e.body.get("rejected"):
            counted[e.round] = counted.get(e.round, 0) + 1
    for e in servers:
        expected = counted.get(e.round, 0) + int(e.body.get("canaries-in-round", 0))
        if int(e.body["updates-aggregated"]) != expected:
            report.fail(CHECK, f"server round {e.round}: {e.body['updates-aggregated']} updates aggregated, but the ledger counts "
                               f"{counted.get(e.round, 0)} devices and {int(e.body.get('canaries-in-round', 0))} canaries")
