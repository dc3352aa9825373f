"""The stronger Omniglot recognizer's test results as one table.

The two recipes are trained by ``benchmarks/metric_omniglot.py --config FILE`` (see the
README); each test suite is then one ``fewshot evaluate RUN ... --json`` call whose output
is a file of ``benchmarks/results/recognizer/`` (the commands are listed in the table's
header). This script only gathers those files:

    python benchmarks/recognizer_table.py

Writes ``benchmarks/results/recognizer/README.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

FOLDER = Path(__file__).parent / "results" / "recognizer"
# file stem -> (recipe, what it tests, published comparison)
SUITES = {
    "vinyals-20w1s": ("configs/protonet-omniglot-strong-20w1s.json", "Vinyals split, 20-way 1-shot, 600 episodes",
                      "ProtoNet 96.0 % (Snell et al. 2017); MAML++ 97.65 % (Antoniou et al. 2019)"),
    "vinyals-5w1s": ("configs/protonet-omniglot-strong-20w1s.json", "Vinyals split, 5-way 1-shot, 600 episodes",
                     "ProtoNet 98.8 %"),
    "vinyals-20w1s-200ep": ("configs/protonet-omniglot-strong-20w1s.json",
                            "Vinyals split, 20-way 1-shot, first 200 episodes", "—"),
    "vinyals-20w1s-views5-200ep": ("configs/protonet-omniglot-strong-20w1s.json",
                                   "same 200 episodes, 5 test-time views", "—"),
    "background-20w1s-within-alphabet": ("configs/protonet-omniglot-background-20w1s.json",
                                         "evaluation alphabets, 20-way 1-shot within one alphabet, 600 episodes",
                                         "people 95.5 %, BPL 96.7 % (Lake et al. 2015); Koch et al. 2015 92.0 %"),
    "background-20w1s-across-alphabets": ("configs/protonet-omniglot-background-20w1s.json",
                                          "evaluation alphabets, 20-way 1-shot across alphabets, 600 episodes", "—"),
    "background-20w1s-within-alphabet-200ep": ("configs/protonet-omniglot-background-20w1s.json",
                                               "within one alphabet, first 200 episodes", "—"),
    "background-20w1s-within-alphabet-views5-200ep": ("configs/protonet-omniglot-background-20w1s.json",
                                                      "same 200 episodes, 5 test-time views", "—"),
}


def main() -> None:
    lines = ["# A stronger one-shot recognizer on Omniglot: test results", "",
             "Each row is one `fewshot evaluate RUN --shot 1 --query 15 --weights best --json` "
             "(`--way 20` or `5`, `--episodes 600` or `200`, `--within-groups` for within-alphabet "
             "episodes, `-o test_views=5` for test-time views) of the recipe's run; 95% CI.", "",
             "| recipe | suite | accuracy | evaluation wall s (shared machine) | published |", "|---|---|---|---|---|"]
    for stem, (recipe, suite, published) in SUITES.items():
        path = FOLDER / f"{stem}.json"
        if not path.exists() or not path.stat().st_size:
            continue
        r = json.loads(path.read_text())
        lines.append(f"| `{recipe}` | {suite} | {r['accuracy']:.1f} ± {r['ci95']:.1f} % | {r['seconds']:.0f} | "
                     f"{published} |")
    (FOLDER / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
