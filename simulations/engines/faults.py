"""A fault-injecting ClientApp for reliability studies: the real client, made to misbehave.

A fault spec lists faults and the simulated partitions that commit them, e.g.
``"nan:0 shape:1 missing:2 extra:3 crash:4 slow:5 flip:6,7 scale:8"``:

- ``nan``, ``shape``, ``missing``, ``extra``: a broken update (a NaN weight, a reshaped
  array, a dropped array, an added array);
- ``scale``: a poisoned update, the honest update boosted ``FAULT_SCALE`` times (a model
  replacement attack);
- ``flip``: a poisoned update, the honest update times ``-FAULT_SCALE``;
- ``crash``: the client raises during training (Flower returns an error reply);
- ``nonoise``, ``lownoise``, ``noclip``: a device whose DP-SGD lies (for the audit's
  conformance check): it adds no noise, a tenth of the noise, or does not clip (noise as
  claimed), on either engine, while its reply and the ledger claim the configured mechanism;
- ``noshare`` (``user-noise = distributed``): the device adds no Skellam share and signs what it
  did (a noise variance of 0): the audit's ``secure-shares`` check fails, naming it;
- ``dropshare``, ``dropinput``, ``dropconfirm``, ``dropunmask``: the device drops out of secure
  aggregation at that stage (after sending its keys; after sharing them; after sending its masked
  input, before signing the survivor set and sketching it, so the server records its masked
  vector whole; after signing);
- ``slow``: a straggler: the client answers only after the server has closed the round without
  it (with a ``round-timeout``), or after ``FAULT_SLOW_S`` seconds (without one).

It is test machinery, so it is not in the run config nor in any message: the simulation layer
builds this app around the real one (:func:`fault_app`) when ``fedmmrec run --faults SPEC`` or
:func:`simulations.engines.simulate.simulate` (``faults=``) is given a spec, and the spec, the run
directory and the round timeout a straggler waits on are bound into it here. Deployments never
use it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from client.client_app import evaluate as honest_evaluate
from client.client_app import train as honest_train
from client.catalog_content import receive_catalog
from client.mods import private_state_guard
from shared.faults import parse_faults
from shared.messages import ROUND_KEY, SECURE_CONFIRM, SECURE_INPUT, SECURE_SHARE, SECURE_UNMASK, TASK_KEY
from shared.run_directory import RunDirectory

FAULT_SCALE = 1000.0
FAULT_SLOW_S = 20.0



def _broken(kind: str, arrays: ArrayRecord, sent: ArrayRecord) -> ArrayRecord:
    """The reply's arrays with fault ``kind`` applied (``sent``: the global model it got)."""
    state = {k: v.numpy().copy() for k, v in arrays.items()}
    first = sorted(state)[0]
    if kind == "nan":
        state[first].flat[0] = np.nan
    elif kind == "shape":
        state[first] = state[first].reshape(-1)[:-1]
    elif kind == "missing":
        del state[first]
    elif kind == "extra":
        state["injected.weight"] = np.zeros(3, dtype=np.float32)
    elif kind in ("scale", "flip"):
        factor = FAULT_SCALE if kind == "scale" else -FAULT_SCALE
        state = {k: (sent[k].numpy() + factor * (v - sent[k].numpy())).astype(v.dtype) for k, v in state.items()}
    return ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})


def _wait_for_round_to_close(run_path: Path, round_timeout: float, this_round: int) -> None:
    """A straggler that misses its round whatever the machine's load: it answers only once the
    server has closed the round without it (the round's line is in ``metrics.jsonl``), or after
    ``FAULT_SLOW_S`` when the run has no round timeout. An event, not a race against a clock."""
    metrics = RunDirectory.open(run_path).metrics_path
    deadline = time.time() + (FAULT_SLOW_S if round_timeout <= 0 else 3600.0)
    while time.time() < deadline:
        if metrics.is_file() and any(
            json.loads(line).get("round") == this_round for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()
        ):
            return
        time.sleep(0.2)


LYING_MECHANISMS = {"nonoise": (0.0, 1.0), "lownoise": (0.1, 1.0), "noclip": (1e-6, 1e6)}  # (noise x, clip x)


def _lying(engine, noise_factor: float, clip_factor: float):
    """``engine`` (a DP-SGD step loop of shared.training) run with the noise multiplier times
    ``noise_factor`` and the clip norms times ``clip_factor``, returning the history the
    configured mechanism would have had: what the device then claims."""

    def run(model, optimizer, positives, loss_of, config, clip_norms, history, generator, mode):
        from dataclasses import replace

        from shared.privacy.accounting import merged
        from shared.training import planned_round

        quiet = replace(config, noise_multiplier=config.noise_multiplier * noise_factor)
        losses, _ = engine(model, optimizer, positives, loss_of, quiet, [c * clip_factor for c in clip_norms], history, generator, mode)
        rate, steps = planned_round(len(positives), config)
        return losses, merged(list(history) + [(config.noise_multiplier, rate, steps)])

    return run


SECURE_DROPS = {"dropshare": SECURE_SHARE, "dropinput": SECURE_INPUT, "dropconfirm": SECURE_CONFIRM, "dropunmask": SECURE_UNMASK}


def fault_app(spec: str, run_path: Path, round_timeout: float) -> ClientApp:
    """The real ClientApp, with the partitions ``spec`` names misbehaving; ``run_path``: the run
    directory whose metrics tell a straggler its round closed; ``round_timeout``: the run's."""
    faults = parse_faults(spec)
    app = ClientApp(mods=[private_state_guard, receive_catalog])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        kind = faults.get(int(context.node_config["partition-id"]))
        return _misbehaving_train(kind, msg, context, run_path, round_timeout)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return honest_evaluate(msg, context)

    return app


def _misbehaving_train(kind: str | None, msg: Message, context: Context, run_path: Path, round_timeout: float) -> Message:
    """The honest device's train handler, made to commit fault ``kind`` (None: honest)."""
    if kind in SECURE_DROPS and msg.content["config"].get(TASK_KEY) == SECURE_DROPS[kind]:
        raise RuntimeError(f"injected fault: device dropped out at {SECURE_DROPS[kind]}")
    if kind == "noshare":  # the device masks its statistic without its noise share, and signs the full share
        from shared.secure_sum.session import DeviceSession

        real_input = DeviceSession.masked_input
        DeviceSession.masked_input = lambda self, *args, **kwargs: real_input(self, *args, **{**kwargs, "add_noise": False})
        try:
            return honest_train(msg, context)
        finally:
            DeviceSession.masked_input = real_input
    if kind in LYING_MECHANISMS:
        import shared.training as training

        real = (training._train_fast, training._train_opacus)
        training._train_fast, training._train_opacus = (_lying(engine, *LYING_MECHANISMS[kind]) for engine in real)
        try:
            return honest_train(msg, context)
        finally:
            training._train_fast, training._train_opacus = real
    if kind == "crash":
        raise RuntimeError("injected fault: client crashed during training")
    if kind == "slow":
        _wait_for_round_to_close(run_path, round_timeout, int(msg.content["config"][ROUND_KEY]))
    reply = honest_train(msg, context)
    if kind and kind != "slow" and "arrays" in reply.content.array_records:
        reply.content["arrays"] = _broken(kind, reply.content["arrays"], msg.content["arrays"])
    return reply

