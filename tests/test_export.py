"""``fedmmrec export`` writes a TorchScript item tower whose scores match the training-time
model, and ``fedmmrec recommend`` ranks with numpy alone from the export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from client.recommend import recommend
from server.export import export_run
from shared.models.recommender import model_spec
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

    assert main(["recommend", "--model", str(out), "--trusted-key", str(federated_run / "export-key.pub"),
                 "--history", ",".join(history), "--k", "3"]) == 0
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


def test_a_device_ranks_only_with_an_export_signed_by_the_key_it_trusts(federated_run, tmp_path, capsys):
    """The attack: edit an exported file and recompute its hash in the manifest. The manifest
    still checks; its signature does not. Unsigned and other-key exports are refused too; the
    deployment's export key (fedmmrec deploy certs) signs as well as the run's own."""
    import json

    from client.exports import load_export
    from server.certificates import write_deployment_keys
    from shared.checksums import file_sha256
    from simulations.cli import main

    out = export_run(federated_run, tmp_path / "export")
    trusted = federated_run / "export-key.pub"
    assert load_export(out, trusted).manifest["signer"] == trusted.read_text()
    embeddings = np.load(out / "item_embeddings.npy")
    np.save(out / "item_embeddings.npy", embeddings[::-1].copy())
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["item_embeddings.npy"] = file_sha256(out / "item_embeddings.npy")
    (out / "manifest.json").write_text(json.dumps(manifest))
    load_export(out)  # the hashes alone agree ...
    with pytest.raises(ValueError, match="its signature does not verify against .*changed after signing; refused"):
        load_export(out, trusted)  # ... the signature does not
    assert main(["recommend", "--model", str(out), "--trusted-key", str(trusted), "--history", "", "--k", "1"]) == 2
    assert "changed after signing; refused" in capsys.readouterr().err

    del manifest["signature"], manifest["signer"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="manifest.json: not signed: this device ranks only with exports signed by"):
        load_export(out, trusted)

    keys = write_deployment_keys(tmp_path / "keys", ["localhost"], 1)
    deployed = export_run(federated_run, tmp_path / "deployed", keys.export_key)
    assert load_export(deployed, keys.export_public_key).manifest["signer"] == keys.export_public_key.read_text()
    with pytest.raises(ValueError, match="signed by another key than"):
        load_export(deployed, trusted)
