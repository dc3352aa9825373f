"""Method advice: documented rules without records, and records that change the advice."""

import json

import numpy as np
import pytest

from fewshot.advise import Setting, advise, distance, rules
from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.io import write_json
from fewshot.store import RunStore


def _record(store: RunStore, tmp_path, method: str, accuracy: float, *, way=5, shot=1, dataset="digits",
            train_dataset="digits", episodes=200, seed=0) -> int:
    """An evaluate record as `fewshot evaluate` writes it, with a run folder to size its training set."""
    base = method.partition("+")[0]
    run_dir = tmp_path / f"{base}-{train_dataset}"
    if not run_dir.exists():
        write_json(run_dir / "config.json", TrainConfig(method=base, dataset=train_dataset, val_split=None).to_dict())
    rng = np.random.default_rng([*map(ord, method), int(accuracy), way, shot])
    per_episode = np.clip(rng.normal(accuracy, 8.0, episodes), 0, 100)
    per_episode += accuracy - per_episode.mean()
    metrics = {"accuracy": float(per_episode.mean()), "ci95": float(1.96 * per_episode.std(ddof=1) / episodes ** 0.5),
               "episodes": episodes, "way": way, "shot": shot, "query": 15, "seconds": 1.0,
               "per_episode": [float(a) for a in per_episode]}
    return store.record("evaluate", method=method, dataset=dataset, split="test", seed=seed, run_dir=str(run_dir),
                        config={"dataset_options": {}, "way": way, "shot": shot, "query": 15, "episodes": episodes,
                                "weights": "best"}, metrics=metrics)


def test_without_records_the_documented_rules_answer(tmp_path, capsys):
    assert main(["advise", "--way", "5", "--shot", "1", "--classes", "64", "--images-per-class", "600",
                 "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no records: using the documented rules" in out and out.startswith("recommendation: protonet")
    assert rules(Setting(5, 5, classes=10, images_per_class=50)).method == "relationnet"  # 500 images: small
    assert rules(Setting(5, 5, classes=64, images_per_class=600)).method == "maml"
    cross = rules(Setting(5, 1, 64, 600, cross_domain=True))
    assert (cross.method, cross.strategy, cross.expected_accuracy) == ("protonet", "lp-ft", None)


def test_records_that_another_method_wins_change_the_advice(tmp_path, capsys):
    store = RunStore(tmp_path)
    _record(store, tmp_path, "protonet", 80.0)
    _record(store, tmp_path, "relationnet", 70.0)
    args = ["advise", "--way", "5", "--shot", "1", "--classes", "5", "--images-per-class", "180",
            "--runs", str(tmp_path), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["method"], first["source"]) == ("protonet", "records")
    assert first["expected_accuracy"] == pytest.approx(80.0) and first["ci95"] > 0
    assert {e["method"] for e in first["evidence"]} == {"protonet", "relationnet"}
    assert any("significant" in r for r in first["reasons"])  # paired, on the same episodes

    _record(store, tmp_path, "relationnet", 90.0)  # a better relationnet run on the same suite
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["method"] == "relationnet" and second["expected_accuracy"] == pytest.approx(90.0)
    # The digits training split (5 classes x about 180 images) was sized from the run's config.
    assert second["evidence"][0]["setting"]["classes"] == 5


def test_the_nearest_recorded_setting_decides(tmp_path):
    store = RunStore(tmp_path)
    _record(store, tmp_path, "protonet", 70.0, way=5, shot=1)
    _record(store, tmp_path, "maml", 60.0, way=5, shot=1)
    _record(store, tmp_path, "protonet", 85.0, way=20, shot=5)
    _record(store, tmp_path, "maml+lp-ft", 90.0, way=20, shot=5)
    near_one_shot = advise(Setting(5, 1, 5, 180), store)
    assert near_one_shot.method == "protonet" and near_one_shot.strategy is None
    near_five_shot = advise(Setting(20, 5, 5, 180), store)
    assert (near_five_shot.method, near_five_shot.strategy) == ("maml", "lp-ft")
    assert "maml+lp-ft" in near_five_shot.text()


def test_cross_domain_records_count_as_farther(tmp_path):
    same, cross = Setting(5, 1, 64, 600), Setting(5, 1, 64, 600, cross_domain=True)
    assert distance(same, same) == 0 and distance(same, cross) == 2.0
    store = RunStore(tmp_path)
    _record(store, tmp_path, "protonet", 80.0, dataset="digits", train_dataset="digits")
    _record(store, tmp_path, "matchingnet", 75.0, dataset="digits", train_dataset="digits")
    _record(store, tmp_path, "baseline+finetune", 70.0, dataset="digits", train_dataset="mnist", seed=1)
    _record(store, tmp_path, "protonet", 60.0, dataset="digits", train_dataset="mnist", seed=1)
    advice = advise(Setting(5, 1, 5, 180, cross_domain=True), store)
    assert (advice.method, advice.strategy) == ("baseline", "finetune")


def test_a_real_evaluate_record_is_evidence(tmp_path, capsys):
    assert main(["evaluate", "pixel-ncm", "--dataset", "digits", "--episodes", "20", "--runs", str(tmp_path),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["advise", "--way", "5", "--shot", "1", "--classes", "5", "--images-per-class", "180",
                 "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("recommendation: pixel-ncm") and "evidence" in out and "#1 " in out
