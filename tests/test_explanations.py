"""``fedmmrec recommend --explain``: exact score parts from the real exported models, "because
you interacted with", and the deletion check of ``fedmmrec explanations``."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest
import torch

from client.exports import exported_model, load_export
from client.recommend import rank
from server.export import export_run
from shared.config import resolve
from shared.item_content import content_matrix
from shared.item_model import CooccurrenceModel
from shared.data import load_dataset, split_for
from shared.explain import tower_shapley
from shared.features import load_or_compute_features
from shared.models.recommender import ItemTower, ModelSpec, catalog_tensors
from shared.run_directory import RunDirectory
from simulations.cli import main as cli
from simulations.studies.explanations import run_explanations
from simulations.engines.simulate import simulate


def _user(small_dataset, k: int):
    dataset = load_dataset(small_dataset)
    split = split_for(dataset, resolve())
    return dataset, split.train_items[k]


def test_user_level_parts_add_up_to_the_devices_own_score(user_run, small_dataset, feature_cache, tmp_path):
    out = export_run(user_run, tmp_path / "export")
    assert load_export(out).kind == "user-level"
    dataset, train = _user(small_dataset, 3)
    features = load_or_compute_features(dataset, str(feature_cache), progress=False)
    content = content_matrix(features.text, features.text_mask, features.image, features.image_mask)
    model = CooccurrenceModel.from_arrays(RunDirectory.open(user_run).load_arrays("model.npz"))
    reference = model.scores(train, content if model.content_weight else None)  # what the device ranks by
    reference[train] = -np.inf
    top = np.argsort(-reference, kind="stable")[:10]
    items = rank(out, [dataset.item_ids[i] for i in train], k=10, explain=True)
    assert [item.item for item in items] == [dataset.item_ids[i] for i in top]
    for item, i in zip(items, top):
        assert item.score == pytest.approx(reference[i], abs=1e-4)
        assert sum(item.parts.values()) == pytest.approx(item.score, abs=1e-9)
        assert item.parts and set(item.parts) <= {"collaborative", "popularity", "text", "image", "prior"}  # nonzero ones
        assert not model.content_weight or "text" in item.parts
        assert len(item.because) == 3 and all(h in {dataset.item_ids[j] for j in train} for h, _ in item.because)


def test_because_you_interacted_with_is_an_exact_split_of_the_personal_terms(user_run, small_dataset, tmp_path):
    out = export_run(user_run, tmp_path / "export")
    dataset, train = _user(small_dataset, 5)
    everyone = rank(out, [dataset.item_ids[i] for i in train], k=1, explain=True)[0]
    from shared.explain import user_level_because

    export = load_export(out)
    index = export.ids.index(everyone.item)
    all_history = user_level_because(exported_model(export), train, export.arrays["content.npy"].astype(float), index, k=len(train))
    personal = sum(everyone.parts.get(name, 0.0) for name in ("collaborative", "text", "image", "prior"))
    assert sum(w for _, w in all_history) == pytest.approx(personal, abs=1e-6)
    assert [dataset.item_ids[h] for h, _ in all_history[:3]] == [h for h, _ in everyone.because]


def test_recommend_explain_prints_parts_and_json(user_run, small_dataset, tmp_path, capsys):
    out = export_run(user_run, tmp_path / "export")
    dataset, train = _user(small_dataset, 0)
    history = ",".join(dataset.item_ids[i] for i in train)
    trusted = str(user_run / "export-key.pub")  # the run's own export key (no deployment key given)
    assert cli(["recommend", "--model", str(out), "--trusted-key", trusted, "--history", history, "--k", "2", "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].strip().startswith("why: ") and "%" in lines[1] and lines[2].strip().startswith("because you interacted with: ")
    assert cli(["recommend", "--model", str(out), "--trusted-key", trusted, "--history", history, "--k", "2", "--explain", "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert len(parsed) == 2 and sum(parsed[0]["parts"].values()) == pytest.approx(parsed[0]["score"], abs=1e-9)
    assert len(parsed[0]["because-you-interacted-with"]) == 3


def test_tower_shapley_parts_are_the_shapley_values_by_every_arrival_order(small_dataset, feature_cache):
    """Against the definition: the mean over the 3! orders in which text, image and the id part
    arrive of what each adds, with masks off and ids unknown for the absent ones."""
    dataset = load_dataset(small_dataset)
    torch.manual_seed(0)
    tower = ItemTower(ModelSpec(fusion="gated", id_items=dataset.num_items)).eval()
    torch.nn.init.normal_(tower.id_offsets.weight, std=0.3)
    catalog = catalog_tensors(load_or_compute_features(dataset, str(feature_cache), progress=False))
    base, parts, players = tower_shapley(tower, catalog)
    assert players == ["text", "image", "id"]

    def embed(present: set[str]) -> np.ndarray:
        inputs = dict(catalog)
        if "id" not in present:
            inputs["item_known"] = torch.zeros_like(catalog["item_known"])
        for m in ("text", "image"):
            if m not in present:
                inputs[f"{m}_mask"] = torch.zeros_like(catalog[f"{m}_mask"])
        with torch.no_grad():
            return tower(inputs).numpy().astype(np.float64)

    expected = np.zeros_like(parts)
    orders = list(itertools.permutations(players))
    for order in orders:
        present: set[str] = set()
        for name in order:
            before = embed(present)
            present.add(name)
            expected[:, players.index(name)] += (embed(present) - before) / len(orders)
    assert np.abs(parts - expected).max() < 1e-5
    with torch.no_grad():
        assert np.abs(base + parts.sum(1) - tower(catalog).numpy()).max() < 1e-5
    assert np.abs(parts).mean() > 1e-3  # every player matters in this tower


def test_the_deletion_check_on_real_runs(federated_run, user_run):
    """Two modality players: the Shapley order is the deletion order exactly (phi_text - phi_image =
    f(text) - f(image) = drop(text) - drop(image)), so the tower's share is 1. The user-level
    content terms are renormalised and re-standardised when a modality goes, so there it is a
    measurement."""
    assert cli(["explanations", str(federated_run), "--users", "2"]) == 0  # the command, on two users
    tower = run_explanations(federated_run)
    assert tower["kind"] == "item-tower" and tower["users"] == 12
    assert tower["faithfulness-cases"] == 120 and tower["faithful-share"] == 1.0
    assert set(tower["mean-share"]["warm"]) == {"text", "image"}
    user = run_explanations(user_run, users=6)
    assert user["kind"] == "user-level" and user["users"] == 6 and user["items"]["warm"] + user["items"]["cold"] == 60
    assert (RunDirectory.open(user_run).path / "explanations.md").read_text().startswith("# Explanations of")


@pytest.mark.parametrize("item_model", ["factors", "ease"])
def test_a_cold_items_score_splits_into_its_content_blocks_exactly(item_model):
    """Items unknown at release time are placed from their content (factors and popularity
    linear in it), so their terms split by the content's column blocks; deleting a block from
    the item's own content moves its score by exactly that block's part (no content
    similarity here: content weight 0)."""
    from shared.cooccurrence import fit_model
    from shared.explain import without_modality

    rng = np.random.default_rng(0)
    n, m = 40, 12
    content = np.hstack([rng.normal(size=(n, 384)) / 20, rng.normal(size=(n, 8)) / 3, np.ones((n, 3))])
    known = np.ones(n, dtype=bool)
    known[[5, 17, 33]] = False
    top = np.arange(m)
    counts = rng.poisson(3.0, size=(m, m)).astype(float)
    model, _ = fit_model(
        rng.poisson(5.0, size=n).astype(float), 0.5, top, counts + counts.T, 0.1, content, known, 4, 0.3,
        item_model=item_model, ease_lambda=3.0, cold_weight=2.0,
    )
    assert np.flatnonzero(model.from_content).tolist() == [17, 33]  # 5 is a released item: its own factors
    history = np.array([0, 2, 3, 7])
    terms = model.score_terms(history, content)
    np.testing.assert_allclose(sum(terms.values()), model.scores(history), atol=1e-9)
    for cold in (17, 33):
        assert terms["collaborative"][cold] == 0.0 and terms["popularity"][cold] == 0.0
        for modality in ("text", "image"):
            stripped = without_modality(content, modality, rows=[cold])
            after = sum(model.score_terms(history, stripped).values())[cold]
            assert sum(terms.values())[cold] - after == pytest.approx(terms[modality][cold], abs=1e-9)
    assert terms["text"][0] == 0.0 and terms["prior"][0] == 0.0  # a warm item: collaborative and popularity only
    if item_model == "ease":  # "because": each history item's own weight to the item, scaled as the score is
        from shared.explain import user_level_because

        _, scale, _ = model.scales(history)
        because = dict(user_level_because(model, history, None, 9, k=4))
        weights = model.factors[model.top_items].T  # B[i, j]
        assert because == pytest.approx({int(h): weights[h, 9] / scale for h in history})


def test_the_replay_buffer_is_bounded_keeps_the_recent_and_samples_the_older_uniformly():
    from client.online import ReplayBuffer

    buffer = ReplayBuffer(20, rng=np.random.default_rng(1))
    for item in range(1000):
        buffer.add(item)
    assert len(buffer) == 20 and buffer.recent == list(range(990, 1000))
    assert len(set(buffer.reservoir)) == 10 and max(buffer.reservoir) < 990
    counts = np.zeros(90)
    for trial in range(3000):
        buffer = ReplayBuffer(20, rng=np.random.default_rng(trial))
        for item in range(100):
            buffer.add(item)
        counts[buffer.reservoir] += 1
    # Each of the 90 older items stays with probability 10/90: 333 of 3000, sd about 17.
    assert counts.min() > 333 - 6 * 17 and counts.max() < 333 + 6 * 17
    with pytest.raises(ValueError, match="replay-buffer must be at least 2"):
        ReplayBuffer(1)


def test_a_new_interaction_updates_the_users_vector_on_the_device_at_once(user_run, federated_run, small_dataset, tmp_path, capsys):
    from client.online import OnlineUser

    dataset, train = _user(small_dataset, 2)
    history = [dataset.item_ids[i] for i in train]
    new = next(item for item in dataset.item_ids if item not in history)
    user_level = export_run(user_run, tmp_path / "user")
    online = OnlineUser(user_level, history)
    online.observe(new)  # the user-level vector is exact: the same as ranking with the longer history
    assert [i.item for i in online.top(10)] == [i.item for i in rank(user_level, history + [new], k=10)]

    tower = export_run(federated_run, tmp_path / "tower")
    online = OnlineUser(tower, history, replay=50)
    export = load_export(tower)
    index = export.ids.index(new)
    before = float(export.arrays["item_embeddings.npy"][index] @ online.user)
    online.observe(new)
    assert float(export.arrays["item_embeddings.npy"][index] @ online.user) > before  # BPR moved toward it
    assert len(online.buffer) == len(history) + 1 and new not in [i.item for i in online.top(10)]

    assert cli(["recommend", "--model", str(user_level), "--trusted-key", str(user_run / "export-key.pub"),
                "--history", ",".join(history), "--new", new, "--k", "3",
                "--replay-buffer", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == [i.item for i in rank(user_level, history + [new], k=3)]


def test_the_streaming_study_predicts_then_trains_week_by_week_within_one_budget(small_dataset, feature_cache, tmp_path, capsys):
    """Three ways to follow time under one total user-level budget: frozen spends it at once,
    retrain and online spend equal weekly shares that compose to exactly the budget."""
    out = tmp_path / "stream"
    assert cli(["streaming-study", "--data", str(small_dataset), "--out", str(out), "--weeks", "2", "--seeds", "0",
                "--feature-cache", str(feature_cache), "--epsilon", "3", "--item-model", "ease", "--ease-lambda", "50",
                "--cold-weight", "4", "--user-noise", "central"]) == 0
    assert "week 2/2" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["week"], r["mode"]) for r in rows] == [(str(w), m) for w in (0, 1) for m in ("frozen", "retrain", "online")]
    epsilon = {(r["week"], r["mode"]): float(r["user-level-epsilon"]) for r in rows}
    assert epsilon[("0", "frozen")] == pytest.approx(3.0, abs=1e-6) and epsilon[("1", "frozen")] == epsilon[("0", "frozen")]
    for mode in ("retrain", "online"):
        assert epsilon[("0", mode)] < 3.0 and epsilon[("1", mode)] == pytest.approx(3.0, abs=1e-6)
    assert all(int(r["users"]) > 0 and 0.0 <= float(r["hr@10"]) <= 1.0 for r in rows)
    assert (out / "streaming.png").stat().st_size > 10_000 and "| online | 2 |" in (out / "results.md").read_text()
    assert "Model: item-model ease, ease-lambda 50.0, cold-weight 4.0, mechanism gaussian-releases." in (out / "results.md").read_text()
    for r in rows:  # the new-film counts agree with each other
        assert int(r["lists-with-new-film"]) <= int(r["new-film-slots"]) <= 10 * int(r["lists-with-new-film"])
        assert int(r["new-film-hits"]) == (round(float(r["hr@10-new-films"]) * int(r["new-films"])) if int(r["new-films"]) else 0)


def test_the_streaming_study_runs_the_secure_default_with_its_own_rounding_noise_and_accounting(small_dataset, feature_cache, tmp_path):
    """By default each release is the secure sum's arithmetic (each device's statistic rounded
    within the plan's bound with its Skellam share, summed in the field): its epsilon is the
    secure plan's at every device's share less the colluders' and the removed user's own, below
    the budget (the plan leaves room for 10% of devices dropping), and its released sums are
    the statistics' plus that noise."""
    from shared.cooccurrence import triangle_size
    from shared.data import load_dataset
    from shared.secure_sum.plan import make_plan

    out = tmp_path / "secure"
    assert cli(["streaming-study", "--data", str(small_dataset), "--out", str(out), "--weeks", "2", "--seeds", "0",
                "--feature-cache", str(feature_cache), "--epsilon", "3"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    epsilon = {(r["week"], r["mode"]): float(r["user-level-epsilon"]) for r in rows}
    dataset = load_dataset(small_dataset)
    n, dims = dataset.num_users, [dataset.num_items, triangle_size(dataset.num_items)]
    for shares, dimensions, count, key in (
        ([0.1, 0.9], dims, 2, ("1", "frozen")),
        ([0.05, 0.45] * 2, dims * 2, 2, ("0", "retrain")),
        ([0.05, 0.45] * 2, dims * 2, 4, ("1", "online")),
    ):
        plan = make_plan(n, [str(k) for k in range(len(shares))], dimensions, shares, 3.0, 1e-5, 32, 0.1, 0.05)
        assert epsilon[key] == pytest.approx(plan.epsilon([(n - 2) * r.share_variance for r in plan.releases[:count]]), rel=1e-12)
    assert 2.0 < epsilon[("1", "online")] < 3.0  # the plan is sized for 90% of the devices: all of them give less
    assert "mechanism secure-skellam-releases" in (out / "results.md").read_text()


def test_the_secure_study_noise_sums_each_devices_rounded_statistic_and_its_share():
    """Without noise the study's secure release is the sum of the devices' statistics within
    the rounding (each device's rounded statistic is within the plan's bound of its scaled
    statistic); with noise, the sum moves by the devices' shares: its std the plan's."""
    import numpy as np

    from server.mechanisms import mechanism_for
    from shared.config import resolve

    rng = np.random.default_rng(0)
    statistics = [v / np.linalg.norm(v) for v in rng.normal(size=(20, 50))]
    exact = np.sum(statistics, axis=0)
    noiseless = mechanism_for(resolve(None, {"user-epsilon": "inf"})).study_noise([1.0], [50], 20)
    summed, std = noiseless.release(0, iter(statistics), 50, rng)
    bound = noiseless.plan.releases[0].bound / noiseless.plan.releases[0].scale
    assert std == 0.0 and np.linalg.norm(summed - exact) <= 20 * bound and noiseless.epsilon(1) == float("inf")
    noisy = mechanism_for(resolve(None, {"user-epsilon": 1.0})).study_noise([1.0], [50], 20)
    released, std = noisy.release(0, iter(statistics), 50, rng)
    assert std == pytest.approx(noisy.plan.releases[0].noise_std_of_sum(20)) and std > 1.0
    assert 0.5 * std < np.std(released - exact) < 1.5 * std  # 50 draws of the shares' sum


def test_the_streaming_study_counts_new_films_in_lists_and_their_hits():
    """A week's new films (first seen in it) are counted where they reach a predicted user's top
    10, and a user whose first pick of the week is a new film in its top 10 is a new-film hit."""
    import numpy as np

    from simulations.studies.streaming import WEEK_S, Timeline, _predict

    class Scores:  # the study's model interface: scores(history) over the whole catalog
        def __init__(self, scores):
            self.values = np.asarray(scores, dtype=float)

        def scores(self, history):
            return self.values.copy()

    n = 30
    first_seen = np.zeros(n)
    first_seen[[20, 21]] = WEEK_S + 5.0  # new this week
    first_seen[29] = 3 * WEEK_S  # not in the catalog yet: never listed however it scores
    line = Timeline(users=np.array([0, 1, 2]), items=np.array([20, 3, 21]), times=np.array([WEEK_S + 10.0] * 3),
                    start=WEEK_S, weeks=1)
    histories = [np.array([0]), np.array([1]), np.array([2])]
    scores = np.arange(n, dtype=float)  # items 29, 28, ... on top; 20 and 21 are 10th and 9th after 29
    row = _predict(Scores(scores), line, WEEK_S, 2 * WEEK_S, histories, first_seen)
    assert (row["users"], row["new-films"], row["new-film-hits"]) == (3, 2, 2)
    assert (row["new-film-slots"], row["lists-with-new-film"]) == (6, 3)  # 21 and 20 in all three top 10s
    scores[[20, 21]] = -1.0  # the same new films scored last: in no list, no hit
    row = _predict(Scores(scores), line, WEEK_S, 2 * WEEK_S, histories, first_seen)
    assert (row["new-films"], row["new-film-hits"], row["new-film-slots"], row["lists-with-new-film"]) == (2, 0, 0, 0)


def test_a_device_ranks_placed_items_with_the_model_it_was_sent_whatever_content_it_holds():
    """Items placed from content are read from the model when a device ranks (``scores``), and
    recomputed from the content given only when an explanation asks (``score_terms``): a device
    whose content matrix differs from the server's still ranks them as the model says."""
    from shared.item_model import CooccurrenceModel

    rng = np.random.default_rng(0)
    content = rng.normal(size=(50, 384 + 64 + 3))
    factor_map, popularity_map = rng.normal(size=(content.shape[1], 4)) * 0.01, rng.normal(size=content.shape[1]) * 0.01
    placed = np.zeros(50, dtype=bool)
    placed[40:] = True
    factors, popularity = rng.normal(size=(50, 4)), np.abs(rng.normal(size=50))
    factors[placed], popularity[placed] = content[placed] @ factor_map, content[placed] @ popularity_map
    model = CooccurrenceModel(np.arange(10), factors.astype(np.float32).astype(np.float64), popularity, 0.3, 0.0,
                              factor_map, popularity_map, placed)
    history = np.array([1, 2, 3])
    scores = model.scores(history, content)
    assert model.scores(history, -content).tolist() == scores.tolist()  # the model's placement, not the content's
    assert sum(model.score_terms(history, content).values()) == pytest.approx(scores, abs=1e-6)  # float32 factors
    assert not np.allclose(sum(model.score_terms(history, -content).values())[placed], scores[placed])  # recomputed
