"""Your own photos, few-shot: an RGB task made from the photos that ship with scikit-learn.

    OMP_NUM_THREADS=1 python benchmarks/own_photos.py [--episodes 600] [--seed 0] [--lpft-episodes 50]

The task is the one a newcomer builds from a folder of photos (issue 26): scikit-learn's
two sample photos (``sklearn.datasets.load_sample_images``: a temple in China and a
flower, 427 x 640 each) are cut into a 3 x 4 grid of regions, and each region is a class
of 30 patches of mixed sizes (sides drawn from 28 to 72 px, anywhere inside the region),
stored as JPEG, PNG or RGBA PNG in turn and decoded again, as files from a phone or a
screenshot would be. 10 regions (5 of each photo, fixed by the seed) are "other data"
(the base classes: what training and SimpleShot's centring may use); the other 14 are
the evaluation classes. 600 seeded 5-way episodes (1 and 5 shots, 15 queries per class),
the same for every row:

* chance; nearest class mean on raw 32 x 32 pixels; a colour histogram (4 x 4 x 4 bins)
  and scikit-learn's logistic regression (the trivial baseline every row is compared with,
  episode by episode);
* a *randomly initialised* tiny Hugging Face ResNet, loaded as ``hf:<folder>`` through
  fewshot's hub loader with its own preprocessor config (64 x 64), features computed once
  per image through fewshot's feature cache, then the feature heads of
  :mod:`fewshot.heads` (:data:`HEADS`) and LP-FT (Kumar et al. 2022, arXiv:2202.10054)
  through ``fewshot.load("hf:...", strategy="lp-ft")``, the library side of
  ``fewshot predict hf:... --adapt lp-ft``;
* ProtoNet meta-trained on the base regions as a user does it: the base regions written
  as a folder (one sub-folder of PNG files per region) and ``fewshot train protonet
  --dataset folder --path ...`` in a fresh process, then its own adaptation (nearest
  prototype; checked against ``fewshot.load(run).fit/predict`` on images);
* the same heads on that ProtoNet's backbone and on a backbone pre-trained by fewshot on
  the base regions (``fewshot train baseline``: Chen et al. 2019, arXiv:1904.04232), and
  LP-FT on the latter (``fewshot.load(run, strategy="lp-ft")``).

No pre-trained weights can be downloaded on the machine this runs on, so no row has a
backbone pre-trained on a large data set: the table measures what can be measured here.
Both trained backbones are conv4 of width 32 with a CPU budget of ``--train-cpu-minutes``
each, to keep the benchmark inside its CPU budget. CPU time (``time.process_time`` here,
the child's rusage for training; one thread) is per row, over its episodes; what a row
needs once (features of every image, training) is recorded apart. Training runs and the
saved ResNet live under ``runs/own_photos/`` and are reused by a second run of this
script. Writes benchmarks/results/own_photos.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

GRID = (3, 4)
PER_CLASS = 30
SIDES = (28, 72)
BASE_REGIONS = 10
WAY, QUERIES = 5, 15
CONV4_WIDTH = 32
TRIVIAL = "colour histogram 4x4x4 + logistic regression"
NO_WEIGHTS = ("No pre-trained weights can be downloaded on this machine: every backbone here is either randomly "
              "initialised or trained by fewshot on the 10 base regions (300 patches) within a few CPU-minutes. "
              "These rows measure the machinery, not what a real pre-trained backbone (DINOv2, CLIP, ...) gives.")
#: The feature heads run on every backbone: (row label, head name, options).
HEADS = [("nearest centroid", "simpleshot", {"norm": "UN"}),
         ("SimpleShot CL2N (base-region mean)", "simpleshot", {"norm": "CL2N"}),
         ("logistic probe (C = 1, L2-normalised)", "logistic", {}),
         ("BD-CSPN (transductive)", "bdcspn", {}),
         ("LaplacianShot (transductive)", "laplacianshot", {})]
HEAD_NOTES = ("fewshot.heads with their default options, none tuned on these episodes: SimpleShot (Wang et al. 2019, "
              "arXiv:1911.04623) UN and CL2N, CL2N centred on the mean feature of the base regions; the logistic "
              "probe is scikit-learn's (C = 1) on unit-length features; BD-CSPN (Liu et al. 2020, arXiv:1911.10713) "
              "and LaplacianShot (Ziko et al. 2020, arXiv:2006.15486; CL2N on the base-region mean) are transductive: "
              "they see the episode's 75 queries together, 15 per class. PT-MAP and TIM were left out: at 0.5 and "
              "1.4 CPU-s per episode they do not fit this benchmark's CPU budget. LP-FT: a "
              "logistic probe, then 50 full-batch SGD steps of the whole network (fewshot.methods.transfer "
              "defaults).")


def make_classes(seed: int) -> list[list[Image.Image]]:
    """Regions of the sample photos as classes of patches (see the module docstring)."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    classes = []
    for photo in load_sample_images().images:
        h, w = photo.shape[0] // GRID[0], photo.shape[1] // GRID[1]
        for r in range(GRID[0]):
            for c in range(GRID[1]):
                patches = []
                for i in range(PER_CLASS):
                    side = int(rng.integers(SIDES[0], SIDES[1] + 1))
                    top = r * h + int(rng.integers(0, h - side + 1))
                    left = c * w + int(rng.integers(0, w - side + 1))
                    patch = Image.fromarray(photo[top:top + side, left:left + side])
                    fmt = i % 3
                    buffer = io.BytesIO()
                    if fmt == 0:
                        patch.save(buffer, "JPEG", quality=90)
                    elif fmt == 1:
                        patch.save(buffer, "PNG")
                    else:
                        patch.convert("RGBA").save(buffer, "PNG")
                    buffer.seek(0)
                    with Image.open(buffer) as decoded:
                        decoded.load()
                        patches.append(decoded.copy())
                classes.append(patches)
    return classes


def episodes(n_classes: list[int], shots: int, count: int, seed: int) -> list[tuple[list[int], np.ndarray]]:
    """``count`` episodes: the classes drawn and, per class, the patch indices (support first)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        chosen = [int(c) for c in rng.choice(n_classes, WAY, replace=False)]
        picks = np.stack([rng.choice(PER_CLASS, shots + QUERIES, replace=False) for _ in chosen])
        out.append((chosen, picks))
    return out


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.LANCZOS), np.float32).ravel() / 255


def histogram(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB")).reshape(-1, 3) // 64
    counts = np.bincount(rgb[:, 0] * 16 + rgb[:, 1] * 4 + rgb[:, 2], minlength=64).astype(np.float32)
    return counts / counts.sum()


def nearest_centroid(support: np.ndarray, query: np.ndarray, shots: int) -> np.ndarray:
    centroids = support.reshape(WAY, shots, -1).mean(1)
    return ((query[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)


def logistic(support: np.ndarray, query: np.ndarray, shots: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    labels = np.repeat(np.arange(WAY), shots)
    return LogisticRegression(max_iter=1000).fit(support, labels).predict(query)


def run_row(features: list[np.ndarray], classify, suite, shots: int) -> tuple[list[float], float]:
    """Accuracy of ``classify(support, query, shots)`` on every episode of ``suite``, and its CPU seconds."""
    start, scores = time.process_time(), []
    for chosen, picks in suite:
        support = np.concatenate([features[c][picks[i, :shots]] for i, c in enumerate(chosen)])
        query = np.concatenate([features[c][picks[i, shots:]] for i, c in enumerate(chosen)])
        predicted = classify(support, query, shots)
        scores.append(float((predicted == np.repeat(np.arange(WAY), QUERIES)).mean()))
    return scores, time.process_time() - start


def tiny_resnet(folder: Path) -> None:
    """A randomly initialised tiny ResNet in the save_pretrained layout, with a 64 x 64 preprocessor."""
    import transformers

    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64],
                                       depths=[1, 1, 1], layer_type="basic")
    transformers.ResNetModel(config).eval().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"height": 64, "width": 64}, "resample": 2, "do_rescale": True,
         "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
         "image_std": [0.229, 0.224, 0.225]}))


def split(seed: int) -> tuple[list[int], list[int]]:
    """The base regions (5 of each photo, drawn with ``seed``) and the evaluation regions."""
    order = np.random.default_rng(seed).permutation(GRID[0] * GRID[1])
    half = [int(i) for i in order[:BASE_REGIONS // 2]]
    base = sorted(half + [GRID[0] * GRID[1] + i for i in half])
    return base, [i for i in range(2 * GRID[0] * GRID[1]) if i not in base]


def write_base_folder(classes: list[list[Image.Image]], base: list[int], folder: Path) -> Path:
    """The base regions as a user's folder: one sub-folder of PNG files per region (pixels as decoded)."""
    for c in base:
        target = folder / f"region-{c:02d}"
        target.mkdir(parents=True, exist_ok=True)
        for i, patch in enumerate(classes[c]):
            if not (target / f"{i:03d}.png").exists():
                patch.save(target / f"{i:03d}.png")
    return folder


def train(method: str, data: Path, work: Path, minutes: float) -> tuple[Path, dict]:
    """``fewshot train METHOD`` on the base folder, as a user runs it (a fresh process, the CLI);
    reused when this benchmark trained it before. Returns the run folder and its CPU record."""
    import resource
    import shutil
    import subprocess

    run, record = work / method, work / f"{method}.train.json"
    if run.is_dir() and record.exists():
        return run, json.loads(record.read_text())
    if run.exists():
        shutil.rmtree(run)  # a run of this benchmark that did not finish
    command = [sys.executable, "-m", "fewshot", "train", method, "--dataset", "folder", "--path", str(data),
               "--out", str(run), "--runs", str(work), "--way", str(WAY), "--shot", "5", "--query", str(QUERIES),
               "--val-ratio", "0", "--test-ratio", "0", "--val-split", "none",
               "--backbone-option", f"width={CONV4_WIDTH}", "--cpu-minutes", str(minutes), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"training {method} failed: {done.stderr.strip()[-800:]}")
    printed = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    info = {"command": "fewshot " + " ".join(command[3:]).replace(str(work), "WORK"),
            "cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "said": printed[-3:]}
    record.write_text(json.dumps(info, indent=2))
    return run, info


def show(row: dict) -> None:
    print(f"{row['row']:72s} " + "  ".join(f"{k}-shot {100 * np.mean(v[0]):5.1f} % ({v[1]:.1f} CPU-s)"
                                           for k, v in row.items() if isinstance(k, int)), flush=True)


def head_rows(backbone: str, features: dict, base_features: torch.Tensor, suites: dict) -> list[dict]:
    """Each head of :data:`HEADS` on one backbone's features, over the same episodes."""
    from fewshot.heads import build_head, run_head

    rows = []
    for label, name, options in HEADS:
        head = build_head(name, **options)
        if head.needs_base_features():
            head.fit_base(base_features)
        row = {"row": f"{backbone}, {label}", "head": {"name": name, "options": head.get_params()}}
        for shots, suite in suites.items():
            row[shots] = run_row(features, lambda s, q, k: run_head(head, torch.from_numpy(s), torch.from_numpy(
                np.repeat(np.arange(WAY), k)), WAY, torch.from_numpy(q)).argmax(1).numpy(), suite, shots)
        show(row)
        rows.append(row)
    return rows


def learner_row(name: str, learner, images: list[list[Image.Image]], suites: dict, count: int) -> dict:
    """A FewShotClassifier (fit on each episode's support images, predict its queries) on the first ``count`` episodes."""
    row = {"row": f"{name} (first {count} episodes)"}
    for shots, suite in suites.items():
        start, scores = time.process_time(), []
        for chosen, picks in suite[:count]:
            support = [images[c][j] for i, c in enumerate(chosen) for j in picks[i, :shots]]
            query = [images[c][j] for i, c in enumerate(chosen) for j in picks[i, shots:]]
            learner.fit(support, np.repeat(np.arange(WAY), shots))
            scores.append(float((learner.predict(query) == np.repeat(np.arange(WAY), QUERIES)).mean()))
        row[shots] = (scores, time.process_time() - start)
    show(row)
    return row


def summary(row: dict, trivial: dict) -> dict:
    """A row's accuracy ± 95 % CI and its paired difference with the trivial baseline, per shot."""
    from fewshot.metrics import confidence_interval

    out = {k: v for k, v in row.items() if not isinstance(k, int)}
    for shots in (1, 5):
        scores, cpu = row[shots]
        scores = np.asarray(scores)
        mean, ci = confidence_interval(scores)
        delta, delta_ci = confidence_interval(scores - np.asarray(trivial[shots][0][:len(scores)]))
        out[f"{shots}-shot"] = {"episodes": len(scores), "accuracy": 100 * mean, "ci95": 100 * ci,
                                "vs_histogram": 100 * delta, "vs_histogram_ci95": 100 * delta_ci,
                                "cpu_seconds": cpu}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lpft-episodes", type=int, default=50, help="episodes LP-FT runs on (the first ones)")
    parser.add_argument("--train-cpu-minutes", type=float, default=2.0, help="CPU budget of each training run")
    parser.add_argument("--work", default=str(Path(__file__).resolve().parents[1] / "runs" / "own_photos"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    import fewshot
    from fewshot.features import FeatureCache, embed
    from fewshot.models.hub import load_backbone

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    classes = make_classes(args.seed)
    base, test = split(args.seed)
    evaluation = [classes[i] for i in test]
    every = [p for patches in classes for p in patches]
    suites = {shots: episodes(len(test), shots, args.episodes, args.seed + shots) for shots in (1, 5)}
    rows, one_off = [], {}

    def table(features: list[np.ndarray], classify) -> dict:
        return {shots: run_row(features, classify, suite, shots) for shots, suite in suites.items()}

    rows.append({"row": "chance", **{k: ([1 / WAY] * args.episodes, 0.0) for k in suites}})
    start = time.process_time()
    raw = [np.stack([pixels(p) for p in patches]) for patches in evaluation]
    one_off["raw pixels"] = time.process_time() - start
    rows.append({"row": "raw pixels 32x32, nearest centroid", "one_off": "raw pixels", **table(raw, nearest_centroid)})
    start = time.process_time()
    hist = [np.stack([histogram(p) for p in patches]) for patches in evaluation]
    one_off["colour histogram"] = time.process_time() - start
    trivial = {"row": TRIVIAL, "one_off": "colour histogram", **table(hist, logistic)}
    rows.append(trivial)
    for row in rows:
        show(row)

    def features_of(name: str, backbone, preprocessing) -> tuple[list[np.ndarray], torch.Tensor]:
        cache, start = FeatureCache(), time.process_time()
        feats = embed(backbone, every, preprocessing, cache=cache, batch_size=120)
        one_off[f"{name}: features of {len(every)} images"] = time.process_time() - start
        again = embed(backbone, every, preprocessing, cache=cache)  # all from the cache: no forward pass
        assert torch.equal(feats, again) and cache.hits == len(every)
        per_class = feats.reshape(len(classes), PER_CLASS, -1)
        return [per_class[i].numpy() for i in test], per_class[base].reshape(-1, per_class.shape[-1])

    # A randomly initialised tiny Hugging Face ResNet, through fewshot's hub loader.
    tiny_resnet(work / "resnet")
    hub = load_backbone(f"hf:{work / 'resnet'}")
    random_name = "random-init HF ResNet"
    resnet, resnet_base = features_of(random_name, hub.backbone, hub.preprocessing)
    rows += head_rows(random_name, resnet, resnet_base, suites)
    lpft = fewshot.load(f"hf:{work / 'resnet'}", strategy="lp-ft")
    rows.append(learner_row(f"{random_name}, LP-FT", lpft, evaluation, suites, args.lpft_episodes))

    # Backbones fewshot trains on the base regions, as a user would: the CLI on a folder.
    data = write_base_folder(classes, base, work / "base")
    trained = {}
    for method in ("protonet", "baseline"):
        run, info = train(method, data, work, args.train_cpu_minutes)
        trained[method] = info
        one_off[f"{method}: training"] = info["cpu_seconds"]
        learner = fewshot.load(run, calibration_episodes=0)
        name = f"{method}-trained conv4"
        feats, base_feats = features_of(name, learner.method.backbone, learner.preprocessing)
        if method == "protonet":
            # ProtoNet's own rule (nearest prototype, squared Euclidean) on its features; checked
            # against the library's learner (fit on images, predict images) on the first episodes.
            row = {"row": "meta-trained ProtoNet (fewshot train protonet, its own adaptation)",
                   "one_off": f"{method}: training", **table(feats, nearest_centroid)}
            check = learner_row("check", learner, evaluation, {5: suites[5]}, 20)[5][0]
            assert np.allclose(check, row[5][0][:20]), (check, row[5][0][:20])
            trained[method]["learner_check"] = "fewshot.load(run).fit/predict on images gave the same accuracy " \
                                               "on the first 20 5-shot episodes"
            show(row)
            rows.append(row)
        rows += head_rows(name, feats, base_feats, suites)
        if method == "baseline":
            lpft = fewshot.load(run, strategy="lp-ft", calibration_episodes=0)
            rows.append(learner_row(f"{name}, LP-FT", lpft, evaluation, suites, args.lpft_episodes))
    write(args, rows, trivial, one_off, trained, base, test, hub)


def write(args, rows: list[dict], trivial: dict, one_off: dict, trained: dict, base: list[int], test: list[int],
          hub) -> None:
    """benchmarks/results/own_photos.{json,md}."""
    results = {"benchmark": "own_photos", "command": " ".join(["python", *sys.argv]), "episodes": args.episodes,
               "seed": args.seed, "way": WAY, "queries_per_class": QUERIES, "patches_per_class": PER_CLASS,
               "patch_sides": list(SIDES), "grid": list(GRID), "base_regions": base, "evaluation_regions": test,
               "trivial_baseline": TRIVIAL, "pretrained_weights": NO_WEIGHTS,
               "random_resnet": {"parameters": sum(p.numel() for p in hub.backbone.parameters()),
                                 "feature_dim": hub.feature_dim},
               "training": trained, "one_off_cpu_seconds": one_off, "load_average": list(os.getloadavg()),
               "rows": [summary(row, trivial) for row in rows]}
    out = Path(__file__).parent / "results"
    (out / "own_photos.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Own photos: 5-way few-shot on patches of scikit-learn's sample photos ({args.episodes} episodes)",
             "", f"`{results['command']}` (one thread, load average {os.getloadavg()[0]:.1f} at the end). "
             f"{len(test)} evaluation regions, {len(base)} base regions; {PER_CLASS} patches per region, sides "
             f"{SIDES[0]}-{SIDES[1]} px, JPEG / PNG / RGBA PNG; {QUERIES} queries per class. Every row runs on the "
             "same seeded episodes (LP-FT on the first of them). Δ: the paired difference with the trivial baseline "
             f"({TRIVIAL}) on the same episodes, ± 95 % CI. CPU-s: the row's own work over its episodes (1-shot / "
             "5-shot); what it needs once (features of every image, training) is listed below the table.", "",
             f"**{NO_WEIGHTS}**", "",
             "| row | 1-shot % | Δ 1-shot | 5-shot % | Δ 5-shot | CPU-s |", "|---|---|---|---|---|---|"]
    for row in results["rows"]:
        one, five = row["1-shot"], row["5-shot"]
        lines.append(f"| {row['row']} | {one['accuracy']:.1f} ± {one['ci95']:.1f} | {one['vs_histogram']:+.1f} ± "
                     f"{one['vs_histogram_ci95']:.1f} | {five['accuracy']:.1f} ± {five['ci95']:.1f} | "
                     f"{five['vs_histogram']:+.1f} ± {five['vs_histogram_ci95']:.1f} | {one['cpu_seconds']:.1f} / "
                     f"{five['cpu_seconds']:.1f} |")
    lines += ["", "One-off CPU seconds: " + "; ".join(f"{k} {v:.1f}" for k, v in one_off.items()) + ".", "",
              "Training (each a fresh `fewshot train` process on the folder of the 10 base regions, "
              f"`--cpu-minutes {args.train_cpu_minutes}`):", ""]
    for method, info in trained.items():
        lines.append(f"* `{info['command']}`: {info['cpu_seconds']:.0f} CPU-s; it said: "
                     + " / ".join(f"`{s}`" for s in info["said"]))
    lines += ["", f"The random-init ResNet has {results['random_resnet']['parameters']:,} parameters "
              f"({results['random_resnet']['feature_dim']} features, 64 x 64 inputs). Heads: {HEAD_NOTES}"]
    (out / "own_photos.md").write_text("\n".join(lines) + "\n")
    print(f"-> {out / 'own_photos.json'}, {out / 'own_photos.md'}")


if __name__ == "__main__":
    main()
