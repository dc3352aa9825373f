"""Meta-iterations per second with 1 and 2 processes on this machine, ProtoNet and MAML.

Each configuration is a real ``fewshot train`` run on Omniglot (Vinyals split, 28×28,
rotations, Conv-4), launched exactly as a user would: ``--nproc 1`` (one process, one
thread), ``--nproc 2`` (torchrun, gloo, one thread per process: the meta-batch's tasks
are split between the processes and the meta-gradient all-reduced) and, for
reference, one process with two threads (the other way to spend two cores). The rate
is the trainer's own count: meta-iterations over the wall seconds of its training loop
(``state.json``), so process start-up and data loading are not counted; the first
``--warmup`` iterations are excluded by running two lengths and differencing.

    FEWSHOT_DATA=../shared/data python benchmarks/distributed_speed.py

Run it on an otherwise idle machine: two processes need two free cores. The load
average before and after is recorded. Writes benchmarks/results/distributed_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"

# name -> (fewshot train arguments, short iterations, long iterations)
SETUPS = {
    "protonet": (["protonet", "--way", "20", "--shot", "5", "--query", "15", "--meta-batch", "4"], 5, 30),
    "maml": (["maml", "--way", "5", "--shot", "1", "--query", "15", "--train-query", "1", "--meta-batch", "32",
              "--inner-steps", "1", "--inner-lr", "0.4"], 2, 10),
}
LAUNCHES = {"1 process, 1 thread": (1, 1), "2 processes, 1 thread each": (2, 1), "1 process, 2 threads": (1, 2)}


def train_seconds(args: list[str], steps: int, nproc: int, threads: int, folder: Path) -> float:
    """Wall seconds of the training loop of a ``fewshot train`` run of ``steps`` meta-iterations."""
    run = folder / f"run-{nproc}-{threads}-{steps}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "fewshot", "train", *args, "--dataset", "omniglot", "--episodes", str(steps),
               "--val-split", "none", "--checkpoint-every", str(steps), "--nproc", str(nproc), "--quiet",
               "--runs", str(folder / "store"), "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run(command, env=env, check=True, capture_output=True)
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == steps, state["step"]
    return state["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration; the fastest counts")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            train_args, short, long = SETUPS[method]
            for launch, (nproc, threads) in LAUNCHES.items():
                rates = []
                for _ in range(args.repeats):
                    seconds = (train_seconds(train_args, long, nproc, threads, Path(tmp))
                               - train_seconds(train_args, short, nproc, threads, Path(tmp)))
                    rates.append((long - short) / seconds)
                rows.append({"method": method, "launch": launch, "nproc": nproc, "threads": threads,
                             "iterations_per_second": max(rates), "all_rates": rates,
                             "arguments": train_args})
                print(f"{method:9s} {launch:28s} {max(rates):7.2f} meta-iterations/s", flush=True)
    base = {r["method"]: r["iterations_per_second"] for r in rows if r["nproc"] == 1 and r["threads"] == 1}
    for r in rows:
        r["speed_up"] = r["iterations_per_second"] / base[r["method"]]
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__}
    out = {"benchmark": "distributed_speed", "command": " ".join(["python", *sys.argv]), "machine": machine,
           "load_average_before": load_before, "load_average_after": os.getloadavg(), "results": rows}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "distributed_speed.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"Meta-iterations per second on Omniglot (Conv-4), {machine['cores']} cores, torch {machine['torch']}; "
             f"the best of {args.repeats} runs, iterations {', '.join(f'{m}: {SETUPS[m][1]}..{SETUPS[m][2]}' for m in args.methods)} "
             f"timed by the trainer. Load average before/after: {load_before[0]:.2f} / {out['load_average_after'][0]:.2f}.",
             "", "| method | setting | launch | meta-iterations/s | speed-up |", "|---|---|---|---:|---:|"]
    for r in rows:
        a = r["arguments"]
        setting = (f"{a[a.index('--way') + 1]}-way {a[a.index('--shot') + 1]}-shot, "
                   f"meta-batch {a[a.index('--meta-batch') + 1]}")
        lines.append(f"| {r['method']} | {setting} | {r['launch']} | {r['iterations_per_second']:.2f} | "
                     f"{r['speed_up']:.2f}× |")
    (results / "distributed_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
