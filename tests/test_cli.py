"""The command line: one-line errors with exit status 2, working commands, JSON output."""

import json
import os
import subprocess
import sys

import pytest

from fewshot.cli import main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fewshot", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("args, fragments", [
    (["train", "protonet", "--way", "five", "--out", "x"], ["--way", "invalid int"]),
    (["train", "nosuchmethod", "--out", "x"], ["invalid choice"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_bad_flags_exit_2_in_one_line(args, fragments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(f in err[0] for f in fragments)


def test_user_errors_exit_2_without_traceback(tmp_path, capsys):
    cases = [
        (["data", "info", "nosuchdata"], "unknown dataset 'nosuchdata'"),
        (["train", "protonet", "--dataset", "digits", "--train-way", "21", "--out", str(tmp_path / "r")],
         "21-way episodes need 21 classes"),
        (["train", "protonet", "--dataset", "digits", "--shot", "170", "--query", "15", "--out", str(tmp_path / "r")],
         "170-shot 10-query needs 180"),  # digits trains with 10 queries (its recipe)
        (["train", "protonet", "--dataset", "digits", "--no-rotations", "--train-split", "val", "--out",
          str(tmp_path / "r")], "has no split 'val'"),
        (["evaluate", str(tmp_path)], "not a fewshot run folder"),
        (["train", "protonet", "--config", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r")],
         "not found"),
        (["runs", "show", "12345", "--runs", str(tmp_path)], "no run 12345"),
        (["train", "--resume", str(tmp_path / "nothing")], "missing"),
    ]
    for args, fragment in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], (args, err)
    assert not (tmp_path / "r").exists(), "a failed command must not leave a half-made run folder"


def test_missing_omniglot_offline_says_where_to_put_the_files(tmp_path):
    proc = run_cli("data", "info", "omniglot", "--data-root", str(tmp_path),
                   env={"FEWSHOT_OFFLINE": "1", "FEWSHOT_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(proc, "images_background.zip", str(tmp_path / "omniglot"))


def test_bad_config_file_is_one_line(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"lr": "fast"}')
    proc = run_cli("train", "protonet", "--config", str(bad), "--out", str(tmp_path / "r"))
    assert_one_line_error(proc, "config 'lr' must be a finite number > 0")
    bad.write_text('{"learning_rate": 1}')
    assert_one_line_error(run_cli("train", "protonet", "--config", str(bad), "--out", str(tmp_path / "r")),
                          "unknown config key(s) learning_rate")


def test_train_evaluate_runs_end_to_end(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    out = str(tmp_path / "run")
    assert main(["train", "protonet", "--dataset", "digits", "--backbone-option", "depth=2", "--shot", "1",
                 "--query", "5", "--episodes", "15", "--out", out, "--runs", runs, "--quiet"]) == 0
    assert "trained protonet for 15 steps" in capsys.readouterr().out
    assert main(["evaluate", out, "--way", "5", "--shot", "1", "--episodes", "40", "--runs", runs, "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("accuracy ") and line.endswith("(40 episodes, 5-way 1-shot)")
    assert main(["evaluate", out, "--shot", "5", "--episodes", "40", "--json", "--runs", runs, "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "ci95", "episodes", "way", "shot"} <= set(result)
    assert result["episodes"] == 40 and result["shot"] == 5 and 20 < result["accuracy"] <= 100
    assert main(["evaluate", "pixel-ncm", "--dataset", "digits", "--episodes", "40", "--json", "--runs", runs,
                 "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "pixel-ncm"
    assert main(["runs", "--runs", runs]) == 0
    kinds = [line.split()[1] for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert kinds == ["train", "evaluate", "evaluate", "evaluate"]
    assert main(["runs", "show", "1", "--runs", runs]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "train"


def test_every_command_has_help():
    for command in (["train"], ["evaluate"], ["data", "info"], ["runs"], ["demo"], []):
        proc = run_cli(*command, "--help")
        assert proc.returncode == 0 and "usage: fewshot" in proc.stdout


def test_data_info_digits(capsys):
    assert main(["data", "info", "digits"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "1797" in out


def test_help_is_fast_and_imports_no_torch():
    # `fewshot --help` builds the top-level parser only; each command's flags (and the
    # imports they need) are built when that command is used.
    code = ("import sys\nfrom fewshot.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'sklearn', 'fewshot.methods', 'fewshot.select') "
            "if m in sys.modules)\nprint('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
    assert "train" in proc.stdout and "select" in proc.stdout


@pytest.mark.parametrize("args, fragments", [
    (["trian"], ["invalid choice: 'trian'", "did you mean 'train'?", "see `fewshot --help`"]),
    (["train", "protnet", "--out", "x"], ["invalid choice: 'protnet'", "did you mean 'protonet'?",
                                          "see `fewshot train --help`"]),
    (["train", "protonet", "--wya", "5", "--out", "x"], ["unrecognized arguments: --wya 5", "did you mean --way?",
                                                         "see `fewshot train --help`"]),
    (["data", "info", "digits", "--jsno"], ["did you mean --json?", "see `fewshot data info --help`"]),
    (["select", "build", "--tsaks=3"], ["did you mean --tasks?", "see `fewshot select build --help`"]),
    (["runs", "--zzzz"], ["unrecognized arguments: --zzzz", "see `fewshot runs --help`"]),
])
def test_unknown_names_and_flags_suggest_and_point_to_the_command_help(args, fragments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    if args == ["runs", "--zzzz"]:
        assert "did you mean" not in err[0]  # nothing close: no guess


@pytest.mark.parametrize("args, fragments", [
    (["--backbone-option", "deep=2"], ["backbone 'conv4' has no option 'deep'", "did you mean 'depth'?",
                                       "its options: width, depth"]),
    (["--backbone-option", "depth=2", "-o", "dist=cosine"],
     ["method 'protonet' has no option 'dist'", "did you mean 'distance'?", "distance, normalize",
      "fewshot methods protonet"]),
    (["--dataset", "digitz"], ["unknown dataset 'digitz'", "did you mean 'digits'?"]),
    (["--backbone", "conv5"], ["unknown backbone 'conv5'", "did you mean 'conv4'?"]),
    (["--dataset", "folder"], ["--path DIR"]),
])
def test_bad_names_and_options_say_what_is_valid(args, fragments, tmp_path, capsys):
    argv = ["train", "protonet", "--dataset", "digits", *args, "--episodes", "1", "--out", str(tmp_path / "r"),
            "--runs", str(tmp_path), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    assert "=<" not in err[0] and "__init__()" not in err[0]  # flags and options, not Python
    assert not (tmp_path / "r").exists()


def test_an_untrained_method_refuses_options_it_does_not_take(tmp_path, capsys):
    assert main(["evaluate", "pixel-ncm", "-o", "k=1", "--runs", str(tmp_path), "--quiet"]) == 2
    assert "method 'pixel-ncm' has no option 'k'; its options: none" in capsys.readouterr().err


def test_methods_lists_every_registered_method_with_its_options(capsys):
    import inspect

    from fewshot.methods import METHODS, Method, ProtoNet, register

    assert main(["methods", "--json"]) == 0
    described = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert set(described) == set(METHODS)
    assert described["protonet"]["options"] == {
        "distance": {"default": "euclidean", "required": False, "type": "str", "constraint": "one of euclidean, cosine"},
        "normalize": {"default": False, "required": False, "type": "bool", "constraint": "true or false"},
        "test_views": {"default": 1, "required": False, "type": "int", "constraint": "an integer in [1, 9]"}}
    assert described["pixel-ncm"]["options"] == {} and not described["pixel-ncm"]["learns_across_tasks"]
    maml = inspect.signature(METHODS["maml"].__init__).parameters
    assert described["maml"]["options"]["inner_steps"]["default"] == maml["inner_steps"].default
    assert "way" not in described["maml"]["options"]  # filled in from the episodes, not an option

    class Toy(ProtoNet):  # a method of the user's: listed with nothing in the CLI changed
        """A toy method. It only renames ProtoNet."""

        name = "toy-cli-listing"

        def __init__(self, backbone, sharpness: float = 2.5):
            super().__init__(backbone)
            self.sharpness = sharpness

    register(Toy)
    try:
        assert main(["methods"]) == 0
        out = capsys.readouterr().out
        assert "toy-cli-listing: meta-trained" in out and "sharpness=2.5" in out
        assert 'protonet: meta-trained' in out and 'distance="euclidean"' in out
    finally:
        METHODS.pop("toy-cli-listing")
    assert issubclass(Toy, Method)
    assert main(["methods", "protnet"]) == 2
    assert "did you mean 'protonet'?" in capsys.readouterr().err


def test_evaluate_prints_its_result_when_the_store_cannot_record_it(tmp_path, capsys):
    not_a_folder = tmp_path / "runs"
    not_a_folder.write_text("a file where the runs folder should be")
    assert main(["evaluate", "pixel-ncm", "--dataset", "digits", "--episodes", "20", "--runs", str(not_a_folder),
                 "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("accuracy ") and "(20 episodes, 5-way 1-shot)" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "not recorded" in err[0] and "--runs" in err[0], err
