"""Start-up cost of the command line: CPU seconds of `fewshot --help` and of a command's help.

    python benchmarks/cli_startup.py [--repeats 5]

`fewshot --help` builds only the top-level parser (each command's flags, and the imports
they need, are built when that command runs), so it should cost a small fraction of a
CPU-second and import no torch. CPU time (user + system, of the child processes) is
reported rather than wall time, which a shared machine inflates. Writes
benchmarks/results/cli_startup.json.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["data", "--help"], ["train", "--help"])
PROBE = ("import sys\nfrom fewshot.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
         "print('torch' in sys.modules)")


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = {"benchmark": "cli_startup", "command": " ".join(["python", *sys.argv]), "repeats": args.repeats,
               "python": sys.version.split()[0], "commands": {}}
    for command in COMMANDS:
        cpu, wall = [], []
        for _ in range(args.repeats):
            before, start = child_cpu(), time.perf_counter()
            subprocess.run([sys.executable, "-m", "fewshot", *command], check=True, capture_output=True)
            cpu.append(child_cpu() - before)
            wall.append(time.perf_counter() - start)
        name = "fewshot " + " ".join(command)
        results["commands"][name] = {"cpu_seconds_median": statistics.median(cpu), "cpu_seconds": cpu,
                                     "wall_seconds_median": statistics.median(wall)}
        print(f"{name:24s} {statistics.median(cpu):.3f} CPU-s median of {args.repeats} "
              f"(wall {statistics.median(wall):.2f} s)")
    probe = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True)
    results["torch_imported_by_top_level_help"] = probe.stdout.strip().splitlines()[-1] == "True"
    print(f"torch imported by `fewshot --help`: {results['torch_imported_by_top_level_help']}")
    out = Path(__file__).parent / "results" / "cli_startup.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
