"""The runtime and the task kinds: device resolution on faked machines, for every task
kind and every registered method, with and without a torchrun launch's environment.

CI has no GPU, so the machines are faked: ``torch.cuda.is_available``, ``device_count``,
``get_device_properties`` and ``is_bf16_supported``, and MPS availability, are
monkeypatched. Resolution never touches a device, so the faked answers are all it sees;
the maml-rl case runs on to training and evaluation (on the CPU, which is the point).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from fewshot import devices, runtime as runtime_module
from fewshot.cli.main import main
from fewshot.config import DEFAULT_PRECISION, PRECISIONS, TrainConfig
from fewshot.data.tasks import make_sampler, task_kind as dataset_kind
from fewshot.errors import ConfigError
from fewshot.methods import METHODS, method_options
from fewshot.runtime import Runtime, resolve_runtime
from fewshot.taskkind import CLASSIFICATION, KINDS, REGRESSION, REINFORCEMENT, kind_of_metric, task_kind
from fewshot.train import Trainer, TrainResult

# -- faked machines ------------------------------------------------------------------------------

MACHINES = {
    "cpu": {"cuda": 0, "bf16": False, "mps": False},
    "2gpu": {"cuda": 2, "bf16": True, "mps": False},
    "1gpu-old": {"cuda": 1, "bf16": False, "mps": False},  # a pre-Ampere GPU: no bfloat16
    "mac": {"cuda": 0, "bf16": False, "mps": True},
}


def fake_machine(monkeypatch, name: str) -> None:
    spec = MACHINES[name]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: spec["cuda"] > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: spec["cuda"])
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(name="Fake GPU", total_memory=80 * 2**30))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: spec["bf16"])
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: spec["mps"])
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: True, raising=False)


def launch_env(monkeypatch, ranked: bool) -> None:
    if ranked:  # process 1 of 2 of a torchrun launch
        monkeypatch.setenv("LOCAL_RANK", "1")
        monkeypatch.setenv("WORLD_SIZE", "2")
    else:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
        monkeypatch.delenv("WORLD_SIZE", raising=False)


REQUESTS = ("auto", "cpu", "cuda", "cuda:1", "mps")
NO_CUDA, NO_MPS = "no CUDA GPU", "no Apple MPS device"
#: What a classification or regression request resolves to: a device, or a words of the one-line error.
SUPERVISED = {
    ("cpu", False): {"auto": "cpu", "cpu": "cpu", "cuda": NO_CUDA, "cuda:1": NO_CUDA, "mps": NO_MPS},
    ("2gpu", False): {"auto": "cuda:0", "cpu": "cpu", "cuda": "cuda:0", "cuda:1": "cuda:1", "mps": NO_MPS},
    ("1gpu-old", False): {"auto": "cuda:0", "cpu": "cpu", "cuda": "cuda:0", "cuda:1": "has 1 CUDA GPU(s)",
                          "mps": NO_MPS},
    ("mac", False): {"auto": "mps", "cpu": "cpu", "cuda": NO_CUDA, "cuda:1": NO_CUDA, "mps": "mps"},
    ("cpu", True): {"auto": "cpu", "cpu": "cpu", "cuda": NO_CUDA, "cuda:1": NO_CUDA, "mps": NO_MPS},
    # One process per GPU: process 1 takes cuda:1.
    ("2gpu", True): {"auto": "cuda:1", "cpu": "cpu", "cuda": "cuda:1", "cuda:1": "cuda:1", "mps": NO_MPS},
    ("1gpu-old", True): {"auto": "process 1 needs its own GPU", "cpu": "cpu", "cuda": "process 1 needs its own GPU",
                         "cuda:1": "has 1 CUDA GPU(s)", "mps": NO_MPS},
    # MPS is one device: several processes compute on the CPU.
    ("mac", True): {"auto": "cpu", "cpu": "cpu", "cuda": NO_CUDA, "cuda:1": NO_CUDA, "mps": "runs one process"},
}
#: Reinforcement, on every machine, launched or not: rollouts run on the host.
REINFORCEMENT_RULE = {"auto": "cpu", "cpu": "cpu", "cuda": "rollouts run on the CPU", "cuda:1": "rollouts run on the CPU",
                      "mps": "rollouts run on the CPU"}


def expected(kind, machine: str, ranked: bool, request: str) -> str:
    return (REINFORCEMENT_RULE if kind.host_only else SUPERVISED[machine, ranked])[request]


def is_device(answer: str) -> bool:
    return answer in ("cpu", "mps") or answer.startswith("cuda:")


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
@pytest.mark.parametrize("machine", list(MACHINES))
@pytest.mark.parametrize("ranked", [False, True], ids=["one process", "LOCAL_RANK=1 of 2"])
@pytest.mark.parametrize("request_", REQUESTS)
def test_device_resolution_matrix(kind, machine, ranked, request_, monkeypatch):
    fake_machine(monkeypatch, machine)
    launch_env(monkeypatch, ranked)
    answer = expected(kind, machine, ranked, request_)
    if is_device(answer):
        rt = resolve_runtime(request_, kind=kind, what="data")
        assert rt.device == torch.device(answer)
        assert rt.precision == DEFAULT_PRECISION == "fp32"
        assert rt.requested == request_
        assert (rt.rank, rt.world_size) == ((1, 2) if ranked else (None, 1))
    else:
        with pytest.raises(ConfigError) as e:
            resolve_runtime(request_, kind=kind, what="data")
        assert answer in str(e.value) and "\n" not in str(e.value)
        assert "--device" in str(e.value) or "--nproc" in str(e.value)  # says what to do


@pytest.mark.parametrize("machine, request_, precision, answer", [
    ("2gpu", "auto", "bf16", "bf16"),
    ("2gpu", "cuda:1", "fp16", "fp16"),
    ("1gpu-old", "auto", "bf16", "no bfloat16 support"),
    ("1gpu-old", "auto", "fp16", "fp16"),
    ("1gpu-old", "cpu", "bf16", "bf16"),  # CPUs autocast to bf16 (slowly, without AVX-512 BF16 or AMX)
    ("mac", "auto", "bf16", "bf16"),  # macOS 14 or newer (faked)
    ("cpu", "auto", "fp8", "unknown precision 'fp8'"),
])
def test_precision_is_checked_against_the_resolved_device(machine, request_, precision, answer, monkeypatch):
    fake_machine(monkeypatch, machine)
    launch_env(monkeypatch, False)
    if answer in PRECISIONS:
        assert resolve_runtime(request_, precision, kind=CLASSIFICATION).precision == answer
    else:
        with pytest.raises(ConfigError, match=answer):
            resolve_runtime(request_, precision, kind=CLASSIFICATION)


def test_reinforcement_never_meets_a_gpu_even_in_bf16(monkeypatch):
    """The kind's rule comes first: auto is the CPU, so a GPU's missing bf16 never matters."""
    fake_machine(monkeypatch, "1gpu-old")
    launch_env(monkeypatch, False)
    rt = resolve_runtime("auto", "bf16", kind=REINFORCEMENT)
    assert rt.device == torch.device("cpu") and rt.precision == "bf16"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_resolves_by_its_task_kinds(name, monkeypatch):
    """On a machine with GPUs, auto gives each method's supervised kinds the GPU and its
    reinforcement kind the CPU; a method's class carries its kind (``task``)."""
    fake_machine(monkeypatch, "2gpu")
    launch_env(monkeypatch, False)
    cls = METHODS[name]
    assert task_kind(cls).name == cls.task and cls.task in cls.tasks
    for kind_name in cls.tasks:
        kind = task_kind(kind_name)
        rt = resolve_runtime("auto", kind=kind)
        assert rt.device == torch.device("cpu" if kind.host_only else "cuda:0")
        assert rt.say().startswith("device auto -> ")
    assert not {"tune_allocator", "device", "precision"} & set(method_options(cls))  # runtime is not an option


# -- the maml-rl case, end to end --------------------------------------------------------------

def test_maml_rl_trains_and_evaluates_with_device_auto_on_a_cuda_machine(tmp_path, capsys, monkeypatch):
    """Issue 25's bug: on a CUDA machine the CLI turned auto into cuda:0 before the
    reinforcement rule applied, and the sampler refused. The request now goes down unresolved."""
    fake_machine(monkeypatch, "2gpu")
    launch_env(monkeypatch, False)
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "store"))
    run = tmp_path / "run"
    assert main(["train", "maml-rl", "--env", "bandit-5", "--device", "auto", "--meta-batch", "2", "--rollouts", "4",
                 "--episodes", "2", "--val-every", "2", "--val-episodes", "2", "--first-order", "--out", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "best validation return" in out
    assert "device auto -> cpu" in err and "reinforcement rollouts run on the host" in err
    # The request is recorded as asked: a resume on another machine decides again.
    assert json.loads((run / "config.json").read_text())["device"] == "auto"
    assert main(["evaluate", str(run), "--episodes", "2", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metric"] == "return" and result["device"] == "cpu"


def test_maml_rl_cli_config_and_trainer_resolve_to_the_cpu(tmp_path, monkeypatch):
    """The CLI's config path, then the trainer's one resolution, then the sampler."""
    from fewshot.cli.flags import config_from_args
    from fewshot.cli.main import build_parser

    fake_machine(monkeypatch, "2gpu")
    launch_env(monkeypatch, False)
    args, extras = build_parser().parse_known_args(
        ["train", "maml-rl", "--env", "bandit-5", "--device", "auto", "--out", str(tmp_path / "run")])
    assert not extras
    config = config_from_args(args)
    assert config.device == "auto"  # passed down unresolved
    trainer = Trainer(config, tmp_path / "run", runs=tmp_path)
    assert trainer.runtime.device == torch.device("cpu") and trainer.device == torch.device("cpu")
    assert trainer.kind is REINFORCEMENT and trainer.metric == "return"
    assert devices.module_device(trainer.method).type == "cpu"
    assert trainer.sampler.batch(0, 1)  # the sampler took the CPU
    assert make_sampler("bandit-5", None, "train", 1, 4, 4, device=trainer.device) is not None


@pytest.mark.parametrize("argv, words", [
    (["train", "maml-rl", "--env", "bandit-5", "--device", "cuda"], "rollouts run on the CPU"),
    (["train", "protonet", "--dataset", "digits", "--device", "cuda:3"], "has 2 CUDA GPU(s)"),
    (["train", "protonet", "--dataset", "digits", "--device", "mps"], NO_MPS),
])
def test_cli_refuses_a_device_in_one_line_before_writing_anything(argv, words, tmp_path, capsys, monkeypatch):
    fake_machine(monkeypatch, "2gpu")
    launch_env(monkeypatch, False)
    run = tmp_path / "run"
    assert main([*argv, "--out", str(run), "--runs", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "--device" in err[0]
    assert not run.exists()


# -- layering: flags > config > defaults; environment ----------------------------------------------

def test_requests_layer_over_the_config(monkeypatch):
    fake_machine(monkeypatch, "cpu")
    launch_env(monkeypatch, False)
    config = TrainConfig(device="cpu", precision="bf16", tf32=False, deterministic=True)
    rt = resolve_runtime(config=config)
    assert (rt.device.type, rt.precision, rt.tf32, rt.deterministic) == ("cpu", "bf16", False, True)
    rt = resolve_runtime("auto", "fp16", config=config, deterministic=False)
    assert (rt.requested, rt.precision, rt.deterministic) == ("auto", "fp16", False)
    assert rt.say() == f"device auto -> {devices.describe(rt.device)}: no CUDA GPU or MPS device found"
    assert resolve_runtime("cpu").say() == f"device {devices.describe(torch.device('cpu'))}"
    assert resolve_runtime().precision == DEFAULT_PRECISION and TrainConfig().precision == DEFAULT_PRECISION


def test_bad_environment_and_threads_are_one_line_errors(monkeypatch):
    fake_machine(monkeypatch, "cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "first")
    with pytest.raises(ConfigError, match="LOCAL_RANK must be a whole number"):
        resolve_runtime("auto")
    launch_env(monkeypatch, False)
    with pytest.raises(ConfigError, match="threads must be a whole number"):
        resolve_runtime("cpu", threads=0)


def test_a_trainer_takes_a_runtime_and_the_kind_rule_still_applies(tmp_path, monkeypatch):
    launch_env(monkeypatch, False)
    config = TrainConfig(method="maml-rl", dataset="bandit-5", backbone="mlp", shot=4, query=4, episodes=1)
    fake = Runtime(device=torch.device("cuda", 0), requested="cuda")  # made by hand, past the resolver
    with pytest.raises(ConfigError, match="rollouts run on the CPU"):
        Trainer(config, tmp_path / "run", runtime=fake)
    with pytest.raises(ConfigError, match="either a runtime or device"):
        Trainer(config, tmp_path / "run", runtime=resolve_runtime("cpu"), device="cpu")
    trainer = Trainer(config, tmp_path / "run", runtime=resolve_runtime("cpu", "bf16", tune_allocator=False))
    assert trainer.config.precision == "bf16" and trainer.config.device == "cpu"


def test_apply_sets_threads_and_tunes_the_allocator_once(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime_module, "keep_freed_memory", lambda: calls.append(1) or True)
    threads = torch.get_num_threads()
    try:
        resolve_runtime("cpu", threads=1).apply()
        assert torch.get_num_threads() == 1 and calls == [1]
        resolve_runtime("cpu", tune_allocator=False).apply()
        assert calls == [1]
    finally:
        torch.set_num_threads(threads)


# -- task kinds --------------------------------------------------------------------------------------

def test_task_kinds_declare_their_metric_direction_and_best():
    assert [(k.metric, k.higher_is_better, k.best_key) for k in (CLASSIFICATION, REGRESSION, REINFORCEMENT)] == [
        ("accuracy", True, "best_accuracy"), ("mse", False, "best_mse"), ("return", True, "best_return")]
    assert REGRESSION.better(0.1, 0.2) and not REGRESSION.better(0.3, 0.2) and REGRESSION.better(5.0, None)
    assert CLASSIFICATION.better(60.0, 50.0) and not CLASSIFICATION.better(40.0, 50.0)
    assert CLASSIFICATION.format(71.94, 1.41) == "accuracy 71.9 ± 1.4 %"
    assert REGRESSION.format(0.54321, 0.0312) == "mse 0.5432 ± 0.031"
    assert REINFORCEMENT.format(-12.34, 1.1) == "return -12.34 ± 1.1"
    assert [k.host_only for k in KINDS.values()] == [False, False, True]
    assert "comparison" in CLASSIFICATION.panels and "comparison" not in REGRESSION.panels
    for kind in KINDS.values():
        assert kind_of_metric(kind.metric) is kind and task_kind(kind.name) is kind and task_kind(kind) is kind


def test_task_kind_lookups():
    assert dataset_kind("digits") is CLASSIFICATION and dataset_kind("memory:mine") is CLASSIFICATION
    assert dataset_kind("sinusoid") is REGRESSION and dataset_kind("bandit-5") is REINFORCEMENT
    assert task_kind(make_sampler("sinusoid", None, "train", 1, 5, 5)) is REGRESSION
    assert task_kind(METHODS["protonet"]) is CLASSIFICATION and task_kind(METHODS["maml-rl"]) is REINFORCEMENT
    with pytest.raises(ConfigError, match="unknown task kind 'regresion'"):
        task_kind("regresion")
    with pytest.raises(ConfigError, match="names no task kind"):
        task_kind(object())
    with pytest.raises(ConfigError, match="unknown metric"):
        kind_of_metric("f1")


def test_supervised_losses_and_scores_are_the_kinds():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.equal(CLASSIFICATION.loss(logits, labels), torch.nn.functional.cross_entropy(logits, labels))
    assert CLASSIFICATION.score(logits, labels) == float((logits.argmax(1) == labels).float().mean()) * 100
    out, y = torch.randn(2, 5, 1), torch.randn(2, 5)
    assert torch.allclose(REGRESSION.task_losses(out, y), ((out.squeeze(-1) - y) ** 2).mean(1))
    with pytest.raises(ConfigError, match="scored by rollouts"):
        REINFORCEMENT.score(out, y)


def test_train_result_reads_its_best_score_by_its_metric(tmp_path):
    common = dict(run_dir=tmp_path, steps=1, best_accuracy=None, best_ci95=0.1, seconds=1.0, cpu_seconds=1.0,
                  images_per_second=1.0)
    assert TrainResult(**common, metric="mse", best_mse=0.25).best == 0.25
    assert TrainResult(**common, metric="return", best_return=3.0).best == 3.0
    assert TrainResult(**{**common, "best_accuracy": 80.0}).best == 80.0


def test_the_default_precision_is_spelt_once():
    """``"fp32"`` is :data:`fewshot.config.DEFAULT_PRECISION`; every default reads it."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "src" / "fewshot"
    spelt = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                   for node in ast.walk(ast.parse(p.read_text()))
                   if isinstance(node, ast.Constant) and node.value == "fp32")
    assert spelt == ["config.py"]
