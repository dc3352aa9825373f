"""Crash safety (issue 7): a training process killed (SIGKILL) in the middle of writing a
checkpoint loses nothing but the write in progress.

The child process is the real command line with one change: ``fewshot.io.atomic_path``
stops, on the chosen write, after the temporary file has been written, cuts that file
short (a write in progress) and waits to be killed before the rename. The test kills it
there, checks that the previous checkpoint is intact and still the one ``state.json``
names, and that ``--resume`` ends with exactly the weights of an uninterrupted run. Only
the killed run needs a process of its own; the others run in this one (on one thread,
as the child), which keeps the test to a few process start-ups.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fewshot.cli import main
from fewshot.io import load_tensors

from test_train import _final_weights, _train_cli

STEPS = ["--episodes", "200", "--val-every", "60"]  # checkpoints every 20 steps; best weights every 60

CHILD = r'''
import contextlib, sys, time
from pathlib import Path

import fewshot.io

target, marker = sys.argv[1], Path(sys.argv[2])
real_atomic_path = fewshot.io.atomic_path


def chosen(path: Path, tmp: Path) -> bool:
    if target == "state.json":  # the state write that would name the step-60 checkpoint
        return path.name == "state.json" and '"checkpoint": "checkpoint-0000060.safetensors"' in tmp.read_text()
    return path.name == target


@contextlib.contextmanager
def stalled(path):
    with real_atomic_path(path) as tmp:
        yield tmp
        if chosen(Path(path), tmp):
            data = tmp.read_bytes()
            tmp.write_bytes(data[: len(data) // 2])
            # The marker appears whole (a rename), or the test could read it half-written.
            part = marker.with_name(marker.name + ".part")
            part.write_text(str(tmp))
            part.replace(marker)
            time.sleep(600)  # killed here, before the rename


fewshot.io.atomic_path = stalled
from fewshot.cli import main

sys.exit(main(sys.argv[3:]))
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "FEWSHOT_RUNS": str(tmp_path_factory.mktemp("store")), "OMP_NUM_THREADS": "1"}


def train_here(argv, env) -> int:
    """``fewshot ARGV`` in this process, on one thread like the child (same floating-point results)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main([*argv, "--runs", env["FEWSHOT_RUNS"]])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env):
    """The same run without interruption (200 steps), and one stopped at step 40."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    assert train_here(_train_cli(folder / "full", *STEPS)[3:], env) == 0
    assert train_here(_train_cli(folder / "short", *STEPS, "--episodes", "40")[3:], env) == 0
    return folder / "full", folder / "short"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("target", ["checkpoint-0000060.safetensors", "best-0000060.safetensors", "state.json"])
def test_sigkill_during_a_checkpoint_write_loses_nothing(tmp_path, env, uninterrupted, target):
    full, short = uninterrupted
    run = tmp_path / "run"
    marker = tmp_path / "writing"
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    argv = _train_cli(run, *STEPS)[3:]  # the arguments after `python -m fewshot`
    proc = subprocess.Popen([sys.executable, str(child), target, str(marker), *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert marker.exists(), f"the chosen write never happened: {proc.stderr.read().decode()[-2000:]}"
        partial = tmp_path / marker.read_text().strip()
        assert partial.exists() and partial.name.startswith(f".{target}.")  # the write is under way
        previous = run / json.loads((run / "state.json").read_text())["checkpoint"]
        before = sha256(previous)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    # The previous checkpoint is intact, and still the one state.json names.
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 40 and state["checkpoint"] == "checkpoint-0000040.safetensors"
    assert previous.name == state["checkpoint"] and sha256(previous) == before
    got, want = load_tensors(previous), load_tensors(short / "checkpoint-0000040.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not (run / target).exists() or target == "state.json"
    assert partial.exists()  # the killed write's leftover, until a resume clears it

    assert train_here(["train", "--resume", str(run), "--quiet"], env) == 0
    got, got_state = _final_weights(run)
    want, want_state = _final_weights(full)
    assert got_state["step"] == want_state["step"] == 200
    assert got.keys() == want.keys()
    for key in want:
        if key != "rng.torch":
            assert torch.equal(got[key], want[key]), key
    assert got_state["history"]["train"] == want_state["history"]["train"]
    # Nothing is left of the killed write, nor of the checkpoints state.json no longer names.
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in full.iterdir())


# -- issue 34, cases 1, 2, 3 and 22: interrupts at every write boundary, overwrites, signals ------

import contextlib  # noqa: E402
import pathlib  # noqa: E402

import safetensors.torch  # noqa: E402

import fewshot  # noqa: E402
import fewshot.io  # noqa: E402
from fewshot.config import TrainConfig  # noqa: E402
from fewshot.errors import ConfigError  # noqa: E402
from fewshot.io import save_tensors  # noqa: E402
from fewshot.train import Trainer  # noqa: E402

from core_fixtures import digits8  # noqa: E402,F401  (fixture)

TINY = dict(dataset="digits", backbone="conv4", backbone_options={"width": 8, "depth": 2}, way=4, shot=2, query=3,
            episodes=4, checkpoint_every=2, val_every=4, val_episodes=4, lr=3e-3)
#: The operations a write is made of: each is a boundary an interrupt can land before or after.
BOUNDARIES = [(os, "fsync"), (os, "replace"), (os, "rename"), (fewshot.io, "exchange"),
              (safetensors.torch, "save_file"), (pathlib.Path, "write_text")]


@contextlib.contextmanager
def interrupted_at(monkeypatch, k: int | None, when: str = "before"):
    """Count the write boundaries; raise KeyboardInterrupt before (or after) the k-th
    (None: just count). Yields the list of calls made so far."""
    calls: list[str] = []

    def wrap(owner, name):
        real = getattr(owner, name)

        def boundary(*args, **kwargs):
            calls.append(name)
            if len(calls) - 1 == k and when == "before":
                raise KeyboardInterrupt
            out = real(*args, **kwargs)
            if len(calls) - 1 == k and when == "after":
                raise KeyboardInterrupt
            return out
        monkeypatch.setattr(owner, name, boundary)

    for owner, name in BOUNDARIES:
        wrap(owner, name)
    try:
        yield calls
    finally:
        monkeypatch.undo()


@pytest.fixture(scope="module")
def one_thread():
    """Bit-identical resumes need the same floating-point reductions: one thread, as above."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


def final(run_dir):
    state = json.loads((run_dir / "state.json").read_text())
    return load_tensors(run_dir / state["checkpoint"]), state


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits8, one_thread):  # noqa: F811
    run = tmp_path_factory.mktemp("reference") / "run"
    mp = pytest.MonkeyPatch()
    with interrupted_at(mp, None) as calls:
        Trainer(TrainConfig(**TINY), run, dataset=digits8).run(progress=False, record=False)
    return run, len(calls)


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_interrupt_at_any_checkpoint_write_boundary_leaves_a_resumable_run(tmp_path, monkeypatch, digits8,  # noqa: F811
                                                                              reference, when):
    """Ctrl-C before or after every fsync, rename and write of a run (its config, states,
    checkpoints and best weights): the state on disk names files that exist, nothing
    temporary is left, and the run either is gone (it had no checkpoint) or resumes to
    exactly the weights of an uninterrupted run (case 1: right after the state is
    replaced, the checkpoint it names used to be deleted)."""
    ref, boundaries = reference
    want, want_state = final(ref)
    assert boundaries > 20
    for k in range(boundaries):
        run = tmp_path / f"{when}-{k}"
        with interrupted_at(monkeypatch, k, when), pytest.raises(KeyboardInterrupt):
            Trainer(TrainConfig(**TINY), run, dataset=digits8).run(progress=False, record=False)
        assert hidden(run) == [], (k, hidden(run))
        if not (run / "state.json").exists():
            assert not run.exists(), (k, sorted(p.name for p in run.iterdir()))
            continue
        state = json.loads((run / "state.json").read_text())
        assert (run / state["checkpoint"]).is_file(), k
        assert state["best"] is None or (run / state["best"]["file"]).is_file(), k
        Trainer(TrainConfig(**TINY), run, dataset=digits8).run(resume=True, progress=False, record=False)
        got, got_state = final(run)
        assert got_state["history"] == want_state["history"] and got_state["step"] == 4, k
        assert all(torch.equal(got[key], want[key]) for key in want if key != "rng.torch"), k
        assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in ref.iterdir()), k


def test_a_checkpoint_is_on_disk_before_the_state_that_names_it(tmp_path, monkeypatch, digits8):  # noqa: F811
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    Trainer(TrainConfig(**TINY), tmp_path / "run", dataset=digits8).run(progress=False, record=False)
    monkeypatch.undo()
    for name in ("checkpoint-0000002.safetensors", "checkpoint-0000004.safetensors", "best-0000004.safetensors"):
        renamed = events.index(("replace", name))
        # The file's data, then the rename (the folder), are flushed before any state is replaced after it.
        assert events[renamed - 1][0] == "fsync" and events[renamed - 1][1].startswith(f".{name}.")
        assert events[renamed + 1] == ("fsync", "run")
        named = next(i for i in range(renamed, len(events)) if events[i] == ("replace", "state.json"))
        assert named > renamed + 1


@pytest.fixture(scope="module")
def learners(reference):
    """Two different exportable models (weights and calibration differ)."""
    run, _ = reference
    old = fewshot.load(run, which="last", calibration_episodes=0)
    new = fewshot.load(run, which="last", calibration_episodes=0)
    with torch.no_grad():
        next(new.method.parameters()).add_(1.0)
    new.calibration = {"temperature": 2.0, "fitted": False, "why": "test"}
    return old, new


def snapshot(path):
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return path.read_bytes()


@pytest.mark.parametrize("form", ["model.safetensors", "model"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_an_interrupt_at_any_export_write_boundary_leaves_the_old_or_the_new_export(tmp_path, monkeypatch, learners,
                                                                                   form, when):
    """Case 3: a folder export is written whole and exchanged in one rename, so an
    interrupt anywhere leaves the old export (byte for byte) or the new one, never new
    weights beside an old description; nothing temporary is left."""
    old, new = learners
    made = tmp_path / "made"
    made.mkdir()
    new.save(made / form)
    want_new = snapshot(made / form)
    with interrupted_at(monkeypatch, None) as calls:
        new.save(made / form)  # replacing an export: the path every later test takes
    boundaries = len(calls)
    assert boundaries >= (4 if form.endswith(".safetensors") else 10)
    for k in range(boundaries):
        folder = tmp_path / f"{k}"
        folder.mkdir()
        old.save(folder / form)
        want_old = snapshot(folder / form)
        with interrupted_at(monkeypatch, k, when), pytest.raises(KeyboardInterrupt):
            new.save(folder / form)
        assert hidden(folder) == [] and hidden(folder / form if form == "model" else folder) == [], k
        got = snapshot(folder / form)
        assert got in (want_old, want_new), k
        reloaded = fewshot.load(folder / form, calibration_episodes=0)
        assert reloaded.temperature == (old.temperature if got == want_old else 2.0)


def test_export_refuses_files_and_folders_fewshot_did_not_write(tmp_path, reference, learners, capsys):
    """Case 2: a user's weights, a run's own checkpoint and a Hugging Face folder are left
    byte for byte, with one line (exit 2 from the CLI); a fewshot export is replaced."""
    run, _ = reference
    old, _ = learners
    user = tmp_path / "weights.safetensors"
    save_tensors(user, {"w": torch.ones(3)})
    checkpoint = run / json.loads((run / "state.json").read_text())["checkpoint"]
    hub = tmp_path / "hf"
    hub.mkdir()
    (hub / "config.json").write_text('{"model_type": "resnet"}')
    save_tensors(hub / "model.safetensors", {"w": torch.ones(3)})
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep")
    for target in (user, checkpoint, hub, notes, run):
        before = snapshot(target)
        with pytest.raises(ConfigError, match="choose a") as e:
            old.save(target)
        assert "\n" not in str(e.value)
        assert main(["export", str(run), "--out", str(target), "--weights", "last"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(target) in err[0] and "fewshot" in err[0], err
        assert snapshot(target) == before
    # Its own exports are replaced (and an empty folder is filled).
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "mine.safetensors", tmp_path / "mine", tmp_path / "empty"):
        old.save(target)
        old.save(target)
        assert fewshot.load(target, calibration_episodes=0).temperature == old.temperature


SIGTERM_CHILD = r'''
import sys, time
from pathlib import Path

import safetensors.torch
import fewshot

real, marker = safetensors.torch.save_file, Path(sys.argv[3])


def slow(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    part = marker.with_name(marker.name + ".part")  # the test polls for the marker: it appears whole
    part.write_text(filename)
    part.replace(marker)
    time.sleep(600)  # terminated here, with a full-size temporary on disk


learner = fewshot.load(sys.argv[1], which="last", calibration_episodes=0)
safetensors.torch.save_file = slow
learner.save(sys.argv[2])
'''


@pytest.mark.parametrize("form", ["model.safetensors", "model"])
def test_sigterm_during_an_export_leaves_no_temporary(tmp_path, reference, learners, env, form):
    """Case 22: SIGTERM mid-write removes the temporary (exit 143) and the old export stays."""
    run, _ = reference
    old, _ = learners
    out = tmp_path / form
    old.save(out)
    before = snapshot(out)
    child, marker = tmp_path / "child.py", tmp_path / "writing"
    child.write_text(SIGTERM_CHILD)
    proc = subprocess.Popen([sys.executable, str(child), str(run), str(out), str(marker)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert marker.exists(), proc.stderr.read().decode()[-2000:]
        assert os.path.exists(marker.read_text())  # the temporary, full size, on disk
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert hidden(tmp_path) == [] and snapshot(out) == before


def test_the_next_write_sweeps_leftovers_of_killed_writers_only(tmp_path, learners):
    """A SIGKILL leaves its temporary; the next write of the same target removes it,
    but not a temporary whose writer is alive (it holds the lock), nor a user's file."""
    import fcntl

    old, _ = learners
    out = tmp_path / "model.safetensors"
    dead = tmp_path / ".model.safetensors.k1ll3d_x.tmp"
    dead.write_bytes(b"x" * 1000)
    alive = tmp_path / ".model.safetensors.w0rking.tmp"
    alive.write_bytes(b"y")
    mine = tmp_path / ".model.safetensors.notes"
    mine.write_text("keep")
    fd = os.open(alive, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        old.save(out)
    finally:
        os.close(fd)
    assert hidden(tmp_path) == sorted([alive.name, mine.name])
    # A killed folder export's staging folder goes too (only fewshot's files in it).
    staging = tmp_path / ".model.abc123de.tmp"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"z")
    old.save(tmp_path / "model")
    assert not staging.exists()
