"""Every privacy mode goes through one interface: a new mechanism is one class and one registry
line, and the run loop, the ledger header, the summary and the audit find it there."""

from __future__ import annotations

from typing import Any

import pytest

from server.audit import audit
from server.mechanisms import MECHANISMS, mechanism_class, mechanism_for, mechanism_of_ledger
from server.mechanisms.releases import ReleasesMechanism
from server.mechanisms.rounds import RoundsMechanism
from shared.config import resolve
from shared.releases import planned_releases
from shared.run_directory import read_ledger, read_metrics
from simulations.engines.simulate import read_summary, simulate

MODES = {
    "secure-skellam-releases": {"privacy": "user", "user-noise": "distributed"},
    "gaussian-releases": {"privacy": "user", "user-noise": "central"},
    "dp-sgd": {"privacy": "local"},
    "dp-fedavg": {"privacy": "central"},
    "dp-sgd+dp-fedavg": {"privacy": "both"},
    "none": {"privacy": "none"},
}


@pytest.mark.parametrize("name", sorted(MODES))
def test_each_mode_has_one_mechanism_that_its_own_ledger_header_names_again(name):
    config = resolve(None, MODES[name])
    mechanism = mechanism_for(config)
    assert mechanism.name == name and type(mechanism) is MECHANISMS[name]
    header = mechanism.header(population=100, canary_commitment=None)
    assert header["privacy-mode"] == MODES[name]["privacy"]
    assert header["privacy-unit"] == mechanism.unit and header["neighbouring-relation"] == mechanism.neighbours
    assert header["server-dp"] is mechanism.central_dp
    # a device's training reads DP-SGD from the registry: the mechanism's word, not a second list of modes
    from shared.training import train_config

    assert train_config(config).dp is mechanism.local_dp
    assert mechanism_of_ledger(header) is MECHANISMS[name]


def test_the_summary_says_not_applicable_for_a_claim_a_mechanism_does_not_make():
    from server.book import RoundBook

    releases = mechanism_for(resolve(None, {"privacy": "user", "user-noise": "central"}))
    privacy = releases.summary_privacy(RoundBook(), [{"clients-trained": 7}], 8.0)
    assert privacy["epsilon-max"] == "not applicable" and privacy["user-level-epsilon"] == 8.0
    assert privacy["clients-trained"] == 7 and privacy["mechanism"] == "gaussian-releases"
    assert releases.privacy_line(privacy) == "user-level epsilon 8.00 at delta 1e-05"
    none = mechanism_for(resolve(None, {"privacy": "none"}))
    assert none.privacy_line(none.summary_privacy(RoundBook(), [], None)) == "NOT PRIVATE"


class ClippedOnly(RoundsMechanism):
    """A tiny mechanism defined only here: rounds of plain training that state their own unit,
    add their own header field and run their own audit check."""

    name = "test-clipped-only"
    mode = "test-clipped"
    unit = "none: a test mechanism (NOT PRIVATE)"
    neighbours = "none"
    trust = "nobody: this test mechanism protects nothing"
    warning = "privacy = test-clipped: a test mechanism, NOT PRIVATE"
    check_limits = {"test-mechanism-rounds": ("the header's round count is the ledger's", "whether any round was private")}

    def header_fields(self, canary_commitment: str | None) -> dict[str, Any]:
        return {"test-mechanism": f"{self.config.federation.num_server_rounds} rounds, no noise"}

    @classmethod
    def audit(cls, report, run, header, entries, delta, gaps, node_keys=None) -> None:
        rounds = [e for e in entries if e.kind == "server-round"]
        if header.get("test-mechanism") != f"{len(rounds)} rounds, no noise":
            report.fail("test-mechanism-rounds", f"header says {header.get('test-mechanism')!r}, ledger has {len(rounds)} rounds")
        report.ok("test-mechanism-rounds")


def test_a_new_mechanism_is_one_class_and_one_registry_line(monkeypatch, small_dataset, feature_cache, tmp_path, capsys):
    with pytest.raises(ValueError, match="privacy 'test-clipped': choose one of user, local, central, both, none"):
        mechanism_class({"privacy": "test-clipped"})
    monkeypatch.setitem(MECHANISMS, ClippedOnly.name, ClippedOnly)  # the registry line
    run_dir = simulate(
        {
            "data-dir": str(small_dataset), "feature-cache": str(feature_cache), "run-dir": str(tmp_path),
            "run-id": "new-mechanism", "privacy": "test-clipped", "num-server-rounds": 2, "fraction-train": 0.5,
        },
        engine="in-process",
    )
    out = capsys.readouterr().out
    assert "fedmmrec: WARNING: privacy = test-clipped: a test mechanism, NOT PRIVATE" in out
    assert "; NOT PRIVATE;" in [line for line in out.splitlines() if line.startswith("fedmmrec: final")][0]
    header = read_ledger(run_dir)[0].body
    assert header["test-mechanism"] == "2 rounds, no noise" and header["privacy-unit"] == ClippedOnly.unit
    assert [row["round"] for row in read_metrics(run_dir)] == [1, 2]
    summary = read_summary(run_dir)
    assert summary["privacy"]["mechanism"] == "test-clipped-only" and summary["privacy"]["epsilon-max"] == "not applicable"
    report = audit(run_dir)
    assert report.passed and report.failures["test-mechanism-rounds"] == [] and report.failures["mechanism-known"] == []
    assert report.guarantee["whom you must trust"] == "nobody: this test mechanism protects nothing"
    from server.audit.report import to_markdown

    assert "| test-mechanism-rounds | pass | the header's round count is the ledger's | whether any round was private |" in to_markdown(report)
    # The audit finds the mechanism only through the registry: without its line, nothing to check against.
    monkeypatch.delitem(MECHANISMS, ClippedOnly.name)
    unknown = audit(run_dir)
    assert not unknown.passed
    assert unknown.failures["mechanism-known"] == [
        "the ledger header names no known mechanism: privacy 'test-clipped': choose one of user, local, central, both, none"
    ]


def test_ledgers_written_before_a_setting_existed_keep_their_mechanism():
    from server.mechanisms import GaussianReleases

    assert mechanism_of_ledger({"config": {"privacy": "user"}}) is GaussianReleases  # before user-noise: the server's noise
    assert mechanism_of_ledger({"privacy-unit": "example (one interaction) on each device"}) is MECHANISMS["dp-sgd"]


# --- a mechanism with device behaviour of its own: one class (its server side, its device's
# handler, its audit check) and one registry line; nothing else in the project changes ----------

NOISY_TASK = "test-noised-statistic"
DEVICE_CALLS: list[str] = []


def noised_statistic(msg, context, request):
    """The example's device side: the bounded statistic of the release the message names, with
    the whole Gaussian noise added on the device (local DP: the server is not trusted)."""
    import numpy as np
    from flwr.app import Array, ArrayRecord

    from client.request import request_data
    from client.state import pseudonym
    from client.statistics import contribution
    from server.mechanisms.gaussian_releases import noise_stds
    from shared.messages import CONTRIBUTION_KEY, contribution_reply
    from shared.privacy.gaussian import clip

    name = str(request.sent["release"])
    DEVICE_CALLS.append(name)
    data = request_data(context, request)
    std = noise_stds(request.settings)[[r.name for r in planned_releases(request.settings)].index(name)]
    vector = clip(contribution(msg, data, name, dict(context.node_config)), 1.0)[0]
    noised = (vector + np.random.default_rng().normal(0.0, std, vector.shape)).astype(np.float32)
    return contribution_reply(msg, ArrayRecord({CONTRIBUTION_KEY: Array(noised)}), len(data.train_items), noised.nbytes, pseudonym(context), name)


class DeviceNoisedReleaser:
    """The example's server side: ask every device for its noised statistic and sum."""

    def __init__(self, grid, nodes, config) -> None:
        from server.mechanisms.gaussian_releases import noise_stds

        self.grid, self.nodes, self.config, self.stds = grid, nodes, config, noise_stds(config)

    def start(self) -> None:
        pass

    def release(self, server_round, name, dimension, arrays):
        import numpy as np

        from server.mechanisms.releases import Released
        from server.replies import ok_replies, send_and_collect
        from shared.messages import CONTRIBUTION_KEY, TASK_KEY, client_id, server_messages, update_of
        from shared.privacy.accounting import gaussian_epsilon

        settings = {**self.config.device_settings(), TASK_KEY: NOISY_TASK, "release": name}
        replies = ok_replies(send_and_collect(self.grid, server_messages(self.nodes, arrays, settings, server_round)))
        total, who = np.zeros(dimension), [client_id(reply) for reply in replies]
        for reply in replies:
            total += update_of(reply)[CONTRIBUTION_KEY].numpy().astype(np.float64)
        std = self.stds[server_round - 1]
        epsilon = gaussian_epsilon(self.stds[:server_round], float(self.config.privacy.delta))
        body = {"release": name, "dimension": dimension, "device-noise-std": std, "contributors": who, "user-level-epsilon": epsilon}
        return Released(total, who, epsilon, std * np.sqrt(len(who)), body)

    def finish(self, run_dir) -> None:
        pass


class DeviceNoisedReleases(ReleasesMechanism):
    name = "test-device-noised-releases"
    mode = "test-device-noise"
    unit = "user (all of one device's interactions), at each device"
    trust = "nobody: each device adds the whole noise to its statistic before it leaves (local DP)"
    check_limits = {"test-device-noise": ("each release's device noise is the one the budget gives", "whether the devices added it")}

    @classmethod
    def train_tasks(cls) -> dict[str, Any]:
        return {NOISY_TASK: noised_statistic}

    def releaser(self, grid, nodes, dimensions, ledger, log):
        return DeviceNoisedReleaser(grid, nodes, self.config)

    @classmethod
    def audit(cls, report, run, header, entries, delta, gaps, node_keys=None) -> None:
        from server.mechanisms.gaussian_releases import noise_stds
        from shared.config import from_saved

        wanted = noise_stds(from_saved(header["config"]))
        for entry in (e for e in entries if e.kind == "release"):
            std = float(entry.body["device-noise-std"])
            if std != wanted[entry.round - 1]:
                report.fail("test-device-noise", f"release {entry.round}: device noise std {std:.6g}, the budget gives {wanted[entry.round - 1]:.6g}")
        report.ok("test-device-noise")


def test_a_mechanism_with_its_own_device_side_is_one_class_and_one_registry_line(monkeypatch, small_dataset, feature_cache, tmp_path):
    from client.request import DeviceRequest
    from client.tasks import handler
    from shared.privacy.ledger import Ledger

    settings = {"privacy": "test-device-noise"}
    with pytest.raises(ValueError, match="privacy 'test-device-noise': choose one of"):
        mechanism_class(settings)
    monkeypatch.setitem(MECHANISMS, DeviceNoisedReleases.name, DeviceNoisedReleases)  # the registry line
    DEVICE_CALLS.clear()
    run_dir = simulate(
        {"data-dir": str(small_dataset), "feature-cache": str(feature_cache), "run-dir": str(tmp_path), "run-id": "device-noised", **settings},
        engine="in-process",
    )
    # every device answered every release through the mechanism's own device handler
    names = [r.name for r in planned_releases(resolve(None, settings))]
    assert sorted(DEVICE_CALLS) == sorted(names * 12)
    header = read_ledger(run_dir)[0].body
    assert header["privacy-unit"] == DeviceNoisedReleases.unit and header["privacy-mode"] == "test-device-noise"
    bodies = [e.body for e in read_ledger(run_dir) if e.kind == "release"]
    assert [b["release"] for b in bodies] == names and all(len(b["contributors"]) == 12 for b in bodies)
    summary = read_summary(run_dir)
    assert summary["privacy"]["mechanism"] == DeviceNoisedReleases.name and summary["final"]["clients-evaluated"] == 12
    report = audit(run_dir)
    assert report.failures["test-device-noise"] == [] and report.failures["mechanism-known"] == []
    # its audit check fails through the real audit when the ledger claims a smaller device noise
    ledger_path = run_dir / "ledger.sqlite"
    entries = read_ledger(run_dir)
    ledger_path.unlink()
    rewritten = Ledger(ledger_path)
    for entry in entries:
        body = dict(entry.body)
        if entry.kind == "release" and entry.round == 2:
            body["device-noise-std"] = body["device-noise-std"] / 2
        rewritten.append([(entry.kind, entry.round, body)])
    rewritten.close()
    lying = audit(run_dir)
    assert lying.failures["test-device-noise"] == [
        f"release 2: device noise std {bodies[1]['device-noise-std'] / 2:.6g}, the budget gives {bodies[1]['device-noise-std']:.6g}"
    ]
    # a device asked for a task its settings' mechanism does not have refuses it
    from flwr.app import ConfigRecord, Message, RecordDict

    asked = Message(RecordDict({"config": ConfigRecord({**resolve(None, settings).device_settings(), "task": "popularity"})}), dst_node_id=1, message_type="train")
    with pytest.raises(ValueError, match=f"task 'popularity' is not one of mechanism {DeviceNoisedReleases.name}'s train tasks: '{NOISY_TASK}'"):
        handler("train", DeviceRequest.of(asked))
