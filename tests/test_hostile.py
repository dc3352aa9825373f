"""Hostile input (issue 7): every mistake or tampering a user can cause is one line on
stderr, exit status 2, no traceback and nothing half-written; archives are read within
bounds; nothing is ever unpickled by torch.load.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.cli import main
from fewshot.data import archives, from_arrays
from fewshot.data.archives import ReadBudget
from fewshot.data.cifar import load_cifar_fs
from fewshot.data.mnist import load_mnist
from fewshot.data.omniglot import load_omniglot
from fewshot.errors import DataError
from fewshot.io import load_tensors, save_tensors

from test_cli import assert_one_line_error, run_cli
from test_data_loaders import cifar100_members, write_mnist, write_tar

ROOT = Path(__file__).resolve().parents[1]
# A protonet on 8x8 digits that trains in milliseconds.
TRAIN = ["train", "protonet", "--dataset", "digits", "--backbone-option", "depth=2", "--way", "5", "--shot", "1",
         "--query", "2", "--episodes", "3", "--val-split", "none", "--quiet"]


def cli_error(args, capsys, *fragments) -> str:
    """Run ``fewshot ARGS`` in-process; it must fail with status 2 and one line naming ``fragments``."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2, args
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    return err[0]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "store"))
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    return tmp_path


# -- malformed config files and flags ------------------------------------------------------

CONFIGS = {
    "syntax": ('{"lr": 0.1,', "is not valid JSON"),
    "binary": (b"\xff\xfe\x00\x01garbage", "is not valid JSON"),
    "list": ("[1, 2]", "must hold a JSON object"),
    "type": ('{"meta_batch": "5"}', "config 'meta_batch' must be an integer ≥ 1"),
    "nan": ('{"lr": NaN}', "config 'lr' must be a finite number"),
    "method": ('{"method": "nosuch"}', "unknown method 'nosuch'"),
    "dataset-option": ('{"dataset_options": {"image_size": "big"}}', "option image_size must be int, got 'big'"),
    "options": ('{"method_options": {"distance": "manhattan"}}', "protonet 'distance' must be one of euclidean, cosine, got 'manhattan'"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_malformed_config_file(case, store, capsys):
    content, fragment = CONFIGS[case]
    path = store / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    # No method on the command line: the file's (or the default, protonet) is used.
    cli_error(["train", *TRAIN[2:], "--config", path, "--out", store / "run"], capsys, fragment)
    assert not (store / "run").exists()


def test_config_path_that_is_a_folder(store, capsys):
    cli_error([*TRAIN, "--config", store, "--out", store / "run"], capsys, "cannot be read")
    assert not (store / "run").exists()


FLAGS = {
    "int-flag": (["--episodes", "ten"], "argument --episodes: invalid int value"),
    "float-flag": (["--lr", "fast"], "argument --lr: invalid float value"),
    "infinite-lr": (["--lr", "inf"], "config 'lr' must be a finite number"),
    "momentum": (["--momentum", "1.5"], "config 'momentum' must be a finite number in [0, 1)"),
    "option-type": (["-o", "normalize=yes"], "protonet 'normalize' must be true or false, got 'yes'"),
    "option-form": (["-o", "normalize"], "must look like KEY=VALUE"),
    "option-unknown": (["-o", "temperature=2"], "method 'protonet' has no option 'temperature'"),
    "backbone-option": (["--backbone-option", "width=wide"], "bad option for backbone 'conv4'"),
    "unknown-dataset": (["--dataset", "nosuch"], "unknown dataset 'nosuch'; choose one of:"),
    "unknown-backbone": (["--backbone", "vit"], "unknown backbone 'vit'"),
    # Conv-4's four poolings do not fit 8x8 digits: refused before training, not mid-way.
    "backbone-too-deep": (["--backbone-option", "depth=4"], "cannot take 1x8x8 inputs"),
}


@pytest.mark.parametrize("case", sorted(FLAGS))
def test_wrong_flags_and_options(case, store, capsys):
    extra, fragment = FLAGS[case]
    cli_error([*TRAIN, *extra, "--out", store / "run"], capsys, fragment)
    assert not (store / "run").exists()


def test_unknown_method_names(store, capsys):
    cli_error(["train", "nosuch", "--out", store / "run"], capsys, "invalid choice: 'nosuch'")
    cli_error(["evaluate", "nosuch", "--dataset", "digits"], capsys, "nosuch is not a fewshot run folder")
    cli_error(["evaluate", "protonet", "--dataset", "digits"], capsys, "not a fewshot run folder")
    assert not (store / "run").exists()


def test_training_that_diverges_at_once_leaves_no_run_folder(store, capsys):
    cli_error([*TRAIN, "--lr", "1e30", "--episodes", "50", "--checkpoint-every", "40", "--out", store / "run"], capsys,
              "training loss became nan", "lower --lr")
    assert not (store / "run").exists()
    # A folder the user made is kept (only what the run wrote goes).
    (store / "mine").mkdir()
    (store / "mine" / "notes.txt").write_text("mine")
    cli_error([*TRAIN, "--lr", "1e30", "--episodes", "50", "--out", store / "mine"], capsys, "lower --lr")
    assert sorted(p.name for p in (store / "mine").iterdir()) == ["notes.txt"]


# -- a user's folder of images ---------------------------------------------------------------

def image_folder(root: Path) -> Path:
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 12), (40 * i, 100 * c, 0)).save(root / name / f"{i}.png")
    return root


FOLDER_TRAIN = ["train", "protonet", "--dataset", "folder", "--image-size", "8", "--backbone-option", "depth=2",
                "--way", "2", "--shot", "1", "--query", "1", "--train-split", "all", "--val-split", "none",
                "--episodes", "2", "--quiet"]


@pytest.mark.parametrize("damage", ["not-an-image", "truncated", "empty-file"])
def test_corrupt_png_in_a_folder_dataset_is_named(damage, store, capsys):
    folder = image_folder(store / "images")
    bad = folder / "dog" / "1.png"
    data = bad.read_bytes()
    bad.write_bytes({"not-an-image": b"GIF89a but not really", "truncated": data[: len(data) * 2 // 3],
                     "empty-file": b""}[damage])
    line = cli_error([*FOLDER_TRAIN, "--path", folder, "--out", store / "run"], capsys, "is not a readable image")
    assert str(bad) in line
    assert not (store / "run").exists()


def test_empty_class_folder_is_named(store, capsys):
    folder = image_folder(store / "images")
    (folder / "emu").mkdir()
    (folder / "emu" / "readme.txt").write_text("no images")
    cli_error([*FOLDER_TRAIN, "--path", folder, "--out", store / "run"], capsys,
              f"class folder {folder / 'emu'} holds no images")
    assert not (store / "run").exists()


# -- in-memory arrays ------------------------------------------------------------------------

@pytest.mark.parametrize("x", [
    np.array([[0.0, np.nan]] * 4), np.array([[0.0, np.inf]] * 4, dtype=np.float32),
    torch.tensor([[0.0, -math.inf]] * 4, dtype=torch.float64), np.full((4, 3, 3), np.nan),
])
def test_non_finite_values_in_arrays(x):
    with pytest.raises(DataError, match="x contains NaN or infinite values"):
        from_arrays(x, [0, 0, 1, 1])


@pytest.mark.parametrize("y, message", [
    ([0, 1, float("nan"), 1], "y contains NaN or infinite labels"),
    (np.array([0.0, np.inf, 1.0, 1.0]), "y contains NaN or infinite labels"),
    (np.array([0, None, 1, 1], dtype=object), "labels cannot be sorted"),
    ([0, 1, 1], "x has 4 rows but y has shape \\(3,\\)"),
    ([[0, 1], [1, 0], [0, 0], [1, 1]], "x has 4 rows but y has shape \\(4, 2\\)"),
])
def test_bad_labels_and_mismatched_lengths(y, message):
    with pytest.raises(DataError, match=message):
        from_arrays(np.zeros((4, 2)), y)


# -- damaged run folders ---------------------------------------------------------------------

@pytest.fixture
def trained(store, capsys):
    """A finished tiny run, to damage."""
    assert main([*TRAIN, "--out", str(store / "run")]) == 0
    capsys.readouterr()
    return store / "run"


def _state(run):
    return json.loads((run / "state.json").read_text())


def test_truncated_checkpoint_on_resume_and_evaluate(trained, capsys):
    for which, name in (("last", _state(trained)["checkpoint"]), ("best", _state(trained)["best"]["file"])):
        path = trained / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        cli_error(["evaluate", trained, "--weights", which, "--episodes", "5"], capsys, str(path),
                  "truncated or damaged")
    cli_error(["train", "--resume", trained, "--quiet"], capsys, "truncated or damaged")


def test_checkpoint_without_rng_state_or_file(trained, capsys):
    path = trained / _state(trained)["checkpoint"]
    save_tensors(path, {k: v for k, v in load_tensors(path).items() if k != "rng.torch"})
    cli_error(["train", "--resume", trained, "--quiet"], capsys, "holds no valid RNG state")
    path.unlink()
    cli_error(["train", "--resume", trained, "--quiet"], capsys, f"{path} is missing")


@pytest.mark.parametrize("state, fragment", [
    ('{"step": 3', "is not valid JSON"),
    ("[]", "holds a JSON list, not an object"),
    ('{"step": "three", "image_shape": [1, 8, 8]}', "has no valid 'step'"),
    ('{"step": 3}', "has no valid 'image_shape'"),
    ('{"step": 3, "image_shape": [1, 8, 8], "checkpoint": "../../etc/passwd"}', "names no valid 'checkpoint'"),
])
def test_damaged_state_file(trained, capsys, state, fragment):
    (trained / "state.json").write_text(state)
    cli_error(["evaluate", trained, "--episodes", "5"], capsys, "state.json", fragment)
    cli_error(["train", "--resume", trained, "--quiet"], capsys, "state.json", fragment)


def test_wrong_evaluate_options(trained, capsys):
    cli_error(["evaluate", trained, "-o", "inner_steps=2"], capsys, "protonet takes no test-time option inner_steps")
    cli_error(["evaluate", trained, "--episodes", "0"], capsys, "at least one episode")
    cli_error(["evaluate", trained, "--eval-split", "nosuch"], capsys, "has no split 'nosuch'")
    cli_error(["evaluate", trained, "--shot", "x"], capsys, "argument --shot: invalid int value")
    cli_error(["evaluate", trained, "--dataset", "sinusoid"], capsys, "built for classification, but these episodes "
              "are regression tasks")


def test_damaged_config_file_of_a_run(trained, capsys):
    (trained / "config.json").write_text('["not", "a", "config"]')
    cli_error(["evaluate", trained, "--episodes", "5"], capsys, "must be a JSON object of settings")


def test_real_processes_print_no_traceback(tmp_path):
    """The same errors from a real ``python -m fewshot`` process: one line, status 2."""
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe{")
    assert_one_line_error(run_cli(*TRAIN, "--config", str(bad), "--out", str(tmp_path / "run")), "not valid JSON")
    assert_one_line_error(run_cli(*TRAIN, "--backbone-option", "depth=4", "--out", str(tmp_path / "run"),
                                  env={"FEWSHOT_RUNS": str(tmp_path)}), "cannot take 1x8x8 inputs")
    assert not (tmp_path / "run").exists()


# -- archives --------------------------------------------------------------------------------

def add_to_zip(path: Path, name: str, data: bytes) -> None:
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)


@pytest.mark.parametrize("name", ["images_background/../../evil.png", "/images_background/evil.png",
                                  "images_background/Alpha/../../../evil.png"])
def test_zip_member_with_absolute_or_parent_path_is_refused(tmp_root, fake_omniglot, name):
    written = fake_omniglot(tmp_root / "omniglot")
    add_to_zip(written["images_background.zip"], name, b"x")
    with pytest.raises(DataError, match=r"images_background\.zip holds member .* absolute or '\.\.' path"):
        load_omniglot(tmp_root)


def test_zip_bomb_is_refused(tmp_root, fake_omniglot, monkeypatch):
    written = fake_omniglot(tmp_root / "omniglot")
    # 4 MB of zeros: a few kilobytes compressed, past a budget lowered to 1 MB.
    add_to_zip(written["images_background.zip"], "images_background/Beta/character02/0099_21.png", bytes(4 << 20))
    assert written["images_background.zip"].stat().st_size < 200_000
    monkeypatch.setattr(archives, "MAX_BYTES", 1 << 20)
    with pytest.raises(DataError, match=r"images_background\.zip inflates to more than 1,048,576 bytes"):
        load_omniglot(tmp_root)


def test_zip_with_too_many_members_is_refused(tmp_root, fake_omniglot, monkeypatch):
    fake_omniglot(tmp_root / "omniglot")  # 5 characters x 20 drawings per archive set
    monkeypatch.setattr(archives, "MAX_MEMBERS", 50)
    with pytest.raises(DataError, match="holds more than 50 members"):
        load_omniglot(tmp_root)


def test_damaged_zip_member_is_a_data_error(tmp_root, fake_omniglot):
    written = fake_omniglot(tmp_root / "omniglot")
    path = written["images_evaluation.zip"]
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 40] ^= 0xFF  # one byte of the member's data: its CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"images_evaluation\.zip:{re.escape(info.filename)} cannot be read"):
        load_omniglot(tmp_root)


def test_tar_bomb_is_refused_even_in_members_never_read(tmp_root, monkeypatch):
    members = cifar100_members()
    members["cifar-100-python/padding"] = bytes(3 << 20)  # not a member the loader wants
    write_tar(tmp_root / "cifar100" / "cifar-100-python.tar.gz", members)
    monkeypatch.setattr(archives, "MAX_BYTES", 1 << 20)
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz inflates to more than .* 'cifar-100-python/padding'"):
        load_cifar_fs(tmp_root)
    monkeypatch.setattr(archives, "MAX_BYTES", 1 << 30)
    monkeypatch.setattr(archives, "MAX_MEMBERS", 3)
    with pytest.raises(DataError, match="holds more than 3 members"):
        load_cifar_fs(tmp_root)


def test_gzip_bomb_is_refused(tmp_root, monkeypatch):
    folder = tmp_root / "mnist"
    write_mnist(folder)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(3 << 20)))
    monkeypatch.setattr(archives, "MAX_BYTES", 1 << 20)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz inflates to more than"):
        load_mnist(tmp_root)


def test_a_read_never_takes_more_than_the_budget_left(monkeypatch):
    monkeypatch.setattr(archives, "MAX_BYTES", 100)

    class Endless(io.RawIOBase):
        """A member that claims nothing and inflates forever; records what was asked of it."""

        asked: list = []

        def read(self, n=-1):
            self.asked.append(n)
            assert n >= 0, "an unbounded read of a hostile member"
            return bytes(n)

    budget = ReadBudget("archive.zip")
    assert len(budget.read(io.BytesIO(bytes(60)), "a")) == 60
    with pytest.raises(DataError, match="inflates to more than 100 bytes"):
        budget.read(Endless(), "b")
    assert Endless.asked == [41]


def test_no_pickle_loading_or_extraction_anywhere():
    """``torch.load`` only with ``weights_only=True``; no archive is ever extracted to disk."""
    sources = [*(ROOT / "src").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    for path in sources:
        text = path.read_text()
        for call in re.finditer(r"torch\.load\((.*)", text):
            assert "weights_only=True" in call.group(1), f"{path}: {call.group(0)}"
        assert not re.search(r"\.extract(all)?\(", text), path
        assert "pickle.load(" not in text and "pickle.loads(" not in text, path
