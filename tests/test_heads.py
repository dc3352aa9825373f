"""The test-time heads on features (fewshot.heads): the contract, each head on tiny
problems whose answer is known, transductive cases where the queries change the
decision, option validation, dtype/device cleanliness and determinism."""

from __future__ import annotations

import pytest
import torch

from fewshot.errors import ConfigError, DataError
from fewshot.heads import HEADS, Head, build_head, register_head, run_head
from fewshot.heads.ptmap import sinkhorn

EXPECTED = {"simpleshot": False, "logistic": False, "bdcspn": True, "tim": True, "ptmap": True,
            "laplacianshot": True, "transductive_finetune": True}
#: Fewer TIM iterations than the paper's 1000 where the test does not need them (CPU time).
FAST = {"tim": {"steps": 100, "lr": 1e-3}}


def clusters(way=5, shot=3, queries=10, d=16, spread=0.1, seed=0, dtype=torch.float32):
    """Well separated non-negative clusters: class k around 2·e_k + 0.5."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(d)[:way] * 2 + 0.5
    support = centres.repeat_interleave(shot, 0) + spread * torch.randn(way * shot, d, generator=g)
    query = centres.repeat_interleave(queries, 0) + spread * torch.randn(way * queries, d, generator=g)
    labels = torch.arange(way).repeat_interleave(shot)
    query_labels = torch.arange(way).repeat_interleave(queries)
    return support.clamp_min(0).to(dtype), labels, query.clamp_min(0).to(dtype), query_labels


def line_episode():
    """Two one-shot classes on a line, support at t=0 and t=2 along ``u``; class 0's 12
    queries spread over t in [-0.3, 1.1], class 1's over [1.7, 2.3]. The support-only
    boundary (t=1) cuts off class 0's last query (t=1.1, index 11); the query structure
    (the gap between 1.1 and 1.7, the balanced classes) says it belongs to class 0."""
    d = 10
    base = 2 * torch.ones(d)
    u = torch.zeros(d)
    u[0], u[1] = -(0.5 ** 0.5), 0.5 ** 0.5
    support = torch.stack([base, base + 2 * u])
    t = torch.cat([torch.linspace(-0.3, 1.1, 12), torch.linspace(1.7, 2.3, 12)])
    noise = 0.01 * torch.randn(24, d, generator=torch.Generator().manual_seed(0))
    return support, torch.tensor([0, 1]), base + t[:, None] * u + noise, torch.tensor([0] * 12 + [1] * 12)


def shifted_episode():
    """Three one-shot classes at 2·e_k + 0.5; every query is displaced by the same vector
    (-1.2, +1.2, 0, ...) from its class's support point, so that nearest centroid puts
    the queries of class 0 in class 1 (a cross-class bias in BD-CSPN's sense)."""
    d, way, q = 10, 3, 10
    centres = torch.eye(d)[:way] * 2 + 0.5
    shift = torch.zeros(d)
    shift[0], shift[1] = -1.2, 1.2
    noise = 0.05 * torch.randn(way * q, d, generator=torch.Generator().manual_seed(0))
    query = (centres.repeat_interleave(q, 0) + shift + noise).clamp_min(0)
    return centres.clone(), torch.arange(way), query, torch.arange(way).repeat_interleave(q)


def accuracy(logits, labels):
    return (logits.argmax(1) == labels).float().mean().item()


def test_every_head_is_registered_with_its_transductive_flag():
    assert {name: cls.transductive for name, cls in HEADS.items()} == EXPECTED
    assert all(issubclass(cls, Head) and cls.name == name for name, cls in HEADS.items())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_separable_clusters_are_classified_perfectly(name):
    support, labels, query, query_labels = clusters()
    logits = run_head(build_head(name, **FAST.get(name, {})), support, labels, 5, query)
    assert logits.shape == (50, 5)
    assert torch.isfinite(logits).all()
    assert accuracy(logits, query_labels) == 1.0


@pytest.mark.parametrize("name, options, support_only", [
    ("bdcspn", {}, ("simpleshot", {"norm": "L2N"})),
    ("ptmap", {}, ("simpleshot", {"norm": "L2N"})),
    ("tim", {}, ("tim", {"steps": 0})),
    ("laplacianshot", {"rectify": False, "norm": "UN"}, ("laplacianshot", {"rectify": False, "norm": "UN", "lam": 0.0})),
    ("transductive_finetune", {}, ("transductive_finetune", {"steps": 0})),
])
def test_the_query_structure_flips_a_support_only_decision(name, options, support_only):
    support, labels, query, query_labels = line_episode()
    before = run_head(build_head(support_only[0], **support_only[1]), support, labels, 2, query)
    wrong = (before.argmax(1) != query_labels).nonzero().flatten().tolist()
    assert 11 in wrong and len(wrong) <= 2  # class 0's far end, past the support-only boundary
    after = run_head(build_head(name, **options), support, labels, 2, query)
    assert accuracy(after, query_labels) == 1.0


@pytest.mark.parametrize("name", ["bdcspn", "ptmap", "tim", "laplacianshot"])
def test_a_shift_shared_by_all_queries_is_undone(name):
    support, labels, query, query_labels = shifted_episode()
    assert accuracy(run_head(build_head("simpleshot"), support, labels, 3, query), query_labels) <= 0.7
    assert accuracy(run_head(build_head(name), support, labels, 3, query), query_labels) == 1.0


def test_simpleshot_norms_and_base_centring_follow_the_paper():
    support, labels, query, _ = clusters(way=3, shot=2, queries=4)
    base = torch.rand(30, support.shape[1], generator=torch.Generator().manual_seed(1)) + 1.0
    head = build_head("simpleshot", norm="CL2N").fit_base(base)
    centre = base.mean(0)
    transformed = torch.nn.functional.normalize(support - centre, dim=1)
    prototypes = torch.stack([transformed[labels == k].mean(0) for k in range(3)])
    q = torch.nn.functional.normalize(query - centre, dim=1)
    expected = -((q[:, None] - prototypes[None]) ** 2).sum(2)
    torch.testing.assert_close(run_head(head, support, labels, 3, query), expected, rtol=1e-5, atol=1e-5)
    plain = run_head(build_head("simpleshot", norm="UN"), support, labels, 3, query)
    means = torch.stack([support[labels == k].mean(0) for k in range(3)])
    torch.testing.assert_close(plain, -((query[:, None] - means[None]) ** 2).sum(2), rtol=1e-5, atol=1e-4)


def test_sinkhorn_plan_has_the_prescribed_marginals():
    cost = torch.rand(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plan = sinkhorn(cost, 10.0, 4.0)
    torch.testing.assert_close(plan.sum(1), torch.ones(12, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(plan.sum(0), torch.full((3,), 4.0, dtype=torch.float64), atol=1e-9, rtol=0)


@pytest.mark.parametrize("call, message", [
    (lambda: build_head("simpleshots"), "unknown head 'simpleshots' (did you mean 'simpleshot'?)"),
    (lambda: build_head("simpleshot", normalise="L2N"), "head 'simpleshot' has no option 'normalise'"),
    (lambda: build_head("simpleshot", norm="L3N"), "head 'simpleshot' 'norm' must be one of UN, L2N, CL2N"),
    (lambda: build_head("tim", steps=-1), "head 'tim' 'steps' must be an integer in [0, 100000]"),
    (lambda: build_head("ptmap", beta=0.0), "head 'ptmap' 'beta' must be a finite number in (0, 1]"),
    (lambda: build_head("laplacianshot", rectify=1), "head 'laplacianshot' 'rectify' must be true or false"),
    (lambda: build_head("logistic", C=0), "head 'logistic' 'C' must be a finite number > 0"),
])
def test_bad_options_are_one_line_config_errors(call, message):
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_bad_episodes_are_refused_in_one_line():
    support, labels, query, _ = clusters(way=2, shot=1, queries=2)
    with pytest.raises(ConfigError, match="transductive: fit\\(\\) needs the episode's query features"):
        build_head("tim").fit(support, labels, 2)
    with pytest.raises(DataError, match="support labels must lie in 0..1"):
        build_head("simpleshot").fit(support, labels + 1, 2)
    with pytest.raises(DataError, match="int64"):
        build_head("simpleshot").fit(support, labels.int(), 2)
    with pytest.raises(DataError, match="query features must be"):
        build_head("bdcspn").fit(support, labels, 2, query[:, :3])
    with pytest.raises(DataError, match="non-negative features"):
        build_head("ptmap").fit(support - 5, labels, 2, query)
    predictor = build_head("ptmap").fit(support, labels, 2, query)
    with pytest.raises(DataError, match="scores the queries it was fitted on"):
        predictor(query + 1)


def test_a_taken_name_cannot_be_registered_again():
    class Other(Head):
        name = "simpleshot"

    with pytest.raises(ConfigError, match="already registered"):
        register_head(Other)
    assert HEADS["simpleshot"] is not Other


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logits_keep_the_inputs_dtype_device_and_shape_and_are_deterministic(name, dtype):
    support, labels, query, query_labels = clusters(way=3, shot=2, queries=5, dtype=dtype)
    first = run_head(build_head(name, **FAST.get(name, {})), support, labels, 3, query)
    second = run_head(build_head(name, **FAST.get(name, {})), support, labels, 3, query)
    assert first.dtype == dtype and first.device == query.device and first.shape == (15, 3)
    assert torch.equal(first, second)
    assert accuracy(first, query_labels) == 1.0


#: Heads whose computation has no data-dependent branch, so it runs on the meta device
#: (shapes only): the proof they create no tensor on another device. The others stop on
#: a tolerance (PT-MAP's Sinkhorn, LaplacianShot's energy) or fit on the host (logistic).
META_HEADS = ["simpleshot", "bdcspn", "tim", "transductive_finetune"]


@pytest.mark.parametrize("name", META_HEADS)
def test_heads_run_on_the_meta_device(name):
    support, labels, query, _ = (t.to("meta") for t in clusters(way=3, shot=2, queries=5))
    logits = run_head(build_head(name, **({"steps": 2} if name in ("tim", "transductive_finetune") else {})),
                      support, labels, 3, query)
    assert logits.device.type == "meta" and logits.shape == (15, 3) and logits.dtype == torch.float32


@pytest.mark.parametrize("name", ["tim", "transductive_finetune"])
def test_optimising_heads_work_under_no_grad_as_an_evaluation_runs_them(name):
    support, labels, query, _ = line_episode()
    head = build_head(name, steps=20, lr=1e-2)
    expected = run_head(head, support, labels, 2, query)
    with torch.no_grad():
        assert torch.equal(run_head(head, support, labels, 2, query), expected)
    assert not torch.equal(expected, run_head(build_head(name, steps=0), support, labels, 2, query))
