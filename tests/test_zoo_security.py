"""The zoo reads files, never runs them, and never loses a model (issue 13: items 1, 5, 6, 10, 17).

Each test reproduces a defect found by the adversarial round and checks it is gone."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fewshot.cli import main
from fewshot.errors import CheckpointError, ConfigError
from fewshot.models import build_backbone
from fewshot.models.pretrained import load_pretrained, register_architecture
from fewshot.select.index import Zoo


def _one_line_error(capsys, code, *fragments):
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


def _small_zoo(root: Path, names=("a",)) -> Zoo:
    zoo = Zoo(root, create=True)
    for i, name in enumerate(names):
        torch.manual_seed(i)
        zoo.add(name, build_backbone("conv4", (1, 8, 8), width=4, depth=2), image_shape=(1, 8, 8),
                metadata={"objective": "random-init"})
    return zoo


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ".zoo.lock"}


def _evil_metadata(marker: Path) -> dict:
    return {"architecture": "x", "image_shape": [1, 8, 8], "factory": "subprocess:run",
            "factory_options": {"args": ["sh", "-c", f"id > {marker}"]}}


def test_a_files_metadata_never_runs_code(tmp_path, capsys):
    """Item 1: the exploit of the issue, by `zoo add` of a lone safetensors file."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.safetensors"
    save_file({"w": torch.zeros(1)}, str(evil), metadata={"fewshot": json.dumps(_evil_metadata(marker))})
    code = main(["zoo", "add", "innocent", str(evil), "--zoo", str(tmp_path / "Z")])
    _one_line_error(capsys, code, "cannot add 'innocent'", "neither built in nor registered")
    assert not marker.exists()
    assert Zoo(tmp_path / "Z").names() == [] and _listing(tmp_path / "Z") == {"zoo.json": (tmp_path / "Z" /
                                                                                         "zoo.json").read_bytes()}


def test_an_edited_zoo_json_never_runs_code_and_is_refused(tmp_path, capsys):
    """Item 1: the same keys written into an existing zoo's NAME.json (even with the index's
    hash updated to match) run nothing on `zoo list --check`, `select build` or a load."""
    marker = tmp_path / "PWNED"
    zoo = _small_zoo(tmp_path / "Z")
    sidecar = tmp_path / "Z" / "a.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, **_evil_metadata(marker)}))
    _one_line_error(capsys, main(["zoo", "list", "--check", "--zoo", str(zoo.root)]), "zoo entry 'a'",
                    "a.json changed since it was added")
    # An attacker who also rewrites the index's hash still names no code: 'x' is not registered.
    from fewshot.select.index import sha256_file

    index = json.loads(zoo.index_path.read_text())
    index["models"]["a"]["metadata_sha256"] = sha256_file(sidecar)
    zoo.index_path.write_text(json.dumps(index))
    _one_line_error(capsys, main(["zoo", "list", "--check", "--zoo", str(zoo.root)]), "neither built in nor "
                    "registered")
    _one_line_error(capsys, main(["select", "build", "--zoo", str(zoo.root), "--tasks", "1", "--sources",
                                  "digits", "--quiet"]), "zoo entry 'a'")
    with pytest.raises(CheckpointError):
        load_pretrained(sidecar.with_suffix(".safetensors"))
    assert not marker.exists()


class TwoLayer(torch.nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU())

    def forward(self, x):
        return self.body(x)


def test_user_architectures_are_registered_in_python(tmp_path):
    """Item 1: a user's network enters a zoo only once registered; the file names the registered name."""
    zoo = Zoo(tmp_path / "Z", create=True)
    with pytest.raises(ConfigError, match="register it first"):
        zoo.add("mine", TwoLayer(), image_shape=(1, 8, 8))
    assert "mine" not in zoo and not list((tmp_path / "Z").glob("mine*"))
    register_architecture("test-two-layer", TwoLayer)
    entry = zoo.add("mine", TwoLayer(8), image_shape=(1, 8, 8), metadata={"architecture_options": {"hidden": 8}})
    assert entry["architecture"] == "test-two-layer" and entry["feature_dim"] == 8
    assert isinstance(zoo.load("mine").backbone, TwoLayer)
    with pytest.raises(ConfigError, match="built-in"):
        register_architecture("conv4", TwoLayer)


def test_the_index_name_is_reserved(tmp_path, capsys):
    """Item 5: `zoo add zoo ...` would overwrite the index zoo.json."""
    zoo = _small_zoo(tmp_path / "Z")
    before = _listing(zoo.root)
    source = tmp_path / "Z" / "a.safetensors"
    for name in ("zoo", "ZOO"):
        _one_line_error(capsys, main(["zoo", "add", name, str(source), "--zoo", str(zoo.root)]), "reserved")
    assert _listing(zoo.root) == before and zoo.names() == ["a"]


def test_a_refused_overwrite_touches_nothing(tmp_path, capsys):
    """Item 6: a refused `zoo add --overwrite` used to delete the model it was replacing."""
    zoo = _small_zoo(tmp_path / "Z")
    before = _listing(zoo.root)
    net = build_backbone("conv4", (1, 8, 8), width=8, depth=2)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "meta.json").write_text(json.dumps({"architecture": "conv4", "image_shape": [1, 8, 8],
                                                    "architecture_options": {"width": 16, "depth": 2}}))
    code = main(["zoo", "add", "a", str(tmp_path / "w.safetensors"), "--metadata", str(tmp_path / "meta.json"),
                 "--overwrite", "--zoo", str(zoo.root)])
    _one_line_error(capsys, code, "cannot add 'a'", "does not fit the backbone")
    assert _listing(zoo.root) == before
    zoo.check("a")
    # A valid overwrite replaces the model and its hashes together.
    (tmp_path / "meta.json").write_text(json.dumps({"architecture": "conv4", "image_shape": [1, 8, 8],
                                                    "architecture_options": {"width": 8, "depth": 2}}))
    assert main(["zoo", "add", "a", str(tmp_path / "w.safetensors"), "--metadata", str(tmp_path / "meta.json"),
                 "--overwrite", "--zoo", str(zoo.root)]) == 0
    assert zoo.entry("a")["feature_dim"] == 32
    zoo.check("a")
    assert not [p for p in zoo.root.iterdir() if p.name.startswith(".add-")]


@pytest.mark.parametrize("meta", [
    {"architecture": "conv4", "architecture_options": {"width": 4, "depth": 2}, "image_shape": [1, 100000, 100000]},
    {"architecture": "conv4", "architecture_options": {"width": 4, "depth": 2}, "image_shape": [1, 8]},
    {"architecture": "conv4", "architecture_options": {"width": 10_000_000, "depth": 2}, "image_shape": [1, 8, 8]},
    {"architecture": "mlp", "architecture_options": {"hidden": [10_000_000_000]}, "image_shape": [1, 8, 8]},
], ids=["huge-image", "two-sides", "huge-width", "huge-mlp"])
def test_absurd_metadata_is_one_line_and_leaves_nothing(tmp_path, capsys, meta):
    """Item 17: an absurd image_shape (and no feature_dim) crashed and left files; absurd
    options are refused before any memory is allocated (the network is checked on the meta device)."""
    zoo = _small_zoo(tmp_path / "Z")
    before = _listing(zoo.root)
    net = build_backbone("conv4", (1, 8, 8), width=4, depth=2)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    start = time.process_time()
    code = main(["zoo", "add", "b", str(tmp_path / "w.safetensors"), "--metadata", str(tmp_path / "meta.json"),
                 "--zoo", str(zoo.root)])
    _one_line_error(capsys, code, "cannot add 'b'")
    assert time.process_time() - start < 10
    assert _listing(zoo.root) == before and sorted(p.name for p in zoo.root.iterdir()) == sorted(
        [".zoo.lock", *before])


@pytest.mark.parametrize("name", ["../other/model", "/etc/passwd", "a/../../b", ""])
def test_index_names_are_validated_on_load(tmp_path, capsys, name):
    """Item 17: an index entry `../other/model` read outside the zoo."""
    zoo = _small_zoo(tmp_path / "Z")
    index = json.loads(zoo.index_path.read_text())
    index["models"][name] = index["models"]["a"]
    zoo.index_path.write_text(json.dumps(index))
    _one_line_error(capsys, main(["zoo", "list", "--zoo", str(zoo.root)]), "not a valid zoo model name")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_workers_die_with_their_parent(tmp_path):
    """Item 10: SIGKILL of `select build --workers 2` left orphan workers writing rows."""
    zoo = _small_zoo(tmp_path / "Z", names=("a", "b"))
    meta = tmp_path / "meta.sqlite"
    command = [sys.executable, "-m", "fewshot", "select", "build", "--zoo", str(zoo.root), "--meta", str(meta),
               "--tasks", "400", "--sources", "digits", "--workers", "2", "-o", "steps=5", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FEWSHOT_RUNS": str(tmp_path / "runs")}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        deadline, workers = time.monotonic() + 120, set()
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            if meta.exists():
                try:
                    with sqlite3.connect(meta, timeout=10) as db:
                        workers = {w for (w,) in db.execute("SELECT DISTINCT worker FROM rows")}
                except sqlite3.OperationalError:
                    pass
        assert len(workers) == 2, "both workers must be writing rows before the parent is killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "a worker outlived its parent"
        with sqlite3.connect(meta, timeout=10) as db:
            count = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        time.sleep(1.5)
        with sqlite3.connect(meta, timeout=10) as db:
            assert db.execute("SELECT COUNT(*) FROM rows").fetchone()[0] == count
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for w in workers if "workers" in locals() else ():
            if _alive(w):
                os.kill(w, signal.SIGKILL)
