"""Issue 28's manners: progress as the output allows (bars on a terminal, plain lines in a
log, nothing with --quiet or TQDM_DISABLE), warnings as one line, a finished run's resume."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import sqlite3
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

from fewshot import progress

SRC = Path(__file__).resolve().parents[1] / "src"
# A short training run: a bar, a validation and a calibration, in seconds.
TRAIN = ["train", "protonet", "--dataset", "digits", "--episodes", "6", "--val-every", "3", "--val-episodes", "4",
         "--checkpoint-every", "3"]


def _env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    env.update(PYTHONPATH=str(SRC), FEWSHOT_RUNS=str(tmp_path / "runs"), FEWSHOT_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1", **extra)
    return env


def _fewshot(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The CLI in a subprocess whose stdout and stderr are pipes (no terminal)."""
    return subprocess.run([sys.executable, "-m", "fewshot", *args], env=_env(tmp_path, **env), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def _fewshot_on_terminal(args: list[str], tmp_path: Path) -> str:
    """The CLI with stderr on a pseudo-terminal; what it wrote there."""
    leader, follower = pty.openpty()
    # A terminal has a size (a bare pseudo-terminal has 0 columns, where tqdm draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "fewshot", *args], env=_env(tmp_path), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 600)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(leader, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode(errors="replace")


def test_plain_lines_in_a_log_say_the_figures_without_carriage_returns():
    out = io.StringIO()  # not a terminal
    with progress.bar(10, desc="training protonet", unit="step", stream=out, every=0) as bar:
        for _ in range(4):
            bar.update()
        bar.set_postfix({"loss": "0.410", "acc": "88.1"})
        bar.update()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("fewshot: training protonet 1/10 steps (10 %), 0:00 elapsed")
    assert lines[-1].startswith("fewshot: training protonet 5/10 steps (50 %), loss 0.410, acc 88.1,")
    assert len(lines) == 5  # one per update (every=0); the closing line is not repeated


def test_plain_lines_wait_their_interval():
    out = io.StringIO()
    with progress.bar(1000, desc="x", stream=out) as bar:  # the default: a line at most every 10 s
        for _ in range(1000):
            bar.update()
    assert out.getvalue() == ""


def test_quiet_and_tqdm_disable_silence_bars_and_lines(monkeypatch):
    out = io.StringIO()
    progress.set_quiet(True)
    try:
        with progress.bar(3, desc="x", stream=out, every=0) as bar:
            bar.update()
        progress.status("calibrating", stream=out)
    finally:
        progress.set_quiet(False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    with progress.bar(3, desc="x", stream=out, every=0) as bar:
        bar.update()
    assert out.getvalue() == ""
    progress.status("calibrating on 5 episodes", stream=out)  # a status line is not a bar
    assert out.getvalue() == "fewshot: calibrating on 5 episodes\n"


def test_training_without_a_terminal_writes_no_bars(tmp_path):
    done = _fewshot([*TRAIN, "--out", "run"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b[" not in done.stderr
    assert len(done.stderr) < 2000, done.stderr
    assert "fewshot: calibrating" in done.stderr
    assert all(line.startswith("fewshot: ") for line in done.stderr.splitlines()), done.stderr


def test_training_on_a_terminal_draws_a_bar(tmp_path):
    shown = _fewshot_on_terminal([*TRAIN, "--out", "run"], tmp_path)
    # A bar redraws its line: a carriage return not followed by a new line (the terminal
    # writes "\r\n" for every "\n").
    assert re.search("\r(?!\n)", shown) and "training protonet" in shown, shown


def test_quiet_and_tqdm_disable_on_the_command_line(tmp_path):
    quiet = _fewshot([*TRAIN, "--out", "run1", "--quiet"], tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    disabled = _fewshot([*TRAIN, "--out", "run2"], tmp_path, TQDM_DISABLE="1")
    assert disabled.returncode == 0, disabled.stderr
    assert "training protonet" not in disabled.stderr and "\r" not in disabled.stderr


@pytest.mark.parametrize("command", [
    ["train"], ["evaluate"], ["demo"], ["export"], ["predict"], ["report"], ["tune"], ["advise"], ["zoo", "add"],
    ["zoo", "build"], ["select"], ["select", "build"], ["select", "evaluate"], ["select", "monitor"], ["data", "info"]])
def test_every_computing_command_takes_quiet(command):
    from fewshot.cli.main import build_parser

    parser = build_parser()
    for word in command:
        parser = next(a for a in parser.ensure_built()._actions if a.__class__.__name__ == "_SubParsersAction") \
            .choices[word]
    assert "--quiet" in parser.option_strings()


def test_resuming_a_finished_run_records_nothing(tmp_path):
    assert _fewshot([*TRAIN, "--out", "run", "--quiet"], tmp_path).returncode == 0
    store = tmp_path / "runs" / "fewshot.sqlite"
    count = lambda: sqlite3.connect(store).execute("SELECT COUNT(*) FROM runs").fetchone()[0]  # noqa: E731
    before = count()
    again = _fewshot(["train", "--resume", "run"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines() == ["run is already finished (6 steps; recorded as run 1): nothing to do"]
    assert count() == before == 1


def test_a_warning_is_one_line_without_source(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in range(3):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"c{c}" / f"{i}.png")
    args = ["data", "info", "folder", "--path", str(folder), "--val-ratio", "0.34", "--test-ratio", "0.34"]
    first = _fewshot(args, tmp_path)
    assert first.returncode == 0, first.stderr
    for cache in (tmp_path / "cache").glob("folder-*.safetensors"):
        cache.write_bytes(b"not a safetensors file")  # a damaged cache: decoded again, with a warning
    again = _fewshot(args, tmp_path)
    assert again.returncode == 0, again.stderr
    lines = again.stderr.splitlines()
    assert all(line.startswith("fewshot: warning: ") for line in lines), again.stderr  # one line each
    assert sum("is damaged" in line for line in lines) == 1, again.stderr
    assert "Warning:" not in again.stderr and "warnings.warn(" not in again.stderr


def test_a_read_only_array_gives_no_torch_warning(recwarn):
    from fewshot.images import Preprocessing, to_tensor

    array = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    array.flags.writeable = False  # as np.asarray of a PIL image, or a memory map
    x = to_tensor(array, Preprocessing(1, 8, 8))
    assert tuple(x.shape) == (2, 1, 8, 8)
    assert not [w for w in recwarn if "not writable" in str(w.message)]
