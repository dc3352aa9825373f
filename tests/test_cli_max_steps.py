"""The bound on step counts (issue 34, case 14): a flag, an option or a file naming more than
:data:`fewshot.params.MAX_STEPS` steps is refused in one line that says how to raise the
bound, and ``--max-steps N`` (or ``$FEWSHOT_MAX_STEPS``) raises it for what the command
loads, files included, and for nothing after the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.errors import ConfigError
from fewshot.params import MAX_STEPS, MAX_STEPS_ENV, max_steps, steps_allowed

ABOVE = MAX_STEPS + 1


def _cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "fewshot", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def _one_line(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny trained ProtoNet run, an export of it whose saved strategy asks for ABOVE steps, and a task folder."""
    from sklearn.datasets import load_digits

    from fewshot.export import read_model, write_model

    root = tmp_path_factory.mktemp("steps")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEWSHOT_RUNS", str(root / "runs"))
        # Validated, so the run keeps a temperature and the export does not calibrate anew.
        assert main(["train", "protonet", "--dataset", "digits", "--backbone-option", "depth=2", "--backbone-option",
                     "width=8", "--query", "2", "--episodes", "2", "--val-every", "2", "--val-episodes", "3",
                     "--out", str(root / "run"), "--quiet"]) == 0
        assert main(["export", str(root / "run"), "--out", str(root / "ok.safetensors"), "--quiet"]) == 0
    description, weights, _ = read_model(root / "ok.safetensors")
    description["strategy"] = {"name": "linear-probe", "options": {"steps": ABOVE}}
    write_model(root / "many.safetensors", description, {k.removeprefix("model."): v for k, v in weights.items()})
    digits = load_digits()
    for c in (1, 2):
        folder = root / "support" / f"d{c}"
        folder.mkdir(parents=True)
        for i in range(2):
            image = digits.images[np.flatnonzero(digits.target == c)[i]] * (255 / 16)
            Image.fromarray(image.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def test_the_bound_is_raised_only_inside_the_block(monkeypatch):
    monkeypatch.delenv(MAX_STEPS_ENV, raising=False)
    options = {"method": "maml", "method_options": {"inner_steps": ABOVE}}
    with pytest.raises(ConfigError, match=rf"inner_steps.*\[0, {MAX_STEPS}\].*--max-steps N or \${MAX_STEPS_ENV}"):
        TrainConfig(**options)
    with steps_allowed(ABOVE):
        assert max_steps() == ABOVE and TrainConfig(**options).method_options["inner_steps"] == ABOVE
    assert max_steps() == MAX_STEPS and MAX_STEPS_ENV not in os.environ
    monkeypatch.setenv(MAX_STEPS_ENV, str(ABOVE))  # the environment raises it for a process and its children
    assert TrainConfig(**options).method_options["inner_steps"] == ABOVE
    with steps_allowed(None):
        assert max_steps() == ABOVE
    for bad in ("abc", "0", "-3", "1" * 40):
        monkeypatch.setenv(MAX_STEPS_ENV, bad)
        with pytest.raises(ConfigError, match=f"{MAX_STEPS_ENV} must be a positive integer"):
            max_steps()
    with pytest.raises(ConfigError, match="--max-steps must be a positive integer"):
        with steps_allowed(0):
            pass


def test_a_flag_beyond_the_bound_says_how_to_raise_it(tmp_path):
    proc = _cli("train", "maml", "--dataset", "digits", "--inner-steps", ABOVE, "--out", tmp_path / "run",
                "--runs", tmp_path)
    _one_line(proc, "inner_steps", "--max-steps N")
    assert not (tmp_path / "run").exists()
    _one_line(_cli("train", "maml", "--dataset", "digits", "--max-steps", "0", "--out", tmp_path / "run"),
              "--max-steps must be a positive integer")


def test_max_steps_raises_the_bound_for_an_option(workspace, monkeypatch, capsys):
    monkeypatch.setenv("FEWSHOT_RUNS", str(workspace / "runs"))
    command = ["evaluate", str(workspace / "run"), "--adapt", "linear-probe", "-o", f"steps={ABOVE}",
               "--episodes", "1", "--json", "--quiet"]
    assert main(command) == 2
    assert "--max-steps N" in capsys.readouterr().err
    assert main([*command, "--max-steps", str(ABOVE)]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "protonet+linear-probe"
    assert MAX_STEPS_ENV not in os.environ  # raised for that command only


def test_a_file_beyond_the_bound_is_refused_unless_the_command_line_raises_it(workspace):
    predict = ["predict", workspace / "many.safetensors", "--support", workspace / "support",
               "--queries", workspace / "support", "--json", "--quiet"]
    _one_line(_cli(*predict), "steps", "--max-steps N")
    proc = _cli(*predict, "--max-steps", ABOVE)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 4
