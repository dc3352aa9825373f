"""Regression in the one trainer and the one evaluation path (issue 3): sinusoids.

Sinusoid regression (Finn et al., 2017, section 5.1) trains through ``Trainer`` and is
scored by ``evaluate`` as query MSE ± 95% CI; and Reptile's SGD momentum, inner and
outer, is exactly that of ``torch.optim.SGD``.
"""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.data import SinusoidSampler, load_dataset, load_source, make_sampler
from fewshot.errors import ConfigError
from fewshot.evaluate import evaluate
from fewshot.methods import PixelNearestMean, Reptile
from fewshot.models import MLP
from fewshot.runs import load_run
from fewshot.train import Trainer

# Finn et al.'s sinusoid model and episode shape; Adam at 1e-2 learns in a few hundred steps.
SINUSOID = dict(method="maml", dataset="sinusoid", backbone="mlp", shot=10, query=10, meta_batch=4, lr=1e-2,
                checkpoint_every=1000)


def test_maml_learns_sinusoids_through_the_trainer(tmp_path):
    config = TrainConfig(episodes=300, val_every=100, val_episodes=20, **SINUSOID)
    result = Trainer(config, tmp_path / "run", runs=tmp_path).run(progress=False)
    assert result.metric == "mse" and result.best_accuracy is None and result.best_mse > 0
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    vals = state["history"]["val"]
    assert [v[0] for v in vals] == [100, 200, 300]
    # Lower is better: the best checkpoint is the one of the smallest validation MSE.
    best = min(vals, key=lambda v: v[1])
    assert state["best"]["step"] == best[0] and state["best"]["mse"] == pytest.approx(best[1])
    assert state["image_shape"] == [1]

    _, method, _ = load_run(tmp_path / "run")
    assert method.task == "regression" and method.head is None
    sampler = make_sampler("sinusoid", None, "test", 5, 10, 50)
    method.set_test_options(inner_steps=0)
    before = evaluate(method, sampler, 100, progress=False)
    method.set_test_options(inner_steps=10)
    after = evaluate(method, sampler, 100, progress=False)
    assert after.metric == "mse" and math.isnan(after.accuracy)
    assert after.mse < 0.5 * before.mse, (before.mse, after.mse)
    assert 0 < after.ci95 < after.mse
    summary = after.summary()
    assert summary.startswith("mse ") and "(100 episodes, 10-shot regression, 50 query points)" in summary
    out = after.to_dict(per_episode=True)
    assert out["metric"] == "mse" and "accuracy" not in out and out["mse"] == pytest.approx(after.mse)
    assert len(out["per_episode"]) == 100 and out["ci95"] == pytest.approx(after.ci95)


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil", "reptile"])
def test_every_gradient_method_trains_and_evaluates_on_sinusoids(tmp_path, name):
    config = TrainConfig(**{**SINUSOID, "method": name, "episodes": 20, "val_every": 10, "val_episodes": 5})
    Trainer(config, tmp_path / "run", runs=tmp_path).run(progress=False, record=False)
    _, method, _ = load_run(tmp_path / "run")
    assert method.task == "regression"  # set by the dataset, not by an option
    if name == "anil":  # the inner loop adapts the MLP's last layer only
        assert method._adapted == ["backbone.5.weight", "backbone.5.bias"]
    result = evaluate(method, make_sampler("sinusoid", None, "test", 1, 10, 20), 10, progress=False)
    assert result.metric == "mse" and math.isfinite(result.mse) and result.mse > 0


def test_sinusoid_splits_are_disjoint_streams():
    train, val, test = (SinusoidSampler(5, 5, seed=0, split=s) for s in ("train", "val", "test"))
    assert train.task(3) == SinusoidSampler(5, 5, seed=0).task(3)  # "train" is the sampler's own stream
    tasks = [{s.task(i) for i in range(50)} for s in (train, val, test)]
    assert not (tasks[0] & tasks[1] or tasks[0] & tasks[2] or tasks[1] & tasks[2])
    assert make_sampler("sinusoid", None, "val", 5, 3, 4, seed=7).task(2) == SinusoidSampler(3, 4, 7, "val").task(2)
    with pytest.raises(ConfigError, match="no split 'trainval'"):
        SinusoidSampler(5, 5, split="trainval")


def test_regression_data_refuses_what_cannot_fit_it(tmp_path):
    with pytest.raises(ConfigError, match="classification only; for regression data use one of: .*maml"):
        Trainer(TrainConfig(**{**SINUSOID, "method": "protonet"}), tmp_path / "run")
    with pytest.raises(ConfigError, match="scalar inputs, not images; use --backbone mlp"):
        Trainer(TrainConfig(**{**SINUSOID, "backbone": "conv4"}), tmp_path / "run")
    with pytest.raises(ConfigError, match="task=classification does not fit sinusoid, which is regression data"):
        Trainer(TrainConfig(**{**SINUSOID, "method_options": {"task": "classification"}}), tmp_path / "run")
    with pytest.raises(ConfigError, match="takes no option image_size"):
        load_source("sinusoid", image_size=28)
    with pytest.raises(ConfigError, match="generated task family"):
        load_dataset("sinusoid")
    with pytest.raises(ConfigError, match="built for classification, but these episodes are regression"):
        evaluate(PixelNearestMean(), SinusoidSampler(5, 5), 3, progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_train_and_evaluate_round_trip_on_sinusoids(tmp_path, capsys):
    runs, out = str(tmp_path / "runs"), str(tmp_path / "run")
    assert main(["train", "maml", "--dataset", "sinusoid", "--backbone", "mlp", "--shot", "5", "--query", "10",
                 "--meta-batch", "2", "--episodes", "30", "--val-every", "15", "--val-episodes", "10", "--lr", "0.01",
                 "--out", out, "--runs", runs, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "trained maml for 30 steps" in printed and "best validation mse" in printed
    assert main(["evaluate", out, "--inner-steps", "10", "--episodes", "50", "--runs", runs, "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("mse ") and line.endswith("(50 episodes, 5-shot regression, 10 query points)")
    assert main(["evaluate", out, "--inner-steps", "10", "--episodes", "50", "--json", "--runs", runs,
                 "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metric"] == "mse" and result["dataset"] == "sinusoid" and result["split"] == "test"
    assert result["episodes"] == 50 and result["mse"] > 0 and result["ci95"] > 0 and "accuracy" not in result
    assert main(["runs", "--runs", runs]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert "val mse" in rows[0] and "mse " in rows[1] and "mse " in rows[2]


# -- Reptile's momentum ------------------------------------------------------------------

def sinusoid_mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(1, (8, 8), out_features=1).double()


def double(ep):
    return ep.support_x.double(), ep.support_y.double(), ep.query_x.double(), ep.query_y.double()


def sgd_adapted(model, x, y, steps, lr, momentum):
    """The reference: ``torch.optim.SGD`` on a copy of the model."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    return {f"backbone.{n}": p.detach() for n, p in model.named_parameters()}


def test_reptile_inner_momentum_is_exactly_sgd_momentum():
    ep = SinusoidSampler(6, 6, seed=0).episode(0)
    sx, sy, qx, qy = double(ep)
    method = Reptile(sinusoid_mlp(), task="regression", inner_steps=4, inner_lr=0.05, momentum=0.9).double()
    assert method.get_params()["momentum"] == 0.9
    want = sgd_adapted(method.backbone, sx, sy, 4, 0.05, 0.9)
    with torch.no_grad():
        got = method.adapt(sx, sy, 1).weights
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-12, atol=1e-12)
    # Momentum changes the inner loop: plain SGD ends elsewhere.
    plain = sgd_adapted(method.backbone, sx, sy, 4, 0.05, 0.0)
    assert not torch.allclose(plain["backbone.1.weight"], want["backbone.1.weight"])

    # Meta-training adapts on support and query with the same optimiser; the surrogate
    # loss's gradient is θ − φ̃.
    theta = {n: p.detach().clone() for n, p in method.named_parameters()}
    adapted = sgd_adapted(method.backbone, torch.cat([sx, qx]), torch.cat([sy, qy]), 4, 0.05, 0.9)
    loss, _ = method.loss([type(ep)(sx, sy, qx, qy, 1, 6)])
    loss.backward()
    for name, p in method.named_parameters():
        torch.testing.assert_close(p.grad, theta[name] - adapted[name], rtol=1e-10, atol=1e-12)
    for bad in (1.0, -0.1, "0.9", True):
        with pytest.raises(ConfigError, match="momentum. must be a finite number in \\[0, 1\\)"):
            Reptile(sinusoid_mlp(), task="regression", momentum=bad)


def test_outer_sgd_momentum_is_a_config_field_and_zero_gives_exact_reptile(tmp_path):
    epsilon = 0.5
    config = TrainConfig(method="reptile", dataset="sinusoid", backbone="mlp", backbone_options={"hidden": [8, 8]},
                         shot=5, query=5, meta_batch=2, episodes=1, optimizer="sgd", momentum=0.0, lr=epsilon,
                         val_split=None, method_options={"inner_steps": 3, "inner_lr": 0.02})
    trainer = Trainer(config, tmp_path / "run", runs=tmp_path)
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.0
    theta = {n: p.detach().clone() for n, p in trainer.method.named_parameters()}
    reference = copy.deepcopy(trainer.method.backbone)
    phis = [sgd_adapted(reference, torch.cat([ep.support_x, ep.query_x]), torch.cat([ep.support_y, ep.query_y]),
                        3, 0.02, 0.0) for ep in trainer.sampler.batch(0, 2)]
    trainer.run(progress=False, record=False)
    for name, p in trainer.method.named_parameters():
        mean = sum(phi[name] for phi in phis) / len(phis)
        # θ ← θ + ε (mean φ̃ − θ), Nichol et al.'s batched Reptile update.
        torch.testing.assert_close(p.detach(), theta[name] + epsilon * (mean - theta[name]), rtol=1e-5, atol=1e-6)
    assert TrainConfig().momentum == 0.9  # the default is unchanged
    for bad in (1.0, -0.5, float("nan")):
        with pytest.raises(ConfigError, match="momentum"):
            TrainConfig(momentum=bad)
    assert main(["train", "reptile", "--dataset", "sinusoid", "--backbone", "mlp", "--optimizer", "sgd",
                 "--momentum", "0", "--episodes", "2", "--val-split", "none", "--out", str(tmp_path / "cli"),
                 "--runs", str(tmp_path), "--quiet"]) == 0
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())
    state = json.loads((tmp_path / "cli" / "state.json").read_text())
    assert saved["momentum"] == 0.0 and state["optimizer"]["param_groups"][0]["momentum"] == 0.0
    assert saved["val_split"] is None and state["history"]["val"] == []  # --val-split none is honoured
