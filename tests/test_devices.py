"""Devices and precision: CPU always; CUDA and MPS when this machine has them (skipped otherwise)."""

import json

import pytest
import torch

from fewshot import devices
from fewshot.config import TrainConfig
from fewshot.data import EpisodeSampler, load_dataset, make_sampler
from fewshot.errors import ConfigError
from fewshot.evaluate import evaluate
from fewshot.io import load_tensors, save_tensors
from fewshot.memory import check_step_fits, step_memory
from fewshot.methods import build_method
from fewshot.methods.transfer import wrap
from fewshot.models import build_backbone
from fewshot.runs import load_run
from fewshot.store import RunStore
from fewshot.train import Trainer

from core_fixtures import digits8  # noqa: F401  (fixture)

HAS_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")),
    pytest.param("mps", marks=pytest.mark.skipif(not HAS_MPS, reason="no Apple MPS device on this machine")),
]
ACCELERATOR = "cuda" if torch.cuda.is_available() else ("mps" if HAS_MPS else None)
TINY = dict(dataset="digits", backbone="conv4", backbone_options={"width": 8, "depth": 2}, way=5, shot=2, query=3,
            val_split=None, lr=3e-3, checkpoint_every=3)


# -- resolving devices -----------------------------------------------------------------------

def test_resolve_names_and_refusals(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert devices.resolve("cpu") == torch.device("cpu")
    auto = devices.resolve("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "mps" if HAS_MPS else "cpu")
    assert "auto ->" in devices.why_auto("auto", auto)
    for bad, fragment in (("tpu", "unknown device"), ("cuda:x", "cuda:N")):
        with pytest.raises(ConfigError, match=fragment):
            devices.resolve(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU") as e:
            devices.resolve("cuda")
        assert "\n" not in str(e.value)
    else:
        with pytest.raises(ConfigError, match="CUDA GPU"):
            devices.resolve(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")


def test_local_rank_picks_its_own_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    if torch.cuda.device_count() >= 2:
        assert devices.resolve("cuda") == torch.device("cuda", 1)
    elif torch.cuda.is_available():
        with pytest.raises(ConfigError, match="own GPU"):
            devices.resolve("cuda")
    else:
        assert devices.resolve("auto") == torch.device("cpu")  # no GPU: gloo on the CPU


# -- every method is device-clean ------------------------------------------------------------

def test_no_method_creates_tensors_on_the_default_device(digits8):
    """With the default device set to "meta", a tensor a method makes without naming its
    device lands on meta and fails against the CPU data: so every tensor of a training
    step and of an adaptation is made on its inputs' device (or, on purpose, on the host)."""
    data = load_dataset("digits", rotations=True)
    shape = data.image_shape
    one_shot = EpisodeSampler(data, "train", 5, 1, 2, seed=0).episode(0)
    episodes = EpisodeSampler(data, "train", 5, 2, 2, seed=0).batch(0, 2)

    def make(name, **options):
        torch.manual_seed(0)
        backbone = build_backbone("mlp" if name == "mann" else "conv4", shape,
                                  **({} if name == "mann" else {"depth": 2, "width": 8}))
        return build_method(name, backbone, image_shape=shape, way=5, classes=data.split_classes("train"), **options)

    methods = {n: make(n) for n in ("protonet", "matchingnet", "relationnet", "taskcond", "maml", "fomaml",
                                     "metasgd", "anil", "reptile", "baseline", "baseline++", "mann")}
    for strategy, options in (("linear-probe", {}), ("lp-ft", {}), ("gradual-unfreeze", {}),
                              ("finetune", {"batch_size": 3}), ("finetune", {"cv": True}),
                              ("linear-probe", {"probe": "torch", "head_type": "cosine"})):
        methods[f"{strategy} {options}"] = wrap(make("baseline"), strategy, steps=2, probe_steps=2, **options)
    failed = {}
    for name, method in methods.items():
        try:
            with torch.device("meta"):
                if method.learns_across_tasks:
                    loss, _ = method.loss(episodes)
                    loss.backward()
                for ep in (episodes[0], one_shot):
                    with torch.no_grad():
                        out = method.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
                    assert out.device.type == "cpu"
        except Exception as e:  # noqa: BLE001 - collected and reported together
            failed[name] = f"{type(e).__name__}: {str(e)[:120]}"
    assert not failed, failed


# -- data on the device ----------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_episodes_are_the_same_on_every_device(device, digits8):
    cpu = EpisodeSampler(digits8, "test", 5, 2, 3, seed=4)
    there = cpu.on(device)
    assert there.device.type == device and cpu.on("cpu") is cpu
    for i in (0, 7):
        a, b = cpu.episode(i), there.episode(i)
        assert b.support_x.device.type == device and b.query_y.device.type == device
        assert torch.equal(a.support_x, b.support_x.cpu()) and torch.equal(a.query_x, b.query_x.cpu())
        assert torch.equal(a.query_y, b.query_y.cpu()) and a.classes == b.classes
    # The dataset is copied to the device once, whatever the number of samplers.
    assert EpisodeSampler(digits8, "train", 5, 1, 1, device=device)._images is there._images or device == "cpu"
    sine = make_sampler("sinusoid", None, "test", 1, 5, 10, seed=1, device=device)
    assert sine.episode(3).support_x.device.type == device
    assert torch.equal(sine.episode(3).query_y.cpu(), make_sampler("sinusoid", None, "test", 1, 5, 10, seed=1).episode(3).query_y)


# -- training, evaluation, resume, precision -------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_training_step_and_evaluation_on_the_device(device, tmp_path, digits8):
    config = TrainConfig(episodes=4, **TINY)
    trainer = Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path, device=device)
    assert devices.module_device(trainer.method).type == device
    result = trainer.run(progress=False)
    assert result.steps == 4 and result.device.startswith(device)
    record = RunStore(tmp_path).get(result.run_id)
    assert record["metrics"]["precision"] == "fp32" and record["metrics"]["peak_memory_mb"] > 0
    assert record["config"]["device"] == device
    # The checkpoint holds CPU tensors only; the run loads on the CPU.
    _, method, _ = load_run(tmp_path / "run")
    sampler = EpisodeSampler(digits8, "test", 5, 2, 3, seed=0)
    on_cpu = evaluate(method, sampler, 10, progress=False)
    there = evaluate(method, sampler, 10, progress=False, device=device)
    assert devices.module_device(method).type == "cpu"  # evaluated on a moved copy
    assert there.device.startswith(device) and there.peak_memory_mb > 0
    assert abs(there.value - on_cpu.value) < 1e-6 or device != "cpu"
    assert abs(there.value - on_cpu.value) <= 10  # the same episodes: at most a query or two may flip


def _weights(run_dir):
    state = json.loads((run_dir / "state.json").read_text())
    return load_tensors(run_dir / state["checkpoint"]), state


def test_resume_takes_a_checkpoint_written_on_another_device(tmp_path, digits8):
    """A GPU run's checkpoint (CPU tensors, plus the GPU's RNG state) resumes here, on the
    CPU, exactly as an uninterrupted CPU run; with a GPU present, the first half runs on it."""
    config = TrainConfig(episodes=6, **TINY)
    Trainer(config, tmp_path / "whole", dataset=digits8, device="cpu").run(progress=False, record=False)
    first = TrainConfig(**{**config.to_dict(), "episodes": 3})
    Trainer(first, tmp_path / "split", dataset=digits8, device=ACCELERATOR or "cpu").run(progress=False, record=False)
    weights, state = _weights(tmp_path / "split")
    assert all(t.device.type == "cpu" for t in weights.values())
    if ACCELERATOR is None:  # make it look written on a GPU: its RNG state rides along
        weights["rng.cuda"] = torch.zeros(16, dtype=torch.uint8)
        save_tensors(tmp_path / "split" / state["checkpoint"], weights)
    (tmp_path / "split" / "config.json").write_text(json.dumps({**config.to_dict(), "device": "cuda"}))
    Trainer(config, tmp_path / "split", dataset=digits8, device="cpu").run(resume=True, progress=False, record=False)
    whole, _ = _weights(tmp_path / "whole")
    split, _ = _weights(tmp_path / "split")
    for key, value in whole.items():
        if key.startswith("model."):
            tol = 0 if ACCELERATOR is None else 1e-3
            assert torch.allclose(split[key], value, atol=tol, rtol=tol), key


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_and_evaluates(precision, tmp_path, digits8):
    config = TrainConfig(episodes=4, precision=precision, **TINY)
    result = Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path, device="cpu").run(progress=False)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert (state["scaler"] is not None) == (precision == "fp16")  # fp16 needs loss scaling; its state is kept
    assert RunStore(tmp_path).get(result.run_id)["metrics"]["precision"] == precision
    _, method, _ = load_run(tmp_path / "run")
    sampler = EpisodeSampler(digits8, "test", 5, 2, 3, seed=0)
    low = evaluate(method, sampler, 20, progress=False, precision=precision)
    full = evaluate(method, sampler, 20, progress=False)
    assert low.precision == precision and abs(low.value - full.value) < 5


def test_second_order_maml_meta_gradient_in_bf16_matches_fp32(digits8):
    """bf16 autocast changes the second-order meta-gradient by rounding, not in direction."""
    sampler = EpisodeSampler(digits8, "train", 5, 1, 1, seed=0)
    torch.manual_seed(0)
    maml = build_method("maml", build_backbone("conv4", (1, 8, 8), depth=2, width=8), image_shape=(1, 8, 8), way=5)
    grads = {}
    for precision in ("fp32", "bf16"):
        maml.zero_grad()
        with devices.autocast(torch.device("cpu"), precision):
            loss, _ = maml.loss(sampler.batch(0, 4))
        loss.backward()
        grads[precision] = torch.cat([p.grad.flatten() for p in maml.parameters() if p.grad is not None])
    cosine = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cosine > 0.95, float(cosine)


# -- memory --------------------------------------------------------------------------------------

def test_a_step_that_cannot_fit_fails_before_training(tmp_path, digits8, monkeypatch):
    sampler = EpisodeSampler(digits8, "train", 5, 1, 1, seed=0)
    torch.manual_seed(0)
    maml = build_method("maml", build_backbone("conv4", (1, 8, 8), depth=2, width=8), image_shape=(1, 8, 8), way=5)
    before = {k: v.clone() for k, v in maml.state_dict().items()}
    need = step_memory(maml, sampler.batch(0, 4), torch.device("cpu"))
    assert need["graph"] > 0 and need["total"] > need["graph"]
    assert all(torch.equal(v, maml.state_dict()[k]) for k, v in before.items())  # the dry run changed nothing
    assert all(p.grad is None for p in maml.parameters())
    message = check_step_fits(maml, sampler.batch(0, 4), torch.device("cpu"), available=1000, meta_batch=4)
    assert "--meta-batch" in message and "--first-order" in message and "\n" not in message
    assert check_step_fits(maml, sampler.batch(0, 4), torch.device("cpu"), available=2**40) is None

    monkeypatch.setattr(devices, "available_memory", lambda device: 1000)
    config = TrainConfig(method="maml", episodes=3, meta_batch=4, **{**TINY, "shot": 1, "query": 1})
    with pytest.raises(ConfigError, match="meta-batch"):
        Trainer(config, tmp_path / "run", dataset=digits8, device="cpu").run(progress=False, record=False)
    assert not (tmp_path / "run").exists()  # nothing half-made is left


# -- the command line ------------------------------------------------------------------------------

def _cli(*args, env=None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "fewshot", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid here")
def test_cli_device_cuda_without_cuda_is_one_line_exit_2(tmp_path):
    proc = _cli("train", "protonet", "--dataset", "digits", "--out", str(tmp_path / "run"), "--device", "cuda",
                "--runs", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "--device cpu" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


def test_cli_cpu_bf16_trains_and_evaluates(tmp_path):
    run = tmp_path / "run"
    proc = _cli("train", "protonet", "--dataset", "digits", "--backbone", "mlp", "--backbone-option", "hidden=[16]",
                "--way", "5", "--shot", "1", "--query", "2", "--episodes", "3", "--val-split", "none",
                "--device", "cpu", "--precision", "bf16", "--out", str(run), "--runs", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "device cpu" in proc.stderr
    assert json.loads((run / "config.json").read_text())["precision"] == "bf16"
    proc = _cli("evaluate", str(run), "--episodes", "5", "--device", "cpu", "--precision", "bf16", "--json",
                "--runs", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["precision"] == "bf16" and out["device"] == "cpu" and out["episodes"] == 5
    # A resumed run may change how it computes, not what it learns.
    proc = _cli("train", "--resume", str(run), "--precision", "fp32", "--device", "auto", "--quiet",
                "--runs", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]


# -- several processes ---------------------------------------------------------------------------

def test_backend_follows_the_device():
    from fewshot.distributed import backend_for, from_environment

    assert backend_for(torch.device("cpu")) == "gloo" and backend_for(torch.device("cuda", 0)) == "nccl"
    assert backend_for(torch.device("mps")) == "gloo"
    single = from_environment(torch.device("cpu"))
    assert not single.active and single.device == torch.device("cpu")


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.device_count() < 2, reason="fewer than 2 CUDA GPUs")),
])
def test_two_processes_train_on_their_devices(device, tmp_path):
    """2 processes: gloo on the CPU (in bf16 here), NCCL with one GPU each."""
    run = tmp_path / "run"
    proc = _cli("train", "protonet", "--dataset", "digits", "--backbone", "mlp", "--backbone-option", "hidden=[16]",
                "--way", "5", "--shot", "1", "--query", "2", "--meta-batch", "2", "--episodes", "3",
                "--val-split", "none", "--device", device, "--precision", "bf16", "--nproc", "2", "--quiet",
                "--out", str(run), "--runs", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 3
    record = RunStore(tmp_path).list(kind="train")[0]
    assert record["metrics"]["device"].startswith(device) and record["metrics"]["precision"] == "bf16"
