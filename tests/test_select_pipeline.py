"""Model selection end to end on a tiny zoo: zoo build and checks, the meta-dataset builder
(killed mid-build and resumed), `fewshot select evaluate` and `fewshot select --support`."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.cli import main
from fewshot.models import build_backbone
from fewshot.models.pretrained import register_architecture
from fewshot.select.index import Zoo
from fewshot.select.metastore import MetaStore
from fewshot.select.pool import build_meta_dataset
from fewshot.select.recipes import build_zoo
from fewshot.select.tasks import sample_tasks

TASKS = 12
FINETUNE = {"steps": 10}  # a shorter fine-tuning for the ground truth keeps the test quick


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Private run store and image cache for every process of this module."""
    root = tmp_path_factory.mktemp("select")
    values = {"FEWSHOT_RUNS": str(root / "runs"), "FEWSHOT_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in values.items():
            mp.setenv(k, v)
        yield root


@pytest.fixture(scope="module")
def zoo(env):
    """The 'tiny' preset: four small models on 8x8 digits, a few training steps each."""
    return build_zoo(env / "zoo", "tiny", max_steps=30, progress=False)


def _one_line_error(capsys, code, *fragments):
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def test_zoo_build_is_diverse_resumable_and_checked(zoo, env):
    entries = {e["name"]: e for e in zoo.entries()}
    assert len(entries) == 4
    assert {e["objective"] for e in entries.values()} == {"protonet", "baseline", "baseline++", "random-init"}
    assert {e["architecture"] for e in entries.values()} == {"conv4", "mlp"}
    for name in entries:
        model = zoo.load(name)
        meta = model.metadata
        assert meta["image_shape"] == [1, 8, 8] and meta["feature_dim"] == entries[name]["feature_dim"]
        assert json.loads((env / "zoo" / f"{name}.json").read_text())["parameters"] == meta["parameters"]
    assert zoo.metadata("tiny-mlp-baseline")["source"]["num_classes"] == 20
    # A second build finds every model there and trains nothing.
    before = {n: (env / "zoo" / f"{n}.safetensors").stat().st_mtime_ns for n in entries}
    build_zoo(env / "zoo", "tiny", max_steps=30, progress=False)
    assert before == {n: (env / "zoo" / f"{n}.safetensors").stat().st_mtime_ns for n in entries}


class TwoLayer(torch.nn.Module):
    """A user's own network (not a built-in backbone), registered in Python and rebuilt by that name."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU())

    def forward(self, x):
        return self.body(x)


def test_zoo_add_user_models_and_mismatches_fail_in_one_line(zoo, env, tmp_path, capsys):
    user = Zoo(tmp_path / "user", create=True)
    register_architecture("pipeline-two-layer", TwoLayer, replace=True)
    entry = user.add("mine", TwoLayer(), image_shape=(1, 8, 8), metadata={"objective": "supervised"})
    assert entry["feature_dim"] == 16 and entry["parameters"] == 64 * 16 + 16
    assert isinstance(user.load("mine").backbone, TwoLayer)
    user.add("from-run", env / "zoo" / "runs" / "tiny-conv-protonet")
    assert user.entry("from-run")["objective"] == "protonet"

    # Bare safetensors of a Conv-4 of width 8 with metadata claiming width 16: refused, nothing left behind.
    from safetensors.torch import save_file

    net = build_backbone("conv4", (1, 8, 8), width=8, depth=2)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    meta = {"architecture": "conv4", "architecture_options": {"width": 16, "depth": 2}, "image_shape": [1, 8, 8]}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    code = main(["zoo", "add", "--zoo", str(tmp_path / "user"), "bad", str(tmp_path / "w.safetensors"),
                 "--metadata", str(tmp_path / "meta.json")])
    _one_line_error(capsys, code, "cannot add 'bad'", "does not fit the backbone", "shape of")
    assert "bad" not in user and not (tmp_path / "user" / "bad.safetensors").exists()
    # The same file with the right metadata goes in, its feature width filled in.
    meta["architecture_options"]["width"] = 8
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert main(["zoo", "add", "--zoo", str(tmp_path / "user"), "good", str(tmp_path / "w.safetensors"),
                 "--metadata", str(tmp_path / "meta.json")]) == 0
    assert user.entry("good")["feature_dim"] == 32

    # An entry whose metadata changed since it was added: a one-line error naming it.
    sidecar = tmp_path / "user" / "good.json"
    tampered = json.loads(sidecar.read_text())
    tampered["architecture_options"]["width"] = 4
    sidecar.write_text(json.dumps(tampered))
    capsys.readouterr()
    _one_line_error(capsys, main(["zoo", "list", "--zoo", str(tmp_path / "user"), "--check"]),
                    "zoo entry 'good'", "good.json changed since it was added")


def _rows_in(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=10) as db:
            return db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
    except sqlite3.OperationalError:  # the builder has not created its table yet
        return 0


def test_builder_killed_mid_build_resumes_without_duplicates(zoo, env):
    meta = env / "meta.sqlite"
    command = [sys.executable, "-m", "fewshot", "select", "build", "--zoo", str(zoo.root), "--meta", str(meta),
               "--tasks", str(TASKS), "--sources", "digits", "--workers", "2", "-o", "steps=10", "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _rows_in(meta) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with sqlite3.connect(meta, timeout=10) as db:
            worker = db.execute("SELECT worker FROM rows LIMIT 1").fetchone()[0]
        assert worker != proc.pid
        os.kill(worker, signal.SIGKILL)  # one worker process dies mid-build
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # never leave the builder or its workers behind
            proc.wait()
    assert proc.returncode == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "worker process" in stderr and "run the same command again" in stderr
    total = TASKS * len(zoo)
    before = {(r["task"], r["model"]): r for r in MetaStore(meta).records()}
    assert 4 <= len(before) < total, "the build must be killed mid-way for this test to mean anything"

    result = build_meta_dataset(zoo, TASKS, path=meta, sources=["digits"], finetune=FINETUNE, progress=False)
    after = MetaStore(meta).records()
    assert result.added == total - len(before) and result.total == total == len(after)
    assert len({(r["task"], r["model"]) for r in after}) == total
    for r in after:  # rows written before the kill are kept as they were
        if (r["task"], r["model"]) in before:
            assert r == before[(r["task"], r["model"])]
    # Rows computed by killed worker processes equal those of a fresh single-process build.
    fresh = build_meta_dataset(zoo, 2, path=env / "fresh.sqlite", sources=["digits"], finetune=FINETUNE, progress=False)
    for r in MetaStore(fresh.path).records():
        old = next(a for a in after if (a["task"], a["model"]) == (r["task"], r["model"]))
        assert (old["accuracy_lp"], old["accuracy_ft"]) == (r["accuracy_lp"], r["accuracy_ft"])
        assert old["features"].keys() == r["features"].keys()
        for key, value in r["features"].items():
            assert (value is None) == (old["features"][key] is None)
            assert value is None or np.isclose(value, old["features"][key], rtol=1e-6), key
    assert build_meta_dataset(zoo, TASKS, path=meta, sources=["digits"], finetune=FINETUNE, progress=False).added == 0
    # Tasks are fully determined by (sources, seed, index): asking for more extends the same list.
    assert sample_tasks(TASKS, ["digits"])[:5] == sample_tasks(5, ["digits"])


def test_select_evaluate_and_support_end_to_end(zoo, env, tmp_path, capsys):
    meta = env / "meta.sqlite"
    if _rows_in(meta) < TASKS * len(zoo):
        build_meta_dataset(zoo, TASKS, path=meta, sources=["digits"], finetune=FINETUNE, progress=False)
    code = main(["select", "evaluate", "--zoo", str(zoo.root), "--meta", str(meta), "--resamples", "200", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tasks"] == TASKS and result["models"] == 4 and result["groups"] == ["digits", "digits-rot"]
    report = result["report"]
    for name in ("random", "best-on-average", "best-on-average in domain", "biggest model", "meta-learner (ranking)",
                 "meta-learner (regression)", "meta-learner without scores", "score.knn_view", "score.sfda",
                 "oracle", "score.logme"):
        assert name in report
    assert report["oracle"]["top1_regret"]["mean"] == 0.0
    assert report["meta-learner (regression)"]["rmse"]["low"] <= report["meta-learner (regression)"]["rmse"]["mean"]
    # Both costs are measured and reported; which is cheaper is a benchmark's claim (with 10 fine-tuning
    # steps on 4 tiny models the two are close, and CPU time on a loaded machine decides it).
    assert result["cost"]["finetune_all_cpu_seconds"] > 0 and result["cost"]["select_cpu_seconds"] > 0

    # Resuming with other settings is refused in one line.
    _one_line_error(capsys, main(["select", "build", "--zoo", str(zoo.root), "--meta", str(meta), "--tasks", "2",
                                  "--sources", "digits", "-o", "steps=10", "--seed", "1", "--quiet"]),
                    "other settings", "seed")

    # A damaged meta-dataset file is one line, whichever command opens it, and is left as it was.
    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(b"not an SQLite file " * 64)
    for command in (["select", "evaluate"], ["select", "build", "--tasks", "2", "--sources", "digits", "--quiet"]):
        _one_line_error(capsys, main([*command, "--zoo", str(zoo.root), "--meta", str(damaged)]),
                        "meta-dataset", "remove it")
    assert damaged.read_bytes() == b"not an SQLite file " * 64

    # A user's task: a folder of class sub-folders (digits 5-7, 4 images each).
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split, picks in (("support", range(4)), ("query", range(4, 10))):
        for c in (5, 6, 7):
            folder = tmp_path / split / f"digit{c}"
            folder.mkdir(parents=True)
            for i in picks:
                image = digits.images[np.flatnonzero(digits.target == c)[i]] * (255 / 16)
                Image.fromarray(image.astype(np.uint8)).save(folder / f"{i}.png")
    code = main(["select", "--zoo", str(zoo.root), "--meta", str(meta), "--support", str(tmp_path / "support"),
                 "--verify", "1", "--queries", str(tmp_path / "query"), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["way"] == 3 and out["images"] == 12
    ranking = out["ranking"]
    assert sorted(e["model"] for e in ranking) == zoo.names()
    scores = [e["rank_score"] for e in ranking]  # the ranking meta-learner's order
    assert scores == sorted(scores, reverse=True) and all(e["uncertainty"] >= 0 for e in ranking)
    for e in ranking:  # a calibrated interval around each predicted accuracy
        low, high = e["interval"]
        assert 0 <= low <= high <= 100 and e["coverage"] == 0.9
    assert 0 <= ranking[0]["measured_accuracy"] <= 100 and "measured_accuracy" not in ranking[1]
    assert out["monitor"]["verifications"] == 1

    # Without --queries the top model is verified by cross-validation on the support set;
    # every verification is recorded, and the running error is shown.
    assert main(["select", "--zoo", str(zoo.root), "--meta", str(meta), "--support", str(tmp_path / "support"),
                 "--verify", "1"]) == 0
    text = capsys.readouterr().out
    assert "cross-validation" in text and "2 verification(s)" in text
    assert "90% interval" in text  # the calibrated interval is shown, not only in --json
    assert main(["select", "monitor", "--zoo", str(zoo.root), "--json"]) == 0
    monitor = json.loads(capsys.readouterr().out)
    assert len(monitor["verifications"]) == 2 and monitor["summary"]["verifications"] == 2
