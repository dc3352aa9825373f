"""Baseline / Baseline++ pre-training, and pre-trained models on disk."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fewshot.config import TrainConfig
from fewshot.data import Episode, EpisodeSampler, from_arrays
from fewshot.errors import CheckpointError, ConfigError
from fewshot.evaluate import evaluate
from fewshot.methods import Baseline, BaselinePlusPlus, build_method
from fewshot.methods.transfer import FineTune, wrap
from fewshot.models import MLP, Conv4
from fewshot.models.heads import CosineHead
from fewshot.models.pretrained import load_pretrained, read_metadata, save_pretrained
from fewshot.runs import finetune_from, load_run, pretrained_from_run
from fewshot.train import Trainer

torch.set_num_threads(1)


def blob_data(classes=10, per_class=12, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(classes).repeat_interleave(per_class)
    x = centers[y] + torch.randn(len(y), dim, generator=g)
    half = classes // 2
    return from_arrays(x, y, splits={"train": list(range(half)), "test": list(range(half, classes))})


def test_episode_labels_map_to_rows_of_the_training_classes():
    method = Baseline(MLP(4, (8,)), image_shape=(4, 1, 1), classes=[7, 3, 9])
    assert method.num_classes == 3 and method.class_ids.tolist() == [3, 7, 9]  # sorted split order
    ep = Episode(torch.zeros(2, 4, 1, 1), torch.tensor([0, 1]), torch.zeros(2, 4, 1, 1), torch.tensor([1, 0]),
                 way=2, shot=1, classes=(9, 3))
    assert method.global_labels(ep, ep.support_y).tolist() == [2, 0]
    assert method.global_labels(ep, ep.query_y).tolist() == [0, 2]
    bad = Episode(ep.support_x, ep.support_y, ep.query_x, ep.query_y, way=2, shot=1, classes=(9, 4))
    with pytest.raises(ConfigError, match="beyond its 3 training classes"):
        method.global_labels(bad, bad.support_y)
    with pytest.raises(ConfigError, match="name their classes"):
        method.global_labels(Episode(ep.support_x, ep.support_y, ep.query_x, ep.query_y, 2, 1), ep.support_y)
    with pytest.raises(ConfigError, match="num_classes"):
        Baseline(MLP(4, (8,)), image_shape=(4, 1, 1)).loss([ep])


def test_lazy_class_map_is_saved_with_the_weights_and_sizes_a_bare_model():
    method = Baseline(MLP(4, (8,)), image_shape=(4, 1, 1), num_classes=3)
    ep = Episode(torch.zeros(2, 4, 1, 1), torch.tensor([0, 1]), torch.zeros(2, 4, 1, 1), torch.tensor([0, 1]),
                 way=2, shot=1, classes=(9, 3))
    assert method.global_labels(ep, ep.support_y).tolist() == [0, 1]  # rows in order of first appearance
    state = method.state_dict()
    assert state["class_ids"].tolist() == [9, 3, -1]
    bare = Baseline(MLP(4, (8,)), image_shape=(4, 1, 1))  # class count unknown: taken from the weights
    bare.load_state_dict(state)
    assert bare.num_classes == 3 and bare.head.out_features == 3
    assert bare.global_labels(ep, ep.support_y).tolist() == [0, 1]


def test_baseline_pretrains_in_the_one_trainer_and_adapts(tmp_path):
    data = blob_data()
    config = TrainConfig(method="baseline", method_options={"num_classes": 5}, backbone="mlp",
                         backbone_options={"hidden": [32]}, dataset="arrays", way=5, shot=2, query=4,
                         train_way=5, train_shot=2, train_query=4, episodes=40, lr=1e-2, val_split=None,
                         checkpoint_every=40, val_every=40)
    Trainer(config, tmp_path / "run", dataset=data, runs=tmp_path / "runs").run(progress=False, record=False)
    _, method, _ = load_run(tmp_path / "run")
    assert isinstance(method, Baseline) and sorted(method.class_ids.tolist()) == [0, 1, 2, 3, 4]
    test = EpisodeSampler(data, "test", 5, 1, 5)
    result = evaluate(method, test, 10, progress=False)
    assert result.accuracy > 60  # the paper's protocol: frozen features, a new linear head
    tuned = evaluate(finetune_from(tmp_path / "run", "lp-ft", steps=5), test, 10, progress=False)
    assert tuned.episodes == 10
    # the Chen et al. adaptation is seeded per task
    ep = test.episode(0)
    a = method.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    assert torch.equal(a, method.adapt(ep.support_x, ep.support_y, 5)(ep.query_x))
    with pytest.raises(ConfigError, match="takes no option"):
        method.set_test_options(inner_steps=3)


def test_baseline_plus_plus_uses_a_cosine_head_and_passes_it_on():
    torch.manual_seed(0)
    method = build_method("baseline++", Conv4(1, width=8, depth=2), image_shape=(1, 16, 16), num_classes=300)
    assert isinstance(method, BaselinePlusPlus) and isinstance(method.head, CosineHead)
    assert method.head.scale == 10.0 and method.head.out_features == 300
    data = from_arrays(torch.rand(60, 1, 16, 16), torch.arange(6).repeat_interleave(10), splits={"train": list(range(6))})
    ep = EpisodeSampler(data, "train", 3, 1, 2).episode(0)
    loss, metrics = method.loss([ep])
    assert torch.isfinite(loss) and 0 <= metrics["accuracy"] <= 100
    loss.backward()
    assert method.backbone[0][0].weight.grad is not None
    assert wrap(method, "linear-probe").get_params()["head_type"] == "cosine"
    assert method.adapt(ep.support_x, ep.support_y, 3)(ep.query_x).shape == (6, 3)


# -- pre-trained models on disk --------------------------------------------------------------

def test_save_and_load_a_pretrained_model_with_its_metadata(tmp_path):
    torch.manual_seed(0)
    method = BaselinePlusPlus(Conv4(1, width=8, depth=2), image_shape=(1, 16, 16), classes=[4, 2, 8])
    source = {"dataset": "omniglot", "split": "train", "classes": [2, 4, 8]}
    path = save_pretrained(method.backbone, tmp_path / "zoo" / "bpp", source=source, metadata={"note": "test"},
                           head=method.head, objective=method.name, image_shape=method.image_shape)
    assert path.name == "bpp.safetensors" and (tmp_path / "zoo" / "bpp.json").exists()
    meta = json.loads((tmp_path / "zoo" / "bpp.json").read_text())
    assert meta["architecture"] == "conv4" and meta["architecture_options"] == {"width": 8, "depth": 2}
    assert meta["parameters"] == sum(p.numel() for p in method.backbone.parameters())
    assert meta["feature_dim"] == 8 * 4 * 4 and meta["objective"] == "baseline++"
    assert meta["source"] == source and meta["note"] == "test" and meta["head"]["type"] == "cosine"
    loaded = load_pretrained(tmp_path / "zoo" / "bpp.safetensors")
    for k, v in method.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[k], v)
    assert isinstance(loaded.head, CosineHead) and torch.equal(loaded.head.weight, method.head.weight)
    # without the JSON, the safetensors header still describes the model
    (tmp_path / "zoo" / "bpp.json").unlink()
    assert read_metadata(path)["architecture"] == "conv4"
    assert finetune_from(path, "finetune").get_params()["head_type"] == "cosine"


def test_mismatched_weights_raise_checkpoint_error(tmp_path):
    path = save_pretrained(Conv4(1, width=8, depth=2), tmp_path / "c", image_shape=(1, 16, 16))
    with pytest.raises(CheckpointError, match="does not fit the backbone"):
        load_pretrained(path, module=Conv4(1, width=4, depth=2))
    meta = json.loads((tmp_path / "c.json").read_text())
    meta["parameters"] += 1
    (tmp_path / "c.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="metadata says"):
        load_pretrained(path)
    meta["architecture"] = "my.Net"
    (tmp_path / "c.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="pass the module"):
        load_pretrained(path)
    with pytest.raises(CheckpointError, match="missing"):
        load_pretrained(tmp_path / "absent.safetensors")


def test_any_safetensors_file_loads_into_a_user_module(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 6)
            self.b = nn.Linear(6, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x.flatten(1))))

    torch.manual_seed(0)
    trained = Net()
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "user.safetensors"))
    loaded = load_pretrained(tmp_path / "user.safetensors", module=Net())
    assert torch.equal(loaded.backbone.a.weight, trained.a.weight) and loaded.head is None
    data = blob_data()
    result = evaluate(wrap(loaded, "freeze-k", k=1, steps=5), EpisodeSampler(data, "test", 3, 2, 4), 4, progress=False)
    assert result.episodes == 4


def test_pretrained_from_run(tmp_path):
    data = blob_data()
    config = TrainConfig(method="baseline", method_options={"num_classes": 5}, backbone="mlp",
                         backbone_options={"hidden": [16]}, dataset="arrays", way=5, shot=1, query=2,
                         episodes=3, val_split=None, checkpoint_every=3, val_every=3)
    Trainer(config, tmp_path / "run", dataset=data, runs=tmp_path / "runs").run(progress=False, record=False)
    model = pretrained_from_run(tmp_path / "run", tmp_path / "baseline-arrays")
    meta = model.metadata
    assert meta["objective"] == "baseline" and meta["architecture"] == "mlp"
    assert meta["source"]["dataset"] == "memory:arrays" and meta["source"]["num_classes"] == 5  # in-memory data
    assert sorted(meta["source"]["classes"]) == [0, 1, 2, 3, 4]
    again = load_pretrained(tmp_path / "baseline-arrays")
    assert isinstance(again.head, nn.Linear) and again.head.out_features == 5
    assert isinstance(finetune_from(tmp_path / "run", "surgical"), FineTune)
