"""Speed of the pre-trained path: ``fewshot predict hf:... --head logistic`` against a hand-written script.

    OMP_NUM_THREADS=1 python benchmarks/own_photos_speed.py [--repeats 5] [--label after]

The same work two ways, each a fresh process as a user runs it (process start and imports
included): classify 100 query photos (20 per class) into 5 classes from 5 labelled support
photos per class, with a linear probe (scikit-learn's logistic regression, C = 1, on
L2-normalised features) on a tiny randomly initialised Hugging Face ResNet (8-16-32
channels, saved with ``save_pretrained`` together with a ConvNeXt-style image processor:
shortest side 73, centre crop 64):

* ``python -m fewshot predict hf:MODEL --support support --query query --head logistic``;
* :data:`HAND_WRITTEN`: ``transformers``' AutoImageProcessor and AutoModel, scikit-learn's
  LogisticRegression, and nothing else (18 lines).

The photos are patches of scikit-learn's sample photos (``own_photos.make_classes``:
28-72 px, JPEG / PNG / RGBA PNG files). Each command runs ``--repeats`` times, alternating,
with one thread (``OMP_NUM_THREADS=1`` etc.); its CPU time (user + system of the child
process, from ``os.wait4``) and wall time are recorded, and the medians compared. Both
print one line per query image; the labels they give are compared too. Writes
benchmarks/results/own_photos_speed.{json,md} (``--label`` names the measurement, so a
before/after pair can sit in one file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUPPORT, QUERY, WAY = 5, 20, 5

HAND_WRITTEN = '''\
import sys
from pathlib import Path
import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from transformers import AutoImageProcessor, AutoModel

model_dir, support_dir, query_dir = sys.argv[1:4]
processor, model = AutoImageProcessor.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
def embed(paths):
    with torch.no_grad():
        x = model(**processor([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")).pooler_output
    x = x.flatten(1).numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)
support, query = (sorted(p for p in Path(d).rglob("*") if p.is_file()) for d in (support_dir, query_dir))
probe = LogisticRegression(C=1.0, max_iter=1000).fit(embed(support), [p.parent.name for p in support])
for path, p in zip(query, probe.predict_proba(embed(query))):
    print(f"{path}  {probe.classes_[p.argmax()]}  {p.max():.3f}")
'''


def make_task(folder: Path, seed: int) -> dict:
    """The model folder and the support / query folders of photos (files as a user has them)."""
    import torch
    import transformers

    sys.path.insert(0, str(HERE))
    from own_photos import make_classes

    classes = make_classes(seed)[:WAY]
    for c, patches in enumerate(classes):
        for i, patch in enumerate(patches[:SUPPORT + QUERY]):
            part = "support" if i < SUPPORT else "query"
            target = folder / part / f"region-{c}"
            target.mkdir(parents=True, exist_ok=True)
            # as make_classes stored them: JPEG, PNG, RGBA PNG in turn
            patch.save(target / f"{i:03d}.{'jpg' if patch.mode == 'RGB' and i % 3 == 0 else 'png'}")
    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 32],
                                       depths=[1, 1, 1], layer_type="basic")
    model = transformers.ResNetModel(config).eval()
    model.save_pretrained(folder / "model")
    transformers.ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875, resample=2).save_pretrained(
        folder / "model")
    (folder / "hand_written.py").write_text(HAND_WRITTEN)
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "support_images": WAY * SUPPORT, "query_images": WAY * QUERY}


def run_once(command: list[str], env: dict) -> tuple[float, float, str]:
    """CPU seconds of the child (from its rusage, via os.wait4), wall seconds, stdout."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env=env, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed ({done.returncode}): {done.stderr.strip()[-600:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, done.stdout


def labels(stdout: str) -> dict[str, str]:
    """path -> predicted label, from either command's lines ``PATH  LABEL  PROBABILITY``."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[str(Path(parts[0]).resolve())] = parts[1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="measured", help="name of this measurement (e.g. before / after a fix)")
    parser.add_argument("--work", default=str(HERE.parent / "runs" / "own_photos_speed"))
    args = parser.parse_args()
    work = Path(args.work)
    if not (work / "hand_written.py").exists():
        task = make_task(work, args.seed)
        (work / "task.json").write_text(json.dumps(task))
    task = json.loads((work / "task.json").read_text())
    (work / "hand_written.py").write_text(HAND_WRITTEN)  # always the script shown in this file
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": str(HERE.parent / "src"), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("FEWSHOT_CACHE", None)  # memory cache only: nothing carried between runs
    commands = {
        "fewshot predict": [sys.executable, "-m", "fewshot", "predict", f"hf:{work / 'model'}", "--support",
                            str(work / "support"), "--query", str(work / "query"), "--head", "logistic", "--quiet"],
        "hand-written script": [sys.executable, str(work / "hand_written.py"), str(work / "model"),
                                str(work / "support"), str(work / "query")],
    }
    times: dict[str, dict[str, list[float]]] = {k: {"cpu": [], "wall": []} for k in commands}
    predicted: dict[str, dict[str, str]] = {}
    for _ in range(args.repeats):
        for name, command in commands.items():
            cpu, wall, out = run_once(command, env)
            times[name]["cpu"].append(cpu)
            times[name]["wall"].append(wall)
            predicted[name] = labels(out)
    truth = {p: Path(p).parent.name for p in predicted["hand-written script"]}
    rows = {}
    for name in commands:
        right = sum(predicted[name].get(p) == t for p, t in truth.items())
        rows[name] = {"cpu_seconds": times[name]["cpu"], "wall_seconds": times[name]["wall"],
                      "median_cpu_seconds": statistics.median(times[name]["cpu"]),
                      "median_wall_seconds": statistics.median(times[name]["wall"]),
                      "cpu_seconds_per_100_queries": 100 * statistics.median(times[name]["cpu"]) / len(truth),
                      "accuracy": 100 * right / len(truth)}
        print(f"{name:20s} CPU {rows[name]['median_cpu_seconds']:.2f} s (median of {args.repeats}: "
              f"{', '.join(f'{t:.2f}' for t in times[name]['cpu'])}), accuracy {rows[name]['accuracy']:.0f} %",
              flush=True)
    agree = sum(predicted["fewshot predict"].get(p) == predicted["hand-written script"][p] for p in truth)
    ratio = rows["fewshot predict"]["median_cpu_seconds"] / rows["hand-written script"]["median_cpu_seconds"]
    print(f"ratio fewshot / hand-written: {ratio:.2f}x CPU; labels agree on {agree}/{len(truth)}")
    out = HERE / "results" / "own_photos_speed.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    measurements = {k: v for k, v in previous.get("measurements", {}).items() if k != args.label}
    measurements[args.label] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_average": list(os.getloadavg()),
        "command": " ".join(["python", *sys.argv]), "repeats": args.repeats, "rows": rows, "ratio_cpu": ratio,
        "labels_agree": agree, "query_images": len(truth), "commands": {k: " ".join(v) for k, v in commands.items()}}
    results = {"benchmark": "own_photos_speed", "task": task, "hand_written_script": HAND_WRITTEN,
               "measurements": measurements}
    out.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out.with_suffix(".md"))
    print(f"-> {out}, {out.with_suffix('.md')}")


def write_markdown(results: dict, path: Path) -> None:
    task = results["task"]
    lines = ["# Own photos, speed: `fewshot predict hf:... --head logistic` vs a hand-written script", "",
             f"One fresh process each (start and imports included), one thread, {task['support_images']} support + "
             f"{task['query_images']} query photos, a randomly initialised tiny HF ResNet ({task['parameters']:,} "
             "parameters, 8-16-32 channels, 64 x 64 inputs) saved with save_pretrained; CPU = user + system seconds "
             "of the child process, median over the repeats (runs alternate): with 100 query images, CPU seconds per 100 "
             "query images, start-up included. Produced by "
             "`OMP_NUM_THREADS=1 python benchmarks/own_photos_speed.py --repeats N --label L`.", "",
             "| measurement | fewshot predict CPU-s | hand-written CPU-s | ratio | fewshot wall-s | hand-written wall-s "
             "| labels agree | load average |", "|---|---|---|---|---|---|---|---|"]
    for label, m in results["measurements"].items():
        f, h = m["rows"]["fewshot predict"], m["rows"]["hand-written script"]
        lines.append(f"| {label} ({m['date']}, {m['repeats']} repeats) | {f['median_cpu_seconds']:.2f} | "
                     f"{h['median_cpu_seconds']:.2f} | {m['ratio_cpu']:.2f}x | {f['median_wall_seconds']:.2f} | "
                     f"{h['median_wall_seconds']:.2f} | {m['labels_agree']}/{m['query_images']} | "
                     f"{m['load_average'][0]:.1f} |")
    lines += ["", "The hand-written script:", "", "```python", results["hand_written_script"].rstrip(), "```"]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
