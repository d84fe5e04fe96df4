"""``fedmmrec export`` writes a TorchScript item tower whose scores match the training-time
model, and ``fedmmrec recommend`` ranks with numpy alone from the export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from client.recommend import recommend
from server.export import export_run
from shared.config import model_spec
from shared.data import load_dataset
from shared.features import load_or_compute_features
from shared.models.recommender import ItemTower, Recommender, catalog_tensors


def test_exported_model_matches_the_trained_one_and_ranks(federated_run, tmp_path, capsys):
    run_dir = federated_run
    out = export_run(run_dir, tmp_path / "export")
    config = json.loads((run_dir / "config.json").read_text())
    dataset = load_dataset(config["data-dir"])
    catalog = catalog_tensors(load_or_compute_features(dataset, config["feature-cache"], progress=False))
    tower = ItemTower(model_spec(config))
    tower.load_state_dict(torch.load(run_dir / "checkpoints" / "final.pt")["item_tower"])
    tower.eval()
    with torch.no_grad():
        expected = tower(catalog).numpy()
        scripted = torch.jit.load(str(out / "item_tower.pt"))
        got = scripted(catalog["text"], catalog["text_mask"], catalog["image"], catalog["image_mask"]).numpy()
    assert np.allclose(got, expected, atol=1e-5)
    assert np.allclose(np.load(out / "item_embeddings.npy"), expected, atol=1e-5)

    # A device's trained embedding ranks the same items as the training-time model does.
    state = next((run_dir / "devices").glob("partition-*/device-state.json"))
    user = torch.tensor(json.loads(state.read_text())["user-embedding"])
    model = Recommender(model_spec(config), num_users=1)
    model.item_tower.load_state_dict(tower.state_dict())
    model.users.weight.data.copy_(user)
    reference = model.score_all(0, catalog).numpy()
    history = [dataset.item_ids[0], dataset.item_ids[1]]
    top = recommend(out, history, k=10, user_state=state)
    reference[[0, 1]] = -np.inf
    assert [item for item, _ in top] == [dataset.item_ids[i] for i in np.argsort(-reference, kind="stable")[:10]]
    assert [s for _, s in top] == pytest.approx(reference[np.argsort(-reference, kind="stable")[:10]].tolist(), abs=1e-4)

    from simulations.cli import main

    assert main(["recommend", "--model", str(out), "--history", ",".join(history), "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].lstrip().startswith("1 ")
    (out / "item_ids.json").write_text("[]")
    with pytest.raises(ValueError, match="does not match manifest.json"):
        recommend(out, history)


def test_recommend_refuses_a_manifest_that_leaves_an_exported_file_unchecked(federated_run, tmp_path):
    import json

    from server.export import export_run

    out = export_run(federated_run, tmp_path / "export")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"]["item_biases.npy"]  # a swapped biases file would now go unchecked
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"manifest.json: does not list item_biases.npy: the export is incomplete or was altered"):
        recommend(out, ["x"])
    manifest["files"]["item_biases.npy"] = "0" * 64
    manifest["files"]["../summary.json"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"file name '../summary.json' is not in the export folder"):
        recommend(out, ["x"])
