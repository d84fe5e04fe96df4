"""Every privacy mode goes through one interface: a new mechanism is one class and one registry
line, and the run loop, the ledger header, the summary and the audit find it there."""

from __future__ import annotations

from typing import Any

import pytest

from server.audit import audit
from server.mechanisms import MECHANISMS, mechanism_class, mechanism_for, mechanism_of_ledger
from server.mechanisms.rounds import RoundsMechanism
from shared.config import resolve
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
    # what a device and the aggregator read from the mode without the registry is the mechanism's word
    assert (config.privacy.local_dp, config.privacy.central_dp) == (mechanism.local_dp, mechanism.central_dp)
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
