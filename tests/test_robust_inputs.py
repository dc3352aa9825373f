"""Issue 34, the inputs round: images of every bit depth decoded as training decodes them,
decompression bombs refused from the header, strict label CSVs, bounded JSON everywhere,
a checked torch.distributed launch, folders that are files and FIFOs refused, and output
that stays valid (strict JSON, a closed pipe) -- each one line and exit 2, or the right
result, and nothing lost.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fewshot
from fewshot import TrainConfig, Trainer
from fewshot.cli import main
from fewshot.data import load_dataset
from fewshot.data.folder import load_folder
from fewshot.errors import CheckpointError, ConfigError, DataError, TrainingError
from fewshot.images import Preprocessing, to_tensor
from fewshot.io import MAX_JSON_DEPTH, parse_json, read_json
from fewshot.rl.rollouts import LinearFeatureBaseline
from fewshot.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
DEEP = "[" * 200_000 + "]" * 200_000
LONG = "9" * 5000  # past Python's 4,300-digit int-string limit


def cli_error(args, capsys, *fragments) -> str:
    """``fewshot ARGS`` in-process must fail with status 2 and one line naming ``fragments``."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    assert code == 2, (args, captured.err)
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    return err[0]


def one_line_process(proc: subprocess.CompletedProcess, *fragments) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def fewshot_process(*args, env=None, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fewshot", *map(str, args)], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=timeout, **kwargs)


@pytest.fixture(autouse=True)
def _own_store(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "store"))
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny ProtoNet on 8x8 grey digits."""
    folder = tmp_path_factory.mktemp("run") / "run"
    config = TrainConfig(dataset="digits", backbone_options={"width": 8}, way=5, shot=1, query=5, episodes=6,
                         val_every=3, val_episodes=4, checkpoint_every=3)
    Trainer(config, folder).run(progress=False, record=False)
    return folder


def task(digits, per_class, offset=0, classes=range(5, 10)):
    """uint8 images (n, 8, 8) of the test digits and their labels."""
    idx = [int(digits.class_offsets[c]) + offset + i for c in classes for i in range(per_class)]
    return digits.images[idx, 0].numpy(), [f"digit {int(digits.labels[i])}" for i in idx]


# -- 4: 16-bit, 32-bit and float image files are scaled as training scales them ------------------

DEPTHS = {  # how to write the same 8-bit picture at another depth, and the PIL mode it reads back as
    "8-bit": (lambda a: Image.fromarray(a), ".png", "L"),
    "16-bit": (lambda a: Image.fromarray(a.astype(np.uint16) * 257), ".png", "I;16"),
    "32-bit": (lambda a: Image.fromarray(a.astype(np.int32) * 257, "I"), ".tiff", "I"),
    "float": (lambda a: Image.fromarray(a.astype(np.float32) / 255, "F"), ".tiff", "F"),
}


def write_images(folder: Path, images: np.ndarray, depth: str) -> list[Path]:
    make, suffix, mode = DEPTHS[depth]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:03d}{suffix}"
        make(image).save(path)
        paths.append(path)
    assert Image.open(paths[0]).mode == mode
    return paths


@pytest.mark.parametrize("depth", ["16-bit", "32-bit", "float"])
def test_wide_image_files_decode_as_their_8_bit_copies(depth, digits, tmp_path):
    images, _ = task(digits, per_class=2)
    prep = Preprocessing(1, 8, 8)
    eight = to_tensor(write_images(tmp_path / "8", images, "8-bit"), prep)
    wide = to_tensor(write_images(tmp_path / depth, images, depth), prep)
    assert torch.equal(wide, eight)  # not clipped to white: the same pixels
    assert torch.equal(eight, torch.from_numpy(images)[:, None].float() / 255)
    # PIL images given directly take the same path.
    assert torch.equal(to_tensor([Image.open(p) for p in sorted((tmp_path / depth).iterdir())], prep), eight)


def test_fit_and_predict_give_the_same_labels_for_8_and_16_bit_copies(run, digits, tmp_path):
    sx, sy = task(digits, per_class=2)
    qx, _ = task(digits, per_class=4, offset=10)
    predicted = {}
    for depth in ("8-bit", "16-bit"):
        support = write_images(tmp_path / depth / "support", sx, depth)
        query = write_images(tmp_path / depth / "query", qx, depth)
        predicted[depth] = list(fewshot.load(run).fit(support, sy).predict(query))
    assert predicted["16-bit"] == predicted["8-bit"]
    assert len(set(predicted["8-bit"])) > 1  # a real prediction, not one class for everything


def test_a_float_image_of_unknown_range_is_refused(tmp_path):
    path = tmp_path / "hdr.tiff"
    Image.fromarray(np.full((8, 8), 3000.0, dtype=np.float32), "F").save(path)
    with pytest.raises(DataError, match="float image with values 3e\\+03..3e\\+03"):
        to_tensor([path], Preprocessing(1, 8, 8))


# -- 16: uint16 / uint32 / uint64 arrays -----------------------------------------------------------

@pytest.mark.parametrize("dtype, white", [(np.uint16, 65535), (np.uint32, 2**32 - 1), (np.uint64, 2**64 - 1)])
def test_wide_unsigned_arrays_are_scaled_by_their_range(dtype, white, run, digits):
    sx, sy = task(digits, per_class=2)
    qx, _ = task(digits, per_class=4, offset=10)
    widen = lambda a: (a.astype(object) * (white // 255)).astype(dtype)  # noqa: E731 - exact for uint64 too
    prep = Preprocessing(1, 8, 8)
    assert torch.allclose(to_tensor(widen(sx), prep), to_tensor(sx, prep), atol=1e-6)
    assert torch.allclose(to_tensor(list(widen(sx)), prep), to_tensor(sx, prep), atol=1e-6)
    eight = fewshot.load(run).fit(sx, sy).predict(qx)
    wide = fewshot.load(run).fit(widen(sx), sy).predict(widen(qx))
    assert list(wide) == list(eight)


def test_torch_uint16_tensors_are_scaled_too():
    x = torch.full((2, 8, 8), 65535, dtype=torch.uint16)
    assert torch.equal(to_tensor(x, Preprocessing(1, 8, 8)), torch.ones(2, 1, 8, 8))


# -- 12: decompression bombs -----------------------------------------------------------------------

BOMB_SIDE = 13_300  # 177 M pixels: under Pillow's own error threshold, over fewshot's 8,192²


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A valid, all-black 13,300² PNG of a few hundred kB (1.6 GB or more once decoded)."""
    pack = zlib.compressobj(9)
    row = bytes(BOMB_SIDE + 1)  # filter byte + pixels
    data = b"".join(pack.compress(row) for _ in range(BOMB_SIDE)) + pack.flush()
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 8, 0, 0, 0, 0))
                     + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    assert path.stat().st_size < 1 << 20
    return path


def test_a_decompression_bomb_is_refused_from_its_header_in_little_memory(bomb):
    script = f"""
import resource, sys
from fewshot.images import Preprocessing, to_tensor
from fewshot.errors import DataError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    to_tensor([{str(bomb)!r}], Preprocessing(1, 8, 8))
except DataError as e:
    print(str(e))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    message, grown_mb = proc.stdout.strip().splitlines()
    assert f"claims {BOMB_SIDE}x{BOMB_SIDE} pixels" in message and "8,192 x 8,192" in message
    assert int(grown_mb) < 50, grown_mb  # decoding it would take 177 MB at the very least


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, as the user opens it
def test_a_lazily_opened_bomb_given_as_a_pil_image_is_refused(bomb):
    with Image.open(bomb) as image, pytest.raises(DataError, match="claims 13300x13300 pixels"):
        to_tensor([image], Preprocessing(1, 8, 8))


def test_predict_refuses_a_bomb_in_one_line(run, digits, bomb, tmp_path, capsys):
    sx, sy = task(digits, per_class=2)
    for x, label in zip(sx, sy):
        (tmp_path / "support" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(tmp_path / "support" / label / f"{len(os.listdir(tmp_path / 'support' / label))}.png")
    cli_error(["predict", run, "--support", tmp_path / "support", "--queries", bomb], capsys, str(bomb),
              "claims 13300x13300 pixels")
    os.link(bomb, tmp_path / "support" / sy[0] / "bomb.png")
    cli_error(["predict", run, "--support", tmp_path / "support", "--queries", bomb], capsys, "bomb.png",
              "claims 13300x13300 pixels")


# -- 10: label CSVs are read strictly ----------------------------------------------------------------

def csv_dataset(root: Path, rows: int = 30) -> tuple[Path, list[str]]:
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
    lines = ["path,label"]
    for i in range(rows):
        c = i % 3
        Image.fromarray(np.full((6, 6), 10 * i % 256, dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
        lines.append(f"c{c}/{i}.png,class {c}")
    return root / "labels.csv", lines


def test_a_stray_quote_is_named_not_swallowing_the_rest(tmp_path, capsys):
    csv_path, lines = csv_dataset(tmp_path / "data")
    csv_path.write_text("\n".join(lines) + "\n")
    assert load_folder(tmp_path, path=csv_path).class_counts.tolist() == [10, 10, 10]  # all 30 kept
    lines[5] = '"' + lines[5]  # line 6 of the file opens a quoted field
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"labels.csv line 6: a double quote opens a field that runs on"):
        load_folder(tmp_path, path=csv_path)
    cli_error(["train", "protonet", "--dataset", "folder", "--path", csv_path, "--image-size", "6",
               "--backbone-option", "depth=1", "--way", "2", "--shot", "1", "--query", "1", "--episodes", "1",
               "--val-split", "none", "--quiet", "--out", tmp_path / "run"], capsys, "labels.csv line 6")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad, fragment", [
    ('c0/0.png,"class 0"x', "line 2: not a valid CSV row"),  # text after a closing quote
    ("c0/0.png," + "x" * 200_000, "line 2: not a valid CSV row (field larger than field limit"),
    ("c0/0.png," + "x" * 5000, "line 2: a field is longer than 4,096 characters"),
])
def test_malformed_csv_rows_are_one_line(bad, fragment, tmp_path):
    csv_path, lines = csv_dataset(tmp_path / "data", rows=6)
    lines[1] = bad
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"labels.csv {fragment}".replace("(", r"\(")):
        load_folder(tmp_path, path=csv_path)


def test_quoted_fields_on_one_line_are_kept(tmp_path):
    csv_path, lines = csv_dataset(tmp_path / "data", rows=6)
    lines[1] = '"c0/0.png","class 0"'
    csv_path.write_text("\n".join(lines) + "\n")
    assert load_folder(tmp_path, path=csv_path).class_counts.tolist() == [2, 2, 2]


# -- 18: every JSON parse bounded ------------------------------------------------------------------------

@pytest.mark.parametrize("text, fragment", [
    (DEEP, f"nests lists or objects more than {MAX_JSON_DEPTH} deep"),
    ('{"step": ' + LONG + "}", "holds a number of more than 400 digits"),
    ('{"lr": 1e999}', None),  # a valid infinity is parsed unless finite numbers are required
])
def test_the_bounded_parser(text, fragment):
    if fragment is None:
        assert parse_json(text, "x") == {"lr": float("inf")}
        with pytest.raises(CheckpointError, match="x holds an invalid number"):
            parse_json(text, "x", finite=True)
        with pytest.raises(CheckpointError, match="NaN is not a finite number"):
            parse_json('{"lr": NaN}', "x", finite=True)
        return
    with pytest.raises(CheckpointError, match=fragment):
        parse_json(text, "x")
    assert parse_json('{"a": "' + "[" * 1000 + LONG + '"}', "x")["a"].startswith("[[")  # inside strings: data


def test_deep_and_long_json_in_config_options_and_state(run, tmp_path, capsys):
    config = tmp_path / "config.json"
    for text, fragment in ((DEEP, "deep"), ('{"lr": ' + LONG + "}", "more than 400 digits")):
        config.write_text(text)
        cli_error(["train", "--config", config, "--dataset", "digits", "--out", tmp_path / "new", "--quiet"], capsys,
                  "config.json", fragment)
    assert not (tmp_path / "new").exists()
    cli_error(["evaluate", run, "--episodes", "2", "-o", f"inner_steps={LONG}"], capsys,
              "option inner_steps", "has more than 400 digits")
    copy = tmp_path / "copy"
    os.makedirs(copy)
    for f in run.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    state = json.loads((run / "state.json").read_text())
    (copy / "state.json").write_text(json.dumps(state).replace('"step": ', f'"step": {LONG}', 1))
    cli_error(["evaluate", copy, "--episodes", "2"], capsys, "state.json", "more than 400 digits")


def test_deep_json_in_exports(run, digits, tmp_path, capsys):
    folder = tmp_path / "export"
    assert main(["export", str(run), "--out", str(folder)]) == 0
    capsys.readouterr()
    (folder / "config.json").write_text(DEEP)
    cli_error(["export", folder, "--out", tmp_path / "again.safetensors"], capsys, "config.json", "deep")
    # A single-file export whose header's fewshot metadata nests deep ...
    from fewshot.io import save_tensors

    one = tmp_path / "one.safetensors"
    save_tensors(one, {"model.w": torch.zeros(1)}, metadata={"fewshot": DEEP})
    cli_error(["export", one, "--out", tmp_path / "again.safetensors"], capsys, "one.safetensors", "deep")
    # ... and one whose safetensors header itself does.
    header = ('{"__metadata__": {"x": "y"}, "a": ' + "[" * 200_000 + "]" * 200_000 + "}").encode()
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(struct.pack("<Q", len(header)) + header)
    cli_error(["export", raw, "--out", tmp_path / "again.safetensors"], capsys, "raw.safetensors")
    assert not (tmp_path / "again.safetensors").exists()


def test_deep_or_long_json_in_store_rows(tmp_path, capsys):
    store = RunStore(tmp_path / "store")
    first = store.record("train", config={"method": "protonet"}, metrics={"accuracy": 50.0})
    assert store.get(first)["metrics"] == {"accuracy": 50.0}
    for column, text in (("metrics", DEEP), ("config", '{"lr": ' + LONG + "}")):
        with sqlite3.connect(store.path) as db:
            db.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (text, first))
        cli_error(["runs"], capsys, f"the {column} of run {first} in the run store")
        cli_error(["runs", "show", first], capsys, f"the {column} of run {first}")
        with sqlite3.connect(store.path) as db:
            db.execute(f"UPDATE runs SET {column} = '{{}}' WHERE id = ?", (first,))


# -- 19: torch.distributed environment -------------------------------------------------------------------

TRAIN = ["train", "protonet", "--dataset", "digits", "--backbone", "mlp", "--way", "5", "--shot", "1", "--query",
         "2", "--episodes", "2", "--val-split", "none", "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("env, fragment", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE must be a whole number ≥ 1, got 'abc'"),
    ({"WORLD_SIZE": "2"}, "RANK is not set, but WORLD_SIZE=2 asks for several processes"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE=2 needs MASTER_ADDR"),
    ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
     "RANK=5 is not a rank of WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "x", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
     "LOCAL_RANK must be a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"}, "MASTER_PORT must be"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1", "FEWSHOT_DIST_TIMEOUT": "-1"},
     "FEWSHOT_DIST_TIMEOUT must be a number of seconds"),
])
def test_a_wrong_launch_environment_is_one_line(env, fragment, tmp_path, capsys, monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "FEWSHOT_DIST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cli_error([*TRAIN, "--out", tmp_path / "run"], capsys, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rank, fragment", [
    (0, "rank 0 of 2 waited 2 s at 127.0.0.1:{port} for rank 1, and not all joined"),
    (1, "rank 1 of 2 could not reach rank 0 at 127.0.0.1:{port} within 2 s"),
])
def test_a_missing_peer_ends_the_wait_in_one_line(rank, fragment, tmp_path):
    port = free_port()
    env = {"WORLD_SIZE": "2", "RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "FEWSHOT_DIST_TIMEOUT": "2", "FEWSHOT_RUNS": str(tmp_path / "store")}
    proc = fewshot_process(*TRAIN, "--out", tmp_path / "run", env=env, timeout=90)  # it hung forever before
    one_line_process(proc, fragment.format(port=port), "FEWSHOT_DIST_TIMEOUT")
    assert not (tmp_path / "run").exists()


# -- 20: folders that are files, FIFOs -----------------------------------------------------------------

def test_data_cache_and_zoo_folders_that_are_files(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    csv_path, lines = csv_dataset(tmp_path / "data", rows=6)
    csv_path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("FEWSHOT_CACHE", str(afile))
    cli_error(["train", "protonet", "--dataset", "folder", "--path", csv_path, "--image-size", "6",
               "--backbone-option", "depth=1", "--way", "2", "--shot", "1", "--query", "1", "--episodes", "1",
               "--val-split", "none", "--quiet", "--out", tmp_path / "run"], capsys,
              f"the cache folder ($FEWSHOT_CACHE) {afile} is a file, not a folder")
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEWSHOT_DATA", str(afile))
    cli_error(["data", "info", "omniglot"], capsys, f"the data root ($FEWSHOT_DATA) {afile} is a file")
    monkeypatch.delenv("FEWSHOT_DATA")
    cli_error(["data", "info", "omniglot", "--data-root", afile], capsys, "the data root (--data-root)")
    for action in ("list", "build"):
        cli_error(["zoo", action, "--zoo", afile], capsys, f"the zoo folder (--zoo, $FEWSHOT_ZOO) {afile} is a file")
    assert afile.read_text() == "not a folder"
    assert not (tmp_path / "run").exists()


def test_a_config_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    proc = fewshot_process(*TRAIN, "--config", fifo, "--out", tmp_path / "run", timeout=60)  # blocked forever before
    one_line_process(proc, f"{fifo} cannot be read (it is not a regular file")
    with pytest.raises(ConfigError, match="not a regular file"):
        read_json(fifo, ConfigError)


# -- 21: output that stays valid ---------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["data", "list"], ["runs", "--json"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(args, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "fewshot", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**ENV, "FEWSHOT_RUNS": str(tmp_path)})
    proc.stdout.close()  # as `| head -0` would: nobody reads what the command prints
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_predict_json_into_a_closed_pipe(run, digits, tmp_path):
    sx, sy = task(digits, per_class=2)
    for i, (x, label) in enumerate(zip(sx, sy)):
        (tmp_path / "support" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(tmp_path / "support" / label / f"{i}.png")
    proc = subprocess.Popen([sys.executable, "-m", "fewshot", "predict", str(run), "--support",
                             str(tmp_path / "support"), "--queries", str(tmp_path / "support"), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    first = proc.stdout.read(1)  # `| head -c 1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert first == b"[" and proc.wait(timeout=120) in (0, 141) and err == "", err


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_evaluate_json_of_one_episode_is_valid_json(run, capsys):
    assert main(["evaluate", str(run), "--episodes", "1", "--json", "--quiet"]) == 0
    result = strict_json(capsys.readouterr().out)
    assert result["ci95"] is None and 0 <= result["accuracy"] <= 100


def test_print_json_maps_every_undefined_number_to_null():
    from fewshot.cli.output import json_text

    value = {"a": float("nan"), "b": [np.float32("inf"), 1.5, {"c": -float("inf")}], "d": (2, np.int64(3))}
    assert strict_json(json_text(value)) == {"a": None, "b": [None, 1.5, {"c": None}], "d": [2, 3]}


def test_a_failing_tune_trial_is_one_line_not_optunas_traceback(tmp_path):
    pytest.importorskip("optuna")
    proc = fewshot_process("tune", "protonet", "--dataset", "digits", "--backbone-option", "depth=2", "--way", "5",
                           "--shot", "1", "--query", "2", "--episodes", "20", "--val-split", "test", "--val-episodes",
                           "2", "--space", "lr=1e30,1e31", "--trials", "2", "--out", tmp_path / "tune", "--runs",
                           tmp_path, timeout=300)
    one_line_process(proc, "no trial finished")
    failed = [line for line in proc.stdout.splitlines() if "-> failed:" in line]
    assert len(failed) == 2 and all("training loss became" in line for line in failed), proc.stdout
    assert "Traceback" not in proc.stdout


def test_a_diverging_policy_is_reported_not_an_mkl_assertion(tmp_path, capsys):
    nan_returns = torch.full((3, 2), float("nan"), dtype=torch.float64)
    rollouts = types.SimpleNamespace(obs=torch.zeros(3, 2, 2), mask=torch.ones(3, 2))
    with pytest.raises(TrainingError, match="the policy diverged"):
        LinearFeatureBaseline().fit(rollouts, nan_returns)
    cli_error(["train", "maml-rl", "--env", "navigation-2d", "--meta-batch", "2", "--rollouts", "4", "--episodes", "1",
               "--val-split", "none", "--first-order", "--inner-lr", "1e30", "--out", tmp_path / "rl", "--quiet"],
              capsys, "the policy diverged", "--adapt-steps")
    assert not (tmp_path / "rl").exists()
