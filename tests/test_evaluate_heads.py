"""``fewshot evaluate ... --head H``: test-time heads (fewshot.heads) on the features of a
trained run, an export or a Hugging Face backbone (``hf:PATH``, no run folder), over the
protocol's episodes; each image embedded once; transductive results marked in the
result, the JSON, the run store, ``fewshot runs`` and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fewshot
from fewshot.advise import advise_from_records, collect_evidence
from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.data import EpisodeSampler
from fewshot.errors import ConfigError
from fewshot.evaluate import MethodFeatures, evaluate, evaluate_head
from fewshot.heads import build_head
from fewshot.methods import build_method
from fewshot.models import Conv4
from fewshot.models.hub import HubBackbone, HubModel
from fewshot.report.content import assign_suites, comparison
from fewshot.report.page import comparison_table
from fewshot.runs import HubSource, Run, load_run
from fewshot.store import RunStore
from fewshot.train import Trainer

from core_fixtures import digits8  # noqa: F401  (fixture)

transformers = pytest.importorskip("transformers", reason="the hub extra (transformers) is not installed")

TINY = dict(dataset="digits", backbone="conv4", backbone_options={"width": 8, "depth": 2}, way=4, shot=2, query=3,
            episodes=4, checkpoint_every=2, val_every=2, val_episodes=4, lr=3e-3)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny randomly initialised Hugging Face ResNet with an image processor (RGB, 16 px)."""
    folder = tmp_path_factory.mktemp("hub") / "resnet"
    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1])
    transformers.ResNetModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 16, "width": 16}, "image_mean": [0.5] * 3, "image_std": [0.25] * 3, "resample": 2}))
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits8):  # noqa: F811
    run = tmp_path_factory.mktemp("run") / "run"
    Trainer(TrainConfig(**TINY), run, dataset=digits8).run(progress=False, record=False)
    return run


@pytest.fixture
def forwards(monkeypatch):
    """The input shapes of every forward pass of a Hugging Face backbone."""
    shapes: list[tuple[int, ...]] = []
    forward = HubBackbone.forward

    def counted(self, x):
        shapes.append(tuple(x.shape))
        return forward(self, x)

    monkeypatch.setattr(HubBackbone, "forward", counted)
    return shapes


def cli_json(args, capsys) -> tuple[dict, str]:
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def one_line_error(args, capsys) -> str:
    assert main([str(a) for a in args]) == 2, args
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_an_hf_backbone_is_evaluated_with_a_head_each_image_embedded_once(hf_folder, digits8, forwards, tmp_path,
                                                                         monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    test_images = int(digits8.class_counts[digits8.splits["test"]].sum())
    train_images = int(digits8.class_counts[digits8.splits["train"]].sum())
    command = ["evaluate", f"hf:{hf_folder}", "--dataset", "digits", "--head", "simpleshot", "--episodes", 20,
               "--json", "--runs", runs, "--device", "cpu"]
    result, err = cli_json(command, capsys)
    assert result["method"] == "hf+simpleshot" and result["head"] == "simpleshot"
    assert result["head_options"] == {"norm": "CL2N"} and result["transductive"] is False
    assert result["query"] == 15 and result["episodes"] == 20 and result["way"] == 5 and result["shot"] == 1
    assert 0 <= result["accuracy"] <= 100
    # CL2N centres on the base classes: digits' training split, said on screen and in the result.
    assert result["base_features"] == f"mean feature of digits split 'train' ({train_images} images)"
    assert f"simpleshot centres on the mean feature of digits split 'train' ({train_images} images)" in err
    # Digits are 1-channel 8x8: the model's own preprocessing makes them RGB at its 16 px.
    assert {shape[1:] for shape in forwards} == {(3, 16, 16)}
    # Each image once (and one probe of the feature width at load), not once per episode.
    assert sum(shape[0] for shape in forwards) == 1 + test_images + train_images
    assert len(forwards) == 1 + -(-test_images // 64) + -(-train_images // 64)

    # The run store's row says which head, with which options, on how many queries.
    row = RunStore(runs).list(kind="evaluate")[-1]
    assert row["method"] == "hf+simpleshot" and row["run_dir"] == str(hf_folder.resolve())
    assert row["metrics"]["head"] == "simpleshot" and row["metrics"]["transductive"] is False
    assert row["metrics"]["query"] == 15 and row["config"]["head_options"] == {"norm": "CL2N"}

    # A second evaluation reads every feature from the cache on disk: the backbone runs only its probe.
    forwards.clear()
    again, _ = cli_json(command, capsys)
    assert again["accuracy"] == result["accuracy"] and len(forwards) == 1


def test_no_head_named_is_simpleshot_said_on_screen_and_other_options_reach_the_head(hf_folder, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["evaluate", f"hf:{hf_folder}", "--dataset", "digits", "--episodes", "5", "--runs", str(runs),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert f"fewshot: no --head given: classifying with simpleshot (norm=CL2N) on hf:{hf_folder}'s features" \
        in out.err
    assert "(5 episodes, 5-way 1-shot); head simpleshot, inductive" in out.out
    # L2N uses no base features: only the evaluated split is embedded, and nothing is said about centring.
    result, err = cli_json(["evaluate", f"hf:{hf_folder}", "--dataset", "digits", "--head", "simpleshot",
                            "--head-option", "norm=L2N", "--episodes", "5", "--json", "--runs", runs,
                            "--quiet"], capsys)
    assert result["head_options"] == {"norm": "L2N"} and result["base_features"] is None and err == ""


def test_open_gives_a_hub_source_for_the_prefix_and_names_the_prefix_for_a_bare_folder(hf_folder):
    source = Run.open(f"hf:{hf_folder}")
    assert isinstance(source, HubSource) and source.default_head == "simpleshot"
    model = source.load()
    assert isinstance(model, HubModel) and model.feature_dim == 8 and model.folder == hf_folder
    with pytest.raises(ConfigError) as error:
        Run.open(hf_folder)
    assert f"name it hf:{hf_folder}" in str(error.value) and "\n" not in str(error.value)


def test_a_transductive_head_on_a_trained_run_is_marked_everywhere(run_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    own, _ = cli_json(["evaluate", run_dir, "--episodes", 10, "--json", "--per-episode", "--runs", runs,
                       "--quiet"], capsys)
    assert own["transductive"] is False and own["head"] is None and own["query"] == 3  # the run's own protocol
    tim, _ = cli_json(["evaluate", run_dir, "--head", "tim", "--head-option", "steps=20", "--episodes", 10, "--json",
                       "--per-episode", "--runs", runs, "--quiet"], capsys)
    assert tim["method"] == "protonet+tim" and tim["transductive"] is True and tim["query"] == 3
    assert tim["head_options"]["steps"] == 20 and tim["head_options"]["ce_weight"] == 0.1
    rows = RunStore(runs).list(kind="evaluate")
    assert [r["metrics"]["transductive"] for r in rows] == [False, True]
    assert rows[1]["metrics"]["head"] == "tim" and rows[1]["config"]["head"] == "tim"

    assert main(["runs", "--runs", str(runs)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].split()[3] == "protonet" and "T3q" not in listing[1]
    assert listing[2].split()[3] == "protonet+tim" and "4w2s T3q" in listing[2]
    assert listing[-1].startswith("T<N>q: a transductive result") and "not comparable" in listing[-1]

    # Advice from the records names the head as a head and says the comparison is not like for like.
    evidence = collect_evidence(RunStore(runs))
    assert sorted(e.label for e in evidence) == ["protonet", "protonet+head tim"]
    advice = advise_from_records(evidence[0].setting, evidence)
    assert any("is transductive" in r and "not a like-for-like comparison" in r for r in advice.reasons)

    # The report's comparison of the two (one suite) says that it is not like for like.
    for r in rows:
        r["label"] = r["method"]
    assign_suites(rows)
    assert rows[0]["suite"] == rows[1]["suite"]
    panels, table = comparison(rows, {"protonet": "C0", "protonet+tim": "C1"})
    assert sorted(panels[0].labels) == ["protonet", "protonet+tim (transductive)"]
    html = comparison_table(table)
    assert "protonet+tim (transductive, 3 queries per class)" in html
    assert "against inductive: not like for like" in html or "against transductive: not like for like" in html
    assert sum(t["mixed"] for t in table) == 1


def test_an_exported_model_is_evaluated_with_a_head(run_dir, tmp_path, capsys):
    fewshot.load(run_dir, calibration_episodes=0).save(tmp_path / "model.safetensors")
    result, _ = cli_json(["evaluate", tmp_path / "model.safetensors", "--head", "logistic", "--episodes", 5,
                          "--json", "--runs", tmp_path / "runs", "--quiet"], capsys)
    assert result["method"] == "protonet+logistic" and result["transductive"] is False
    assert result["way"] == 4 and result["shot"] == 2 and result["query"] == 3  # the export's own protocol


def test_features_are_indexed_as_the_episodes_gather_their_images(run_dir, digits8):  # noqa: F811
    """ProtoNet is nearest centroid on its features: its own adapt and simpleshot UN on the
    same features agree on every episode, so each episode indexes exactly its images."""
    _, method, _ = load_run(run_dir)
    sampler = EpisodeSampler(digits8, "test", 5, 2, 4, seed=3)
    own = evaluate(method, sampler, 30, progress=False)
    head = evaluate_head(build_head("simpleshot", norm="UN"), MethodFeatures(method), sampler, 30, progress=False)
    assert np.array_equal(own.scores, head.scores) and head.base_features is None
    assert own.transductive is False and head.head == "simpleshot" and head.head_options == {"norm": "UN"}


def test_batch_statistics_at_test_time_are_marked_transductive(digits8):  # noqa: F811
    sampler = EpisodeSampler(digits8, "test", 3, 1, 2)
    maml = build_method("maml", Conv4(1, 4, 2), image_shape=(1, 8, 8), way=3, inner_steps=1)
    protonet = build_method("protonet", Conv4(1, 4, 2))
    assert evaluate(maml, sampler, 2, progress=False).transductive is True  # BatchNorm over the query batch
    assert evaluate(protonet, sampler, 2, progress=False).transductive is False
    mlp_maml = build_method("maml", fewshot.models.MLP(64, [8]), image_shape=(1, 8, 8), way=3, inner_steps=1)
    assert evaluate(mlp_maml, sampler, 2, progress=False).transductive is False  # no BatchNorm: inductive


def test_bad_heads_and_combinations_are_one_line_and_record_nothing(run_dir, hf_folder, tmp_path, capsys):
    runs = tmp_path / "runs"
    base = ["evaluate", run_dir, "--episodes", 2, "--runs", runs]
    assert "unknown head 'timm' (did you mean 'tim'?)" in one_line_error([*base, "--head", "timm"], capsys)
    assert "head 'simpleshot' 'norm' must be one of UN, L2N, CL2N, got 'L3N'" in one_line_error(
        [*base, "--head", "simpleshot", "--head-option", "norm=L3N"], capsys)
    assert "head 'tim' has no option 'step' (did you mean 'steps'?)" in one_line_error(
        [*base, "--head", "tim", "--head-option", "step=3"], capsys)
    assert "drop --adapt and --inner-steps" in one_line_error([*base, "--head", "tim", "--adapt", "lp-ft"], capsys)
    assert "pixel-ncm has no backbone" in one_line_error(
        ["evaluate", "pixel-ncm", "--head", "tim", "--runs", runs], capsys)
    assert "say which dataset to evaluate" in one_line_error(["evaluate", f"hf:{hf_folder}", "--runs", runs], capsys)
    assert "hf:" in one_line_error(["evaluate", f"hf:{tmp_path / 'missing'}", "--dataset", "digits", "--runs", runs],
                                   capsys)
    assert not (runs / "fewshot.sqlite").exists() or RunStore(runs).list() == []


def test_heads_lists_each_head_its_kind_and_options(capsys):
    assert main(["heads"]) == 0
    out = capsys.readouterr().out
    assert "tim: transductive (sees all queries of an episode at once)" in out and "simpleshot: inductive" in out
    assert '    norm = "CL2N"  (one of UN, L2N, CL2N)' in out
    assert main(["heads", "--json"]) == 0
    described = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert described["ptmap"]["transductive"] and described["ptmap"]["options"]["beta"]["default"] == 0.5
    assert "did you mean 'simpleshot'?" in one_line_error(["heads", "simpleshots"], capsys)
