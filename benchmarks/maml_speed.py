"""MAML meta-iteration time, counted FLOPs and share of matmul throughput: fewshot against a plain loop.

Conv-4 on Omniglot, meta-batch 32, second order, one thread, in three settings:

* **5-way 1-shot, 1 query per class, 1 inner step**: the training protocol of Finn et
  al.'s code (the headline: per-operation overhead matters most here);
* 5-way 1-shot, 15 queries per class, 1 inner step;
* 20-way 1-shot, 1 query per class, 5 inner steps.

Variants: ``reference`` is the plain loop most MAML code writes (:func:`reference_loss`:
per task, ``functional_call`` on the same module, ``autograd.grad(create_graph=True)``,
the query losses summed and one ``backward()``); ``fewshot`` is ``MAML.loss`` as shipped
(tasks in task-batched chunks: grouped convolutions over tasks, see
:class:`fewshot.models.functional.TaskBatched`); ``fewshot-per-task`` is the same with
``task_batching=False`` (the per-task loop, which modules with unknown layers use);
``matmul`` times a 1024x1024 float32 matrix product in the same round, so that every
FLOP rate can be stated as a share of what this machine's matmul reached under the same
load.

FLOPs are counted once per setting with ``torch.utils.flop_counter.FlopCounterMode``
on a reference meta-iteration (convolutions and matrix products, forward, backward and
double backward); GFLOP/s = those FLOPs / a variant's CPU seconds per meta-iteration.

Every variant runs in its own process, on the same pre-sampled meta-batches, from the
same initial weights; the variants run round-robin for ``--rounds`` rounds, so that load
from other processes on a shared machine falls on all alike; reported are medians over
all timed iterations, and the paired ratio reference / variant (median over rounds of
the ratio of the round's medians). The float32 meta-gradients are also compared with a
float64 one (random images and Omniglot).

    FEWSHOT_DATA=../shared/data python benchmarks/maml_speed.py            # ~15 min
    FEWSHOT_DATA=../shared/data python benchmarks/maml_speed.py --quick    # ~4 min
    FEWSHOT_DATA=../shared/data python benchmarks/maml_speed.py --profile  # where the time goes, ~2 min

Writes benchmarks/results/maml_speed.{json,md} (with ``--profile``: maml_speed_profile.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fewshot.io import load_tensors, save_tensors

RESULTS = Path(__file__).parent / "results"
HERE = Path(__file__).resolve()

VARIANTS = {
    "reference": "plain per-task loop (functional_call, autograd.grad create_graph=True), one backward over the meta-batch",
    "fewshot": "fewshot MAML.loss as shipped: task-batched chunks (grouped convolutions over tasks, batched Linear, "
               "per-task BatchNorm statistics) of the default size (MAML._auto_chunk), per-chunk meta-gradient",
    "fewshot-per-task": "fewshot MAML.loss with task_batching=False: the per-task loop (channels-last layout, "
                        "closed-form BatchNorm double backward, per-task meta-gradient)",
    "matmul": "1024x1024 float32 matrix product, same round (the machine's matmul throughput under the same load)",
}
SETTINGS = {  # name -> (way, query per class, inner steps)
    "5-way 1-shot, 1 query/class, 1 step": (5, 1, 1),
    "5-way 1-shot, 15 queries/class, 1 step": (5, 15, 1),
    "20-way 1-shot, 1 query/class, 5 steps": (20, 1, 5),
}


def build_model(way: int, steps: int, lr: float):
    """The one model every variant starts from: seeded Conv-4 + linear head, as MAML builds it."""
    from fewshot.methods import MAML
    from fewshot.models import Conv4

    torch.manual_seed(0)
    return MAML(Conv4(1), way=way, image_shape=(1, 28, 28), inner_steps=steps, inner_lr=lr)


def reference_loss(model, episodes, steps: int, lr: float) -> torch.Tensor:
    """The plain loop: per-task second-order inner steps with autograd.grad, query losses summed."""
    params = {n: p for n, p in model.named_parameters() if not n.startswith(("step_lrs", "inner_lrs"))}
    batch_stats = {n: None for n, _ in model.named_buffers()}  # per-task batch statistics, as fewshot
    total = 0
    for ep in episodes:
        fast = params
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, (fast, batch_stats), (ep.support_x,)), ep.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads)}
        total = total + F.cross_entropy(functional_call(model, (fast, batch_stats), (ep.query_x,)), ep.query_y)
    return total / len(episodes)


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def matmul_gflops(seconds: float = 3.0) -> list[float]:
    """GFLOP/s of repeated 1024x1024 float32 products, one sample per ~0.25 s."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    samples, end = [], time.process_time() + seconds
    while time.process_time() < end:
        start, count = time.process_time(), 0
        while time.process_time() - start < 0.25:
            torch.mm(a, b)
            count += 1
        samples.append(2 * 1024**3 * count / (time.process_time() - start) / 1e9)
    return samples


def child(args) -> None:
    """One variant on one setting, in this process; prints one JSON line."""
    torch.set_num_threads(args.threads)
    if args.variant == "matmul":
        print(json.dumps({"variant": "matmul", "gflops": matmul_gflops()}))
        return
    batches = load_batches(args.batches)
    model = build_model(batches[0][0].way, args.steps, args.inner_lr)
    model.task_batching = args.variant == "fewshot"

    def iteration(episodes):
        model.zero_grad(set_to_none=True)
        if args.variant == "reference":
            loss = reference_loss(model, episodes, args.steps, args.inner_lr)
        else:
            loss, _ = model.loss(episodes)
        loss.backward()
        return loss.item()

    rss0 = rss_mb()
    walls, cpus = [], []
    for i, episodes in enumerate(batches):
        wall, cpu = time.perf_counter(), time.process_time()
        iteration(episodes)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if i == 0:
            save_tensors(args.grad_out, {"grad": torch.cat([p.grad.reshape(-1) if p.grad is not None
                                                            else torch.zeros(p.numel()) for p in model.parameters()])})
    # Iteration 0 is warm-up (oneDNN primitive caches, allocator growth): not timed.
    print(json.dumps({"variant": args.variant, "walls": walls[1:], "cpus": cpus[1:],
                      "peak_above_start_mb": peak_rss_mb() - rss0}))


# -- the driver --------------------------------------------------------------------------

EPISODE_TENSORS = ("support_x", "support_y", "query_x", "query_y")


def save_batches(batches: list, path: Path) -> None:
    """Meta-batches as one safetensors file: ``"b.e.field"`` per episode tensor, way and
    shot as one-element tensors (the child processes read it back; nothing is pickled)."""
    tensors = {}
    for b, batch in enumerate(batches):
        for e, episode in enumerate(batch):
            for field in EPISODE_TENSORS:
                tensors[f"{b}.{e}.{field}"] = getattr(episode, field)
            tensors[f"{b}.{e}.way_shot"] = torch.tensor([episode.way, episode.shot])
    save_tensors(path, tensors)


def load_batches(path) -> list:
    from fewshot.data.episodes import Episode

    tensors = load_tensors(path)
    shape = sorted({tuple(int(i) for i in key.split(".")[:2]) for key in tensors})
    batches: list[list] = [[] for _ in range(1 + max(b for b, _ in shape))]
    for b, e in shape:
        way, shot = (int(v) for v in tensors[f"{b}.{e}.way_shot"])
        batches[b].append(Episode(*(tensors[f"{b}.{e}.{field}"] for field in EPISODE_TENSORS), way, shot))
    return batches


def random_batches(way: int, query: int, meta_batch: int, count: int, seed: int = 0) -> list:
    from fewshot.data.episodes import Episode

    g = torch.Generator().manual_seed(seed)
    labels = lambda k: torch.arange(way).repeat_interleave(k)  # noqa: E731
    return [[Episode(torch.rand(way, 1, 28, 28, generator=g), labels(1), torch.rand(way * query, 1, 28, 28, generator=g),
                     labels(query), way, 1) for _ in range(meta_batch)] for _ in range(count)]


def sample_batches(data, way: int, query: int, meta_batch: int, count: int) -> list:
    from fewshot.data import EpisodeSampler

    if data is None:
        return random_batches(way, query, meta_batch, count)
    sampler = EpisodeSampler(data, "train", way, 1, query, seed=0)
    return [sampler.batch(step, meta_batch) for step in range(count)]


def run_child(variant: str, steps: int, batches: Path, grad_out: Path, args) -> dict:
    cmd = [sys.executable, str(HERE), "--child", "--variant", variant, "--steps", str(steps), "--batches", str(batches),
           "--grad-out", str(grad_out), "--threads", str(args.threads), "--inner-lr", str(args.inner_lr)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"variant": variant, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def count_flops(batch: list, steps: int, lr: float) -> int:
    """FLOPs of one reference meta-iteration (forward, backward, double backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(batch[0].way, steps, lr)
    with FlopCounterMode(display=False) as counter:
        reference_loss(model, batch, steps, lr).backward()
    return counter.get_total_flops()


def precision(batch: list, steps: int, lr: float, tasks: int = 8) -> dict:
    """Max |g32 - g64| / max |g64| of each float32 meta-gradient against a float64 reference."""
    from fewshot.data.episodes import Episode

    batch = batch[:tasks]
    grads = {}
    for kind in ("reference", "fewshot", "fewshot-per-task", "float64"):
        model = build_model(batch[0].way, steps, lr)
        episodes = batch
        if kind == "float64":
            model = model.double()
            episodes = [Episode(e.support_x.double(), e.support_y, e.query_x.double(), e.query_y, e.way, e.shot)
                        for e in batch]
        if kind in ("reference", "float64"):
            loss = reference_loss(model, episodes, steps, lr)
        else:
            model.task_batching = kind == "fewshot"
            loss, _ = model.loss(episodes)
        loss.backward()
        grads[kind] = torch.cat([p.grad.reshape(-1).double() for p in model.parameters()])
    exact = grads.pop("float64")
    return {"tasks": len(batch), **{k: float((g - exact).abs().max() / exact.abs().max()) for k, g in grads.items()}}


CATEGORIES = (  # (category, substrings of an aten operator's name), first match wins
    ("convolution", ("conv",)),
    ("BatchNorm", ("batch_norm",)),
    ("max-pooling", ("max_pool",)),
    ("ReLU", ("threshold", "relu", "clamp")),
    ("matrix products", ("mm", "addmv")),
    ("copies and fills", ("copy_", "fill_", "zero_", "clone", "contiguous", "_to_copy", "empty")),
    ("other elementwise and reductions", ("",)),
)


def profile_breakdown(batches: list, steps: int, lr: float, iterations: int = 2) -> dict:
    """Where a fewshot meta-iteration's CPU time goes: self CPU time of its aten operators
    by category (torch.profiler, one warm-up iteration, then ``iterations`` profiled);
    ``python and autograd`` is the profiled total less all aten operators' self time."""
    from torch.profiler import ProfilerActivity, profile

    model = build_model(batches[0][0].way, steps, lr)

    def iteration(episodes):
        model.zero_grad(set_to_none=True)
        model.loss(episodes)[0].backward()

    iteration(batches[0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for episodes in batches[1: iterations + 1]:
            iteration(episodes)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    seconds = dict.fromkeys([c for c, _ in CATEGORIES], 0.0)
    for e in events:
        if e.key.startswith("aten::"):
            op = e.key[len("aten::"):]
            category = next(c for c, keys in CATEGORIES if any(k in op for k in keys))
            seconds[category] += e.self_cpu_time_total / 1e6
    seconds["python and autograd"] = total - sum(seconds.values())
    return {"profiled_iterations": iterations, "cpu_s_per_iteration_profiled": total / iterations,
            "share": {c: v / total for c, v in seconds.items()}}


def write_profile(args, data) -> None:
    results = {"benchmark": "maml_speed --profile", "command": " ".join(["python", *sys.argv]),
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "torch": torch.__version__, "threads": args.threads,
                           "load_average_at_start": os.getloadavg()}, "settings": {}}
    lines = ["# Where a fewshot MAML meta-iteration's CPU time goes", "",
             f"Command: `{results['command']}`. Conv-4, meta-batch {args.meta_batch}, second order, one thread, "
             "`MAML.loss` as shipped; self CPU time of aten operators by category (torch.profiler, one warm-up "
             "iteration, two profiled); 'python and autograd' is the rest of the profiled time. The profiler "
             f"adds its own overhead to every operator call. Load average at start: "
             f"{', '.join(f'{v:.1f}' for v in results['machine']['load_average_at_start'])} (2 cores).", ""]
    for i, (name, (way, query, steps)) in enumerate(SETTINGS.items()):
        if args.settings is not None and i not in args.settings:
            continue
        row = profile_breakdown(sample_batches(data, way, query, args.meta_batch, 3), steps, args.inner_lr)
        results["settings"][name] = row
        lines += [f"## {name}: {row['cpu_s_per_iteration_profiled']:.2f} CPU s per profiled iteration", "",
                  "| category | share of CPU time |", "|---|---:|"]
        lines += [f"| {c} | {v:.0%} |" for c, v in sorted(row["share"].items(), key=lambda kv: -kv[1])]
        lines.append("")
        print(name, json.dumps({c: round(v, 3) for c, v in row["share"].items()}), flush=True)
    out = Path(args.out).with_name("maml_speed_profile.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="fewshot")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batches")
    parser.add_argument("--grad-out")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=3, help="timed meta-iterations per run (after 1 warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds of the variants")
    parser.add_argument("--settings", nargs="+", type=int, help="indices into the settings (default: all)")
    parser.add_argument("--quick", action="store_true", help="1 round, 2 timed iterations")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: where fewshot's CPU time goes, by operator category "
                             "(writes maml_speed_profile.{json,md} beside --out)")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data-root", default=os.environ.get("FEWSHOT_DATA") or (str(shared) if shared.is_dir() else None))
    parser.add_argument("--out", default=str(RESULTS / "maml_speed.json"))
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.rounds, args.iterations = 1, 2
    torch.set_num_threads(args.threads)
    try:
        from fewshot.data import load_dataset

        data = load_dataset("omniglot", args.data_root)
        source = "omniglot (Vinyals split, train, 28x28, rotations)"
    except Exception as e:  # the timing does not depend on the pixels
        data, source = None, f"random 28x28 images (Omniglot unavailable: {type(e).__name__})"
    if args.profile:
        return write_profile(args, data)
    results = {"benchmark": "maml_speed", "command": " ".join(["python", *sys.argv]),
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "load_average_at_start": os.getloadavg(), "torch": torch.__version__,
                           "threads": args.threads,
                           "note": "shared machine: other agents' processes ran during the benchmark"},
               "setting": {"shot": 1, "meta_batch": args.meta_batch, "inner_lr": args.inner_lr, "order": "second",
                           "backbone": "conv4 (64 filters)", "data": source, "rounds": args.rounds,
                           "timed_iterations_per_round": args.iterations},
               "variants": VARIANTS, "settings": {}}
    chosen = [name for i, name in enumerate(SETTINGS) if args.settings is None or i in args.settings]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in chosen:
            way, query, steps = SETTINGS[name]
            batches = sample_batches(data, way, query, args.meta_batch, args.iterations + 1)
            path = tmp / "batches.safetensors"
            save_batches(batches, path)
            flops = count_flops(batches[0], steps, args.inner_lr)
            runs: dict[str, list[dict]] = {}
            for _ in range(args.rounds):
                for variant in VARIANTS:
                    runs.setdefault(variant, []).append(run_child(variant, steps, path, tmp / f"{variant}.safetensors", args))
            matmul = statistics.median(g for r in runs.pop("matmul") if "error" not in r for g in r["gflops"])
            reference_grad = load_tensors(tmp / "reference.safetensors")["grad"]
            rows = {}
            for variant, got in runs.items():
                if any("error" in r for r in got):
                    rows[variant] = {"error": next(r["error"] for r in got if "error" in r)}
                    continue
                cpus = [c for r in got for c in r["cpus"]]
                walls = [w for r in got for w in r["walls"]]
                g = load_tensors(tmp / f"{variant}.safetensors")["grad"]
                cpu = statistics.median(cpus)
                rows[variant] = {
                    "cpu_median_s": cpu, "wall_median_s": statistics.median(walls), "cpu_min_s": min(cpus),
                    "cpus": cpus, "gflops": flops / cpu / 1e9, "matmul_share": flops / cpu / 1e9 / matmul,
                    "peak_above_start_mb": max(r["peak_above_start_mb"] for r in got),
                    "grad_max_rel_diff_vs_reference": float((g - reference_grad).abs().max() / reference_grad.abs().max()),
                    "speedup_cpu_paired": statistics.median(
                        statistics.median(a["cpus"]) / statistics.median(b["cpus"])
                        for a, b in zip(runs["reference"], got)),
                }
            results["settings"][name] = {
                "way": way, "query": query, "inner_steps": steps, "gflop_per_iteration": flops / 1e9,
                "matmul_gflops": matmul, "rows": rows,
                "precision_random": precision(random_batches(way, query, 8, 1, seed=1)[0], steps, args.inner_lr),
                "precision_data": precision(batches[0], steps, args.inner_lr)}
            print(name, json.dumps({k: {m: round(v, 3) for m, v in r.items() if m in (
                "cpu_median_s", "gflops", "matmul_share", "speedup_cpu_paired", "peak_above_start_mb")}
                for k, r in rows.items()}), flush=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def markdown(results: dict) -> str:
    m, s = results["machine"], results["setting"]
    lines = [f"# MAML meta-iteration speed ({m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} thread)",
             "", f"Conv-4, {s['data']}, 1-shot, meta-batch {s['meta_batch']}, second order, inner lr {s['inner_lr']}; "
             f"{s['rounds']} interleaved rounds of {s['timed_iterations_per_round']} timed meta-iterations per variant "
             f"(after one warm-up), each variant in its own process. CPU seconds per meta-iteration: median over all "
             f"timed iterations. Paired = median over rounds of reference / variant. GFLOP/s = counted FLOPs "
             f"(torch.utils.flop_counter on a reference iteration) / CPU seconds; share = of the 1024x1024 float32 "
             f"matmul rate measured in the same rounds. Memory = peak resident memory above the process's footprint "
             f"before the first iteration. The machine was shared with other agents' jobs (load average at "
             f"start/end {tuple(round(x, 1) for x in m['load_average_at_start'])} / "
             f"{tuple(round(x, 1) for x in m.get('load_average_at_end', ()))}); CPU time is less affected by load "
             "than wall time, but not immune (shared caches and memory bandwidth).", ""]
    for name, r in results["settings"].items():
        lines += [f"## {name}: {r['gflop_per_iteration']:.1f} GFLOP per meta-iteration, matmul "
                  f"{r['matmul_gflops']:.0f} GFLOP/s", "",
                  "| variant | CPU s | paired speed-up vs reference | GFLOP/s | share of matmul | memory MB | grad diff vs reference |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for variant, row in r["rows"].items():
            if "error" in row:
                lines.append(f"| {variant} | error: {row['error'][:80]} | | | | | |")
                continue
            lines.append(f"| {variant} | {row['cpu_median_s']:.2f} | {row['speedup_cpu_paired']:.2f}x | "
                         f"{row['gflops']:.1f} | {row['matmul_share']:.2f} | {row['peak_above_start_mb']:.0f} | "
                         f"{row['grad_max_rel_diff_vs_reference']:.1e} |")
        pr, pd = r["precision_random"], r["precision_data"]
        lines += ["", f"float32 meta-gradient vs float64 (max |g32 - g64| / max |g64|, {pr['tasks']} tasks): random images "
                  f"reference {pr['reference']:.1e}, fewshot {pr['fewshot']:.1e}, per-task {pr['fewshot-per-task']:.1e}; "
                  f"data reference {pd['reference']:.1e}, fewshot {pd['fewshot']:.1e}, per-task "
                  f"{pd['fewshot-per-task']:.1e}.", ""]
    lines += ["## Variants", ""] + [f"* **{k}**: {v}" for k, v in results["variants"].items()] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
