"""The one Registry type, the options contract of everything registered, and plug-ins
installed as ``fewshot.plugins`` entry points."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import fewshot
from fewshot import registry
from fewshot.data import DATASETS, TASK_FAMILIES, load_dataset, make_sampler
from fewshot.data.tasks import backbone_defaults, check_family_options, input_shape, method_defaults
from fewshot.errors import ConfigError
from fewshot.heads import HEADS, build_head, head_options
from fewshot.methods import METHODS, build_method, method_options
from fewshot.models import MLP, BACKBONES, Conv4, build_backbone
from fewshot.models.backbones import backbone_options
from fewshot.registry import Registry
from fewshot.select.scores import SCORES, ScoreNotApplicable, compute_scores

UNACCEPTABLE = {1, 2}  # a set: no constraint accepts one (and JSON cannot spell it)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message, message
    return message


# -- the Registry type ----------------------------------------------------------------------------

def test_a_name_is_taken_once_and_the_same_object_again_is_a_no_op():
    things = Registry("widget")

    @things.register("round")
    def round_widget():
        return "round"

    assert things.register("round", round_widget) is round_widget  # re-running a registration is harmless
    with pytest.raises(ConfigError) as error:
        things.register("round", lambda: "square")
    assert "a widget named 'round' is already registered (test_a_name_is_taken_once" in one_line(error)
    assert things["round"] is round_widget
    square = things.register("round", lambda: "square", replace=True)  # only when asked for by name
    assert things["round"] is square
    with pytest.raises(ConfigError, match="non-empty name"):
        things.register("", square)


def test_an_unknown_name_says_the_closest_and_lists_them_all():
    things = Registry("widget", "`widgets list` lists them")
    for name in ("sprocket", "gear", "cog"):
        things.register(name, object())
    assert list(things) == ["sprocket", "gear", "cog"] and things.names() == ["cog", "gear", "sprocket"]
    assert len(things) == 3 and "gear" in things and "lever" not in things and things.get("lever") is None
    with pytest.raises(ConfigError) as error:
        things["sprockett"]
    assert one_line(error) == ("unknown widget 'sprockett' (did you mean 'sprocket'?); choose one of: cog, gear, "
                               "sprocket; `widgets list` lists them")
    assert things.pop("gear") is not None and "gear" not in things


def test_every_registry_refuses_a_second_object_under_a_taken_name_and_suggests_names():
    from fewshot.methods import ProtoNet, register

    class Impostor(ProtoNet):
        name = "protonet"

    with pytest.raises(ConfigError, match="a method named 'protonet' is already registered .ProtoNet."):
        register(Impostor)
    assert METHODS["protonet"] is ProtoNet
    assert register(ProtoNet) is ProtoNet
    with pytest.raises(ConfigError, match="register.. takes a Method subclass"):
        register(MLP)
    for table, taken, typo, hint in [(BACKBONES, "conv4", "conv5", "conv4"), (DATASETS, "digits", "digit", "digits"),
                                     (TASK_FAMILIES, "sinusoid", "sinusoids", "sinusoid"),
                                     (SCORES, "logme", "logm", "logme"), (METHODS, "protonet", "protnet", "protonet"),
                                     (HEADS, "simpleshot", "simpleshots", "simpleshot")]:
        with pytest.raises(ConfigError, match="already registered"):
            table.register(taken, object())
        with pytest.raises(ConfigError) as error:
            table[typo]
        assert f"(did you mean '{hint}'?)" in one_line(error) and taken in str(error.value)
    with pytest.raises(ConfigError, match="unknown method 'protnet' .did you mean 'protonet'.."):
        build_method("protnet", None)
    with pytest.raises(ConfigError, match="unknown backbone 'conv5' .did you mean 'conv4'.."):
        build_backbone("conv5", (1, 28, 28))
    with pytest.raises(ConfigError, match="unknown dataset 'digit' .did you mean 'digits'.."):
        load_dataset("digit")
    with pytest.raises(ConfigError, match="unknown head 'tim2' .did you mean 'tim'..; choose one of: bdcspn, "):
        build_head("tim2")
    with pytest.raises(ConfigError, match="unknown score 'logm' .did you mean 'logme'.."):
        compute_scores(np.zeros((4, 2)), np.array([0, 0, 1, 1]), names=["logm"])


# -- plug-ins, in this process --------------------------------------------------------------------

class FakeEntryPoint:
    """What importlib.metadata.entry_points gives, with a load() of our own."""

    def __init__(self, name, load, dist="fake-dist"):
        self.name, self.value, self._load = name, f"fake_module:{name}", load
        self.dist = type("Dist", (), {"name": dist})()

    def load(self):
        return self._load()


@pytest.fixture
def fake_plugins(monkeypatch):
    """Install entry points (a list the test fills) with the plug-ins not loaded yet."""
    points: list[FakeEntryPoint] = []
    monkeypatch.setattr(registry, "entry_points", lambda group: list(points) if group == registry.GROUP else [])
    monkeypatch.setattr(registry, "_plugins", "unloaded")
    return points


def test_plugins_load_once_lazily_when_a_registry_is_listed_or_lacks_a_name(fake_plugins):
    calls = []
    things = Registry("widget")
    things.register("built-in", object())

    def plugin():  # a callable entry point: called once, registers what it brings
        calls.append(1)
        things.register("from-plugin", object())
        assert "built-in" in things and "nothing" not in things  # look-ups while loading do not recurse

    fake_plugins.append(FakeEntryPoint("widgets", lambda: plugin))
    assert "built-in" in things and things["built-in"] is not None and calls == []  # known names load nothing
    assert "from-plugin" in things and calls == [1]
    assert list(things) == ["built-in", "from-plugin"] and "missing" not in things and calls == [1]


def test_a_plugin_that_fails_is_one_line_naming_it(fake_plugins):
    things = Registry("widget")

    def broken():
        raise ModuleNotFoundError("No module named 'numpyy'")

    fake_plugins.append(FakeEntryPoint("broken", broken, dist="broken-plugin"))
    for _ in range(2):  # it stays an error until fixed or uninstalled, never half-loaded silently
        with pytest.raises(ConfigError) as error:
            list(things)
        assert one_line(error) == ("fewshot plug-in 'broken = fake_module:broken' (from broken-plugin) failed to "
                                   "load: ModuleNotFoundError: No module named 'numpyy'; fix or uninstall it")


# -- the options contract over every registry ------------------------------------------------------

def parameters(obj) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(obj).parameters)


def check_declaration(owner, options: dict[str, inspect.Parameter], constraints: dict) -> None:
    """Every declared constraint names an option; every default satisfies its constraint."""
    assert set(constraints) <= set(options), f"{owner} declares constraints for no option: " \
                                             f"{sorted(set(constraints) - set(options))}"
    for name, constraint in constraints.items():
        default = options[name].default
        if default is not inspect.Parameter.empty:
            assert constraint.accepts(default), f"{owner} '{name}': default {default!r} is not {constraint.describe()}"


def example(name: str):
    """A fresh backbone for method ``name`` (some change theirs) and the context the trainer
    gives it, on data it can take."""
    cls = METHODS[name]
    if "reinforcement" in cls.tasks:
        family = "navigation-2d"
        shape = input_shape(family, None)
        context = {"image_shape": shape, "task": "reinforcement", **method_defaults(family)}
        return lambda: build_backbone("mlp", shape, **backbone_defaults(family, "mlp")), context
    context = {"image_shape": (1, 28, 28), "way": 5, "classes": list(range(5)), "task": "classification"}
    return lambda: Conv4(1, 8, 2) if cls.needs_backbone else None, context


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_declares_its_options_once(name):
    cls = METHODS[name]
    signature = parameters(cls.__init__)
    options = method_options(cls)  # derivable from the signature
    assert set(options) <= set(signature)
    check_declaration(name, signature, cls._parameter_constraints)

    backbone, context = example(name)
    method = build_method(name, backbone(), **context)
    params = method.get_params()
    assert "backbone" not in params and set(options) <= set(params), sorted(set(options) - set(params))
    rebuilt = cls(backbone(), **params) if cls.needs_backbone else cls(**params)
    assert rebuilt.get_params() == params  # get_params() round-trips
    assert json.loads(json.dumps({k: params[k] for k in options})) is not None  # what a run saves is JSON

    for option in cls._parameter_constraints:
        if option in options:  # what a user sets with -o; the rest come from the data
            with pytest.raises(ConfigError) as error:
                build_method(name, backbone(), **{**context, option: UNACCEPTABLE})
            assert f"{name} '{option}' must be " in one_line(error) and "got {1, 2}" in str(error.value)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_declares_its_options_once(name):
    build = BACKBONES[name]
    options = backbone_options(build)
    constraints = getattr(build, "_parameter_constraints", {})
    check_declaration(name, options, constraints)
    if name in ("conv4", "resnet12", "mlp"):  # a user's registered network may need options to build
        assert isinstance(build_backbone(name, (1, 28, 28)), torch.nn.Module)
    for option in constraints:
        with pytest.raises(ConfigError) as error:
            build_backbone(name, (1, 28, 28), **{option: UNACCEPTABLE})
        assert f"'{option}' must be" in one_line(error)
    with pytest.raises(ConfigError) as error:
        build_backbone(name, (1, 28, 28), no_such_option=1)
    assert "has no option 'no_such_option'" in one_line(error)


@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_declares_its_options_once(name):
    cls = HEADS[name]
    options = head_options(cls)
    check_declaration(name, options, cls._parameter_constraints)
    head = build_head(name)
    params = head.get_params()
    assert set(params) == set(options) and params == {k: p.default for k, p in options.items()}
    assert cls(**params).get_params() == params == head.options()  # get_params() round-trips
    assert json.loads(json.dumps(params)) == params  # what a result records is JSON
    for option in cls._parameter_constraints:
        with pytest.raises(ConfigError) as error:
            build_head(name, **{option: UNACCEPTABLE})
        assert f"head '{name}' '{option}' must be " in one_line(error) and "got {1, 2}" in str(error.value)
    with pytest.raises(ConfigError) as error:
        build_head(name, no_such_option=1)
    assert f"head '{name}' has no option 'no_such_option'" in one_line(error)


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_declares_its_options_once(name):
    loader = DATASETS[name]
    options = {k: p for k, p in parameters(loader).items() if k != "root"}
    assert all(p.kind is p.KEYWORD_ONLY for p in options.values()), "dataset options are keyword-only"
    check_declaration(name, options, getattr(loader, "_parameter_constraints", {}))
    with pytest.raises(ConfigError) as error:  # refused before anything is read
        load_dataset(name, "/nonexistent", no_such_option=1)
    assert "takes no option no_such_option" in one_line(error)
    for option, p in options.items():
        if p.default is not None:
            with pytest.raises(ConfigError) as error:
                load_dataset(name, "/nonexistent", **{option: UNACCEPTABLE})
            assert option in one_line(error)


@pytest.mark.parametrize("name", TASK_FAMILIES.names())
def test_every_task_family_declares_its_options_once(name):
    sampler = TASK_FAMILIES[name]
    check_declaration(name, parameters(sampler), sampler._parameter_constraints)
    assert make_sampler(name, None, "train", 5, 2, 3).episode(0) is not None
    for option in sampler._parameter_constraints:
        counts = {"shot": 2, "query": 3, "seed": 0, option: UNACCEPTABLE}
        with pytest.raises(ConfigError) as error:
            make_sampler(name, None, "train", 5, **counts)
        assert "must be" in one_line(error)
    with pytest.raises(ConfigError) as error:
        check_family_options(name, {"image_size": 28})
    assert "takes no option image_size" in one_line(error)


@pytest.mark.parametrize("name", SCORES.names())
def test_every_score_takes_features_labels_and_source_probabilities(name):
    score = SCORES[name]
    assert list(parameters(score))[:2] == ["f", "y"] and len(parameters(score)) == 3
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 4)
    features = rng.normal(size=(12, 6)) + labels[:, None]
    probs = np.full((12, 5), 0.2)
    try:
        assert np.isfinite(score(features, labels, probs))
    except ScoreNotApplicable:
        pass
    assert name in compute_scores(features, labels, probs, names=[name])


# -- `fewshot methods NAME` and the saved options --------------------------------------------------

def test_methods_name_shows_each_option_its_default_and_constraint(capsys):
    from fewshot.cli import main

    assert main(["methods", "protonet"]) == 0
    out = capsys.readouterr().out
    assert '    distance = "euclidean"  (one of euclidean, cosine)' in out
    assert "    test_views = 1  (an integer in [1, 9])" in out
    assert main(["methods", "relationnet"]) == 0
    assert "    hidden = auto  (an integer ≥ 1 (or null))" in capsys.readouterr().out
    assert main(["methods", "protnet"]) == 2
    assert "did you mean 'protonet'?" in capsys.readouterr().err


def test_a_run_saves_every_option_of_its_method(tmp_path):
    from fewshot.config import TrainConfig
    from fewshot.io import read_json
    from fewshot.train import Trainer

    config = TrainConfig(method="protonet", method_options={"distance": "cosine"}, backbone="mlp",
                         backbone_options={"hidden": [16]}, dataset="digits", way=3, shot=1, query=2, episodes=2,
                         val_split=None, val_every=2, checkpoint_every=2)
    Trainer(config, tmp_path / "run").run(progress=False)
    state = read_json(tmp_path / "run" / "state.json")
    assert state["method_options"] == {"distance": "cosine", "normalize": False, "test_views": 1}
    assert read_json(tmp_path / "run" / "config.json")["method_options"] == {"distance": "cosine"}  # as given


# -- a plug-in package installed in a temporary environment ----------------------------------------

PLUGIN = '''
"""A fewshot plug-in: a nearest-mean method and a tiny dataset, registered on import."""

import numpy as np
import torch

from fewshot.data import DATASETS, from_arrays
from fewshot.methods import Method, class_means, register
from fewshot.params import Real


@register
class ToyNearestMean(Method):
    """Toy plug-in method: nearest class mean of the backbone's features, scaled."""

    name = "toy-plugin-ncm"
    _parameter_constraints = {"scale": Real(low=0, open_low=True)}

    def __init__(self, backbone, scale: float = 1.0):
        super().__init__(backbone)
        self.scale = scale

    def _logits(self, support, support_y, query, way):
        return -self.scale * torch.cdist(query, class_means(support, support_y, way)).pow(2)

    def episode_logits(self, episode):
        n = len(episode.support_x)
        f = self.features(torch.cat([episode.support_x, episode.query_x]))
        return self._logits(f[:n], episode.support_y, f[n:], episode.way)

    def adapt(self, support_x, support_y, way):
        support = self.features(support_x)
        return lambda query_x: self._logits(support, support_y, self.features(query_x), way)


@DATASETS.register("toy-blobs")
def load_blobs(root=None, *, classes: int = 12):
    """Toy plug-in dataset: Gaussian blobs as 1x2x2 images."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), 10)
    x = (rng.normal(size=(len(y), 1, 2, 2)) + y[:, None, None, None]).astype(np.float32)
    third = classes // 3
    return from_arrays(x, y, name="toy-blobs", splits={"train": list(range(third)),
                       "val": list(range(third, 2 * third)), "test": list(range(2 * third, classes))})
'''


def install(site: Path, name: str, module: str, source: str) -> None:
    """Lay out an installed distribution: its module, and a dist-info naming the entry point."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[fewshot.plugins]\n{name} = {module}\n")


def cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    src = Path(fewshot.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(src)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fewshot", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_an_installed_plugin_method_and_dataset_work_from_the_command_line(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "toy-plugin", "toy_plugin", PLUGIN)

    listed = cli(site, "methods")
    assert listed.returncode == 0, listed.stderr
    assert "toy-plugin-ncm: meta-trained (`fewshot train`); classification" in listed.stdout
    assert "scale=1.0" in listed.stdout and "protonet: meta-trained" in listed.stdout
    described = cli(site, "methods", "toy-plugin-ncm")
    assert "    scale = 1.0  (a finite number > 0)" in described.stdout, described.stdout + described.stderr
    data = cli(site, "data", "list")
    assert data.returncode == 0 and "toy-blobs" in data.stdout and "digits" in data.stdout, data.stderr
    info = cli(site, "data", "info", "toy-blobs", "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["splits"]["test"]["classes"] == 4, info.stderr

    run, runs = tmp_path / "run", tmp_path / "runs"
    trained = cli(site, "train", "toy-plugin-ncm", "--dataset", "digits", "--backbone", "mlp", "--backbone-option",
                  "hidden=[16]", "-o", "scale=0.5", "--way", "3", "--shot", "1", "--query", "2", "--episodes", "4",
                  "--val-every", "2", "--out", str(run), "--runs", str(runs), "--device", "cpu", "--quiet")
    assert trained.returncode == 0, trained.stderr
    assert "trained toy-plugin-ncm for 4 steps" in trained.stdout
    state = json.loads((run / "state.json").read_text())
    assert state["method_options"] == {"scale": 0.5}

    evaluated = cli(site, "evaluate", str(run), "--episodes", "10", "--json", "--runs", str(runs), "--device", "cpu",
                    "--quiet")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["method"] == "toy-plugin-ncm" and 0 <= result["accuracy"] <= 100

    bad = cli(site, "train", "toy-plugin-ncm", "--dataset", "digits", "--backbone", "mlp", "-o", "scale=-1",
              "--episodes", "2", "--out", str(tmp_path / "bad"), "--device", "cpu", "--quiet")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "fewshot: error: toy-plugin-ncm 'scale' must be a finite number > 0, got -1"], bad.stderr
    assert not (tmp_path / "bad" / "state.json").exists()


def test_a_broken_plugin_is_one_line_naming_its_entry_point(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "broken-plugin", "broken_plugin", "import fewshot_helpers_that_are_not_installed\n")
    proc = cli(site, "methods")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "fewshot: error: fewshot plug-in 'broken-plugin = broken_plugin' (from broken-plugin) failed to load: "
        "ModuleNotFoundError: No module named 'fewshot_helpers_that_are_not_installed'; fix or uninstall it"]
