"""The cross-domain protocol (fewshot.crossdomain and ``fewshot evaluate RUN --domains``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fewshot.cli.main import main
from fewshot.crossdomain import CrossDomainTable, domain_options, evaluate_domains
from fewshot.data import EpisodeSampler, load_dataset
from fewshot.errors import ConfigError
from fewshot.evaluate import evaluate
from fewshot.methods import build_method
from fewshot.methods.baselines import PixelNearestMean
from fewshot.models.backbones import Conv4


def test_the_table_on_a_tiny_case_pairs_identical_episodes():
    pixels = PixelNearestMean()
    torch.manual_seed(0)
    cosine = build_method("protonet", Conv4(1, width=8, depth=2))
    table = evaluate_domains({"pixels": pixels, "again": cosine}, ["digits:invert", "digits:noise"],
                             image_shape=(1, 8, 8), source="digits", way=5, shot=1, query=3, episodes=12, seed=3)
    assert table.domains == ["digits", "digits:invert", "digits:noise"]
    assert table.in_domain == {"pixels": "digits", "again": "digits"}
    # The in-domain column is the suite `fewshot evaluate` runs on the run's own dataset.
    own = evaluate(pixels, EpisodeSampler(load_dataset("digits"), "test", 5, 1, 3, seed=3), 12, progress=False)
    assert np.array_equal(table.results["pixels"]["digits"].scores, own.scores)
    noisy = evaluate(pixels, EpisodeSampler(load_dataset("digits:noise"), "test", 5, 1, 3, seed=3), 12, progress=False)
    assert np.array_equal(table.results["pixels"]["digits:noise"].scores, noisy.scores)
    mean, ci = table.paired("pixels", "again", "digits:noise")
    diff = table.results["pixels"]["digits:noise"].scores - table.results["again"]["digits:noise"].scores
    assert mean == pytest.approx(diff.mean())
    out = table.to_dict()
    assert len(out["results"]) == 6 and len(out["paired_differences"]) == 3
    assert out["results"][0]["in_domain"] and not out["results"][1]["in_domain"]
    text = table.render()
    assert "digits:noise" in text and "again - pixels" in text and "*" in text.splitlines()[1]
    with pytest.raises(ConfigError, match="no model 'x'"):
        table.paired("x", "pixels", "digits")


def test_target_domains_are_loaded_as_the_model_sees_its_inputs():
    assert domain_options("digits:blur", (1, 28, 28), "digits", {"rotations": True}) == {"rotations": True}
    assert domain_options("digits", (1, 28, 28), "omniglot", {"split_scheme": "background"}) == {"image_size": 28}
    assert domain_options("omniglot:blur", (1, 28, 28), "omniglot,digits:blur", {"image_size": 28}) == \
        {"image_size": 28}
    with pytest.raises(ConfigError, match="several domains"):
        domain_options("digits,digits:blur", (1, 8, 8))


def test_evaluate_domains_cli_prints_one_table_and_records_each_domain(tmp_path, capsys):
    runs, out = str(tmp_path / "runs"), str(tmp_path / "run")
    assert main(["train", "protonet", "--dataset", "digits", "--backbone-option", "width=8", "--query", "5",
                 "--episodes", "5", "--out", out, "--runs", runs, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", out, "--domains", "digits:blur", "digits:invert", "--episodes", "10", "--runs", runs,
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split()[1:] == ["digits", "digits:blur", "digits:invert"]
    assert main(["evaluate", out, "--domains", "digits:invert", "--episodes", "10", "--json", "--runs", runs,
                 "--quiet"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["domains"] == ["digits", "digits:invert"] and table["suite"]["episodes"] == 10
    assert [r["in_domain"] for r in table["results"]] == [True, False]
    assert main(["runs", "--runs", runs]) == 0
    kinds = [line.split()[1] for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert kinds == ["train"] + ["evaluate"] * 5
    assert main(["evaluate", out, "--domains", "digits:blurry", "--runs", runs, "--quiet"]) == 2
    assert "unknown style 'blurry'" in capsys.readouterr().err
    # The report's domain x method panel: the suite tested on the most domains.
    from fewshot.report import build_report

    build_report([out], tmp_path / "report", runs=runs)
    panel = json.loads((tmp_path / "report" / "report.json").read_text())["domains"]
    assert panel["domains"] == ["digits", "digits:blur", "digits:invert"] and panel["methods"] == ["protonet"]
    assert panel["cells"]["protonet"]["digits:invert"]["accuracy"] == pytest.approx(table["results"][1]["accuracy"])
    assert "Across domains" in (tmp_path / "report" / "index.html").read_text()


def test_a_table_built_from_results_renders_missing_cells():
    from fewshot.evaluate import EvalResult

    r = EvalResult(np.array([50.0, 60.0]), 5, 1, 15)
    table = CrossDomainTable({"a": {"x": r}, "b": {"y": r}}, ["x", "y"])
    assert "-" in table.render().splitlines()[1] and table.best("x") == "a"


# -- surgical fine-tuning's block, chosen per target domain (Lee et al., arXiv:2210.11466) ------

def _tiny_protonet():
    torch.manual_seed(0)
    return build_method("protonet", Conv4(1, width=4, depth=3))


def test_the_block_is_chosen_on_validation_classes_never_on_the_test_episodes(monkeypatch):
    """A planted case: on the validation classes block 0 is best, on the test episodes block 2;
    the chooser must take 0, and must never run on a test episode."""
    import fewshot.crossdomain as crossdomain
    from fewshot.evaluate import EvalResult

    planted = {"train": {0: 70.0, 1: 55.0, 2: 40.0}, "test": {0: 30.0, 1: 45.0, 2: 80.0}}
    seen = []

    def fake_evaluate(method, sampler, episodes, **kwargs):
        seen.append((sampler.split, method.get_params()["block"], sorted({c for i in range(episodes)
                                                                          for c in sampler.episode(i).classes})))
        return EvalResult(np.full(episodes, planted[sampler.split][method.get_params()["block"]]), sampler.way,
                          sampler.shot, sampler.query)

    monkeypatch.setattr(crossdomain, "evaluate", fake_evaluate)
    digits = load_dataset("digits", image_size=16)
    method = _tiny_protonet()
    adapted, choice = crossdomain.surgical_for_domain(method, digits, way=3, shot=1, query=2, episodes=4, steps=2)
    assert crossdomain.candidate_blocks(method) == [0, 1, 2]
    assert choice.how == "validation" and choice.split == "train" and choice.block == 0
    assert choice.scores == planted["train"] and adapted.get_params()["block"] == 0
    assert {split for split, _, _ in seen} == {"train"}  # the test split was never evaluated
    test_classes = set(digits.split_classes("test"))
    assert all(not test_classes & set(classes) for _, _, classes in seen)
    # A test-best choice would have been block 2: the planted case tells the two apart.
    assert max(planted["test"], key=planted["test"].get) != choice.block


def test_the_chosen_block_adapts_as_that_fixed_block_and_overlaps_are_refused():
    from fewshot.crossdomain import choose_block, surgical_for_domain
    from fewshot.errors import DataError
    from fewshot.methods.transfer import adapt_method

    digits = load_dataset("digits", image_size=16)
    method = _tiny_protonet()
    adapted, choice = surgical_for_domain(method, digits, way=3, shot=1, query=2, episodes=3, steps=2)
    assert choice.how == "validation" and set(choice.scores) == {0, 1, 2} and choice.block in choice.scores
    assert choice.block == max(choice.scores, key=lambda b: (choice.scores[b], -b))
    test = EpisodeSampler(digits, "test", 3, 1, 2, seed=0)
    fixed = adapt_method(method, "surgical", block=choice.block, steps=2)
    assert np.array_equal(evaluate(adapted, test, 3, progress=False).scores,
                          evaluate(fixed, test, 3, progress=False).scores)
    with pytest.raises(DataError, match="shares 5 classes with the test"):
        choose_block(method, test, 2, test_classes=digits.split_classes("test"), steps=2)
    # No classes apart from the test's: the block is chosen inside each support set instead.
    adapted, choice = surgical_for_domain(method, digits, way=3, shot=2, query=2, val_splits=("test",), steps=2)
    assert choice.how == "cross-validation" and choice.block is None
    assert adapted.get_params()["cv"] is True and adapted.get_params()["cv_grid"] == {"block": [0, 1, 2]}
    result = evaluate(adapted, EpisodeSampler(digits, "test", 3, 2, 2, seed=0), 1, progress=False)
    assert adapted.last_fit["cv"]["chosen"]["block"] in (0, 1, 2) and result.episodes == 1
