"""Cross-domain few-shot: which method adapts best to which shift, at a small CPU budget.

Shifts (the cross-domain protocol of :mod:`fewshot.crossdomain`; the same seeded 5-way
1-shot suites of 15 queries per class on each target domain, test split):

* Omniglot -> digits (scikit-learn's, upsampled to 28x28; test classes 5-9),
* Omniglot -> each style of Omniglot (:mod:`fewshot.data.styles`: invert, blur, noise,
  elastic, thicken, low-contrast; the Omniglot test classes, restyled),
* digits -> Omniglot (trained on the 20 rotated digit classes 0-4, 28x28).

Models, each trained by the one trainer for ``--minutes`` CPU-minutes (one thread; no
validation: the last weights), Conv-4 of width 32:

* ``protonet`` (Snell et al., arXiv:1703.05175) and ``fomaml`` (first-order MAML, Finn et
  al., arXiv:1703.03400; 1 inner step in training and at test) on the source;
* ``protonet-ft``: ProtoNet with feature-wise transformation layers (``conv4-ft``; Tseng et
  al., arXiv:2001.08735, fixed hyper-parameters 0.3 / 0.5, no learning-to-learn);
* ``protonet-multi``: ProtoNet meta-trained on several source domains,
  ``omniglot@2,omniglot:elastic,omniglot:thicken`` (half the episodes plain Omniglot, a
  quarter each style): elastic and thicken are *seen* domains for it (marked), the other
  styles and digits unseen;
* test-time adaptations of the ``protonet`` run: ``+support-bn`` (BatchNorm statistics from
  the support set, inductive), ``+transductive-bn`` (from support and query images:
  transductive, marked), ``+finetune`` (the whole backbone and a new head, 25 full-batch SGD
  steps, half the library's default, for the CPU budget; :mod:`fewshot.methods.transfer`) and
  ``+surgical`` (Lee et al., arXiv:2210.11466: only the first block fine-tuned, the layer
  choice for input-level shifts; 25 steps).

Paired differences: every model minus ``protonet`` per domain (identical episodes), mean ±
95 % CI. Writes benchmarks/results/cross_domain.{json,md}.

    FEWSHOT_DATA=/work/shared/data OMP_NUM_THREADS=1 python benchmarks/cross_domain.py --minutes 1.0

(``--only NAME ...`` trains some of the runs and stops, and ``--part K/N`` evaluates every N-th
domain column and stops, so that N processes can share the work; the full command then reuses
every finished run and every evaluated cell.)

``--quick``: a few CPU seconds per model and 5 episodes, under /tmp, to check the script.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fewshot.config import TrainConfig
from fewshot.crossdomain import CrossDomainTable, domain_options
from fewshot.data import load_dataset, make_sampler
from fewshot.evaluate import EvalResult, MethodFeatures, evaluate, evaluate_head
from fewshot.features import FeatureCache
from fewshot.heads import build_head
from fewshot.io import read_json, write_json
from fewshot.methods.transfer import adapt_method
from fewshot.runs import load_run, read_state
from fewshot.train import Trainer

RESULTS = Path(__file__).parent / "results"
STYLES = ["invert", "blur", "noise", "elastic", "thicken", "low-contrast"]
MULTI = "omniglot@2,omniglot:elastic,omniglot:thicken"
SEEN_BY_MULTI = {"omniglot:elastic", "omniglot:thicken"}
BACKBONE = {"width": 32}
#: The FT layers' noise as these tables measured it: torch's softplus (beta=1), deviations 0.854 and
#: 0.974 from the thetas 0.3 / 0.5, fewshot's default until it took the authors' beta=100
#: (deviations 0.3 / 0.5; benchmarks/cross_domain_l2l.py measures both).
FORMER_FT = {"softplus_beta": 1.0}
FT_STEPS = 25


def train(name: str, out: Path, minutes: float, **settings) -> tuple[Path, dict]:
    """Train (or reuse, when finished) run ``name``: ``minutes`` CPU-minutes, no validation."""
    config = TrainConfig.from_dict({**TrainConfig.for_dataset(settings.pop("dataset")).to_dict(),
                                    "episodes": 200000, "val_split": None, "cpu_minutes": minutes,
                                    "checkpoint_every": 1000, "backbone_options": BACKBONE, **settings})
    run = out / name
    if (run / "state.json").exists() and read_state(run).get("done") and read_json(run / "config.json") == config.to_dict():
        # finished with this very config: reuse it without building a trainer (which would load
        # and restyle its training data again in every process)
        state = read_state(run)
        steps, cpu = state["step"], state["cpu_seconds"]
    else:
        result = Trainer(config, run, runs=out / "store").run(resume=run.exists(), progress=False)
        steps, cpu = result.steps, result.cpu_seconds
    info = {"steps": steps, "cpu_seconds": round(cpu, 1), "dataset": config.dataset,
            "dataset_options": config.dataset_options, "method": config.method, "backbone": config.backbone,
            "method_options": config.method_options}
    print(f"trained {name}: {info}", flush=True)
    return run, info


def part(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise argparse.ArgumentTypeError(f"--part takes K/N with 1 <= K <= N, got '{text}'")
    return int(k), int(n)


def cells(models: dict, domains: list[str], source: str, source_options: dict, episodes: int, root,
          cache: Path, with_source: bool = True) -> CrossDomainTable:
    """Every model on every domain (``source`` first): ``models[name](sampler, episodes)`` gives an
    :class:`EvalResult`. Each cell's per-episode scores are kept in ``cache`` and reused, so that
    separate processes (``--part``) may fill separate columns at once (each loading and restyling
    only its own domains) and the full command then only assembles the table."""
    cache.mkdir(parents=True, exist_ok=True)
    targets = [source, *domains] if with_source else list(domains)
    results: dict = {m: {} for m in models}
    for domain in targets:
        files = {m: cache / f"{m}__{domain}.json" for m in models}
        if not all(f.exists() for f in files.values()):
            options = source_options if domain == source else domain_options(domain, (1, 28, 28), source, source_options)
            sampler = make_sampler(domain, load_dataset(domain, root, **options), "test", 5, 1, 15, seed=0)
        for m, f in files.items():
            if not f.exists():
                start = time.process_time()
                r = models[m](sampler, episodes)
                write_json(f, {"scores": r.scores.tolist(), "transductive": r.transductive, "episodes": episodes,
                               "cpu_seconds": round(time.process_time() - start, 2)})
                print(f"{m} on {domain}: {r.value:.1f} ± {r.ci95:.1f}", flush=True)
            d = read_json(f)
            if d["episodes"] != episodes:
                raise SystemExit(f"{f} holds {d['episodes']} episodes, not {episodes}; delete it")
            results[m][domain] = EvalResult(np.asarray(d["scores"], dtype=np.float64), 5, 1, 15,
                                            seconds=d["cpu_seconds"], transductive=d["transductive"])
    return CrossDomainTable(results, targets, {m: source for m in models},
                            {"split": "test", "way": 5, "shot": 1, "query": 15, "episodes": episodes, "seed": 0})


def winner(result: CrossDomainTable, domain: str, models: list[str]) -> dict:
    """The best of ``models`` on ``domain`` and whether its paired lead over the runner-up is significant."""
    ranked = sorted(models, key=lambda m: -result.results[m][domain].value)
    diff, ci = result.paired(ranked[0], ranked[1], domain)
    return {"best": ranked[0], "second": ranked[1], "difference": diff, "ci95": ci, "significant": diff - ci > 0}


def table(result: CrossDomainTable) -> dict:
    print(result.render(), flush=True)
    out = result.to_dict()
    reference = result.models[0]
    out["vs_reference"] = {m: {d: result.paired(m, reference, d) for d in result.domains}
                           for m in result.models if m != reference}
    out["reference"] = reference
    out["best_significant"], out["best_inductive"] = {}, {}
    for d in result.domains:
        out["best_significant"][d] = winner(result, d, result.models)
        out["best_inductive"][d] = winner(result, d, [m for m in result.models if not result.results[m][d].transductive])
    # the cells' seconds are CPU seconds of one thread (see cells)
    out["cpu_seconds"] = round(sum(r.seconds for by in result.results.values() for r in by.values()), 1)
    out["text"] = result.render()
    return out


def leader(b: dict, domain: str) -> str:
    seen = " (a seen domain for it)" if b["best"] == "protonet-multi" and domain in SEEN_BY_MULTI else ""
    verdict = "significantly" if b["significant"] else "not significantly"
    return f"**{b['best']}**{seen}, {verdict} ahead of {b['second']} ({b['difference']:+.1f} ± {b['ci95']:.1f})"


def markdown(report: dict) -> str:
    lines = ["# Cross-domain few-shot (fewshot.crossdomain)", "",
             f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']}; torch {report['torch']}; one thread; load average at start "
             f"{report['load_start']}, at end {report['load_end']}. Total CPU {report['cpu_minutes_total']:.1f} "
             "CPU-minutes.", "",
             "Training (each model: CPU budget, no validation, last weights; Conv-4 width 32):", "",
             "| run | method | backbone | dataset | steps | CPU-s |", "|---|---|---|---|---|---|"]
    for name, t in report["training"].items():
        lines.append(f"| {name} | {t['method']} | {t['backbone']} | {t['dataset']} | {t['steps']} | {t['cpu_seconds']} |")
    for key, title in (("omniglot", "Omniglot -> digits and Omniglot -> styles"), ("digits", "digits -> Omniglot")):
        t = report["tables"][key]
        suite = t["suite"]
        lines += ["", f"## {title}", "",
                  f"{suite['way']}-way {suite['shot']}-shot, {suite['query']} queries per class, {suite['episodes']} "
                  f"episodes (seed {suite['seed']}) per domain, test split; accuracy % ± 95% CI; the same episodes "
                  f"for every model on a domain. Evaluation: {t['cpu_seconds']} CPU-s.", ""]
        lines.append("| model | " + " | ".join(t["domains"]) + " |")
        lines.append("|---|" + "---|" * len(t["domains"]))
        cells = {(r["model"], r["domain"]): r for r in t["results"]}
        for m in t["models"]:
            row = []
            for d in t["domains"]:
                r = cells[(m, d)]
                mark = (" (in)" if r["in_domain"] else "") + (" (T)" if r["transductive"] else "") + \
                    (" (seen)" if m == "protonet-multi" and d in SEEN_BY_MULTI else "")
                row.append(f"{r['accuracy']:.1f} ± {r['ci95']:.1f}{mark}")
            lines.append(f"| {m} | " + " | ".join(row) + " |")
        lines += ["", f"Paired difference from `{t['reference']}` (same episodes), mean ± 95% CI:", "",
                  "| model | " + " | ".join(t["domains"]) + " |", "|---|" + "---|" * len(t["domains"])]
        for m, by in t["vs_reference"].items():
            lines.append(f"| {m} | " + " | ".join(f"{a:+.1f} ± {c:.1f}" for a, c in by.values()) + " |")
        lines += ["", "Best per domain, against the runner-up (paired); then the best inductive one where a "
                  "transductive model leads:", ""]
        for d, b in t["best_significant"].items():
            line = f"- {d}: {leader(b, d)}"
            if b["best"] != t["best_inductive"][d]["best"]:
                line += f"; inductive: {leader(t['best_inductive'][d], d)}"
            lines.append(line)
    lines += ["", "(in): the training domain; (T): transductive (query statistics); (seen): a source domain of "
              "protonet-multi."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="CPU-minutes of training per model")
    parser.add_argument("--episodes", type=int, default=60, help="test episodes per domain")
    parser.add_argument("--out", default="runs/cross_domain", help="folder of the runs")
    parser.add_argument("--results", default=str(RESULTS), help="where cross_domain.{json,md} go")
    parser.add_argument("--part", type=part, help="K/N: evaluate every N-th domain column from the K-th, keeping "
                        "the scores for the full command, then stop (N processes in parallel, K = 1..N)")
    parser.add_argument("--columns", nargs="+", help="TABLE/DOMAIN ...: evaluate these domain columns (e.g. "
                        "digits/omniglot), keeping the scores for the full command, then stop")
    parser.add_argument("--only", nargs="+", help="train only these runs, then stop (the full command reuses them)")
    parser.add_argument("--quick", action="store_true", help="check the script: seconds of training, 5 episodes")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.episodes, args.out, args.results = 0.05, 5, "/tmp/cross-domain-check", "/tmp/cross-domain-check"
    torch.set_num_threads(1)
    root, out = os.environ.get("FEWSHOT_DATA"), Path(args.out)
    load_start, cpu0 = os.getloadavg(), time.process_time()
    training, runs = {}, {}
    omniglot = {"dataset": "omniglot"}
    digits = {"dataset": "digits", "dataset_options": {"image_size": 28, "rotations": True}}
    plan = {
        "protonet": {**omniglot, "method": "protonet"},
        "fomaml": {**omniglot, "method": "fomaml"},
        "protonet-ft": {**omniglot, "method": "protonet", "backbone": "conv4-ft",
                        "backbone_options": {**BACKBONE, **FORMER_FT}},
        "protonet-multi": {"dataset": MULTI, "method": "protonet"},
        "digits-protonet": {**digits, "method": "protonet"},
        "digits-fomaml": {**digits, "method": "fomaml"},
    }
    if args.only:  # train these runs only (separate processes may train separate runs at once)
        for name in args.only:
            train(name, out, args.minutes, **plan[name])
        return
    for name, settings in plan.items():
        runs[name], training[name] = train(name, out, args.minutes, **settings)

    loaded: dict = {}

    def trained(name: str, adapt: str | None = None, **options):
        key = (name, adapt)
        if key not in loaded:  # loaded once per process, on first use (a --models process loads its own)
            m = load_run(runs[name], "last")[1]
            loaded[key] = m if adapt is None else adapt_method(m, adapt, **options)
        return loaded[key]

    def method(name: str, adapt: str | None = None, **options):
        return lambda sampler, episodes: evaluate(trained(name, adapt, **options), sampler, episodes, progress=False)

    features = FeatureCache()  # a domain's images embedded once for all the heads on one run

    def head(name: str, head_name: str):
        # base_split=None: SimpleShot centres on each episode's support, so no head sees any
        # target-domain image beyond the episode's own
        return lambda sampler, episodes: evaluate_head(build_head(head_name), MethodFeatures(trained(name)), sampler,
                                                       episodes, base_split=None, cache=features, progress=False)

    cache = out / f"scores-{args.episodes}"
    omniglot_models = {"protonet": method("protonet"), "protonet+support-bn": method("protonet", "support-bn"),
                       "protonet+transductive-bn": method("protonet", "transductive-bn"),
                       "protonet+simpleshot": head("protonet", "simpleshot"),
                       "protonet+logistic": head("protonet", "logistic"),
                       "protonet+ptmap": head("protonet", "ptmap"),
                       "protonet+finetune": method("protonet", "finetune", steps=FT_STEPS),
                       "protonet+surgical": method("protonet", "surgical", block=0, steps=FT_STEPS),
                       "fomaml": method("fomaml"), "protonet-ft": method("protonet-ft"),
                       "protonet-multi": method("protonet-multi")}
    digits_models = {"protonet": method("digits-protonet"),
                     "protonet+support-bn": method("digits-protonet", "support-bn"),
                     "protonet+simpleshot": head("digits-protonet", "simpleshot"),
                     "protonet+finetune": method("digits-protonet", "finetune", steps=FT_STEPS),
                     "fomaml": method("digits-fomaml")}
    omniglot_domains = ["digits", *[f"omniglot:{s}" for s in STYLES]]
    work = [("omniglot", omniglot_models, "omniglot", {}, omniglot_domains),
            ("digits", digits_models, "digits", digits["dataset_options"], ["omniglot"])]
    if args.part or args.columns:  # fill the cells of some domain columns only (a parallel process), then stop
        every = [(t, d) for t, _, source, _, domains in work for d in [source, *domains]]
        if args.columns:
            columns = [tuple(c.split("/", 1)) for c in args.columns]
            if not set(columns) <= set(every):
                raise SystemExit(f"--columns takes TABLE/DOMAIN of: {' '.join('/'.join(c) for c in every)}")
            k, n = "+".join(args.columns).replace("/", "~").replace(":", "~"), 0
        else:
            k, n = args.part
            columns = every[k - 1::n]
        for key, models, source, options, domains in work:
            mine = [d for t, d in columns if t == key]
            if mine:
                cells(models, [d for d in mine if d != source], source, options, args.episodes, root, cache / key,
                      with_source=source in mine)
        write_json(cache / (f"cpu-part-{k}-of-{n}.json" if n else f"cpu-columns-{k}.json"),
                   {"cpu_seconds": round(time.process_time() - cpu0, 1)})
        return
    tables = {key: table(cells(models, domains, source, options, args.episodes, root, cache / key))
              for key, models, source, options, domains in work}
    # CPU: the trainer's own count for each run, plus every evaluating process (--part ones and this one)
    parts = {p.stem: read_json(p)["cpu_seconds"] for p in cache.glob("cpu-*.json")}
    train_cpu = sum(t["cpu_seconds"] for t in training.values())
    command = f"FEWSHOT_DATA=... OMP_NUM_THREADS=1 python benchmarks/cross_domain.py --minutes {args.minutes} " \
              f"--episodes {args.episodes}"
    # how the cells were filled, when other processes filled them first (--part, --columns)
    counts = sorted({int(p.stem.rsplit("-", 1)[-1]) for p in cache.glob("cpu-part-*-of-*.json")})
    helpers = sorted(" ".join(c.replace("~", "/", 1).replace("~", ":") for c in p.stem[len("cpu-columns-"):].split("+"))
                     for p in cache.glob("cpu-columns-*.json"))
    first = ([f"--part K/{counts[-1]} (K = 1..{counts[-1]})"] if counts else []) + [f"--columns {h}" for h in helpers]
    if first:
        command = f"{command} " + " and ".join(first) + f" in parallel, then {command}"
    report = {"command": command,
              "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores (shared)".strip(),
              "torch": torch.__version__, "load_start": [round(x, 1) for x in load_start],
              "load_end": [round(x, 1) for x in os.getloadavg()],
              "cpu_minutes_total": (train_cpu + sum(parts.values()) + time.process_time() - cpu0) / 60,
              "cpu_seconds_training": round(train_cpu, 1),
              "cpu_seconds_evaluating": {**parts, "final": round(time.process_time() - cpu0, 1)},
              "training": training, "tables": tables}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / "cross_domain.json", report)
    (results / "cross_domain.md").write_text(markdown(report))
    print(f"wrote {results / 'cross_domain.json'} and .md; {report['cpu_minutes_total']:.1f} CPU-minutes", flush=True)


if __name__ == "__main__":
    main()
