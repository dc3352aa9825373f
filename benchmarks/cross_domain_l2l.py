"""Cross-domain few-shot, second table: FT layers learned by learning-to-learn, and surgical
fine-tuning with its block chosen per target domain.

The rows added to ``benchmarks/cross_domain.py``'s table, on the same seeded suites (5-way
1-shot, 15 queries per class, test split, seed 0, the same episodes for every model on a
domain), reusing its finished runs and its cached per-episode scores where they exist
(``runs/cross_domain``):

* **learned vs fixed FT layers** (Tseng et al., arXiv:2001.08735): ``protonet-lft``, ProtoNet
  on ``conv4-ft`` with ``learned=true`` (Algorithm 1, :mod:`fewshot.methods.lft`), and its
  twin ``protonet-ft-multi`` with the fixed layers, both meta-trained on the same source
  domains (Omniglot: ``omniglot@2,omniglot:elastic,omniglot:thicken``; digits:
  ``digits@2,digits:elastic,digits:thicken``, rotated, 20-way training episodes as the
  digits recipe) with meta-batches of 2 episodes (learning-to-learn needs a pseudo-seen and a
  pseudo-unseen one), for the same CPU budget as every other run; beside ``protonet``
  (plain, single source), ``protonet-ft`` (fixed FT layers, single source) and
  ``protonet-multi`` (the same sources, no FT layers, meta-batch 1) of the first table; and
  both again with FT noise of the authors' scale (``-small``: thetas giving standard deviations
  0.3 and 0.5, as the authors' softplus with ``beta=100`` does; fewshot's default thetas 0.3 /
  0.5 give 0.854 / 0.974 through torch's softplus);
* **surgical fine-tuning per block** (Lee et al., arXiv:2210.11466) on the ``protonet`` run,
  25 SGD steps as the first table: each fixed block (``protonet+surgical`` is block 0, as in
  the first table; ``@1`` .. ``@3`` the others), the block **chosen per target domain** on
  validation episodes of classes disjoint from the test's
  (:func:`fewshot.crossdomain.surgical_for_domain`: Omniglot's and the styles' ``val`` split,
  digits' ``train`` classes 0-4; 40 episodes, seed 1), and, for reference only, the
  test-best block per domain (an oracle that looks at the test labels: not a method).

Styles: the four that no multi-source run saw (invert, blur, noise, low-contrast).

    FEWSHOT_DATA=/work/shared/data OMP_NUM_THREADS=1 python benchmarks/cross_domain_l2l.py

Writes benchmarks/results/cross_domain_l2l.{json,md}. ``--quick``: seconds of training, 5
episodes, under /tmp, to check the script.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from cross_domain import BACKBONE, FORMER_FT, FT_STEPS, MULTI, RESULTS, cells, table, train  # noqa: E402

from fewshot.crossdomain import CrossDomainTable, domain_options, surgical_for_domain  # noqa: E402
from fewshot.data import load_dataset, make_sampler  # noqa: E402
from fewshot.evaluate import EvalResult, evaluate  # noqa: E402
from fewshot.io import read_json, write_json  # noqa: E402
from fewshot.methods.transfer import adapt_method  # noqa: E402
from fewshot.models.feature_transform import learned_transforms  # noqa: E402
from fewshot.runs import load_run  # noqa: E402

STYLES = ["invert", "blur", "noise", "low-contrast"]
DIGITS_MULTI = "digits@2,digits:elastic,digits:thicken"
DIGITS = {"image_size": 28, "rotations": True}
VAL_EPISODES = 40
#: FT layers whose noise has the authors' scale: their softplus has beta=100 (nearly the identity on
#: 0.3 and 0.5); these thetas give standard deviations 0.3 and 0.5 through softplus with beta=1, the
#: scale every run here was measured at (FORMER_FT). fewshot's default is now the authors' beta=100,
#: so its default conv4-ft draws the fixed -small rows' noise.
SMALL = {"theta_gamma": round(math.log(math.expm1(0.3)), 4), "theta_beta": round(math.log(math.expm1(0.5)), 4),
         **FORMER_FT}
BLOCKS = [0, 1, 2, 3]


def fixed(b: int) -> str:
    return "protonet+surgical" if b == 0 else f"protonet+surgical@{b}"


def choose_and_check(run: Path, result: CrossDomainTable, source: str, source_options: dict, root, cache: Path,
                     val_episodes: int) -> dict:
    """The block chosen for each domain on its validation classes (cached per domain); and a check
    that the chosen block's adaptation gives, episode for episode, the fixed block's scores
    (seeded fine-tuning; the first 3 test episodes), so that the chosen row may be read off
    that cell. Each domain is loaded (and restyled) once for both."""
    method = load_run(run, "last")[1]
    out = {}
    for domain in result.domains:
        options = source_options if domain == source else domain_options(domain, (1, 28, 28), source, source_options)
        data = load_dataset(domain, root, **options)
        f = cache / f"choice__{domain}.json"
        if not f.exists():
            start = time.process_time()
            _, choice = surgical_for_domain(method, data, way=5, shot=1, query=15, episodes=val_episodes, seed=0,
                                            candidates=BLOCKS, steps=FT_STEPS)
            write_json(f, {**choice.to_dict(), "cpu_seconds": round(time.process_time() - start, 2)})
            print(f"block for {domain}: {choice.block} ({choice.how}; {choice.scores})", flush=True)
        out[domain] = read_json(f)
        block = out[domain]["block"]
        sampler = make_sampler(domain, data, "test", 5, 1, 15, seed=0)
        again = evaluate(adapt_method(method, "surgical", block=block, steps=FT_STEPS), sampler, 3, progress=False)
        cached = result.results[fixed(block)][domain].scores[:3]
        if not np.allclose(again.scores, cached):
            raise SystemExit(f"{domain}: block {block} gives {again.scores} now, {cached} in the cache")
    return out


def learned_thetas(run: Path) -> list[dict]:
    """Per FT layer of a learned-FT run: the learned thetas (mean, min, max over channels) and the
    noise standard deviations they give (softplus at FORMER_FT's beta), against the initial 0.3 / 0.5 (0.854 / 0.974)."""
    thetas = learned_transforms(load_run(run, "last")[1].backbone)
    out = []
    for gamma, beta in zip(thetas[::2], thetas[1::2]):
        g, b = gamma.detach().flatten(), beta.detach().flatten()
        out.append({"theta_gamma": [round(float(g.mean()), 3), round(float(g.min()), 3), round(float(g.max()), 3)],
                    "theta_beta": [round(float(b.mean()), 3), round(float(b.min()), 3), round(float(b.max()), 3)],
                    "std_gamma": round(float(F.softplus(g, FORMER_FT["softplus_beta"]).mean()), 3),
                    "std_beta": round(float(F.softplus(b, FORMER_FT["softplus_beta"]).mean()), 3)})
    return out


def with_choices(result: CrossDomainTable, choices: dict) -> CrossDomainTable:
    """``result`` with two rows more: the per-domain chosen block, and the test-best block (oracle)."""
    chosen, oracle = {}, {}
    for d in result.domains:
        chosen[d] = result.results[fixed(choices[d]["block"])][d]
        best = max(BLOCKS, key=lambda b: result.results[fixed(b)][d].value)
        oracle[d] = result.results[fixed(best)][d]
    rows = {**result.results, "protonet+surgical-chosen": chosen, "protonet+surgical-oracle": oracle}
    return CrossDomainTable(rows, result.domains, {m: result.domains[0] for m in rows}, result.suite)


def pairs(result: CrossDomainTable, wanted: list[tuple[str, str]]) -> dict:
    return {f"{a} - {b}": {d: result.paired(a, b, d) for d in result.domains} for a, b in wanted
            if a in result.results and b in result.results}


def markdown(report: dict) -> str:
    lines = ["# Cross-domain few-shot: learned FT layers and the per-domain surgical block", "",
             f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']}; torch {report['torch']}; one thread; load average at start "
             f"{report['load_start']}, at end {report['load_end']}. CPU of this command: "
             f"{report['cpu_minutes_this_command']:.1f} CPU-minutes (training {report['cpu_seconds_training_new']} s "
             f"of it); cells reused from the score cache: {report['cpu_seconds_reused']} CPU-s (their own CPU "
             "time, filled by benchmarks/cross_domain.py or an earlier run of this command).", "",
             *[f"Earlier run of this command: `{e['command']}`, {e['cpu_seconds']} CPU-s: {e['what']}."
               for e in report.get("earlier_runs", [])], "",
             "Training (CPU budget each, no validation, last weights; Conv-4 width 32):", "",
             "| run | method | backbone | options | dataset | meta-batch | steps | CPU-s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, t in report["training"].items():
        lines.append(f"| {name} | {t['method']} | {t['backbone']} | {t.get('backbone_options', '')} | {t['dataset']} "
                     f"| {t.get('meta_batch', 1)} | {t['steps']} | {t['cpu_seconds']} |")
    for key, title in (("omniglot", "Omniglot -> digits and Omniglot -> styles"), ("digits", "digits -> Omniglot")):
        t = report["tables"][key]
        suite = t["suite"]
        lines += ["", f"## {title}", "",
                  f"{suite['way']}-way {suite['shot']}-shot, {suite['query']} queries per class, {suite['episodes']} "
                  f"episodes (seed {suite['seed']}) per domain, test split; accuracy % ± 95% CI; the same episodes "
                  "for every model on a domain.", "", "| model | " + " | ".join(t["domains"]) + " |",
                  "|---|" + "---|" * len(t["domains"])]
        cells_ = {(r["model"], r["domain"]): r for r in t["results"]}
        for m in t["models"]:
            row = [f"{cells_[(m, d)]['accuracy']:.1f} ± {cells_[(m, d)]['ci95']:.1f}" +
                   (" (in)" if cells_[(m, d)]["in_domain"] else "") for d in t["domains"]]
            lines.append(f"| {m} | " + " | ".join(row) + " |")
        lines += ["", "Block chosen per domain on validation episodes (classes disjoint from the test's), with "
                  "each block's validation accuracy:", "", "| domain | split | chosen | " +
                  " | ".join(f"block {b}" for b in BLOCKS) + " | test-best |",
                  "|---|---|---|" + "---|" * (len(BLOCKS) + 1)]
        for d in t["domains"]:
            c = report["choices"][key][d]
            lines.append(f"| {d} | {c['split']} | {c['block']} | " +
                         " | ".join(f"{c['scores'][str(b)]:.1f}" for b in BLOCKS) + f" | {t['oracle_block'][d]} |")
        lines += ["", f"Paired differences (same episodes), mean ± 95% CI; * where the interval excludes 0:", "",
                  "| difference | " + " | ".join(t["domains"]) + " |", "|---|" + "---|" * len(t["domains"])]
        for name, by in {**{f"{m} - {t['reference']}": v for m, v in t["vs_reference"].items()},
                         **t["pairs"]}.items():
            # indexed by domain: the JSON file keeps its keys sorted, not in the table's order
            row = [(by[d][0], by[d][1]) for d in t["domains"]]
            lines.append(f"| {name} | " + " | ".join(f"{a:+.1f} ± {c:.1f}{'*' if abs(a) > c else ''}"
                                                     for a, c in row) + " |")
    lines += ["", "Learned FT hyper-parameters after training (per layer: theta mean [min, max] over channels; "
              "the noise standard deviation softplus(theta)), from 0.3 / 0.5 (0.854 / 0.974), or for the -small "
              f"runs from {SMALL['theta_gamma']} / {SMALL['theta_beta']} (0.3 / 0.5):", ""]
    for name, layers in report.get("learned_thetas", {}).items():
        lines.append(f"- {name}: " + "; ".join(
            f"layer {i}: gamma {l['theta_gamma'][0]:.3f} [{l['theta_gamma'][1]:.3f}, {l['theta_gamma'][2]:.3f}] "
            f"(std {l['std_gamma']:.3f}), beta {l['theta_beta'][0]:.3f} [{l['theta_beta'][1]:.3f}, "
            f"{l['theta_beta'][2]:.3f}] (std {l['std_beta']:.3f})" for i, l in enumerate(layers)))
    lines += ["", "(in): the training domain. protonet-multi and the -ft-multi and -lft runs saw "
              "elastic and thickened strokes (not in these columns). -small: FT noise of the authors' scale "
              "(standard deviations 0.3 and 0.5 at the start, as their softplus with beta=100 gives). Every FT run "
              "here trained at softplus_beta=1, fewshot's former scale, where the thetas 0.3 / 0.5 give 0.854 and "
              "0.974; conv4-ft's default is now the authors' beta=100, whose noise is the -small rows'. "
              "protonet+surgical-oracle picks each domain's "
              "block by its test accuracy: a bound, not a method."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="CPU-minutes of training per model")
    parser.add_argument("--episodes", type=int, default=150, help="test episodes per domain")
    parser.add_argument("--val-episodes", type=int, default=VAL_EPISODES, help="validation episodes per block")
    parser.add_argument("--out", default="runs/cross_domain", help="folder of the runs (benchmarks/cross_domain.py's)")
    parser.add_argument("--results", default=str(RESULTS), help="where cross_domain_l2l.{json,md} go")
    parser.add_argument("--quick", action="store_true", help="check the script: seconds of training, 5 episodes")
    parser.add_argument("--render", action="store_true", help="only write the .md again from the .json")
    args = parser.parse_args()
    if args.render:
        results = Path(args.results)
        (results / "cross_domain_l2l.md").write_text(markdown(read_json(results / "cross_domain_l2l.json")))
        return
    if args.quick:
        args.minutes, args.episodes, args.val_episodes = 0.03, 5, 3
        args.out, args.results = "/tmp/cross-domain-l2l-check", "/tmp/cross-domain-l2l-check"
    torch.set_num_threads(1)
    root, out = os.environ.get("FEWSHOT_DATA"), Path(args.out)
    load_start, cpu0 = os.getloadavg(), time.process_time()
    lft = {"backbone": "conv4-ft", "meta_batch": 2, "backbone_options": {**BACKBONE, **FORMER_FT}}
    plan = {  # the first four exactly as benchmarks/cross_domain.py trains them (so they are reused)
        "protonet": {"dataset": "omniglot", "method": "protonet"},
        "protonet-ft": {"dataset": "omniglot", "method": "protonet", "backbone": "conv4-ft",
                        "backbone_options": {**BACKBONE, **FORMER_FT}},
        "protonet-multi": {"dataset": MULTI, "method": "protonet"},
        "digits-protonet": {"dataset": "digits", "dataset_options": DIGITS, "method": "protonet"},
        "protonet-ft-multi": {"dataset": MULTI, "method": "protonet", **lft},
        "protonet-lft": {"dataset": MULTI, "method": "protonet", **lft,
                         "backbone_options": {**BACKBONE, **FORMER_FT, "learned": True}},
        # the digits recipe (fewshot.config.RECIPES), which a multi-domain name does not pick up
        "protonet-ft-multi-small": {"dataset": MULTI, "method": "protonet", **lft,
                                    "backbone_options": {**BACKBONE, **SMALL}},
        "protonet-lft-small": {"dataset": MULTI, "method": "protonet", **lft,
                               "backbone_options": {**BACKBONE, **SMALL, "learned": True}},
        "digits-protonet-ft-multi": {"dataset": DIGITS_MULTI, "dataset_options": DIGITS, "method": "protonet",
                                     "train_way": 20, "train_query": 10, "lr_step": 1000, **lft},
        "digits-protonet-lft": {"dataset": DIGITS_MULTI, "dataset_options": DIGITS, "method": "protonet",
                                "train_way": 20, "train_query": 10, "lr_step": 1000, **lft,
                                "backbone_options": {**BACKBONE, **FORMER_FT, "learned": True}},
        "digits-protonet-ft-multi-small": {"dataset": DIGITS_MULTI, "dataset_options": DIGITS, "method": "protonet",
                                           "train_way": 20, "train_query": 10, "lr_step": 1000, **lft,
                                           "backbone_options": {**BACKBONE, **SMALL}},
        "digits-protonet-lft-small": {"dataset": DIGITS_MULTI, "dataset_options": DIGITS, "method": "protonet",
                                      "train_way": 20, "train_query": 10, "lr_step": 1000, **lft,
                                      "backbone_options": {**BACKBONE, **SMALL, "learned": True}},
    }
    runs, training, new_training = {}, {}, 0.0
    for name, settings in plan.items():
        before = (out / name / "state.json").exists()
        runs[name], training[name] = train(name, out, args.minutes, **settings)
        training[name].update(meta_batch=settings.get("meta_batch", 1),
                              backbone_options=settings.get("backbone_options", BACKBONE))
        if not before:  # trained by this command (a finished run is reused as it is)
            new_training += training[name]["cpu_seconds"]

    loaded: dict = {}

    def method(name: str, adapt: str | None = None, **options):
        def run(sampler, episodes):
            key = (name, adapt, tuple(sorted(options.items())))
            if key not in loaded:
                m = load_run(runs[name], "last")[1]
                loaded[key] = m if adapt is None else adapt_method(m, adapt, **options)
            return evaluate(loaded[key], sampler, episodes, progress=False)
        return run

    def surgical(run: str) -> dict:
        return {fixed(b): method(run, "surgical", block=b, steps=FT_STEPS) for b in BLOCKS}

    omniglot_models = {"protonet": method("protonet"), "protonet-ft": method("protonet-ft"),
                       "protonet-ft-multi": method("protonet-ft-multi"), "protonet-lft": method("protonet-lft"),
                       "protonet-ft-multi-small": method("protonet-ft-multi-small"),
                       "protonet-lft-small": method("protonet-lft-small"),
                       "protonet-multi": method("protonet-multi"), **surgical("protonet")}
    digits_models = {"protonet": method("digits-protonet"), "protonet-ft-multi": method("digits-protonet-ft-multi"),
                     "protonet-lft": method("digits-protonet-lft"),
                     "protonet-ft-multi-small": method("digits-protonet-ft-multi-small"),
                     "protonet-lft-small": method("digits-protonet-lft-small"), **surgical("digits-protonet")}
    work = [("omniglot", omniglot_models, "protonet", "omniglot", {}, ["digits", *[f"omniglot:{s}" for s in STYLES]]),
            ("digits", digits_models, "digits-protonet", "digits", DIGITS, ["omniglot"])]
    cache = out / f"scores-{args.episodes}"
    reused = 0.0
    tables, choices = {}, {}
    wanted = [("protonet-lft", "protonet-ft-multi"), ("protonet-lft", "protonet-ft"),
              ("protonet-lft", "protonet-multi"),
              ("protonet-ft-multi", "protonet-multi"), ("protonet-lft-small", "protonet-ft-multi-small"),
              ("protonet-ft-multi-small", "protonet-ft-multi"), ("protonet-ft-multi-small", "protonet-multi"),
              ("protonet-lft-small", "protonet-multi"),
              *[("protonet+surgical-chosen", fixed(b)) for b in BLOCKS],
              ("protonet+surgical-chosen", "protonet+surgical-oracle")]
    for key, models, run, source, options, domains in work:
        existing = {p.name for p in (cache / key).glob("*.json")} if (cache / key).exists() else set()
        result = cells(models, domains, source, options, args.episodes, root, cache / key)
        reused += sum(result.results[m][d].seconds for m in models for d in result.domains
                      if f"{m}__{d}.json" in existing)
        choices[key] = choose_and_check(runs[run], result, source, options, root, cache / key, args.val_episodes)
        full = with_choices(result, choices[key])
        tables[key] = table(full)
        tables[key]["pairs"] = pairs(full, wanted)
        tables[key]["oracle_block"] = {d: max(BLOCKS, key=lambda b: full.results[fixed(b)][d].value)
                                       for d in full.domains}
    command = f"FEWSHOT_DATA=... OMP_NUM_THREADS=1 python benchmarks/cross_domain_l2l.py --minutes {args.minutes} " \
              f"--episodes {args.episodes} --val-episodes {args.val_episodes}"
    report = {"command": command,
              "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores (shared)".strip(),
              "torch": torch.__version__, "load_start": [round(x, 1) for x in load_start],
              "load_end": [round(x, 1) for x in os.getloadavg()],
              "cpu_minutes_this_command": (time.process_time() - cpu0) / 60,
              "cpu_seconds_training_new": round(new_training, 1), "cpu_seconds_reused": round(reused, 1),
              "training": training, "tables": tables, "choices": choices,
              "learned_thetas": {name: learned_thetas(runs[name]) for name in runs if "lft" in name}}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / "cross_domain_l2l.json", report)
    (results / "cross_domain_l2l.md").write_text(markdown(report))
    print(f"wrote {results / 'cross_domain_l2l.json'} and .md; {report['cpu_minutes_this_command']:.1f} CPU-minutes",
          flush=True)


if __name__ == "__main__":
    main()
