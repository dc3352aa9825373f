"""Hugging Face backbones in a zoo (extra ``hub``): a tiny, randomly initialised model built
locally (nothing is downloaded) is added, scored and selected end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.cli import main
from fewshot.errors import CheckpointError
from fewshot.select.index import Zoo
from fewshot.select.metafeatures import describe_candidates
from fewshot.select.pool import build_meta_dataset

transformers = pytest.importorskip("transformers", reason="the hub extra (transformers) is not installed")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny ResNet and a tiny ViT in the save_pretrained layout, the ViT with a preprocessor config."""
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                       layer_type="basic", architectures=["ResNetForImageClassification"],
                                       id2label={i: str(i) for i in range(7)})
    transformers.ResNetForImageClassification(config).save_pretrained(root / "resnet")
    vit = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32)
    transformers.ViTModel(vit, add_pooling_layer=False).save_pretrained(root / "vit")
    (root / "vit" / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 16, "width": 16}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    return root


def test_metadata_comes_from_the_config_and_inputs_are_normalised(folders, tmp_path):
    zoo = Zoo(tmp_path / "zoo", create=True)
    entry = zoo.add("vit", folders / "vit")
    assert entry["architecture"] == "hf-transformers" and entry["image_shape"] == [3, 16, 16]
    assert entry["feature_dim"] == 16 and entry["objective"] == "feature-extraction"
    model = zoo.load("vit")
    assert model.backbone.mean.flatten().tolist() == [0.5] * 3 and model.backbone.std.flatten().tolist() == [0.25] * 3
    assert entry["parameters"] == sum(p.numel() for p in model.backbone.parameters())
    resnet = zoo.add("resnet", folders / "resnet", image_shape=(3, 16, 16))
    assert resnet["objective"] == "image-classification" and zoo.metadata("resnet")["source"]["num_classes"] == 7
    # Reloaded from the zoo, the network gives the features the original model gives.
    original = transformers.ResNetForImageClassification.from_pretrained(str(folders / "resnet")).resnet.eval()
    x = torch.rand(2, 3, 16, 16)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    expected = original(pixel_values=(x - mean) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    got = zoo.load("resnet").backbone(x)
    assert torch.allclose(got, expected.pooler_output.flatten(1), atol=1e-5)


def test_a_config_naming_custom_code_is_refused(folders, tmp_path, capsys):
    bad = tmp_path / "custom"
    bad.mkdir()
    config = json.loads((folders / "vit" / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes((folders / "vit" / "model.safetensors").read_bytes())
    code = main(["zoo", "add", "custom", str(bad), "--zoo", str(tmp_path / "zoo")])
    assert code == 2 and "custom code" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="no model type"):
        config = {**json.loads((folders / "vit" / "config.json").read_text()), "model_type": "no-such-model"}
        (bad / "config.json").write_text(json.dumps(config))
        Zoo(tmp_path / "zoo").add("custom", bad)


def test_a_hub_model_is_scored_and_selected_end_to_end(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    zoo = Zoo(tmp_path / "zoo", create=True)
    assert main(["zoo", "add", "vit", str(folders / "vit"), "--zoo", str(zoo.root)]) == 0
    assert "added vit" in capsys.readouterr().out
    from fewshot.models import build_backbone

    torch.manual_seed(0)
    zoo.add("conv", build_backbone("conv4", (1, 8, 8), width=4, depth=2), image_shape=(1, 8, 8),
            metadata={"objective": "random-init"})
    x, y = torch.rand(6, 1, 28, 28), torch.arange(3).repeat(2)
    rows, costs = describe_candidates(zoo, x, y)
    vit = next(r for r in rows if r["model"] == "vit")
    assert vit["model.arch.hf-transformers"] == 1.0 and np.isfinite(vit["score.logme"])
    assert 0 <= vit["score.knn_view"] <= 1 and costs["vit"] > 0

    build_meta_dataset(zoo, 6, sources=["digits"], finetune={"steps": 3}, progress=False)
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in (5, 6):
        folder = tmp_path / "support" / f"digit{c}"
        folder.mkdir(parents=True)
        for i in range(3):
            image = digits.images[np.flatnonzero(digits.target == c)[i]] * (255 / 16)
            Image.fromarray(image.astype(np.uint8)).save(folder / f"{i}.png")
    assert main(["select", "--zoo", str(zoo.root), "--support", str(tmp_path / "support"), "--json"]) == 0
    ranking = json.loads(capsys.readouterr().out)["ranking"]
    assert sorted(e["model"] for e in ranking) == ["conv", "vit"]
    assert all(0 <= e["interval"][0] <= e["interval"][1] <= 100 for e in ranking)
