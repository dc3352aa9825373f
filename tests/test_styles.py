"""Domains as data: styles (fewshot.data.styles) and several domains at once (fewshot.data.domains)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from fewshot.data import from_arrays, load_dataset, make_sampler
from fewshot.data import styles as styles_module
from fewshot.data.domains import MultiDomainSampler, combine, leave_one_out, parse_domains
from fewshot.data.styles import STYLES, restyle
from fewshot.errors import ConfigError, DataError


def _digits(size=28):
    return load_dataset("digits", image_size=size)


@pytest.fixture(autouse=True)
def _empty_cache():
    styles_module._cache.clear()
    yield
    styles_module._cache.clear()


@pytest.mark.parametrize("name", [n for n in STYLES if not STYLES[n].rgb_only])
def test_each_style_is_deterministic_and_changes_the_images(name):
    base = _digits().images[:300]
    once, again = restyle(base, (name,)), restyle(base.clone(), (name,))
    assert once.dtype == torch.uint8 and once.shape == base.shape
    assert torch.equal(once, again)
    assert (once != base).float().mean() > 0.05


def test_colour_jitter_is_deterministic_and_refused_on_grey_images():
    rgb = torch.randint(0, 256, (40, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    once = restyle(rgb, ("colour-jitter",))
    assert torch.equal(once, restyle(rgb, ("colour-jitter",)))
    ratios = once.float().mean(dim=(2, 3)) / rgb.float().mean(dim=(2, 3))
    assert ratios.std() > 0.05  # per image and per channel, not one global factor
    with pytest.raises(ConfigError, match="RGB"):
        restyle(_digits().images[:4], ("colour-jitter",))


def test_styles_do_what_they_say():
    base = _digits().images[:200]
    x = base.float() / 255
    assert torch.equal(restyle(base, ("invert",)), 255 - base)
    low = restyle(base, ("low-contrast",)).float() / 255
    assert low.min() >= 0.34 and low.max() <= 0.66 and x.max() == 1.0
    sharp = (torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.8).to(torch.uint8) * 255
    blurred = restyle(sharp, ("blur",)).float() / 255
    # Blur keeps the mean brightness and lowers the differences between neighbouring pixels.
    assert abs(blurred.mean() - sharp.float().mean() / 255) < 0.01
    assert (blurred.diff(dim=-1).abs().mean()) < 0.5 * (sharp.float() / 255).diff(dim=-1).abs().mean()
    thick = restyle(base, ("thicken",)).float() / 255
    assert (thick >= x - 1e-6).all() and (thick > 0.5).float().mean() > 1.3 * (x > 0.5).float().mean()
    noisy = restyle(base, ("noise",)).float() / 255
    assert 0.1 < (noisy - x).std() < 0.3
    elastic = restyle(base, ("elastic",)).float() / 255
    assert (elastic - x).abs().mean() > 0.02 and abs(elastic.mean() - x.mean()) < 0.05


def test_a_random_style_gives_image_i_the_same_change_whatever_else_is_loaded():
    base = _digits().images
    assert torch.equal(restyle(base, ("noise",))[:500], restyle(base[:500], ("noise",)))
    assert not torch.equal(restyle(base, ("noise",))[:500], restyle(base[500:1000], ("noise",)))


def test_a_domain_name_loads_the_restyled_dataset_once(monkeypatch):
    plain = _digits()
    blurred = load_dataset("digits:blur", image_size=28)
    assert blurred.name == "digits:blur" and blurred.origin == {"name": "digits:blur", "options": {"image_size": 28}}
    assert blurred.splits == plain.splits and torch.equal(blurred.labels, plain.labels)
    assert torch.equal(blurred.images, restyle(plain.images, ("blur",)))
    calls = []
    monkeypatch.setattr(styles_module, "restyle", lambda images, s: calls.append(s) or images)
    assert load_dataset("digits:blur", image_size=28) is blurred and calls == []  # cached: nothing recomputed
    load_dataset("digits:blur", image_size=16)  # other options: another domain
    assert calls == [("blur",)]
    chained = load_dataset("digits:invert:noise", image_size=28)
    assert calls == [("blur",), ("invert", "noise")] and chained.info["styles"] == ["invert", "noise"]


def test_bad_domain_names_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown style 'blurr'.*blur"):
        load_dataset("digits:blurr")
    with pytest.raises(ConfigError, match="at most 8"):
        load_dataset("digits" + ":blur" * 9)
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("nodata:blur")
    with pytest.raises(ConfigError, match="positive number"):
        parse_domains("digits@-1,digits:blur")
    with pytest.raises(ConfigError, match="twice"):
        parse_domains("digits,digits")
    small, large = _digits(8), _digits(16)
    with pytest.raises(DataError, match="different shapes"):
        combine("a,b", [("a", 1.0, small), ("b", 1.0, large)])


def test_several_domains_load_as_one_dataset_with_the_classes_of_each():
    both = load_dataset("digits@3,digits:invert", image_size=8)
    assert both.num_classes == 20 and both.class_names[10] == "digits:invert/0"
    assert both.info["domains"] == [{"name": "digits", "weight": 3.0, "classes": [0, 10]},
                                    {"name": "digits:invert", "weight": 1.0, "classes": [10, 20]}]
    assert both.splits["train"] == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    assert torch.equal(both.class_images(12), 255 - both.class_images(2))


def test_multi_domain_episodes_come_from_one_domain_in_the_given_proportions():
    both = load_dataset("digits@3,digits:invert", image_size=8)
    sampler = make_sampler(both.name, both, "train", 3, 1, 2, seed=5)
    assert isinstance(sampler, MultiDomainSampler)
    counts = Counter(sampler.domain_of(i) for i in range(4000))
    assert abs(counts[0] / 4000 - 0.75) < 0.03  # 3 : 1
    for i in range(40):
        ep = sampler.episode(i)
        domain = sampler.domain_of(i)
        assert all((c >= 10) == (domain == 1) for c in ep.classes)  # every class from the chosen domain
        again = sampler.episode(i)
        assert torch.equal(ep.support_x, again.support_x) and ep.classes == again.classes
    even = MultiDomainSampler(both, "train", 3, 1, 2, seed=5, weights=[1, 1])
    assert abs(sum(even.domain_of(i) for i in range(4000)) / 4000 - 0.5) < 0.03
    # A domain with too few classes in the split for the way sits out.
    few = from_arrays(np.zeros((12, 8, 8), dtype=np.uint8), np.repeat(np.arange(4), 3), splits={"train": [0, 1, 2, 3]})
    mixed = combine("digits,few", [("digits", 1.0, _digits(8)), ("few", 1.0, few)])
    assert MultiDomainSampler(mixed, "train", 5, 1, 2).domains == ["digits"]
    assert MultiDomainSampler(mixed, "train", 4, 1, 2).domains == ["digits", "few"]


def test_leave_one_domain_out():
    assert leave_one_out(["a", "b:blur", "c"]) == [("b:blur,c", "a"), ("a,c", "b:blur"), ("a,b:blur", "c")]
    with pytest.raises(ConfigError):
        leave_one_out(["a"])


def test_a_run_trains_on_a_styled_and_on_several_domains(tmp_path):
    from fewshot.config import TrainConfig
    from fewshot.train import Trainer

    config = TrainConfig.for_dataset("digits:blur", method="protonet", episodes=3, val_every=3, val_episodes=4,
                                     backbone_options={"width": 8}, query=2, train_query=2)
    assert config.dataset_options == {"rotations": True}  # the digits recipe
    Trainer(config, tmp_path / "styled").run(progress=False, record=False)
    config = TrainConfig(dataset="digits,digits:noise@2", method="protonet", episodes=3, val_split=None,
                         backbone_options={"width": 8}, query=2, way=3)
    trainer = Trainer(config, tmp_path / "multi")
    assert isinstance(trainer.sampler, MultiDomainSampler)
    assert trainer.run(progress=False, record=False).steps == 3
    assert np.isclose(trainer.sampler.weights, [1 / 3, 2 / 3]).all()


def test_style_names_a_domain_as_dataset_colon_style_does():
    from fewshot.data.styles import with_style

    assert with_style("omniglot", None) == "omniglot" and with_style(None, None) is None
    assert with_style("omniglot", "blur") == "omniglot:blur"
    assert with_style("digits", "invert:noise") == "digits:invert:noise"
    assert with_style("omniglot:blur", "blur") == "omniglot:blur"  # agrees: said twice, the same domain
    for dataset, style, message in [("omniglot", "blurry", "unknown style 'blurry'.*blur"),
                                    ("omniglot:blur", "noise", "omniglot:blur and --style noise disagree"),
                                    ("omniglot:blur:noise", "blur", "disagree"),
                                    (None, "blur", "name it with --dataset"),
                                    ("omniglot,digits", "blur", "several domains")]:
        with pytest.raises(ConfigError, match=message):
            with_style(dataset, style)


def test_style_flag_trains_and_evaluates_on_the_restyled_domain(tmp_path, capsys):
    import json

    from fewshot.cli.main import main

    runs, out = str(tmp_path / "runs"), str(tmp_path / "run")
    assert main(["train", "protonet", "--dataset", "digits", "--style", "invert", "--backbone-option", "width=8",
                 "--query", "5", "--episodes", "3", "--out", out, "--runs", runs, "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "digits:invert"
    evaluate = ["evaluate", out, "--episodes", "4", "--runs", runs, "--quiet", "--json", "--per-episode"]
    # Both spellings give the same episodes.
    scores = []
    for flags in (["--dataset", "digits:invert:blur"], ["--dataset", "digits", "--style", "invert:blur"]):
        assert main([*evaluate, *flags]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["dataset"] == "digits:invert:blur"
        scores.append(result["per_episode"])
    assert scores[0] == scores[1]
    # Without --dataset, --style names the styles of the run's own dataset (here the same: it agrees).
    assert main([*evaluate, "--style", "invert"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "digits:invert"
    for flags, message in [(["--style", "blurry"], "unknown style 'blurry'"),
                           (["--dataset", "digits:blur", "--style", "noise"], "disagree")]:
        assert main([*evaluate, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert main(["evaluate", out, "--domains", "digits:blur", "--style", "blur", "--runs", runs, "--quiet"]) == 2
    assert "drop --style" in capsys.readouterr().err
