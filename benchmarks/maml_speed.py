"""MAML meta-iteration time and peak memory: fewshot against a plain per-task loop.

Conv-4 on Omniglot 5-way 1-shot (28x28), meta-batch 32, 15 queries per class (the
project's default; ``--query 1`` is the setting of Finn et al.'s code), 1 and 5 inner
steps, second and first order. The reference is the plain loop most MAML code
writes, defined below in :func:`reference_loss`: per task, ``functional_call`` on the
same module (BatchNorm with batch statistics, as fewshot), ``torch.autograd.grad(...,
create_graph=True)`` for the inner steps, the query losses summed over the meta-batch
and one ``backward()``.

Every variant runs in its own process (so that peak memory, allocator settings and
thread counts do not leak between them), on the same pre-sampled meta-batches, from
the same initial weights; variants are run round-robin for ``--rounds`` rounds so that
load from other processes on a shared machine falls on all of them alike. Reported
per variant: wall-clock and CPU seconds per meta-iteration (median and minimum over
the timed iterations of all rounds), peak resident memory above the process's
footprint before the first iteration, and the agreement of its meta-gradient on the
first meta-batch with the reference's (max |difference| / max |reference|).

    FEWSHOT_DATA=../shared/data python benchmarks/maml_speed.py            # ~15 min
    FEWSHOT_DATA=../shared/data python benchmarks/maml_speed.py --quick    # ~3 min

Writes benchmarks/results/maml_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

RESULTS = Path(__file__).parent / "results"
HERE = Path(__file__).resolve()

# name -> what it is. "fewshot" is the library as shipped; the others isolate one choice.
VARIANTS = {
    "reference": "plain per-task loop (autograd.grad create_graph=True), one backward over the meta-batch",
    "fewshot": "fewshot MAML.loss as shipped: per-task meta-gradient, fast weights kept in the parameters' layout, "
               "one-channel input in channels-last strides, closed-form BatchNorm double backward, glibc keeps freed memory",
    "reference+malloc": "reference, with glibc keeping freed memory (keep_freed_memory)",
    "fewshot-no-malloc": "fewshot without the allocator setting",
    "fewshot-no-layout": "fewshot without the layout fixes (fast weights take the strides of the arithmetic)",
    "fewshot-no-fast-bn": "fewshot with PyTorch's own BatchNorm double backward",
    "fewshot-graph": "fewshot's inner loop, but the whole meta-batch's graph kept and one backward (no per-task meta-gradient)",
    "reference-2-threads": "reference with torch.set_num_threads(2)",
    "fewshot-2-threads": "fewshot with torch.set_num_threads(2)",
    "vmap": "task batching: torch.func.vmap over tasks of torch.func.grad inner steps (functorch's MAML example); "
            "Conv-4 rebuilt channels-first, since a channels-last forward cannot run under vmap",
    "fewshot-compiled-query": "fewshot's inner loop with the query pass under torch.compile (compile time excluded); "
                              "the support pass is differentiated twice, which torch.compile does not support",
}


# -- the workloads -----------------------------------------------------------------------

def build_model(way: int):
    """The one model every variant starts from: seeded Conv-4 + linear head, as MAML builds it."""
    from fewshot.methods import MAML
    from fewshot.models import Conv4

    torch.manual_seed(0)
    return MAML(Conv4(1), way=way, image_shape=(1, 28, 28))


def reference_loss(model, episodes, steps: int, lr: float, first_order: bool) -> torch.Tensor:
    """The plain loop: per-task inner steps with autograd.grad, query losses summed."""
    params = {n: p for n, p in model.named_parameters() if not n.startswith(("step_lrs", "inner_lrs"))}
    batch_stats = {n: None for n, _ in model.named_buffers()}  # per-task batch statistics, as fewshot
    total = 0
    for ep in episodes:
        fast = params
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, (fast, batch_stats), (ep.support_x,)), ep.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads)}
        total = total + F.cross_entropy(functional_call(model, (fast, batch_stats), (ep.query_x,)), ep.query_y)
    return total / len(episodes)


def vmap_loss(model, episodes, steps: int, lr: float, first_order: bool) -> torch.Tensor:
    """functorch's MAML recipe: vmap over tasks of an inner loop of torch.func.grad."""
    from torch.func import grad, vmap

    params = dict(model.named_parameters())
    batch_stats = {n: None for n, _ in model.named_buffers()}
    sx = torch.stack([e.support_x for e in episodes])
    sy = torch.stack([e.support_y for e in episodes])
    qx = torch.stack([e.query_x for e in episodes])
    qy = torch.stack([e.query_y for e in episodes])

    def task(sx, sy, qx, qy):
        fast = params
        for _ in range(steps):
            g = grad(lambda p: F.cross_entropy(functional_call(model, (p, batch_stats), (sx,)), sy))(fast)
            fast = {n: fast[n] - lr * (g[n].detach() if first_order else g[n]) for n in fast}
        return F.cross_entropy(functional_call(model, (fast, batch_stats), (qx,)), qy)

    return vmap(task)(sx, sy, qx, qy).mean()


class ChannelsFirstConv4(torch.nn.Sequential):
    """Conv-4 as most code has it (channels-first), for the vmap variant."""

    def __init__(self, conv4):
        super().__init__(*conv4)
        self.to(memory_format=torch.contiguous_format)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: Linux carries
    that over from the parent across fork and exec, so a child would report the
    driver's footprint."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    """One variant on one configuration, in this process; prints one JSON line."""
    variant, steps, first_order = args.variant, args.steps, args.first_order
    threads = 2 if variant.endswith("2-threads") else args.threads
    torch.set_num_threads(threads)
    import fewshot.models.functional as functional
    from fewshot.methods import MAML

    batches = load_batches(args.batches)
    if args.limit:
        batches = batches[: args.limit]
    model = build_model(batches[0][0].way)
    model.inner_steps, model.first_order, model.inner_lr = steps, first_order, args.inner_lr
    model.tune_allocator = variant not in ("fewshot-no-malloc",) and variant.startswith("fewshot")
    if variant == "reference+malloc":
        functional.keep_freed_memory()
    if variant == "fewshot-no-layout":
        functional.like = lambda reference, tensor: tensor
        functional.FunctionalModule._input = lambda self, x: x
    if variant == "fewshot-no-fast-bn":
        functional._TwiceDifferentiableNorms.__torch_function__ = (
            lambda self, func, types, a=(), kw=None: func(*a, **(kw or {})))
    compile_seconds = None
    if variant == "vmap":
        model.backbone = ChannelsFirstConv4(model.backbone)
    if variant == "fewshot-compiled-query":
        fm = model._fmodel
        compiled = torch.compile(lambda p, x: functional_call(model, (p, fm._none), (fm._input(x),)), dynamic=False)

        def episode_loss(ep, create_graph):
            start = model._start(ep.way, detach=False)
            fast = model._inner_loop(fm, start, ep.support_x, ep.support_y, model.inner_steps, create_graph, False)
            out = compiled(fast, ep.query_x)
            return model._task_loss(out, ep.query_y), out

        model._episode_loss = episode_loss

    def iteration(episodes):
        model.zero_grad(set_to_none=True)
        if variant.startswith("reference"):
            loss = reference_loss(model, episodes, steps, model.inner_lr, first_order)
        elif variant == "vmap":
            loss = vmap_loss(model, episodes, steps, model.inner_lr, first_order)
        elif variant == "fewshot-graph":
            losses = [model._episode_loss(ep, not first_order)[0] for ep in episodes]
            loss = torch.stack(losses).mean()
        else:
            loss, _ = model.loss(episodes)
        loss.backward()
        return loss.detach().item()

    rss0 = rss_mb()
    if variant == "fewshot-compiled-query":
        start = time.perf_counter()
        iteration(batches[0])
        compile_seconds = time.perf_counter() - start
    walls, cpus, losses = [], [], []
    grad = None
    for i, episodes in enumerate(batches):
        wall, cpu = time.perf_counter(), time.process_time()
        losses.append(iteration(episodes))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if i == 0:
            grad = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel())
                              for n, p in model.named_parameters()])
            torch.save(grad, args.grad_out)
    peak = peak_rss_mb()
    # Iteration 0 is warm-up (oneDNN primitive caches, allocator growth): not timed.
    print(json.dumps({"variant": variant, "walls": walls[1:], "cpus": cpus[1:], "loss0": losses[0],
                      "peak_rss_mb": peak, "rss_before_mb": rss0, "peak_above_start_mb": peak - rss0,
                      "threads": threads, "compile_seconds": compile_seconds}))


# -- the driver --------------------------------------------------------------------------

def save_batches(batches: list, path: Path) -> None:
    """Meta-batches as plain tensors and ints, so that ``torch.load(weights_only=True)``
    reads them back: nothing the benchmark passes between processes is unpickled."""
    torch.save([[(e.support_x, e.support_y, e.query_x, e.query_y, e.way, e.shot) for e in batch]
                for batch in batches], path)


def load_batches(path) -> list:
    from fewshot.data.episodes import Episode

    return [[Episode(*fields) for fields in batch] for batch in torch.load(path, weights_only=True)]


def sample_batches(data_root, way: int, shot: int, query: int, meta_batch: int, count: int, path: Path) -> str:
    from fewshot.data import EpisodeSampler, load_dataset

    try:
        data = load_dataset("omniglot", data_root)
        source = "omniglot (Vinyals split, train, 28x28, rotations)"
        sampler = EpisodeSampler(data, "train", way, shot, query, seed=0)
        batches = [sampler.batch(step, meta_batch) for step in range(count)]
    except Exception as e:  # no Omniglot here: the timing does not depend on the pixels
        from fewshot.data.episodes import Episode

        source = f"random 28x28 images (Omniglot unavailable: {type(e).__name__}: {e})"
        print(f"warning: {source}", file=sys.stderr)
        g = torch.Generator().manual_seed(0)
        labels = lambda k: torch.arange(way).repeat_interleave(k)  # noqa: E731
        batches = [[Episode(torch.rand(way * shot, 1, 28, 28, generator=g), labels(shot),
                            torch.rand(way * query, 1, 28, 28, generator=g), labels(query), way, shot)
                    for _ in range(meta_batch)] for _ in range(count)]
    save_batches(batches, path)
    return source


def run_child(variant: str, steps: int, first_order: bool, batches: Path, grad_out: Path, args,
              limit: int = 0) -> dict:
    cmd = [sys.executable, str(HERE), "--child", "--variant", variant, "--steps", str(steps), "--batches", str(batches),
           "--grad-out", str(grad_out), "--threads", str(args.threads), "--inner-lr", str(args.inner_lr),
           "--limit", str(limit)]
    if first_order:
        cmd.append("--first-order")
    env = dict(os.environ, OMP_NUM_THREADS=str(2 if variant.endswith("2-threads") else args.threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"variant": variant, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def precision(batches_path: Path, steps: int, first_order: bool, tasks: int = 8) -> dict:
    """How far the float32 meta-gradients of the reference and of fewshot are from a float64 one.

    Omniglot's near-binary images make many exact ties in max-pooling, so the float32
    rounding of either implementation moves some pooling choices; the meaningful bar
    for "identical results" is that fewshot is as close to the float64 gradient as the
    reference is.
    """
    from fewshot.data.episodes import Episode

    batch = load_batches(batches_path)[0][:tasks]
    grads = {}
    for kind in ("reference-float32", "fewshot-float32", "reference-float64"):
        model = build_model(batch[0].way)
        model.inner_steps, model.first_order = steps, first_order
        episodes = batch
        if kind.endswith("64"):
            model = model.double()
            episodes = [Episode(e.support_x.double(), e.support_y, e.query_x.double(), e.query_y, e.way, e.shot)
                        for e in batch]
        if kind.startswith("reference"):
            loss = reference_loss(model, episodes, steps, model.inner_lr, first_order)
        else:
            loss, _ = model.loss(episodes)
        loss.backward()
        grads[kind] = torch.cat([p.grad.reshape(-1).double() for p in model.parameters()])
    exact = grads["reference-float64"]
    scale = exact.abs().max()
    rel = lambda a, b: float((grads[a] - grads[b]).abs().max() / scale)  # noqa: E731
    return {"tasks": tasks, "reference32_vs_float64": rel("reference-float32", "reference-float64"),
            "fewshot32_vs_float64": rel("fewshot-float32", "reference-float64"),
            "fewshot32_vs_reference32": rel("fewshot-float32", "reference-float32")}


def summarise(rows: list[dict]) -> dict:
    walls = [w for r in rows for w in r["walls"]]
    cpus = [c for r in rows for c in r["cpus"]]
    return {"wall_median_s": statistics.median(walls), "wall_min_s": min(walls), "walls": walls, "cpus": cpus,
            "cpu_median_s": statistics.median(cpus), "cpu_min_s": min(cpus),
            "peak_above_start_mb": max(r["peak_above_start_mb"] for r in rows),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rows), "iterations_timed": len(walls),
            "loss0": rows[0]["loss0"], "threads": rows[0]["threads"],
            "compile_seconds": rows[0].get("compile_seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="fewshot")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--batches")
    parser.add_argument("--grad-out")
    parser.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every variant but *-2-threads")
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--query", type=int, default=15, help="queries per class (Finn et al.'s code: 1)")
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=3, help="timed meta-iterations per run (after 1 warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds of the main variants")
    parser.add_argument("--quick", action="store_true", help="1 round, 2 iterations, no ablations")
    parser.add_argument("--precision-only", action="store_true",
                        help="only (re)compute the float64 comparison and add it to an existing --out")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"  # the Makefile's default data root
    parser.add_argument("--data-root", default=os.environ.get("FEWSHOT_DATA") or (str(shared) if shared.is_dir() else None))
    parser.add_argument("--out", default=str(RESULTS / "maml_speed.json"))
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.rounds, args.iterations = 1, 2
    torch.set_num_threads(args.threads)
    if args.precision_only:
        results = json.loads(Path(args.out).read_text())
        with tempfile.TemporaryDirectory() as tmp:
            batches = Path(tmp) / "batches.pt"
            sample_batches(args.data_root, 5, 1, args.query, args.meta_batch, 1, batches)
            results["precision"] = {f"{steps}-step {'first' if fo else 'second'}-order": precision(batches, steps, fo)
                                    for steps in (1, 5) for fo in (False, True)}
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        Path(args.out).with_suffix(".md").write_text(markdown(results))
        print(json.dumps(results["precision"], indent=1))
        return

    configs = [(steps, fo) for steps in (1, 5) for fo in (False, True)]
    main_variants = ["reference", "fewshot"]
    # Ablations and the alternatives tried: interleaved with the main variants in every
    # round of their configuration, so that they see the same load. The two-thread
    # variants run once, on two meta-iterations: under load they can take minutes each.
    ablations = {(1, False): ["reference+malloc", "fewshot-no-malloc", "fewshot-no-layout", "fewshot-no-fast-bn",
                              "fewshot-graph", "vmap", "fewshot-compiled-query"],
                 (5, False): ["fewshot-no-fast-bn", "fewshot-no-layout"]}
    once = {(1, False): ["reference-2-threads", "fewshot-2-threads"]}
    if args.quick:
        ablations, once = {}, {}
    results = {"benchmark": "maml_speed", "command": " ".join(["python", *sys.argv]),
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "load_average_at_start": os.getloadavg(), "torch": torch.__version__,
                           "threads": args.threads},
               "setting": {"way": 5, "shot": 1, "query": args.query, "meta_batch": args.meta_batch,
                           "inner_lr": args.inner_lr, "backbone": "conv4 (64 filters, channels-last)"},
               "variants": {k: v for k, v in VARIANTS.items()}, "configs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        batches = tmp / "batches.pt"
        results["setting"]["data"] = sample_batches(args.data_root, 5, 1, args.query, args.meta_batch,
                                                    args.iterations + 1, batches)
        for steps, fo in configs:
            name = f"{steps}-step {'first' if fo else 'second'}-order"
            runs: dict[str, list[dict]] = {}
            for _ in range(args.rounds):
                for variant in main_variants + ablations.get((steps, fo), []):
                    runs.setdefault(variant, []).append(
                        run_child(variant, steps, fo, batches, tmp / f"{variant}-{steps}-{fo}.pt", args))
            for variant in once.get((steps, fo), []):
                runs.setdefault(variant, []).append(
                    run_child(variant, steps, fo, batches, tmp / f"{variant}-{steps}-{fo}.pt", args, limit=2))
            reference_grad = torch.load(tmp / f"reference-{steps}-{fo}.pt", weights_only=True)
            rows = {}
            for variant, got in runs.items():
                if any("error" in r for r in got):
                    rows[variant] = {"error": next(r["error"] for r in got if "error" in r)}
                    continue
                row = summarise(got)
                g = torch.load(tmp / f"{variant}-{steps}-{fo}.pt", weights_only=True)
                row["grad_max_rel_diff"] = float((g - reference_grad).abs().max() / reference_grad.abs().max())
                rows[variant] = row
            ref = rows["reference"]
            for variant, row in rows.items():
                if "error" not in row and len(runs[variant]) == len(runs["reference"]):
                    # Paired: the reference and the variant of the same round saw the same load.
                    row["speedup_cpu_paired"] = statistics.median(
                        statistics.median(a["cpus"]) / statistics.median(b["cpus"])
                        for a, b in zip(runs["reference"], runs[variant]))
                    row["speedup_wall_paired"] = statistics.median(
                        statistics.median(a["walls"]) / statistics.median(b["walls"])
                        for a, b in zip(runs["reference"], runs[variant]))
            for row in rows.values():
                if "error" not in row:
                    row["speedup_wall_median"] = ref["wall_median_s"] / row["wall_median_s"]
                    row["speedup_cpu_median"] = ref["cpu_median_s"] / row["cpu_median_s"]
                    row["speedup_wall_min"] = ref["wall_min_s"] / row["wall_min_s"]
                    row["speedup_cpu_min"] = ref["cpu_min_s"] / row["cpu_min_s"]
                    row["memory_vs_reference"] = row["peak_above_start_mb"] / ref["peak_above_start_mb"]
            results["configs"][name] = rows
            results.setdefault("precision", {})[name] = precision(batches, steps, fo)
            print(name, json.dumps({k: {m: round(v, 4) if isinstance(v, float) else v for m, v in r.items()
                                        if m in ("wall_median_s", "cpu_median_s", "speedup_wall_median",
                                                 "speedup_cpu_median", "peak_above_start_mb", "grad_max_rel_diff",
                                                 "error")}
                                    for k, r in rows.items()}, indent=1), flush=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def markdown(results: dict) -> str:
    s = results["setting"]
    lines = [f"# MAML meta-iteration speed ({results['machine']['cpu']}, {results['machine']['cores']} cores, "
             f"torch {results['machine']['torch']}, {results['machine']['threads']} thread(s))", "",
             f"Conv-4, {s['data']}, {s['way']}-way {s['shot']}-shot, {s['query']} queries per class, meta-batch "
             f"{s['meta_batch']}, inner lr {s['inner_lr']}. Seconds per meta-iteration (median over timed "
             f"iterations); speed-up = reference / variant: of the medians over all rounds, the median of the "
             f"per-round ratios (paired: the reference and the variant of one round saw the same load), and of "
             f"the minima (the least disturbed iterations of this shared machine); memory = peak resident memory above the process's "
             f"footprint before the first iteration; grad diff = max |g - g_ref| / max |g_ref| on the first "
             f"meta-batch. Load average at start/end: {results['machine']['load_average_at_start']} / "
             f"{results['machine'].get('load_average_at_end')}.", ""]
    for name, rows in results["configs"].items():
        lines += [f"## {name}", "", "| variant | wall s | CPU s | speed-up (wall) | speed-up (CPU) | "
                  "speed-up (CPU, paired) | speed-up (CPU, min) | memory MB | grad diff |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for variant, r in rows.items():
            paired = f"{r['speedup_cpu_paired']:.2f}x" if "speedup_cpu_paired" in r else "-"
            if "error" in r:
                lines.append(f"| {variant} | error: {r['error'][:80]} | | | | | | | |")
                continue
            lines.append(f"| {variant} | {r['wall_median_s']:.2f} | {r['cpu_median_s']:.2f} | "
                         f"{r['speedup_wall_median']:.2f}x | {r['speedup_cpu_median']:.2f}x | "
                         f"{paired} | {r['speedup_cpu_min']:.2f}x | {r['peak_above_start_mb']:.0f} | {r['grad_max_rel_diff']:.1e} |")
        lines.append("")
    if results.get("precision"):
        lines += ["## Precision of the meta-gradient", "",
                  "Max |g - g64| / max |g64| against a float64 run of the reference loop on the first 8 tasks of "
                  "the first meta-batch. Omniglot's near-binary images make exact ties in max-pooling, so float32 "
                  "rounding moves some pooling choices in either implementation; fewshot is as close to float64 as "
                  "the reference is.", "", "| config | reference f32 vs f64 | fewshot f32 vs f64 | fewshot vs reference |",
                  "|---|---:|---:|---:|"]
        for name, r in results["precision"].items():
            lines.append(f"| {name} | {r['reference32_vs_float64']:.1e} | {r['fewshot32_vs_float64']:.1e} | "
                         f"{r['fewshot32_vs_reference32']:.1e} |")
        lines.append("")
    lines += ["## Variants", ""] + [f"* **{k}**: {v}" for k, v in results["variants"].items()] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
