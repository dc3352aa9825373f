"""One table and one figure from several ``maml_accuracy.py`` results files.

Runs that trained at once (one process per model, each writing its own ``--out``) are
gathered here: a Markdown table of their Omniglot rows (test accuracy on 600 episodes
with its 95 % CI, the published figure, meta-iterations, CPU minutes, validation
accuracy by iteration) and the validation learning curves (accuracy ± 95 % CI) against CPU minutes (each
point's CPU time is its step times the run's mean CPU seconds per step).

    python benchmarks/maml_curves.py benchmarks/results/maml60/*way.json --out benchmarks/results/maml60/summary

Writes ``OUT.md`` and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fewshot.plots import Series, accuracy_against

NAMES = {"maml": "MAML", "mamlpp": "MAML++", "fomaml": "FOMAML", "metasgd": "Meta-SGD", "anil": "ANIL"}


def rows_of(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            sys.exit(f"{path}: not a readable results file ({e})")
        command = (results.get("commands") or {}).get("omniglot") or results.get("command")
        rows += [{**row, "file": path.name, "command": command} for row in results.get("omniglot", [])]
    return sorted(rows, key=lambda r: (r["way"], r["method"]))


def markdown(rows: list[dict]) -> str:
    lines = ["| method | way | test accuracy % (600 episodes, 95 % CI) | published % | meta-iterations | "
             "training CPU min | validation accuracy % by iteration | file |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        curve = ", ".join(f"{acc:.1f} ({step})" for step, acc, *_ in r["val_curve"])
        lines.append(f"| {NAMES.get(r['method'], r['method'])} | {r['way']} | {r['test_accuracy']:.2f} ± "
                     f"{r['test_ci95']:.2f} | {r['published'] if r['published'] is not None else '-'} | "
                     f"{r['steps_trained']:,} | {r['cpu_seconds'] / 60:.1f} | {curve} | {r['file']} |")
    lines += ["", "Commands:", ""] + [f"* `{c}`" for c in dict.fromkeys(r["command"] for r in rows)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="maml_accuracy.py JSON files")
    parser.add_argument("--out", type=Path, required=True, help="path without suffix for OUT.md and OUT.png")
    args = parser.parse_args()
    rows = rows_of(args.results)
    if not rows:
        sys.exit("no Omniglot rows in the given files")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown(rows))
    series = [Series(f"{NAMES.get(r['method'], r['method'])} {r['way']}-way",
                     [step * r["cpu_seconds_per_step"] / 60 for step, *_ in r["val_curve"]],
                     [acc for _, acc, *_ in r["val_curve"]], [ci for *_, ci in r["val_curve"]],
                     linestyle="-" if r["way"] <= 5 else "--") for r in rows]
    accuracy_against(series, args.out.with_suffix(".png"), xlabel="training CPU minutes (one thread)",
                     title="Omniglot 1-shot validation accuracy", ticks_at_values=False)
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
