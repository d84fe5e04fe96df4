"""``fedmmrec audit`` passes a real run and fails the tampered and the reset-accountant ones."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from server.audit import audit, run_audit
from shared.privacy.accounting import epsilon_of
from shared.privacy.ledger import verify_chain
from shared.run_directory import RunDirectory, read_ledger


def _client(edit):
    """An ``edit`` for the ``rewritten_ledger`` fixture that rewrites client-round bodies only
    (body, round) -> body: what a server rewriting its ledger can do."""
    return lambda kind, round_, body: edit(body, round_) if kind == "client-round" else body


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run_dir, target)
    return target


def test_real_run_passes_every_check(federated_run, tmp_path):
    run_dir = _copy_run(federated_run, tmp_path)
    report = audit(run_dir)
    assert report.passed, report.failures
    assert set(report.failures) == {
        "hash-chain", "mechanism-known", "ledger-anchored", "identity-budget", "spend-signed", "noise-conformance", "epsilon-recomputed", "epsilon-monotone", "steps-match-history", "sample-rate",
        "no-batchnorm-stats",
    }
    assert report.figures["clients (with a signed example-level spend)"] == 12 and report.figures["rounds"] == 2
    assert run_audit(run_dir) == 0 and (run_dir / "audit.md").read_text().startswith("# Privacy audit")
    # the report leads with the guarantee, then every check with what it verifies and cannot see
    text = (run_dir / "audit.md").read_text()
    assert text.index("## The guarantee") < text.index("## Checks") < text.index("## Evidence")
    assert report.guarantee["privacy unit"] == "example (one interaction) on each device"
    assert report.guarantee["whom you must trust"].startswith("nobody for the example-level claim")
    assert report.guarantee["epsilon"].startswith("client epsilon min / median / max (example-level): ")
    from server.audit.limits import CHECK_LIMITS

    for check in report.failures:
        sees, blind = CHECK_LIMITS[check]
        assert f"| {check} | pass | {sees} | {blind} |" in text


def test_every_check_the_audit_can_name_says_what_it_cannot_see():
    import re

    from server.audit.limits import CHECK_LIMITS

    root = Path(__file__).parents[1]  # the audit's own modules, and each mechanism folder's audit
    source = "".join(path.read_text() for path in [*(root / "server" / "audit").glob("*.py"), *root.glob("shared/*/audit.py"), *root.glob("server/mechanisms/*/audit.py")])
    named = set(re.findall(r'report\.(?:fail|ok)\(\s*"([a-z-]+)"', source)) | set(re.findall(r'check = "([a-z-]+)"', source))
    for names in re.findall(r"CHECKS = \(([^)]*)\)", source):
        named |= set(re.findall(r'"([a-z-]+)"', names))
    assert named and named <= set(CHECK_LIMITS), sorted(named - set(CHECK_LIMITS))


def test_ledger_refuses_updates_and_deletes(federated_run, tmp_path):
    run_dir = _copy_run(federated_run, tmp_path)
    db = sqlite3.connect(RunDirectory.open(run_dir).ledger_path)
    for statement in ("UPDATE entries SET body = '{}' WHERE seq = 2", "DELETE FROM entries WHERE seq = 2"):
        try:
            db.execute(statement)
            raise AssertionError(f"{statement} was allowed")
        except sqlite3.IntegrityError as exc:
            assert "append-only" in str(exc)
    db.close()


def test_edited_entry_breaks_the_chain_and_fails_the_audit(federated_run, tmp_path):
    run_dir = _copy_run(federated_run, tmp_path)
    db = sqlite3.connect(RunDirectory.open(run_dir).ledger_path)
    db.execute("DROP TRIGGER entries_no_update")  # a determined editor gets past the trigger
    body = db.execute("SELECT body FROM entries WHERE kind = 'client-round' LIMIT 1").fetchone()[0]
    edited = body.replace('"epsilon":', '"epsilon":0.5,"was":', 1)
    db.execute("UPDATE entries SET body = ? WHERE body = ?", (edited, body))
    db.commit()
    db.close()
    problems = verify_chain(read_ledger(run_dir))
    assert len(problems) == 1 and "does not match its hash (edited)" in problems[0]
    assert run_audit(run_dir) == 1
    assert audit(run_dir).failures["hash-chain"]


def test_accountant_reset_between_rounds_is_caught(federated_run, tmp_path):
    """A writer whose accountant restarts each round (Flower's Opacus example) writes a valid
    chain, but its epsilon falls and its history misses the first round's steps."""
    source = federated_run
    run_dir = _copy_run(source, tmp_path)
    RunDirectory.open(run_dir).ledger_path.unlink()
    entries = read_ledger(source)
    first_round_steps: dict[int, int] = {}
    rewritten = RunDirectory.open(run_dir).open_ledger()
    for entry in entries:
        body = dict(entry.body)
        if entry.kind == "client-round":
            client = body["client"]
            if entry.round == 1:
                first_round_steps[client] = body["steps"]
            else:  # only this round's steps, as a fresh accountant would hold
                noise, rate = body["history"][-1][0], body["sample-rate"]
                body["history"] = [[noise, rate, body["steps"]]]
                body["epsilon"] = epsilon_of([(noise, rate, body["steps"])], 1e-5)
        rewritten.append([(entry.kind, entry.round, body)])
    rewritten.close()
    report = audit(run_dir)
    assert not report.failures["hash-chain"]
    assert report.failures["steps-match-history"]
    assert not report.passed


def test_a_ledger_rewritten_whole_with_lower_spend_is_caught_by_its_anchors(federated_run, rewritten_ledger):
    """Every client entry claims 4x the noise multiplier, with epsilons and the hash chain
    recomputed: the accounting checks agree with it; the metrics, summary, clients.jsonl and
    the devices' own state files do not."""
    def four_times_the_noise(body, _round):
        body["noise-multiplier"] *= 4
        body["history"] = [[sigma * 4, rate, steps] for sigma, rate, steps in body["history"]]
        body["epsilon"] = epsilon_of([tuple(h) for h in body["history"]], 1e-5)
        return body

    run_dir = rewritten_ledger(federated_run, _client(four_times_the_noise))
    report = audit(run_dir)
    assert not report.failures["hash-chain"] and not report.failures["epsilon-recomputed"]
    problems = report.failures["ledger-anchored"]
    assert any(p.startswith("metrics.jsonl round 1: ledger head") and "is not in the ledger" in p for p in problems)
    assert any(p.startswith("summary.json: ledger-head") for p in problems)
    assert any(p.startswith("clients.jsonl round 2 client") and "but the ledger records" in p for p in problems)
    assert any("recorded epsilon" in p and "the ledger claims" in p for p in problems)
    # ... and no device signed the rewritten spend.
    unsigned = report.failures["spend-signed"]
    assert len(unsigned) == 24 and all("signature does not match the spend the ledger records" in p for p in unsigned)
    assert run_audit(run_dir) == 1


def test_a_spend_re_signed_with_the_servers_own_key_is_caught(federated_run, rewritten_ledger, tmp_path):
    """A server that rewrites a device's spend and signs it with a key of its own."""
    from shared.privacy.spend_signature import load_or_create_key, public_pem, sign

    forger = load_or_create_key(tmp_path / "server-key.pem")

    def re_signed(body, round_):
        if body["identity"] == "partition-0":
            body["noise-multiplier"] *= 4
            body["history"] = [[sigma * 4, rate, steps] for sigma, rate, steps in body["history"]]
            body["epsilon"] = epsilon_of([tuple(h) for h in body["history"]], 1e-5)
            body["public-key"] = public_pem(forger)
            body["signature"] = sign(forger, {**body, "round": round_})
        return body

    run_dir = rewritten_ledger(federated_run, _client(re_signed))
    problems = audit(run_dir).failures["spend-signed"]
    assert problems and all("signed with a key that is not simulated device partition-0's own" in p for p in problems)


def test_the_update_norm_the_noise_check_reads_is_the_devices_signed_word(federated_run, rewritten_ledger):
    """A server that records a noise-sized norm for an update that had none: rewriting the
    device's own (signed) norm breaks its signature; keeping it and recording another
    measurement beside it is a disagreement the noise check names."""
    def rewritten_norm(body, _round):
        body["update-norm"] = body["measured-update-norm"] = 3 * body["update-norm"]
        return body

    report = audit(rewritten_ledger(federated_run, _client(rewritten_norm)))
    problems = report.failures["spend-signed"]
    assert len(problems) == 24 and all("signature does not match the spend the ledger records" in p for p in problems)

    def other_measurement(body, _round):
        body["measured-update-norm"] = 3 * body["update-norm"]
        return body

    report = audit(rewritten_ledger(federated_run, _client(other_measurement)))
    assert not report.failures["spend-signed"]
    problems = report.failures["noise-conformance"]
    assert len(problems) == 24 and all("(the device's word) but the server measured" in p for p in problems)


def test_a_claim_below_its_recomputation_fails_epsilon_recomputed(federated_run, rewritten_ledger):
    def halved(body, round_):
        if body["identity"] == "partition-3" and round_ == 2:
            body["epsilon"] /= 2
        return body

    problems = audit(rewritten_ledger(federated_run, _client(halved))).failures["epsilon-recomputed"]
    assert len(problems) == 2 and all(p.startswith("client ") for p in problems)
    assert " round 2: claims " in problems[0] and "< recomputed" in problems[0]
    assert "below PRV" in problems[1]  # the final history's three accountants


def test_an_epsilon_that_falls_while_each_claim_covers_its_history_fails_epsilon_monotone(federated_run, rewritten_ledger):
    """Round 1 over-claims (allowed: a claim may exceed its recomputation), so round 2's honest
    claim is a fall: only the monotonicity check can see it."""
    def over_claimed(body, round_):
        if body["identity"] == "partition-5" and round_ == 1:
            body["epsilon"] = 1000.0
        return body

    report = audit(rewritten_ledger(federated_run, _client(over_claimed)))
    assert not report.failures["epsilon-recomputed"]
    problems = report.failures["epsilon-monotone"]
    assert len(problems) == 1 and problems[0].startswith("client ") and "round 2: epsilon fell from 1000.0000 to " in problems[0]


def test_a_released_checkpoint_with_batchnorm_statistics_fails(federated_run, tmp_path):
    import torch

    run_dir = _copy_run(federated_run, tmp_path)
    run = RunDirectory.open(run_dir)
    checkpoint = run.load_checkpoint(run.final_checkpoint())
    checkpoint["item_tower"]["fusion.norm.running_mean"] = torch.zeros(4)
    torch.save(checkpoint, run.final_checkpoint())
    problems = audit(run_dir).failures["no-batchnorm-stats"]
    assert problems == ["final.pt: BatchNorm statistics released: fusion.norm.running_mean"]


def test_a_config_json_that_is_not_the_ledgers_fails_ledger_anchored(federated_run, tmp_path):
    import json

    run_dir = _copy_run(federated_run, tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    config["noise-multiplier"] = 4 * float(config["noise-multiplier"])
    (run_dir / "config.json").write_text(json.dumps(config))
    problems = audit(run_dir).failures["ledger-anchored"]
    assert problems == ["ledger header's config differs from config.json on noise-multiplier"]


def test_an_unsigned_spend_after_signed_ones_and_a_changed_key_fail_spend_signed(federated_run, rewritten_ledger, tmp_path):
    from shared.privacy.spend_signature import load_or_create_key, public_pem, sign

    def unsigned(body, round_):
        if body["identity"] == "partition-2" and round_ == 2:
            del body["signature"], body["public-key"]
        return body

    problems = audit(rewritten_ledger(federated_run, _client(unsigned))).failures["spend-signed"]
    assert len(problems) == 1 and problems[0].endswith("round 2: unsigned, although device partition-2 signs its spend")

    other = load_or_create_key(tmp_path / "another-key.pem")

    def another_key(body, round_):  # a valid signature over the true spend, by another key
        if body["identity"] == "partition-2" and round_ == 2:
            body["public-key"] = public_pem(other)
            body["signature"] = sign(other, {**body, "round": round_})
        return body

    problems = audit(rewritten_ledger(federated_run, _client(another_key))).failures["spend-signed"]
    assert len(problems) == 2 and problems[0].endswith("round 2: device partition-2 signed with another key than in round one")
    assert problems[1].endswith("round 2: signed with a key that is not simulated device partition-2's own")


def test_export_takes_the_ledger_head_from_the_verified_ledger(federated_run, tmp_path):
    import json

    import pytest

    from server.export import export_run

    run_dir = _copy_run(federated_run, tmp_path)
    head = read_ledger(run_dir)[-1].hash
    manifest = json.loads((export_run(run_dir, tmp_path / "out") / "manifest.json").read_text())
    assert manifest["ledger-head"] == head
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["ledger-head"] = "0" * 64
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="is not the ledger's verified head"):
        export_run(run_dir, tmp_path / "out2")


def test_fewer_steps_than_local_epochs_times_batches_is_caught(federated_run, rewritten_ledger):
    def a_third_of_the_steps(body, round_):
        if round_ == 1:
            body["steps"] = body["steps"] // 3
            body["history"] = [[sigma, rate, steps // 3] for sigma, rate, steps in body["history"]]
            body["epsilon"] = epsilon_of([tuple(h) for h in body["history"]], 1e-5)
        return body

    run_dir = rewritten_ledger(federated_run, _client(a_third_of_the_steps))
    problems = audit(run_dir).failures["sample-rate"]
    assert len(problems) == 12 and all("but local-epochs 3 x ceil(n=" in p for p in problems)


def test_auditing_nothing_is_a_usage_error_not_a_fail(tmp_path, capsys):
    from simulations.cli import main

    assert main(["audit", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"fedmmrec: error: audit: {tmp_path / 'missing'}: no such run directory\n"
    (tmp_path / "empty").mkdir()
    assert main(["audit", str(tmp_path / "empty")]) == 2
    assert "no privacy ledger (ledger.sqlite) in this folder" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "audit.md").exists()  # nothing written where nothing was audited


def test_a_header_that_states_another_mechanisms_unit_fails_mechanism_known(federated_run, rewritten_ledger):
    """The report leads with the header's unit: a header whose config runs DP-SGD but which
    claims the user-level unit is refused, not shown."""

    def user_level_words(kind, round_, body):
        if kind == "header":
            body["privacy-unit"] = "user (all of one device's interactions), at the server"
        return body

    report = audit(rewritten_ledger(federated_run, user_level_words))
    assert not report.passed
    assert report.failures["mechanism-known"] == [
        "ledger header's privacy-unit \"user (all of one device's interactions), at the server\" is not dp-sgd's "
        "'example (one interaction) on each device'"
    ]


def test_a_header_that_claims_server_dp_its_mechanism_does_not_run_fails_mechanism_known(federated_run, rewritten_ledger):
    """The old audit followed the header's server-dp to DP-FedAvg's checks; the mechanism its
    config names runs none, so the claim is refused instead of left standing unchecked."""

    def claims_server_dp(kind, round_, body):
        if kind == "header":
            body["server-dp"] = True
        if kind == "server-round":
            body["server-dp"] = True
        return body

    report = audit(rewritten_ledger(federated_run, claims_server_dp))
    assert not report.passed
    assert report.failures["mechanism-known"] == [
        "ledger header's server-dp True is not dp-sgd's False",
        "server rounds [1, 2] claim server-side DP, which dp-sgd does not run",
    ]
    # the rounds that claim it carry none of DP-FedAvg's fields: a failure naming one, not a traceback
    assert report.failures["noise-conformance"][-1] == (
        "a ledger entry lacks or garbles a field these checks read (KeyError: 'updates-aggregated')"
    )
