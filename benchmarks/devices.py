"""Meta-iterations per second and peak memory per device, precision and process count.

Two workloads of the papers, on Omniglot (Vinyals split, 28×28, rotations, Conv-4):

* ProtoNet, 60-way 1-shot 5-query training episodes (Snell et al., 2017), meta-batch 2
  (so that two processes have one episode each);
* MAML, 5-way 1-shot, one query per class, meta-batch 32, one second-order inner step
  (Finn et al., 2017).

Each is run in fp32 and bf16 (autocast), with 1 and 2 processes (torchrun, one thread
each: gloo on the CPU, NCCL with one GPU per process), on each ``--devices``. A worker
builds the model with fewshot's own pieces (``runs.build_model``, the sampler on the
device, the method's ``loss``, ``distributed.Distributed``'s all-reduce, autocast from
``fewshot.devices``), takes ``--warmup`` steps, then times ``--steps`` steps (the wall
clock of the slowest process, after a barrier) and reads the peak memory
(``fewshot.devices.peak_memory``: on CUDA the peak of allocated tensors during the
timed steps; on CPU the process's peak resident set over its life, data included).

    FEWSHOT_DATA=../shared/data nice python benchmarks/devices.py --devices cpu

Writes benchmarks/results/devices.{json,md} (``--tag`` names other files, e.g. for a
GPU machine: ``--devices cuda --tag gpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# name -> (TrainConfig fields, meta-batch)
WORKLOADS = {
    "protonet 60-way 1-shot 5-query": dict(method="protonet", way=60, shot=1, query=5, meta_batch=2),
    "maml 5-way 1-shot 1-query, meta-batch 32": dict(method="maml", way=5, shot=1, query=1, meta_batch=32,
                                                     method_options={"inner_steps": 1, "inner_lr": 0.4}),
}


def worker(args: argparse.Namespace) -> None:
    """One process of one measurement; rank 0 writes the row."""
    import torch

    torch.set_num_threads(1)
    from fewshot import devices
    from fewshot.config import TrainConfig
    from fewshot.data import EpisodeSampler, load_dataset
    from fewshot.distributed import from_environment
    from fewshot.runs import build_model

    spec = WORKLOADS[args.workload]
    config = TrainConfig(dataset="omniglot", dataset_options={"split_scheme": "vinyals"}, val_split=None,
                         **{k: v for k, v in spec.items()})
    device = devices.resolve(args.device)
    dist = from_environment(device)
    data = load_dataset("omniglot", None, split_scheme="vinyals")
    sampler = EpisodeSampler(data, "train", config.way, config.shot, config.query, seed=0, device=device)
    method = build_model(config, data.image_shape).to(device)
    dist.broadcast_parameters(method)
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    scaler = devices.grad_scaler(device, args.precision)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync()
            dist.barrier()
            devices.reset_peak_memory(device)
            start, cpu0 = time.perf_counter(), time.process_time()
        episodes = sampler.batch(step, config.meta_batch)
        mine = episodes[dist.rank :: dist.world_size]
        optimizer.zero_grad(set_to_none=True)
        with devices.autocast(device, args.precision):
            loss, _ = method.loss(mine)
        share = loss.float() * (len(mine) / len(episodes))
        (scaler.scale(share) if scaler else share).backward()
        dist.all_reduce_gradients(params)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    sync()
    dist.barrier()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    peak, kind = devices.peak_memory(device)
    # The peak over the processes (each holds its own model and data).
    peaks = torch.tensor([float(peak or 0)])
    dist.all_reduce_(peaks, op=torch.distributed.ReduceOp.MAX if dist.active else None)
    if dist.is_main:
        Path(args.row).write_text(json.dumps({
            "workload": args.workload, "device": devices.describe(device), "precision": args.precision,
            "processes": dist.world_size, "steps": args.steps, "warmup": args.warmup, "seconds": seconds,
            "cpu_seconds_rank0": cpu, "iterations_per_second": args.steps / seconds,
            "peak_memory_mb": float(peaks[0]) / 2**20, "peak_memory_kind": kind}))


def measure(workload: str, device: str, precision: str, processes: int, steps: int, warmup: int,
            folder: Path) -> dict:
    row = folder / f"row-{time.monotonic_ns()}.json"
    inner = ["benchmarks/devices.py", "--worker", "--workload", workload, "--device", device,
             "--precision", precision, "--steps", str(steps), "--warmup", str(warmup), "--row", str(row)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   *inner]
    else:
        command = [sys.executable, *inner]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{workload} {device} {precision} x{processes} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(row.read_text())
    out["cpu_seconds_all_processes"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--steps", type=int, default=4, help="timed meta-iterations per row")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--tag", default="", help="suffix of the result files (devices-TAG.json)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md table from the .json file")
    # The worker's own arguments.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    name = f"devices{'-' + args.tag if args.tag else ''}"
    if args.markdown_only:
        print(write_markdown(json.loads((Path(args.results) / f"{name}.json").read_text()),
                             Path(args.results) / f"{name}.md"))
        return

    import torch

    start, load_before = time.perf_counter(), os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for device in args.devices:
            for workload in args.workloads:
                for precision in args.precisions:
                    for processes in args.processes:
                        r = measure(workload, device, precision, processes, args.steps, args.warmup, Path(tmp))
                        rows.append(r)
                        print(f"{workload:42s} {r['device']:22s} {precision:5s} x{processes}: "
                              f"{r['iterations_per_second']:6.3f} it/s, peak {r['peak_memory_mb']:7.0f} MB, "
                              f"{r['cpu_seconds_all_processes']:.0f} CPU-s", flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    total_cpu = sum(r["cpu_seconds_all_processes"] for r in rows)  # start-up and data loading included
    out = {"benchmark": "devices", "command": " ".join(["python", *sys.argv]), "machine": machine,
           "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "wall_seconds": time.perf_counter() - start, "cpu_seconds": total_cpu, "results": rows}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(write_markdown(out, results / f"{name}.md"))


def write_markdown(out: dict, path: Path) -> str:
    """The table of a results file. CPU seconds per meta-iteration (rank 0's process,
    which does half the work with two processes) do not depend on how busy the machine
    is; meta-iterations per wall second do."""
    machine, rows = out["machine"], out["results"]
    first = rows[0] if rows else {"steps": 0, "warmup": 0}
    lines = [f"`{out['command']}`: {machine['cores']} cores ({machine['cpu']}), torch {machine['torch']}"
             f"{', ' + machine['cuda'] if machine['cuda'] else ''}; {first['steps']} timed meta-iterations per row "
             f"after {first['warmup']} warm-up, one thread per process; {out['cpu_seconds'] / 60:.1f} CPU-minutes "
             f"and {out['wall_seconds'] / 60:.1f} wall minutes in all. Load average before/after: "
             f"{out['load_average_before'][0]:.1f} / {out['load_average_after'][0]:.1f}.", "",
             "| workload | device | precision | processes | meta-iterations per wall s | CPU-s per meta-iteration "
             "(rank 0) | peak memory (MB) | measured as |", "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['device']} | {r['precision']} | {r['processes']} | "
                     f"{r['iterations_per_second']:.3f} | {r['cpu_seconds_rank0'] / r['steps']:.2f} | "
                     f"{r['peak_memory_mb']:.0f} | {r['peak_memory_kind']} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


if __name__ == "__main__":
    main()
