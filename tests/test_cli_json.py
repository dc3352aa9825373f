"""Every command's ``--json`` (issue 28): one JSON document on stdout, with exactly the keys
:mod:`fewshot.cli.schemas` documents, on tiny data (digits, a few steps); and no command
without documented keys."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from fewshot.cli import main
from fewshot.cli.main import commands
from fewshot.cli.schemas import JSON_OUTPUT, Document, check_document

TINY = ["--dataset", "digits", "--backbone-option", "depth=2", "--backbone-option", "width=8", "--query", "2",
        "--val-episodes", "5"]


def _digit_folders(root):
    """support/ and query/: class sub-folders of 8x8 digit PNGs (digits 5-7)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split, picks in (("support", range(3)), ("query", range(3, 5))):
        for c in (5, 6, 7):
            folder = root / split / f"digit{c}"
            folder.mkdir(parents=True)
            for i in picks:
                image = digits.images[np.flatnonzero(digits.target == c)[i]] * (255 / 16)
                Image.fromarray(image.astype(np.uint8)).save(folder / f"{i}.png")
    return root / "support", root / "query"


def _recipes(w):
    """Each command's argv on tiny data, in an order where each finds what it needs."""
    zoo, run = str(w / "zoo"), str(w / "run")
    support, query = str(w / "support"), str(w / "query")
    return {
        "train": ["train", "protonet", *TINY, "--episodes", "4", "--val-every", "4", "--out", run],
        "evaluate": ["evaluate", run, "--episodes", "3"],
        "methods": ["methods"],
        "heads": ["heads"],
        "data list": ["data", "list"],
        "data info": ["data", "info", "digits"],
        "runs": ["runs"],
        "runs list": ["runs", "list", "--kind", "train"],
        "runs show": ["runs", "show", "1"],
        "export": ["export", run, "--out", str(w / "model.safetensors")],
        "predict": ["predict", str(w / "model.safetensors"), "--support", support, "--queries", query],
        "report": ["report", run, "--out", str(w / "report")],
        "tune": ["tune", "protonet", *TINY, "--space", "lr=0.001,0.002", "--trials", "1", "--episodes", "2",
                 "--val-every", "2", "--out", str(w / "tune")],
        "advise": ["advise", "--way", "5", "--shot", "1", "--classes", "20", "--images-per-class", "30", "--rules"],
        "zoo build": ["zoo", "build", "--zoo", zoo, "--preset", "tiny", "--only", "tiny-conv-protonet",
                      "tiny-mlp-baseline", "--episodes", "10"],
        "zoo add": ["zoo", "add", "mine", run, "--zoo", zoo],
        "zoo list": ["zoo", "list", "--zoo", zoo],
        "select build": ["select", "build", "--zoo", zoo, "--tasks", "4", "--sources", "digits", "-o", "steps=3"],
        "select evaluate": ["select", "evaluate", "--zoo", zoo, "--resamples", "20"],
        "select": ["select", "--zoo", zoo, "--support", support],
        "select monitor": ["select", "monitor", "--zoo", zoo],
        "demo": ["demo", "--quick", "--out", str(w / "demo")],
    }


def _run(argv):
    """``fewshot ARGV --json`` in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--json"])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    """Each command's stdout, run once, in the recipes' order."""
    w = tmp_path_factory.mktemp("json")
    _digit_folders(w)
    outputs = {}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"FEWSHOT_RUNS": w / "runs", "FEWSHOT_CACHE": w / "cache", "OMP_NUM_THREADS": "1"}.items():
            mp.setenv(name, str(value))
        for command, argv in _recipes(w).items():
            start = time.perf_counter()
            outputs[command] = _run(argv)
            print(f"{command}: {time.perf_counter() - start:.1f} s", file=sys.__stderr__)
    return outputs


def test_every_command_has_documented_json_and_a_recipe(tmp_path):
    # A command added without documented keys (or without a --json flag) fails here.
    names = {name for name, _ in commands()}
    assert names == set(JSON_OUTPUT), f"documented but no command: {set(JSON_OUTPUT) - names}; " \
                                      f"a command without documented keys: {names - set(JSON_OUTPUT)}"
    assert names == set(_recipes(tmp_path))
    for name, parser in commands():
        assert "--json" in parser.option_strings(), f"`fewshot {name}` has no --json"
    for name, doc in JSON_OUTPUT.items():
        assert isinstance(doc, Document) and doc.keys, name
        assert all(isinstance(v, str) and v for v in {**doc.keys, **doc.optional}.values()), name


@pytest.mark.parametrize("command", sorted(JSON_OUTPUT))
def test_json_output_has_the_documented_keys(command, documents):
    code, out, err = documents[command]
    assert code == 0, err
    document = json.loads(out)  # one document: nothing else on stdout
    assert check_document(command, document) == [], (command, document)
    assert document, command  # tiny data gives every command something to report


def test_the_check_fails_on_a_missing_an_undocumented_or_a_misshapen_document():
    doc = Document("d", {"a": "one"}, optional={"b": "two"})
    assert doc.problems({"a": 1}) == [] and doc.problems({"a": 1, "b": 2}) == []
    assert doc.problems({"b": 2}) == ["missing key 'a'"]
    assert doc.problems({"a": 1, "c": 3}) == ["undocumented key 'c'"]
    assert doc.problems([{"a": 1}]) == ["an object, not list"]
    listing = Document("d", {"a": "one"}, many=True)
    assert listing.problems([{"a": 1}, {"a": 2}]) == []
    assert listing.problems({"a": 1}) == ["a list of objects, not dict"]
    assert listing.problems([{"a": 1}, {}]) == ["missing key 'a'"]


def test_a_process_with_json_writes_the_document_alone_on_stdout(tmp_path):
    # A real process: stdout holds the document, nothing else.
    proc = subprocess.run([sys.executable, "-m", "fewshot", "train", "protonet", *TINY, "--episodes", "2",
                           "--val-every", "2", "--out", str(tmp_path / "run"), "--json"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "FEWSHOT_RUNS": str(tmp_path / "runs"),
                                                       "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert check_document("train", document) == [] and document["steps"] == 2
    assert document["run_dir"] == str(tmp_path / "run") and document["finished_before"] is False
