"""Nothing lost (issue 13): fewshot deletes only files it wrote, one writer per run folder,
kills leave a resumable run, store failures keep the work, and every hostile input is
one line with exit status 2 and nothing half-written.

Each test reproduces one case of the issue (numbers in the comments).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot import io as fio
from fewshot import store as store_module
from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.data.folder import load_folder
from fewshot.data.omniglot import load_omniglot
from fewshot.errors import ConfigError, DataError, StoreError
from fewshot.io import FolderLock, load_tensors, read_json, save_tensors
from fewshot.runs import load_run
from fewshot.store import RunStore, record_run
from fewshot.train import Trainer

from test_hostile import TRAIN, add_to_zip, cli_error

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
       "OMP_NUM_THREADS": "1"}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "store"))
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fewshot", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def wait_for(predicate, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.05)


# -- 3: a run deletes only files it wrote ---------------------------------------------------

def test_training_into_a_users_folder_keeps_their_files(store, capsys):
    run = store / "m"
    run.mkdir()
    (run / "best-model.safetensors").write_text("the user's model")
    (run / "checkpoint-old.safetensors").write_text("the user's checkpoint")
    (run / "notes.txt").write_text("notes")
    assert main([*TRAIN, "--checkpoint-every", "1", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # a finished run: resuming changes no file of theirs
    files = listing(run)
    assert {"best-model.safetensors", "checkpoint-old.safetensors", "notes.txt"} <= set(files)
    assert (run / "best-model.safetensors").read_text() == "the user's model"
    assert [f for f in files if f.startswith(("checkpoint-0", "best-0"))] == ["best-0000003.safetensors",
                                                                              "checkpoint-0000003.safetensors"]


def test_a_config_file_in_the_run_folder_is_never_overwritten_or_deleted(store, capsys):
    run = store / "m"
    run.mkdir()
    (run / "config.json").write_text('{"lr": 0.01}')
    cli_error([*TRAIN, "--config", run / "config.json", "--out", run], capsys, "already holds config.json")
    assert (run / "config.json").read_text() == '{"lr": 0.01}'
    # A run that fails before its first checkpoint removes what it wrote, and only that.
    (run / "mine.json").write_text('{"lr": 1e30}')
    (run / "config.json").unlink()
    cli_error([*TRAIN, "--config", run / "mine.json", "--episodes", "50", "--out", run], capsys, "lower --lr")
    assert listing(run) == ["mine.json"]


# -- 4: one writer per run folder; a kill leaves a resumable run -----------------------------

def test_one_writer_per_run_folder_and_sigkill_at_any_moment(store, capsys):
    """While a real process trains, a second writer (the CLI, or the library) is refused
    in one line and changes nothing. Killed (SIGKILL) at three moments mid-training, the
    run always resumes: state.json names a checkpoint and best file that exist and load,
    and the kernel has dropped the dead writer's lock."""
    run = store / "run"
    args = [*TRAIN[:-3], "--episodes", "1000000", "--checkpoint-every", "1", "--val-every", "3", "--val-split", "none",
            "--quiet", "--runs", str(store / "runs")]
    rng = np.random.default_rng(0)
    proc = spawn(*args, "--out", str(run))
    for kill in range(3):
        wait_for(lambda: (run / "state.json").exists() and read_json(run / "state.json")["checkpoint"] is not None)
        step = read_json(run / "state.json")["step"]
        if kill == 0:
            cli_error(["train", "--resume", run, "--quiet"], capsys, "another fewshot process",
                      f"(process {proc.pid})", str(run))
            with pytest.raises(ConfigError, match="another fewshot process"):
                Trainer(TrainConfig.from_dict(read_json(run / "config.json")), run).run(resume=True, progress=False)
            assert proc.poll() is None  # the writer is untouched
        wait_for(lambda: read_json(run / "state.json")["step"] > step + 3)  # well inside the loop of writes
        time.sleep(float(rng.uniform(0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = read_json(run / "state.json")
        assert (run / state["checkpoint"]).is_file() and (run / state["best"]["file"]).is_file()
        load_run(run, "last"), load_run(run, "best")
        trainer = Trainer(TrainConfig.from_dict(read_json(run / "config.json")), run)
        trainer._restore()
        assert trainer.state["step"] == state["step"]
        FolderLock(run).release()  # the dead writer's lock is gone
        if kill < 2:
            proc = spawn("train", "--resume", str(run), "--quiet", "--runs", str(store / "runs"))


# -- 7: the run store fails: the work is kept, one line says how to record it -----------------

@pytest.fixture
def broken_store(store):
    folder = store / "broken"
    folder.mkdir()
    (folder / "fewshot.sqlite").write_bytes(b"not a database at all" * 100)
    return folder


def test_training_finishes_when_the_store_is_damaged_and_can_be_recorded_later(store, broken_store, capsys):
    run = store / "run"
    assert main([*TRAIN, "--out", str(run), "--runs", str(broken_store)]) == 2
    captured = capsys.readouterr()
    assert "trained protonet for 3 steps" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "not recorded" in err[0] and f"fewshot train --resume {run}" in err[0], err
    assert load_run(run)[2]["done"]
    assert main(["train", "--resume", str(run), "--quiet", "--runs", str(store / "good")]) == 0
    [row] = RunStore(store / "good").list(kind="train")
    assert row["run_dir"] == str(run.resolve()) and row["metrics"]["steps"] == 3


def test_evaluation_is_printed_when_the_store_is_damaged(store, broken_store, capsys):
    run = store / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--episodes", "4", "--quiet", "--json", "--runs", str(broken_store)]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["episodes"] == 4
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "not recorded" in err[0] and "fewshot evaluate" in err[0]
    cli_error(["runs", "--runs", broken_store], capsys, "cannot open the run store")


def test_a_store_locked_too_long_is_a_store_error(store, monkeypatch):
    def locked(path):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store_module, "connect", locked)
    with pytest.raises(StoreError, match="database is locked"):
        record_run("train", runs=store, config={}, metrics={})


def test_huge_run_ids_are_one_line(store, capsys):
    cli_error(["runs", "show", "99999999999999999999999"], capsys, "no run 99999999999999999999999")
    cli_error(["runs", "show", "0"], capsys, "no run 0")


# -- 8: non-finite outputs are an error, never a score --------------------------------------

@pytest.fixture
def maml_run(store, capsys):
    run = store / "maml"
    assert main(["train", "maml", *TRAIN[2:], "--out", str(run)]) == 0
    capsys.readouterr()
    return run


def test_nan_predictions_are_an_error_not_chance_accuracy(maml_run, store, capsys):
    cli_error(["evaluate", maml_run, "-o", "inner_lr=1e30", "--episodes", "3", "--json", "--quiet"], capsys,
              "non-finite outputs", "inner_lr")
    assert RunStore(store / "store").list(kind="evaluate") == []


def test_a_checkpoint_with_nan_weights_is_refused(maml_run, capsys):
    state = read_json(maml_run / "state.json")
    path = maml_run / state["best"]["file"]
    tensors = load_tensors(path)
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_tensors(path, tensors)
    cli_error(["evaluate", maml_run, "--episodes", "3", "--quiet"], capsys, "non-finite weights", key[len("model."):])


# -- 11, 14: bounded reads --------------------------------------------------------------------

def test_a_config_linked_to_dev_zero_is_refused_without_reading_it_all(store, capsys):
    run = store / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    capsys.readouterr()
    (run / "config.json").unlink()
    (run / "config.json").symlink_to("/dev/zero")
    cli_error(["evaluate", run, "--episodes", "3"], capsys, "config.json cannot be read (it is not a regular file")
    cli_error([*TRAIN, "--config", "/dev/zero", "--out", store / "new"], capsys, "/dev/zero cannot be read (it is not a regular file")
    assert not (store / "new").exists()


def test_deeply_nested_json_is_one_line(store, capsys):
    deep = store / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    cli_error([*TRAIN, "--config", deep, "--out", store / "new"], capsys, "nests lists or objects more than")
    nested = store / "nested.json"
    nested.write_text('{"a": ' * 200 + "1" + "}" * 200)
    cli_error([*TRAIN, "--config", nested, "--out", store / "new"], capsys, "nests lists or objects more than")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_json(_binary(store), ConfigError)
    assert not (store / "new").exists()


def _binary(folder: Path) -> Path:
    path = folder / "binary.json"
    path.write_bytes(bytes(range(256)) * 4)
    return path


def test_report_selection_file_that_is_binary_or_deep(store, capsys):
    pytest.importorskip("matplotlib")
    from fewshot.report import load_selection

    with pytest.raises(ConfigError, match="not valid JSON"):
        load_selection(_binary(store))
    deep = store / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nests lists or objects"):
        load_selection(deep)


# -- 12, 18, 19: images and caches -----------------------------------------------------------

def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims ``width`` x ``height`` pixels, and no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side, fragment", [(9000, "claims 9000x9000 pixels"), (60_000, "decompression bomb")])
def test_decompression_bomb_png_in_an_omniglot_zip(tmp_root, fake_omniglot, capsys, side, fragment):
    written = fake_omniglot(tmp_root / "omniglot")
    add_to_zip(written["images_background.zip"], "images_background/Beta/character02/0099_21.png",
               _png_claiming(side, side))
    with pytest.raises(DataError, match=f"0099_21.png .*{fragment}"):
        load_omniglot(tmp_root)


def _folder(root: Path, image) -> Path:
    folder = root / "images"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            image(folder / name / f"{i}.png")
    return folder


def test_16_bit_pngs_are_scaled_not_saturated(tmp_root):
    ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    folder = _folder(tmp_root, lambda path: Image.fromarray(ramp).save(path))
    assert Image.open(folder / "a" / "0.png").mode == "I;16"
    images = load_folder(tmp_root, path=folder, channels=1, image_size=16).images
    expected = np.rint(ramp / 257).astype(np.uint8)
    assert np.abs(images[0, 0].numpy().astype(int) - expected).max() <= 1
    assert (images[0, 0] == 255).float().mean() < 0.01


def test_a_damaged_folder_cache_is_rebuilt(tmp_root):
    rng = np.random.default_rng(0)
    folder = _folder(tmp_root, lambda path: Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(path))
    first = load_folder(tmp_root, path=folder, channels=1, image_size=8).images
    [cache] = list(Path(os.environ["FEWSHOT_CACHE"]).glob("folder-*.safetensors"))
    for damage in (b"garbage", None):
        if damage is None:  # readable, but the wrong tensor
            save_tensors(cache, {"images": torch.zeros(1, 1, 8, 8, dtype=torch.uint8)})
        else:
            cache.write_bytes(damage)
        with pytest.warns(UserWarning, match="is damaged; decoding the image folder again"):
            again = load_folder(tmp_root, path=folder, channels=1, image_size=8).images
        assert torch.equal(again, first)
    assert torch.equal(load_tensors(cache)["images"], first)


def test_newlines_in_names_never_split_the_error_line(tmp_root, capsys):
    folder = tmp_root / "images"
    for name in ("a", "evil\nname"):
        (folder / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(folder / name / "0.png")
    (folder / "evil\nname" / "1.png").write_bytes(b"not a png")
    line = cli_error(["train", "protonet", "--dataset", "folder", "--path", folder, "--image-size", "8", "--way", "2",
                      "--query", "1", "--data-root", tmp_root, "--out", tmp_root / "run"], capsys,
                     "evil\\nname", "not a readable image")
    assert "\n" not in line


def test_run_files_get_the_users_umask_not_0600(store, capsys):
    old = os.umask(0o022)
    try:
        assert main([*TRAIN, "--out", str(store / "run")]) == 0
    finally:
        os.umask(old)
    for path in (store / "run").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# -- 13: damaged state fields and checkpoint tensors ----------------------------------------

@pytest.fixture
def trained(store, capsys):
    run = store / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    capsys.readouterr()
    return run


@pytest.mark.parametrize("field, value, fragment", [
    ("history", {"train": "lots"}, "'history'"),
    ("history", {"train": [[1, "x", 2]], "val": []}, "'history'"),
    ("log", None, "'log'"),
    ("log", {"loss": 0.0, "accuracy": 0.0, "count": -1}, "'log'"),
    ("seconds", "long", "'seconds'"),
    ("cpu_seconds", -5, "'cpu_seconds'"),
    ("optimizer", {"param_groups": [], "scalars": {"x": 1}}, "'optimizer'"),
    ("optimizer", {"param_groups": [], "scalars": {"0": {"step": "one"}}}, "'optimizer'"),
    ("scheduler", {"step_size": "x"}, "schedule is damaged"),
    ("scheduler", {}, "schedule is damaged"),
])
def test_damaged_state_fields(trained, capsys, field, value, fragment):
    state = read_json(trained / "state.json")
    state[field] = value
    (trained / "state.json").write_text(json.dumps(state))
    before = listing(trained)
    cli_error(["train", "--resume", trained, "--quiet"], capsys, fragment)
    assert listing(trained) == before


def test_param_groups_that_do_not_fit_the_model(trained, capsys):
    state = read_json(trained / "state.json")
    state["optimizer"]["param_groups"][0]["lr"] = "fast"
    (trained / "state.json").write_text(json.dumps(state))
    cli_error(["train", "--resume", trained, "--quiet"], capsys, "optimiser settings do not fit")


@pytest.mark.parametrize("damage, fragment", [
    (lambda t: t.update({"optim.99.exp_avg": torch.zeros(3)}), "names no parameter"),
    (lambda t: t.update({"optim.x": torch.zeros(3)}), "names no parameter"),
    (lambda t: t.update({"optim.0.exp_avg": torch.zeros(7, 7)}), "has shape (7, 7)"),
    (lambda t: t.update({"optim.0.step": torch.zeros(2)}), "has shape (2,)"),
    (lambda t: t.update({next(k for k in t if k.startswith("model.") and t[k].ndim > 1): torch.zeros(1)}),
     "does not match the run's model"),
    (lambda t: t.update({"model.nosuch": torch.zeros(1)}), "does not match the run's model"),
])
def test_checkpoint_tensors_of_the_wrong_name_or_shape(trained, capsys, damage, fragment):
    path = trained / read_json(trained / "state.json")["checkpoint"]
    tensors = load_tensors(path)
    damage(tensors)
    save_tensors(path, tensors)
    before = listing(trained)
    cli_error(["train", "--resume", trained, "--quiet"], capsys, fragment)
    assert listing(trained) == before


# -- 14: settings out of range, unwritable folders, a full disk --------------------------------

@pytest.mark.parametrize("extra, fragment", [
    (["--seed", "-1"], "'seed' must be an integer in [0, 2147483647]"),
    (["--seed", str(2**70)], "'seed' must be an integer in [0, 2147483647]"),
    (["--backbone-option", "depth=0"], "'depth' must be an integer in [1, 16]"),
    (["--backbone-option", "depth=2.5"], "'depth' must be an integer in [1, 16]"),
    (["--backbone-option", "width=-3"], "'width' must be an integer in [1, 4096]"),
    (["--backbone-option", "width=10000000"], "'width' must be an integer in [1, 4096]"),
    (["--lr-step", "-5"], "'lr_step' must be an integer ≥ 0"),
    (["--cpu-minutes", "0"], "'cpu_minutes' must be a finite number > 0"),
    (["--way", "1"], "way must be at least 2"),
    (["--nproc", "0"], "--nproc must be from 1"),
    (["--nproc", "100000"], "--nproc must be from 1"),
    (["--nproc", "2"], "--meta-batch 1 gives 2 processes nothing to do"),
])
def test_settings_out_of_range(store, capsys, monkeypatch, extra, fragment):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)  # --nproc is checked against the machine's cores
    start = time.monotonic()
    cli_error([*TRAIN, *extra, "--out", store / "run"], capsys, fragment)
    assert not (store / "run").exists()
    assert time.monotonic() - start < 30  # refused before any process is spawned or step taken


@pytest.mark.parametrize("settings, fragment", [
    ({"weight_decay": -1}, "'weight_decay' must be a finite number ≥ 0"),
    ({"lr_gamma": -2}, "'lr_gamma' must be a finite number in (0, 1]"),
    ({"lr_gamma": 0}, "'lr_gamma' must be a finite number in (0, 1]"),
    ({"seed": 2**70}, "'seed' must be an integer in [0, 2147483647]"),
])
def test_config_file_settings_out_of_range(store, capsys, settings, fragment):
    (store / "c.json").write_text(json.dumps(settings))
    cli_error([*TRAIN, "--config", store / "c.json", "--out", store / "run"], capsys, fragment)
    assert not (store / "run").exists()


def test_evaluate_episode_shapes_and_seeds_out_of_range(trained, capsys):
    for flag in ("--way", "--shot", "--query"):
        cli_error(["evaluate", trained, flag, "0", "--episodes", "3"], capsys, f"{flag[2:]} must be a positive integer")
    cli_error(["evaluate", trained, "--way", "1", "--episodes", "3"], capsys, "way must be at least 2")
    cli_error(["evaluate", trained, "--seed", "-1", "--episodes", "3"], capsys, "seed must be a whole number")
    cli_error(["evaluate", trained, "--seed", str(2**70), "--episodes", "3"], capsys, "seed must be a whole number")


def test_a_read_only_out_folder(store, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fio.tempfile, "mkstemp", read_only)
    cli_error([*TRAIN, "--out", store / "run"], capsys, "cannot write", "Read-only file system")
    assert not (store / "run").exists()
    (store / "file").write_text("x")
    cli_error([*TRAIN, "--out", store / "file" / "run"], capsys, "cannot create the run folder")
    assert (store / "file").read_text() == "x"


def test_a_full_disk_leaves_no_orphan_and_a_resumable_run(store, capsys, monkeypatch):
    """ENOSPC while writing the checkpoint that follows a validation's best file: one
    line; the half-written file and the best file state.json does not name are removed,
    and the run resumes to the end."""
    import safetensors.torch

    run = store / "run"
    real = safetensors.torch.save_file

    def full_at_step_4(tensors, filename, metadata=None):
        if ".checkpoint-0000004.safetensors." in Path(filename).name:
            Path(filename).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_at_step_4)
    cli_error([*TRAIN, "--episodes", "6", "--val-every", "2", "--checkpoint-every", "2", "--out", run], capsys,
              "cannot write", "checkpoint-0000004.safetensors", "No space left on device")
    state = read_json(run / "state.json")
    assert state["checkpoint"] == "checkpoint-0000002.safetensors"
    assert set(listing(run)) == {"config.json", "state.json", state["checkpoint"], state["best"]["file"]}
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert read_json(run / "state.json")["step"] == 6


# -- 9: tune: killed trials, continued and restarted searches --------------------------------

optuna = pytest.importorskip("optuna")


def _tiny(**changes) -> TrainConfig:
    from test_tune import TINY

    return TrainConfig(method="protonet", **{**TINY, "episodes": 6, "val_episodes": 4, **changes})


def test_a_continued_search_does_not_repeat_its_points(tmp_path):
    from fewshot.tune import parse_space, tune

    space = parse_space(["lr=1e-4:1e-2:log"])
    tune(_tiny(), space, tmp_path / "t", trials=1, runs=tmp_path)
    result = tune(_tiny(), space, tmp_path / "t", trials=1, runs=tmp_path)
    assert [t["number"] for t in result.trials] == [0, 1]
    assert result.trials[0]["params"] != result.trials[1]["params"]


def test_a_new_folder_is_a_new_study_and_lr_gamma_can_be_searched(tmp_path):
    import shutil

    from fewshot.tune import parse_space, tune

    tune(_tiny(), parse_space(["lr=1e-4:1e-2:log"]), tmp_path / "t", trials=2, runs=tmp_path)
    shutil.rmtree(tmp_path / "t")
    result = tune(_tiny(), parse_space(["lr_gamma=0.1:0.9", "lr_step=1:3"]), tmp_path / "t", trials=1, runs=tmp_path)
    [trial] = result.trials  # nothing of the deleted folder's study
    assert trial["number"] == 0 and set(trial["params"]) == {"lr_gamma", "lr_step"}
    best = TrainConfig.layered(result.config_path)
    assert best.lr_gamma == trial["params"]["lr_gamma"] and best.lr_step == trial["params"]["lr_step"]


def test_a_search_killed_mid_trial_is_cleaned_up_and_continues(tmp_path, capsys):
    from test_tune import TINY_FLAGS

    out = tmp_path / "t"
    args = ["tune", "protonet", *TINY_FLAGS, "--episodes", "1000000", "--cpu-minutes", "0.05", "--val-every",
            "1000000", "--space", "lr=1e-4:1e-2:log", "--out", str(out), "--runs", str(tmp_path)]
    proc = spawn(*args, "--trials", "1")
    try:
        wait_for(lambda: (out / "trials" / "trial-000" / "state.json").exists())
        cli_error([*args, "--trials", "1"], capsys, "another fewshot process", "search folder")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / "trials" / "trial-000").is_dir()
    assert main([*args, "--trials", "1"]) == 0
    assert not (out / "trials" / "trial-000").exists()  # the half-trained run is gone
    summary = read_json(out / "tune.json")
    assert [(t["number"], t["state"]) for t in summary["trials"]] == [(0, "FAIL"), (1, "COMPLETE")]
    assert summary["best"]["number"] == 1
