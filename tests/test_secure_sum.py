"""user-noise = distributed: secure aggregation with distributed Skellam noise.

Protocol tests drive the real server driver (shared.secure_sum.server) and the real device stage
handler (shared.secure_sum.device) in one process through a grid that delivers messages and drops the
replies of chosen devices at chosen stages; the Flower runs at the end go through the real
ClientApp, faults app and audit."""

from __future__ import annotations

import math
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from shared.secure_sum.device import stage_reply
from server.audit import audit
from shared.secure_sum.server import SecureAggregation, SecureAggregationAborted
from shared.config import resolve
from shared.cooccurrence import popularity_contribution
from shared.messages import TASK_KEY, message_config, secure_fields
from shared.secure_sum import masks
from shared.secure_sum.session import DeviceSession, ProtocolRefusal
from shared.secure_sum.plan import make_plan
from shared.secure_sum.quantise import check_no_overflow, conditional_round, rounding_bound
from shared.secure_sum.skellam import ORDERS, SkellamRelease, skellam_epsilon
from shared.run_directory import read_ledger, read_metrics
from simulations.engines.simulate import read_summary, simulate

ITEMS = 40


class DeliveringGrid:
    """Delivers each message to the device's stage handler; ``drop`` = {stage: {device index}}
    loses those devices' replies at that stage (a crash or a lost connection); a key
    ``"stage:release"`` only in that release."""

    def __init__(self, users: int, drop: dict[str, set[int]] | None = None, seed: int = 0, run_id: int = 1, state=None):
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id = run_id  # what a ServerApp process has set when it builds messages
        self.identity = TaskIdentity
        TaskIdentity.node_id, TaskIdentity.task_id = 0, 1  # the server's own
        rng = np.random.default_rng(seed)
        self.nodes = list(range(101, 101 + users))
        self.items = {node: np.sort(rng.choice(ITEMS, size=int(rng.integers(1, 12)), replace=False)) for node in self.nodes}
        # ``state``: the simulated devices' state folders (identity keys, durable spend), kept across grids
        self.state = Path(state) if state else Path(tempfile.mkdtemp(prefix="secure-devices-"))
        self.contexts = {
            node: Context(run_id=run_id, node_id=node, node_config={"partition-id": k}, state=RecordDict(), run_config={})
            for k, node in enumerate(self.nodes)
        }
        self.drop = drop or {}
        self.replies = {}

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        """Deliver each message at once. A dropped device's reply is lost and its message id
        is not handed back, so the server's pull loop stops once the rest have answered (over
        Flower's grid the server would wait for it until its deadline)."""
        ids = []
        try:
            for msg in messages:
                message_id = str(uuid.uuid4())
                msg.metadata.__dict__["_message_id"] = message_id
                node = msg.metadata.dst_node_id
                self.identity.node_id = node  # the device's process builds its reply
                stage = message_config(msg)[TASK_KEY]
                data = SimpleNamespace(num_items=ITEMS, train_items=self.items[node], validation_item=-1, on_device=False, user_id=f"user-{node}")
                reply = stage_reply(msg, self.contexts[node], data, stage, f"device-{node}", f"node-{node}", None)
                at_release = f"{stage}:{secure_fields(msg).get('release')}"
                if self.nodes.index(node) not in self.drop.get(stage, set()) | self.drop.get(at_release, set()):
                    self.replies[message_id] = reply
                    ids.append(message_id)
        finally:  # a refusal propagates here (Flower would make it an error reply): the server builds again
            self.identity.node_id = 0
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(message_id) for message_id in message_ids if message_id in self.replies]

    def popularity(self, devices) -> np.ndarray:
        return sum(popularity_contribution(self.items[self.nodes[i]], ITEMS) for i in devices)


def _secure(users: int, drop=None, run_id: int = 1, state=None, **settings) -> tuple[SecureAggregation, DeliveringGrid]:
    grid = DeliveringGrid(users, drop, run_id=run_id, state=state)
    config = resolve(None, {"privacy": "user", "user-noise": "distributed", "secure-neighbours": 8, "device-state-dir": str(grid.state), **settings})
    secure = SecureAggregation(grid, grid.nodes, config, [ITEMS, 10, 15], log=lambda *a: None)
    return secure, grid


@pytest.mark.parametrize(
    "stage, dropped",
    [("secure-keys", 3), ("secure-share", 3), ("secure-input", 3), ("secure-confirm", 3), ("secure-unmask", 3), (None, None)],
)
def test_the_sum_is_exactly_the_survivors_statistics_whatever_stage_a_device_drops_at(stage, dropped):
    """Without noise (user-epsilon inf) the unmasked sum is the sum of the survivors' statistics,
    to the rounding (less than one unit per device, and no bias): a device dropping after its keys are shared is unmasked from
    its neighbours' shares; one dropping after its input is in the sum (its seed rebuilt)."""
    secure, grid = _secure(20, {stage: {dropped}} if stage else None, **{"user-epsilon": "inf"})
    secure.setup(server_round=1)
    result = secure.release("popularity", RecordDict().array_records.get("x") or _empty(), server_round=1)
    expected_out = {"secure-keys": {3}, "secure-share": {3}, "secure-input": {3}}.get(stage, set())
    assert result.survivors == [i for i in range(20) if i not in expected_out]
    assert result.dropped == (sorted(expected_out) if stage == "secure-input" else [])
    scale = secure.plan.release("popularity").scale
    error = (np.asarray(result.noisy) - grid.popularity(result.survivors)) * scale  # in the field's units
    assert np.abs(error).max() < len(result.survivors)  # each device's rounding moves a coordinate by less than 1
    # unbiased: the mean over the 40 coordinates within 5.3 standard errors (each rounding's
    # variance is at most 1/4); rounding down would shift it by about half the survivors
    assert abs(float(error.mean())) < 5.3 * math.sqrt(len(result.survivors) / 4 / ITEMS)


def _empty():
    from flwr.app import ArrayRecord

    return ArrayRecord()


@pytest.mark.parametrize("stage", ["secure-keys", "secure-share", "secure-input"])
def test_below_the_minimum_a_release_is_aborted_and_nothing_released(stage):
    # 20 devices, secure-dropout 0.1: 18 must take part; 3 drop. (Devices that drop at unmasking
    # after sending their input are in the sum: the next test aborts there.)
    secure, _ = _secure(20, {stage: {0, 1, 2}})
    with pytest.raises(SecureAggregationAborted, match=r"below the minimum 18 of 20|fewer than 5 shares returned"):
        secure.setup(server_round=1)
        secure.release("popularity", _empty(), server_round=1)


def test_a_device_drops_past_the_unmask_threshold_and_the_release_aborts():
    # When the survivors return too few shares (here everyone but two stops answering at
    # unmasking), no seed can be rebuilt: aborted, not a partial sum. (A complete graph: with half
    # the devices allowed to drop, a sparser one could split, and the plan refuses it.)
    secure, _ = _secure(20, {"secure-unmask": set(range(2, 20))}, **{"secure-dropout": 0.4, "secure-neighbours": 19})
    secure.setup(server_round=1)
    with pytest.raises(SecureAggregationAborted, match="fewer than 10 shares returned; nothing was released"):
        secure.release("popularity", _empty(), server_round=1)


def test_what_the_server_receives_from_one_device_is_uniform_modulo_the_field():
    """The same device, statistic all zeros or all at the clip: the masked vector's top byte is
    uniform (chi-square over 256 bins at a false-alarm rate of 1e-6) and the two are unrelated."""
    plan = make_plan(4, ["a"], [40_000], [1.0], 8.0, 1e-5, 2, 0.0, 0.0)

    def masked_by_device_0(statistic: np.ndarray) -> np.ndarray:  # a fresh session: keys and seeds are per run
        from secure_sessions import Protocol

        return Protocol(plan).sessions[0].masked_input(plan, plan.release("a"), [0, 1, 2, 3], statistic)[0]

    chi_square_limit = 376.0  # chi-square(255) quantile at 1 - 1e-6
    vectors = [masked_by_device_0(np.zeros(40_000)), masked_by_device_0(np.full(40_000, 1 / 200.0))]
    for vector in vectors:
        counts = np.bincount((vector >> 24).astype(np.int64), minlength=256)
        expected = vector.size / 256
        assert float(((counts - expected) ** 2 / expected).sum()) < chi_square_limit
    assert abs(np.corrcoef(vectors[0].astype(float), vectors[1].astype(float))[0, 1]) < 0.03


def test_a_server_that_asks_to_unmask_a_single_device_is_refused():
    secure, grid = _secure(12)
    secure.setup(server_round=1)
    session = DeviceSession.from_record(dict(grid.contexts[grid.nodes[0]].state.config_records["secure-sum"]))
    session.hold([b"x"] * len(session.neighbours))
    with pytest.raises(ProtocolRefusal, match="refusing to unmask for 1 devices: the minimum is 11 of 12"):
        session.unmask(secure.plan, "popularity", [0], [], [], [], frozenset())
    with pytest.raises(ProtocolRefusal, match="refusing to mask an input for 2 devices"):
        session.masked_input(secure.plan, secure.plan.release("popularity"), [0, 1], np.zeros(ITEMS))


def test_a_device_never_reveals_both_secrets_of_one_neighbour():
    secure, grid = _secure(12, {"secure-input": {5}})
    secure.setup(server_round=1)
    secure.release("popularity", _empty(), server_round=1)  # device 5 dropped: its mask key was rebuilt
    holder = next(node for node in grid.nodes if 5 in DeviceSession.from_record(dict(grid.contexts[node].state.config_records["secure-sum"])).neighbours)
    session = DeviceSession.from_record(dict(grid.contexts[holder].state.config_records["secure-sum"]))
    assert "popularity:5" in session.revealed_keys
    session.unmasked.remove("popularity")  # past the one-unmasking-per-release refusal: the signed set behind it
    # (the guard behind that one, on the device itself: tests/test_secure_device.py)
    with pytest.raises(ProtocolRefusal, match="the survivor set to unmask is not the one this device signed for release 'popularity'"):
        session.unmask(secure.plan, "popularity", [v for v in range(12)], [], [], [], frozenset())


def test_a_device_that_drops_in_a_later_release_is_unmasked_with_that_releases_key():
    """Mask keys are per release: device 3 took part in the popularity release (its seed was
    revealed) and drops before its co-occurrence input; its neighbours reveal its co-occurrence
    mask key, which unmasks nothing of the popularity release, and the run goes on."""
    secure, grid = _secure(20, {"secure-input:cooccurrence": {3}})
    secure.setup(server_round=1)
    first = secure.release("popularity", _empty(), server_round=1)
    second = secure.release("cooccurrence", ArrayRecord({"top-items": Array(np.arange(4, dtype=np.int64))}), server_round=2)
    assert 3 in first.survivors and 3 in second.dropped and 3 not in second.survivors
    holder = next(node for node in grid.nodes if 3 in DeviceSession.from_record(dict(grid.contexts[node].state.config_records["secure-sum"])).neighbours)
    session = DeviceSession.from_record(dict(grid.contexts[holder].state.config_records["secure-sum"]))
    assert "popularity:3" in session.revealed_seeds and "cooccurrence:3" in session.revealed_keys


def test_a_device_sends_one_input_and_one_unmasking_per_release():
    """The same masks over a second noise draw would tell the server the difference of the two."""
    secure, grid = _secure(12)
    secure.setup(server_round=1)
    secure.release("popularity", _empty(), server_round=1)
    session = DeviceSession.from_record(dict(grid.contexts[grid.nodes[0]].state.config_records["secure-sum"]))
    assert (session.masked, session.unmasked) == (["popularity"], ["popularity"])
    with pytest.raises(ProtocolRefusal, match="already sent its input for release 'popularity'"):
        session.masked_input(secure.plan, secure.plan.release("popularity"), list(range(12)), np.zeros(ITEMS))
    with pytest.raises(ProtocolRefusal, match="already answered the unmasking of release 'popularity'"):
        session.unmask(secure.plan, "popularity", list(range(12)), [], [], [], frozenset())
    with pytest.raises(ProtocolRefusal, match="already sent its input"):  # asked again: the device's stage handler refuses
        secure.release("popularity", _empty(), server_round=1)


def test_a_device_refuses_a_plan_weaker_than_its_own_floor():
    from shared.secure_sum.device import check_floor

    check_floor({"user-epsilon": 16.0, "secure-neighbours": 4}, {}, on_device=False)  # a simulation: the researcher's call
    with pytest.raises(ProtocolRefusal, match="user-epsilon = 16, weaker than this device's 8"):
        check_floor({"user-epsilon": 16.0}, {}, on_device=True)  # a real device: the code's defaults at least
    with pytest.raises(ProtocolRefusal, match="user-epsilon = inf, weaker than this device's 4"):
        check_floor({"user-epsilon": math.inf}, {"user-epsilon": 4.0}, on_device=False)
    with pytest.raises(ProtocolRefusal, match="secure-neighbours = 8, weaker than this device's 32"):
        check_floor({"secure-neighbours": 8}, {}, on_device=True)
    with pytest.raises(ProtocolRefusal, match="secure-dropout = 0.5, weaker than this device's 0.1"):
        check_floor({"secure-dropout": 0.5}, {}, on_device=True)
    with pytest.raises(ProtocolRefusal, match="secure-colluders = 0, weaker than this device's 0.05"):
        check_floor({"secure-colluders": 0.0}, {}, on_device=True)
    check_floor({"user-epsilon": 3.0, "secure-neighbours": 40, "secure-dropout": 0.05}, {}, on_device=True)  # stronger: fine
    with pytest.raises(ProtocolRefusal, match="secure-groups = 3, weaker than this device's 1"):
        check_floor({"secure-groups": 3}, {}, on_device=True)  # a real device sums with its whole roster unless its config allows groups
    check_floor({"secure-groups": 3}, {"secure-groups": 3}, on_device=True)
    with pytest.raises(ProtocolRefusal, match="user-epsilon = nan: not a number; refusing the plan"):
        check_floor({"user-epsilon": math.nan}, {}, on_device=True)  # NaN compares false with any floor


def test_a_device_checks_the_budget_itself_before_it_plans_its_noise():
    """A device does not take the server's word that a plan is sound: without a floor (a
    simulation) it still refuses a budget no release can be planned under."""
    from shared.secure_sum.device import _planned

    good = {"user-epsilon": 8.0, "delta": 1e-5, "popularity-budget-share": 0.1, "selection-budget-share": 0.1}
    assert _planned(tuple(sorted(good.items())), 12, (60, 1830, 15)).devices == 12
    for bad, why in (
        ({"user-epsilon": math.nan}, "user-epsilon must be positive"),
        ({"user-epsilon": 0.0}, "user-epsilon must be positive"),
        ({"delta": 2.0}, "delta must be in \\(0, 1\\)"),
        ({"popularity-budget-share": 0.6, "selection-budget-share": 0.5}, "popularity-budget-share must be in \\(0, 1\\)"),
        ({"secure-dropout": 1.0}, "secure-neighbours must be at least 2, secure-dropout and secure-colluders"),
    ):
        with pytest.raises(ProtocolRefusal, match=f"the server's plan: {why}"):
            _planned(tuple(sorted({**good, **bad}.items())), 12, (60, 1830, 15))
    # through the device's stage handler: a node config floor refuses the server's plan
    grid = DeliveringGrid(12)
    grid.contexts[grid.nodes[0]].node_config["user-epsilon"] = 4.0
    secure = SecureAggregation(grid, grid.nodes, resolve(None, {"privacy": "user", "user-noise": "distributed", "secure-neighbours": 8, "device-state-dir": str(grid.state)}),
                               [ITEMS, 10, 15], log=lambda *a: None)
    with pytest.raises(ProtocolRefusal, match="user-epsilon = 8, weaker than this device's 4"):
        secure.setup(server_round=1)


def test_the_plan_refuses_a_neighbour_graph_that_could_split_or_leak():
    from shared.secure_sum.plan import graph_failure_probability, graph_parts

    # 10 devices in a ring of degree 4: it splits where 2 consecutive devices are gone; with 2
    # gone, 10 of the C(10, 2) = 45 pairs are consecutive
    assert graph_failure_probability(10, 4, 3, 2, 0) == pytest.approx(10 / 45)
    assert graph_failure_probability(10, 9, 5, 2, 0) == 0.0  # complete: never splits
    # 2 colluders among 99 others, 4 neighbours, threshold 2: C(2,2) C(97,2) / C(99,4) per device
    assert graph_failure_probability(100, 4, 2, 0, 2) == pytest.approx(100 * math.comb(97, 2) / math.comb(99, 4))
    assert graph_failure_probability(100, 4, 3, 0, 2) == 0.0  # fewer colluders than the threshold
    with pytest.raises(ValueError, match=r"secure-neighbours 4: with 943 devices, 0.1 dropping and 0.05 colluding, the neighbour graph "
                                         r"splits or a device's secrets leak with probability 1, above delta / 10"):
        make_plan(943, ["popularity"], [1682], [1.0], 8.0, 1e-5, 4, 0.1, 0.05)
    make_plan(943, ["popularity"], [1682], [1.0], 8.0, 1e-5, 32, 0.1, 0.05)  # the default: about 3e-11
    assert graph_parts([0, 1, 2, 3], {0: [1], 1: [0], 2: [3], 3: [2]}) == 2
    assert graph_parts([0, 1, 3], {0: [1, 2], 1: [0, 2], 2: [0, 1, 3], 3: [2]}) == 2  # 2 dropped: 3 is cut off
    assert graph_parts([0, 1, 2, 3], {0: [1, 2], 1: [0, 2], 2: [0, 1, 3], 3: [2]}) == 1


def test_the_server_does_not_unmask_survivors_whose_graph_is_split():
    secure, _ = _secure(20)
    secure.setup(server_round=1)
    half = set(range(10))
    # Two halves with no edge between them, each connected (complete): exactly 2 parts, whatever
    # ring order the setup drew (its ring restricted to one half can itself fall apart).
    secure.neighbours = {i: [v for v in secure.neighbours if v != i and (v in half) == (i in half)] for i in secure.neighbours}
    with pytest.raises(SecureAggregationAborted, match="the survivors' neighbour graph is in 2 parts"):
        secure.release("popularity", _empty(), server_round=1)


def test_skellam_accounting_tends_to_the_gaussian_rdp_and_is_above_it():
    """At a large scale the Skellam RDP is the Gaussian's (dp-accounting's RDP accountant at
    the same std); at a small scale it is strictly larger."""
    import dp_accounting

    for std in (0.7, 2.0):
        accountant = dp_accounting.rdp.RdpAccountant(orders=list(ORDERS))
        accountant.compose(dp_accounting.GaussianDpEvent(std))
        gaussian = accountant.get_epsilon(1e-5)
        scale = 2.0**20
        large = skellam_epsilon([SkellamRelease(scale, scale * 100, (std * scale) ** 2)], 1e-5)
        small = skellam_epsilon([SkellamRelease(4.0, 40.0, (std * 4.0) ** 2)], 1e-5)
        assert large == pytest.approx(gaussian, rel=1e-4)
        assert small > gaussian * 1.01


def test_the_plan_spends_the_budget_at_the_minimum_and_the_rounding_holds_its_bound():
    plan = make_plan(943, ["popularity", "cooccurrence", "selection"], [1682, 180_300, 15], [0.1, 0.8, 0.1], 8.0, 1e-5, 32, 0.1, 0.05)
    assert (plan.min_survivors, plan.colluders, plan.threshold, plan.neighbours) == (849, 48, 17, 32)
    at_minimum = [r.share_variance * plan.honest_minimum for r in plan.releases]
    assert plan.epsilon(at_minimum) == pytest.approx(8.0, rel=1e-9)
    everyone = [r.share_variance * (943 - 48) for r in plan.releases]
    assert plan.epsilon(everyone) < 8.0
    release = plan.release("cooccurrence")
    rng = np.random.default_rng(0)
    dense = rng.random(release.dimension)
    rounded = conditional_round(dense / np.linalg.norm(dense), release.scale, release.bound, rng)
    assert np.linalg.norm(rounded) <= release.bound == rounding_bound(1.0, release.scale, release.dimension)
    with pytest.raises(ValueError, match="past the field's 2\\^31: lower the scale"):
        check_no_overflow(943, release.bound * 4, 0.0)


def test_masks_come_from_a_keyed_stream_not_a_seeded_numpy_generator():
    key = masks.release_key(masks.new_seed(), "popularity")
    first, second = masks.mask_stream(key, 8), masks.mask_stream(masks.release_key(masks.new_seed(), "popularity"), 8)
    assert len(key) == 32 and first.dtype == np.uint32 and not np.array_equal(first, second)
    assert np.array_equal(first, masks.mask_stream(key, 8))  # a function of the whole 256-bit key
    flipped = key[:31] + bytes([key[31] ^ 1])
    assert not np.array_equal(first, masks.mask_stream(flipped, 8))  # its last bit counts too


def test_any_threshold_shares_rebuild_a_secret_and_fewer_do_not():
    secret = masks.new_private_key()  # two 16-byte blocks
    shares = masks.share(secret, 5, 8)
    assert [int.from_bytes(s[:4], "little") for s in shares] == list(range(1, 9)) and {len(s) for s in shares} == {4 + 32}
    assert masks.rebuild(shares[3:8]) == secret and masks.rebuild([shares[j] for j in (0, 2, 4, 6, 7)]) == secret
    assert masks.rebuild(shares[:4]) != secret  # four points of a degree-4 polynomial: another secret
    assert masks.rebuild(shares, 5) == secret and masks.rebuild(shares[::-1], 5) == secret  # the five lowest indices
    seed = masks.new_seed()
    assert len(seed) == masks.SEED_BYTES == 16 and masks.rebuild(masks.share(seed, 5, 8)[2:7]) == seed
    with pytest.raises(ValueError, match="duplicate share"):
        masks.rebuild([shares[0], shares[0], shares[1], shares[2], shares[3]])


def test_rebuilding_with_reused_weights_is_pycryptodomes_combine():
    """The hoisted interpolation weights give exactly the library's ``Shamir.combine``."""
    from Crypto.Protocol.SecretSharing import Shamir

    rng = np.random.default_rng(7)
    for _ in range(20):
        threshold = int(rng.integers(2, 18))
        holders = int(rng.integers(threshold, 33))
        block = bytes(rng.integers(0, 256, 16, dtype=np.uint8))
        points = Shamir.split(threshold, holders, block, ssss=False)
        chosen = [points[j] for j in sorted(rng.choice(holders, threshold, replace=False))]
        ours = masks.rebuild([i.to_bytes(4, "little") + v for i, v in chosen])
        assert ours == Shamir.combine(chosen, ssss=False) == block
    with pytest.raises(ValueError, match="whole 16-byte blocks"):
        masks.share(b"odd", 2, 3)


# --- through Flower, the faults app and the audit ---------------------------------------------


def _secure_run(small_dataset, feature_cache, runs, run_id: str, faults: str = "", **extra):
    return simulate(
        {
            "data-dir": str(small_dataset), "feature-cache": str(feature_cache), "run-dir": str(runs), "run-id": run_id,
            "privacy": "user", "user-noise": "distributed", "secure-dropout": 0.2, "secure-neighbours": 8, **extra,
        },
        faults=faults, engine="in-process",  # the same server and ClientApp code; the Ray path is the default job's tests'
    )


@pytest.fixture(scope="module")
def dropout_run(small_dataset, feature_cache, tmp_path_factory):
    """12 devices; one drops after sharing its keys, one after sending its first input."""
    return _secure_run(small_dataset, feature_cache, tmp_path_factory.mktemp("secure"), "dropouts",
                       faults="dropinput:2 dropunmask:7")


def test_a_run_with_dropouts_finishes_reports_epsilon_at_the_realised_count_and_passes_the_audit(dropout_run):
    releases = [e.body for e in read_ledger(dropout_run) if e.kind == "release"]
    assert [b["contributions"] for b in releases] == [11, 11, 11]
    assert [b["dropped"] for b in releases] == [1, 0, 0]
    plan = make_plan(12, ["popularity", "cooccurrence", "selection"], [b["dimension"] for b in releases], [0.1, 0.8, 0.1],
                     8.0, 1e-5, 8, 0.2, 0.05)
    realised = [(11 - plan.colluders - 1) * r.share_variance for r in plan.releases]  # less the removed user's own
    assert releases[-1]["user-level-epsilon"] == pytest.approx(plan.epsilon(realised), rel=1e-12)
    assert read_summary(dropout_run)["privacy"]["user-level-epsilon"] == pytest.approx(plan.epsilon(realised), rel=1e-12)
    header = next(e.body for e in read_ledger(dropout_run) if e.kind == "header")
    assert header["trust"].startswith("no single party")
    unit = "user (all of one device's interactions), noise added by the devices under secure aggregation"
    assert header["privacy-unit"] == read_summary(dropout_run)["privacy"]["unit"] == unit
    report = audit(dropout_run)
    assert report.passed, report.failures
    assert {"secure-plan", "secure-shares", "secure-sum", "release-model"} <= set(report.failures)
    assert read_metrics(dropout_run)[-1]["hr@10"] >= 0


def test_a_device_that_adds_no_noise_share_fails_the_audit(small_dataset, feature_cache, tmp_path):
    run_dir = _secure_run(small_dataset, feature_cache, tmp_path, "noshare", faults="noshare:4")
    report = audit(run_dir)
    assert not report.passed
    assert any("signed a noise share of variance 0, below the planned" in problem for problem in report.failures["secure-shares"])


def test_devices_sent_a_weaker_plan_than_the_config_fail_the_audit(small_dataset, feature_cache, tmp_path, monkeypatch):
    """A server that tells the devices secure-dropout 0.4 (a lower minimum, a sum over fewer)
    while its config and ledger say 0.2: each device signs the plan it followed."""
    from shared.config import RunConfig

    honest = RunConfig.device_settings
    monkeypatch.setattr(RunConfig, "device_settings", lambda self: {**honest(self), "secure-dropout": 0.4})
    # such a server also skips its own plausibility abort (the sums are on the devices' plan, not its config's)
    monkeypatch.setattr(SecureAggregation, "_check_plausible", lambda *a, **k: None)
    run_dir = _secure_run(small_dataset, feature_cache, tmp_path, "weaker-plan", **{"secure-neighbours": 11})  # a complete graph
    report = audit(run_dir)
    assert not report.passed
    assert sum("signed a plan other than the one the run's config gives" in p for p in report.failures["secure-shares"]) == 36


def _rewritten(run_dir, tmp_path, change) -> "Path":
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    path = copy / "secure-sum.npz"
    arrays = dict(np.load(path))
    change(arrays)
    np.savez(path, **arrays)
    return copy


def test_a_split_graph_or_a_substituted_dropped_key_in_the_evidence_fails_the_audit(dropout_run, tmp_path):
    def split(arrays):
        graph = arrays["neighbours"]
        half = set(range(6))
        arrays["neighbours"] = np.where(np.isin(graph, list(half)) == (np.arange(len(graph)) < 6)[:, None], graph, -1)

    failures = audit(_rewritten(dropout_run, tmp_path / "a", split)).failures["secure-sum"]
    assert any("the survivors' neighbour graph is split" in problem for problem in failures)

    def substitute(arrays):
        arrays["popularity.dropped-keys"] = np.frombuffer(masks.new_private_key(), dtype=np.uint8).reshape(1, 32).copy()

    failures = audit(_rewritten(dropout_run, tmp_path / "b", substitute)).failures["secure-sum"]
    dropped = int(np.load(dropout_run / "secure-sum.npz")["popularity.dropped"][0])
    assert f"release 1 (popularity): the mask keys recorded for dropped devices [{dropped}] are not the keys they advertised" in failures


def test_a_recorded_masked_sum_that_is_not_the_signed_vectors_sum_fails_the_audit(dropout_run, tmp_path):
    # The sketch check: the devices signed sketches of their masked vectors; a server that
    # records another masked sum (one coordinate moved by one) is caught by their sum, and by the
    # survivor-set signatures, which bind the committed sum's digest.
    def moved(arrays):
        total = arrays["cooccurrence.masked-sum"].copy()
        total[0] = total[0] + np.uint64(1)
        arrays["cooccurrence.masked-sum"] = total

    failures = audit(_rewritten(dropout_run, tmp_path / "moved", moved)).failures["secure-sum"]
    assert ("release 2 (cooccurrence): the recorded masked sum is not the sum of the devices' masked vectors (sketched with the "
            "matrix drawn from the sum's own digest, which the devices signed before it was drawn)") in failures
    assert any(p.startswith("release 2 (cooccurrence): 0 distinct devices signed the unmasked survivor set and masked sum") for p in failures)


def _kernel_change(matrix: np.ndarray, target: int, amount: int) -> np.ndarray:
    """A change to a masked sum kept as integers that adds ``amount`` to coordinate ``target`` of
    the released sum and that ``matrix`` (4 rows over Z_{2^64}) cannot see: ``amount`` there, and
    in four other coordinates the solution of ``S_K w = -amount S_target`` (mod 2^64), ``S_K``
    invertible (odd determinant). What a server does with a sketch it knows before it fixes the sum."""
    from sympy import Matrix

    columns = [c for c in range(matrix.shape[1]) if c != target]
    for start in range(len(columns) - 3):
        chosen = columns[start : start + 4]
        sub = Matrix([[int(matrix[r, c]) for c in chosen] for r in range(masks.SKETCH_ROWS)])
        if sub.det() % 2:
            break
    wanted = Matrix([(-amount * int(matrix[r, target])) % 2**64 for r in range(masks.SKETCH_ROWS)])
    solution = sub.inv_mod(2**64) * wanted
    change = np.zeros(matrix.shape[1], dtype=np.uint64)
    change[target] = amount
    change[chosen] = [int(x) % 2**64 for x in solution]
    assert not masks.sketch(matrix, change).any()  # invisible to that matrix
    return change


def test_a_change_in_the_kernel_of_the_committed_sums_sketch_recorded_after_the_commitment_fails_the_audit(dropout_run, tmp_path):
    """The server commits to the honest sum, learns the sketch matrix it seeds, and records the sum
    plus a change that matrix cannot see (100 units on item 0): the devices signed the honest
    sum's digest, and the recorded sum's digest seeds another matrix."""
    from shared.secure_sum.session import sketch_seed

    def changed(arrays):
        total = arrays["popularity.masked-sum"]
        participants = sorted(int(v) for v in np.concatenate([arrays["popularity.survivors"], arrays["popularity.dropped"]]))
        matrix = masks.sketch_matrix(sketch_seed("popularity", participants, masks.sum_digest(total)), total.size)
        arrays["popularity.masked-sum"] = total + _kernel_change(matrix, 0, 100 * 2**20)

    failures = audit(_rewritten(dropout_run, tmp_path / "kernel", changed)).failures["secure-sum"]
    assert ("release 1 (popularity): the recorded masked sum is not the sum of the devices' masked vectors (sketched with the "
            "matrix drawn from the sum's own digest, which the devices signed before it was drawn)") in failures
    assert any(p.startswith("release 1 (popularity): 0 distinct devices signed the unmasked survivor set and masked sum") for p in failures)


def test_a_server_that_commits_to_a_sum_changed_in_the_kernel_of_the_sketch_it_could_compute_fails_the_audit(
    small_dataset, feature_cache, tmp_path, monkeypatch
):
    """The kernel change through the real driver and devices: the server adds 100 units to item 0's
    popularity, compensated in four coordinates so that the sketch it can compute when it fixes
    the sum (the one the honest sum's digest seeds; before this design, the public one) does not
    move, skips its own plausibility abort, and commits to the changed sum. The devices sign that
    commitment (the survivor-set check passes) and only then sketch their inputs, with the matrix
    the commitment seeds: the sketch check fails."""
    from shared.secure_sum.session import sketch_seed

    real = SecureAggregation._masked_inputs
    moved = {}

    def changed(self, name, common, arrays, server_round):
        total, vectors, records = real(self, name, common, arrays, server_round)
        if name == "popularity":
            matrix = masks.sketch_matrix(sketch_seed(name, list(common[3]), masks.sum_digest(total)), total.size)
            moved["units"] = 100
            total = total + _kernel_change(matrix, 0, 100 * int(self.plan.release(name).scale))
        return total, vectors, records

    monkeypatch.setattr(SecureAggregation, "_masked_inputs", changed)
    monkeypatch.setattr(SecureAggregation, "_check_plausible", lambda *a, **k: None)
    run = _secure_run(small_dataset, feature_cache, tmp_path, "kernel")
    failures = audit(run).failures["secure-sum"]
    assert moved == {"units": 100}
    assert ("release 1 (popularity): the recorded masked sum is not the sum of the devices' masked vectors (sketched with the "
            "matrix drawn from the sum's own digest, which the devices signed before it was drawn)") in failures
    assert not any("distinct devices signed" in p for p in failures)  # they signed the changed sum: only the sketch sees it


def test_a_record_signed_with_another_key_than_the_devices_own_fails_the_audit(dropout_run, tmp_path):
    """The server cannot sign a record for a simulated device: the audit compares each signing key
    with the key in the device's own state folder."""
    import shutil

    from shared.privacy.spend_signature import KEY_FILE, load_or_create_key

    copy = tmp_path / "copy"
    shutil.copytree(dropout_run, copy)
    folder = copy / "devices" / "partition-0"
    (folder / KEY_FILE).unlink()
    load_or_create_key(folder / KEY_FILE)  # what the device would hold had the server keyed it anew
    failures = audit(copy).failures["secure-shares"]
    assert sum("signed with a key that is not simulated device partition-0's own" in p for p in failures) == 3


def test_the_sketch_is_the_keystreams_matrix_times_the_vector_in_z_2_64():
    # The sketch a device signs and the audit recomputes: the matrix is the first 4 x d 64-bit
    # words of the seed's ChaCha20 keystream (drawn a row at a time, the same words as drawn
    # whole; a deployed device streams the rows, a simulation keeps the matrix), and the product
    # is exact modulo 2^64, of a masked vector (uint32) and of a sum kept as integers (uint64).
    import hashlib

    dimension, seed = 1_001, b"release:popularity"
    matrix = masks.sketch_matrix(seed, dimension)
    whole = np.frombuffer(masks._keystream(hashlib.sha256(b"fedmmrec sketch " + seed).digest()).update(bytes(8 * 4 * dimension)), dtype="<u8")
    assert masks.SKETCH_ROWS == 4 and matrix.dtype == np.uint64 and not matrix.flags.writeable
    assert np.array_equal(matrix, whole.reshape(masks.SKETCH_ROWS, dimension))
    rng = np.random.default_rng(0)
    vector = rng.integers(0, 2**32, size=dimension, dtype=np.uint64).astype(np.uint32)
    exact = [sum(int(a) * int(b) for a, b in zip(row, vector)) % 2**64 for row in matrix]
    assert masks.sketch(matrix, vector).tolist() == exact
    assert masks.sketch(masks.sketch_rows(seed, dimension), vector).tolist() == exact  # a deployed device's way
    total = vector.astype(np.uint64) * np.uint64(900)  # a sum of 900 vectors is past 2^32: kept whole, and exact
    assert masks.sketch(matrix, total).tolist() == [sum(int(a) * int(b) * 900 for a, b in zip(row, vector)) % 2**64 for row in matrix]
    assert masks.sketch_of_bytes(masks.sketch_bytes(masks.sketch(matrix, vector))).tolist() == exact
    with pytest.raises(ValueError, match="a sketch of 31 bytes: 32 expected"):
        masks.sketch_of_bytes(bytes(31))


# --- what a device remembers across key stages, sessions and runs -------------------------------


COOCCURRENCE_INPUT = ArrayRecord({"top-items": Array(np.arange(4, dtype=np.int64))})


def test_a_server_that_starts_a_new_key_stage_and_asks_the_same_release_again_is_refused():
    """A new key stage gives every device a fresh session; the durable record outlives it."""
    secure, grid = _secure(12)
    secure.setup(server_round=1)
    secure.release("popularity", _empty(), server_round=1)
    secure.setup(server_round=1)  # a fresh session on every device
    with pytest.raises(ProtocolRefusal, match="this device already answered release 'popularity' of run 1: refusing a second noisy copy"):
        secure.release("popularity", _empty(), server_round=1)


def test_a_new_run_that_would_pass_the_devices_budget_is_refused_and_the_record_survives_on_disk(tmp_path):
    """Two releases spend most of the run's user-epsilon 8 (at the honest minimum, the plan's
    promise); a second run (another run id, new sessions, a new grid: a restart) asking for the
    co-occurrence release again would pass the cap."""
    from shared.secure_sum.spend import SPEND_FILE, load_spend

    secure, grid = _secure(12, state=tmp_path)
    secure.setup(server_round=1)
    secure.release("popularity", _empty(), server_round=1)
    secure.release("cooccurrence", COOCCURRENCE_INPUT, server_round=2)
    spend = load_spend(tmp_path / "partition-0" / SPEND_FILE, None, f"user-{grid.nodes[0]}")
    assert [(a.run, a.release) for a in spend.answered] == [("1", "popularity"), ("1", "cooccurrence")]
    spent = secure.plan.epsilon([r.central_variance for r in secure.plan.releases[:2]])
    assert spend.epsilon(1e-5) == pytest.approx(spent, rel=1e-12) and spent < 8.0
    again, _ = _secure(12, run_id=2, state=tmp_path)
    again.setup(server_round=1)
    with pytest.raises(ProtocolRefusal, match=rf"release 'cooccurrence' would take this device to user-level epsilon \d+\.\d+ at delta 1e-05 "
                                              rf"\(2 releases answered before, {spent:.4g} spent\), past its cap 8"):
        again.release("cooccurrence", COOCCURRENCE_INPUT, server_round=2)


def test_a_devices_own_cap_binds_below_the_runs_budget():
    secure, grid = _secure(12)
    for node in grid.nodes:
        grid.contexts[node].node_config["user-epsilon-cap"] = 4.0
    secure.setup(server_round=1)
    secure.release("popularity", _empty(), server_round=1)  # about 1.9: within 4
    with pytest.raises(ProtocolRefusal, match=r"release 'cooccurrence' would take this device to user-level epsilon 7\.\d+ .*past its cap 4"):
        secure.release("cooccurrence", COOCCURRENCE_INPUT, server_round=2)


def test_the_cap_is_the_node_configs_else_the_default_on_a_device_else_the_runs():
    from shared.secure_sum.device import spend_cap

    assert spend_cap({"user-epsilon": 16.0}, {"user-epsilon-cap": 3.0}, on_device=True) == 3.0
    assert spend_cap({"user-epsilon": 16.0}, {}, on_device=True) == 8.0
    assert spend_cap({"user-epsilon": 16.0}, {}, on_device=False) == 16.0


def test_a_corrupt_or_foreign_spend_record_is_an_error_naming_the_file_never_replaced(tmp_path):
    from shared.secure_sum.spend import SPEND_FILE, SpendFileError, load_spend

    secure, grid = _secure(12, state=tmp_path)
    path = tmp_path / "partition-0" / SPEND_FILE
    path.parent.mkdir(parents=True)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(SpendFileError, match=f"{path}: unreadable spend record"):
        load_spend(path, None, "user-101")
    secure.setup(server_round=1)
    with pytest.raises(SpendFileError, match="not replacing it: it is the record of the privacy already spent"):
        secure.release("popularity", _empty(), server_round=1)
    assert path.read_text(encoding="utf-8") == "{not json"
    path.write_text('{"format": "fedmmrec-user-spend/1", "user": "someone-else", "answered": []}', encoding="utf-8")
    with pytest.raises(SpendFileError, match=f"{path}: the spend of user 'someone-else', but this device's data is user 'user-101'"):
        load_spend(path, None, "user-101")


def test_two_runs_sharing_their_devices_state_the_second_is_refused_by_every_device_and_nothing_released(
    small_dataset, feature_cache, tmp_path
):
    """``device-state-dir`` outlives the run, as a real device's ``state-dir`` does: the second
    run's first release is refused by every device (past its cap), aborted, and recorded so."""
    from shared.secure_sum.server import SecureAggregationAborted

    shared_state = tmp_path / "devices"
    _secure_run(small_dataset, feature_cache, tmp_path, "first", **{"device-state-dir": str(shared_state)})
    with pytest.raises(SecureAggregationAborted, match="aborted at popularity input: 0 devices, below the minimum 10 of 12"):
        _secure_run(small_dataset, feature_cache, tmp_path, "second", **{"device-state-dir": str(shared_state)})
    entries = read_ledger(tmp_path / "second")
    assert [e.kind for e in entries] == ["header", "release-aborted"]
    assert not (tmp_path / "second" / "releases.npz").exists()


# --- a server that deviates: the devices refuse ---------------------------------------------------


class DeviatingServer(SecureAggregation):
    """The real driver, made to lie at the consistency round: ``shown(i, survivors)`` is the
    survivor set device i is told; every signature it gets is forwarded, whatever set it is on;
    and it never aborts for too few devices itself."""

    def shown(self, device: int, survivors: list[int]) -> list[int]:
        return survivors

    def _require(self, alive: int, stage: str) -> None:
        return None

    def _send(self, stage, fields_of, arrays, server_round):
        from shared.messages import SECURE_CONFIRM, SECURE_UNMASK

        if stage in (SECURE_CONFIRM, SECURE_UNMASK):
            told = {}
            for i, fields in fields_of.items():
                survivors = self.shown(i, list(fields["survivors"]))
                told[i] = {**fields, "survivors": survivors}
                if "dropped" in fields:
                    told[i]["dropped"] = sorted(set(self.participants) - set(survivors))
            fields_of = told
        return super()._send(stage, fields_of, arrays, server_round)

    def _confirm(self, name, survivors, common, committed, server_round):
        from shared.messages import SECURE_CONFIRM
        from shared.secure_sum.records import ConfirmReply, ConfirmRequest

        asked = {i: ConfirmRequest(*common, survivors, committed).fields() for i in survivors}
        replies = {i: ConfirmReply.of(secure_fields(r)) for i, r in self._send(SECURE_CONFIRM, asked, ArrayRecord(), server_round).items()}
        return ([r.identity_key for r in replies.values()], [r.signature for r in replies.values()],
                {i: (r.sketch, r.sketch_signature) for i, r in replies.items()})


def _deviating(users: int, drop=None) -> tuple[DeviatingServer, DeliveringGrid]:
    grid = DeliveringGrid(users, drop)
    config = resolve(None, {"privacy": "user", "user-noise": "distributed", "secure-neighbours": 8, "device-state-dir": str(grid.state)})
    return DeviatingServer(grid, grid.nodes, config, [ITEMS, 10, 15], log=lambda *a: None), grid


def test_a_server_that_shows_a_devices_neighbours_different_survivor_sets_is_refused_by_every_device():
    """The split view: half of device 0's neighbours are told it survived (they would reveal its
    seed), the other half that it dropped (they would reveal its mask key); with both, the server
    unmasks device 0's input alone. Each side holds signatures on its own set only: fewer than
    the minimum, and no device reveals a share."""
    secure, grid = _deviating(12)
    secure.setup(server_round=1)
    told_dropped = set(secure.neighbours[0][:4])
    secure.shown = lambda device, survivors: [u for u in survivors if u != 0] if device in told_dropped else survivors
    with pytest.raises(ProtocolRefusal, match=r"\d distinct roster devices signed the survivor set of release 'popularity', "
                                              r"below the minimum 11: refusing to unmask"):
        secure.release("popularity", _empty(), server_round=1)
    for node in grid.nodes:
        session = DeviceSession.from_record(dict(grid.contexts[node].state.config_records["secure-sum"]))
        assert session.revealed_seeds == session.revealed_keys == []


def test_a_server_that_unmasks_below_the_minimum_by_padding_the_survivor_set_is_refused():
    """Two devices go offline before their input; the server lists one of them as a survivor,
    so the set reaches the minimum of 11. The offline device signs nothing: 10 signatures."""
    offline = {0, 1}
    secure, grid = _deviating(12, {"secure-input": offline, "secure-confirm": offline, "secure-unmask": offline})
    secure.setup(server_round=1)
    secure.shown = lambda device, survivors: sorted(set(survivors) | {0})
    with pytest.raises(ProtocolRefusal, match="10 distinct roster devices signed the survivor set of release 'popularity', below the minimum 11"):
        secure.release("popularity", _empty(), server_round=1)


def test_a_deployed_device_without_an_identity_key_or_roster_refuses_the_secure_sum():
    from types import SimpleNamespace

    from shared.secure_sum.device import _identity_key, _roster

    deployed = SimpleNamespace(on_device=True)
    context = Context(run_id=1, node_id=1, node_config={"data-dir": "/d"}, state=RecordDict(), run_config={})
    with pytest.raises(ProtocolRefusal, match="no identity-key in this device's node config"):
        _identity_key(None, context, deployed)
    with pytest.raises(ProtocolRefusal, match="no roster in this device's node config: it cannot tell its neighbours' keys from the server's"):
        _roster(None, context, deployed)


def test_a_request_bound_to_be_refused_spends_nothing_and_a_device_without_a_state_dir_releases_nothing(tmp_path):
    from types import SimpleNamespace

    from flwr.app import ConfigRecord

    from shared.secure_sum.device import _answer_within_budget
    from shared.messages import SECURE_INPUT, secure_message
    from shared.secure_sum.spend import SPEND_FILE

    secure, grid = _secure(12, state=tmp_path)
    secure.setup(server_round=1)
    fields = {"devices": 12, "dimensions": secure.dimensions, "release": "popularity", "participants": [0], "held": secure.forwarded[0]}
    message = secure_message(grid.nodes[0], SECURE_INPUT, fields, _empty(), secure.config.device_settings(), 1)
    with pytest.raises(ProtocolRefusal, match="refusing to mask an input for 1 devices: the minimum is 11 of 12"):
        grid.push_messages([message])
    assert not (tmp_path / "partition-0" / SPEND_FILE).exists()  # nothing spent on a refused request
    deployed = SimpleNamespace(on_device=True, user_id="u")
    context = Context(run_id=1, node_id=1, node_config={"data-dir": "/d"}, state=RecordDict(), run_config={})
    bare = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1, message_type="train")
    with pytest.raises(ProtocolRefusal, match="no state-dir in this device's node config: it cannot keep what it released across runs"):
        _answer_within_budget(bare, context, deployed, secure.plan, secure.plan.release("popularity"))


def test_a_deployed_device_sends_its_statistic_in_the_clear_only_where_its_own_node_config_allows_it(tmp_path):
    """A server that switches its settings to user-noise = central would get each statistic in
    the clear: a real device refuses unless its own node config says so; a simulated one (the
    researcher sets both sides) answers."""
    from types import SimpleNamespace

    from client.request import DeviceRequest
    from client.statistics import send_statistic
    from shared.config import resolve
    from shared.data import DatasetError

    request = DeviceRequest("popularity", 1, resolve(None, {"user-noise": "central"}), {})
    device = SimpleNamespace(node_config={"data-dir": str(tmp_path / "no-such-folder")}, state=None)
    with pytest.raises(ProtocolRefusal, match="its node config does not allow it"):
        send_statistic(None, device, request)
    allowed = SimpleNamespace(node_config={**device.node_config, "user-noise": "central"}, state=None)
    with pytest.raises(DatasetError):  # past the refusal: it goes on to read its data (here, none)
        send_statistic(None, allowed, request)


def test_the_evidence_file_holds_exactly_the_arrays_its_types_name(dropout_run):
    """secure-sum.npz is written and read through shared.secure_sum.evidence: every array in it
    is a field of the run's KeyEvidence or of a release's ReleaseEvidence, and a missing one is
    a KeyError naming the array, as the audit reports it."""
    from shared.secure_sum.evidence import KeyEvidence, ReleaseEvidence

    arrays = dict(np.load(dropout_run / "secure-sum.npz"))
    named = set(KeyEvidence.of(arrays).arrays())
    for release in ("popularity", "cooccurrence", "selection"):
        evidence = ReleaseEvidence.of(arrays, release)
        assert evidence.masked_sum.dtype == np.uint64 and evidence.unsketched_vectors.dtype == np.uint32
        named |= set(evidence.arrays(release))
    assert named == set(arrays)
    assert ReleaseEvidence.key("sketch_signatures", "selection") == "selection.sketch-signatures"
    del arrays["selection.unsketched-vectors"]
    with pytest.raises(KeyError, match="selection.unsketched-vectors"):
        ReleaseEvidence.of(arrays, "selection")
    with pytest.raises(AttributeError, match="ReleaseEvidence has no field 'sketch'"):
        ReleaseEvidence.key("sketch", "selection")


def test_skellam_noise_keeps_its_variance_where_numpys_poisson_does_not():
    """At a rate of 3e15 numpy's Poisson sampler gave 0.93 of the Skellam std (a few-device plan,
    or a study's summed shares, reach such rates); drawn as parts below 1e12 it is on target."""
    import numpy as np

    from shared.secure_sum.skellam import MAX_POISSON_RATE, skellam_noise

    rate = 3e15
    noise = skellam_noise(np.random.default_rng(0), 8000, 2 * rate)
    assert abs(float(np.std(noise)) / np.sqrt(2 * rate) - 1) < 0.03
    small = np.random.default_rng(5)
    direct = small.poisson(1e9, 100) - small.poisson(1e9, 100)
    assert np.array_equal(skellam_noise(np.random.default_rng(5), 100, 2e9), direct)  # below the limit: one draw, as before
    assert MAX_POISSON_RATE == 1e12
