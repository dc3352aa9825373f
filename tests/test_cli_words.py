"""One word per concept across the commands (issue 28): every flag of every command declared
once, with one meaning; old spellings kept as deprecated aliases that warn once; the zoo's
default folder beside the run store."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fewshot.cli.flags import Parser, deprecated, head_from_args
from fewshot.cli.main import build_parser, commands
from fewshot.cli.words import DEPRECATED, FLAGS, KINDS, problems
from fewshot.errors import ConfigError


SRC = Path(__file__).resolve().parents[1] / "src"


def _cli(*args, cwd=None, **env):
    # PYTHONPATH absolute: the command may run in another folder (cwd) and must import this copy.
    return subprocess.run([sys.executable, "-m", "fewshot", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1",
                                                     **env})


def test_every_flag_of_every_command_has_one_declared_meaning():
    assert problems(commands()) == []
    assert all(flag.kind in KINDS and flag.concept for flag in FLAGS.values())
    # The words of issue 28: a count and a folder no longer share --query.
    assert FLAGS["--query"].kind == "count" and FLAGS["--queries"].kind == "text"


def _command(name: str, *flags: tuple[tuple, dict]) -> tuple[str, Parser]:
    p = Parser(prog=f"fewshot {name}")
    for args, kwargs in flags:
        p.add_argument(*args, **kwargs)
    return name, p


def test_the_check_fails_on_a_word_with_two_meanings():
    count = (("--query",), {"type": int})
    folder = (("--query",), {"metavar": "FOLDER"})
    found = problems([_command("train", count), _command("predict", folder)])
    assert any(p.startswith("`fewshot predict` --query: takes a text, but the word takes a count") for p in found)
    assert not any(p.startswith("`fewshot train`") for p in found)
    # Another setting under the same word; a flag nobody declared; the wrong metavar.
    found = problems([_command("x", (("--shot",), {"type": int, "dest": "way"}), (("--frobnicate",), {}),
                               (("--head",), {"metavar": "NAME"}))])
    assert any("--shot: sets way, but the word means shot" in p for p in found)
    assert any("--frobnicate: not declared" in p for p in found)
    assert any("--head: shows NAME, but the word shows HEAD" in p for p in found)


def test_the_check_fails_on_a_deprecated_spelling_not_listed_or_without_its_replacement():
    name, p = _command("y", (("--way",), {"type": int}))
    deprecated(p, "--ways", use="--way", dest="way", type=int)  # not in DEPRECATED
    deprecated(p, "--query", use="--queries", dest="queries")  # listed, but --queries is not there
    found = problems([(name, p)])
    assert any("--ways: deprecated for --way, but DEPRECATED does not say so" in f for f in found)
    assert any("--query: its replacement --queries is not there" in f for f in found)


@pytest.mark.parametrize("argv, dest, value", [
    (["predict", "M", "--query", "a", "b"], "queries", ["a", "b"]),
    (["select", "--query", "Q"], "queries", "Q"),
    (["train", "protonet", "--split", "vinyals"], "split_scheme", "vinyals"),
    (["evaluate", "R", "--split", "vinyals"], "split_scheme", "vinyals"),
    (["zoo", "add", "n", "s", "-m", "a=1", "--meta-option", "b=2"], "metadata_option", ["a=1", "b=2"]),
    (["zoo", "build", "--steps", "5"], "episodes", 5),
])
def test_an_old_spelling_does_what_the_new_one_does_and_warns(argv, dest, value):
    with pytest.warns(FutureWarning, match=r"is deprecated, use --") as caught:
        args, _ = build_parser().parse_known_args(argv)
    assert getattr(args, dest) == value
    olds = {a for a in argv if a in DEPRECATED}
    assert {str(w.message) for w in caught} == {f"{old} is deprecated, use {DEPRECATED[old]}" for old in olds}


def test_a_deprecated_flag_warns_once_in_one_line(tmp_path):
    proc = _cli("zoo", "add", "n", tmp_path / "missing.safetensors", "-m", "objective=x", "-m", "source=y",
                "--zoo", tmp_path / "zoo")
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "fewshot: warning: -m is deprecated, use --metadata-option", proc.stderr
    assert sum(line.startswith("fewshot: warning:") for line in lines) == 1  # once, though given twice
    assert proc.returncode == 2 and len(lines) == 2 and lines[1].startswith("fewshot: error:")


def test_head_options_have_their_own_flag_and_minus_o_still_works_with_a_warning():
    args = argparse.Namespace(head="simpleshot", head_option=["norm=L2N"], option=[])
    assert head_from_args(args).get_params()["norm"] == "L2N"
    with pytest.warns(FutureWarning, match="-o/--option for a head is deprecated, use --head-option"):
        head = head_from_args(argparse.Namespace(head="simpleshot", head_option=[], option=["norm=UN"]))
    assert head.get_params()["norm"] == "UN"
    with pytest.raises(ConfigError, match="--head-option"):
        head_from_args(argparse.Namespace(head="simpleshot", head_option=["norm=UN"], option=["norm=L2N"]))


def test_the_zoo_lives_beside_the_run_store_and_the_old_default_still_works(tmp_path):
    runs, cwd = tmp_path / "runs", tmp_path / "work"
    cwd.mkdir()
    env = {"FEWSHOT_RUNS": str(runs), "FEWSHOT_ZOO": ""}
    proc = _cli("zoo", "list", cwd=cwd, **env)
    assert proc.returncode == 2 and str(runs / "zoo") in proc.stderr, proc.stderr  # no zoo there yet
    assert not (cwd / "zoo").exists()
    from fewshot.select.index import Zoo

    Zoo(cwd / "zoo", create=True)  # a zoo where the old default put it
    proc = _cli("zoo", "list", "--json", cwd=cwd, **env)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
    assert proc.stderr.strip() == (f"fewshot: warning: ./zoo is no longer the default zoo, use --zoo zoo "
                                   f"(or move it to {runs / 'zoo'})")
    Zoo(runs / "zoo", create=True)  # once the new place holds one, it is the zoo, and nothing is said
    proc = _cli("zoo", "list", "--json", cwd=cwd, **env)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout.strip() == "[]"
