"""Your own photos, few-shot: an RGB task made from the photos that ship with scikit-learn.

    OMP_NUM_THREADS=1 python benchmarks/own_photos.py [--episodes 600] [--seed 0]

The task is the one a newcomer builds from a folder of photos (issue 26): scikit-learn's
two sample photos (``sklearn.datasets.load_sample_images``: a temple in China and a
flower, 427 x 640 each) are cut into a 3 x 4 grid of regions, and each region is a class
of 30 patches of mixed sizes (sides drawn from 28 to 72 px, anywhere inside the region),
stored as JPEG, PNG or RGBA PNG in turn and decoded again, as files from a phone or a
screenshot would be. 10 regions (5 of each photo, fixed by the seed) are "other data"
(the base classes SimpleShot centres with, and, later, what meta-training may use); the
other 14 are the evaluation classes. 600 seeded 5-way episodes (1 and 5 shots, 15
queries per class), the same for every row:

* chance;
* nearest class mean on raw 32 x 32 pixels;
* a colour histogram (4 x 4 x 4 bins) and scikit-learn's logistic regression;
* a *randomly initialised* tiny Hugging Face ResNet, loaded as ``hf:<folder>`` through
  fewshot's hub loader with its own preprocessor config (64 x 64), features computed once
  per image through fewshot's feature cache, then three heads: nearest centroid on the
  raw features, SimpleShot's CL2N (features centred with the base regions' mean, then
  L2-normalised; Wang et al. 2019, arXiv:1911.04623) and a logistic-regression linear probe
  on L2-normalised features (fewshot.models.heads.logistic_probe).

Rows to come: a meta-trained ProtoNet on the base regions, each head on a backbone
pre-trained by fewshot on them, and the speed comparison of ``fewshot predict hf:...``.
CPU time (``time.process_time``, one thread) is per row, over all its episodes; the
embedding of every image once is its own row. Writes
benchmarks/results/own_photos.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
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


def probe(support: np.ndarray, query: np.ndarray, shots: int) -> np.ndarray:
    from fewshot.models.heads import logistic_probe

    head = logistic_probe(torch.from_numpy(support), torch.from_numpy(np.repeat(np.arange(WAY), shots)), WAY)
    with torch.no_grad():
        return head(torch.from_numpy(query)).argmax(1).numpy()


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from fewshot.features import FeatureCache
    from fewshot.metrics import confidence_interval
    from fewshot.models.hub import load_backbone

    classes = make_classes(args.seed)
    order = np.random.default_rng(args.seed).permutation(12)
    base = sorted([int(i) for i in order[:BASE_REGIONS // 2]] + [12 + int(i) for i in order[:BASE_REGIONS // 2]])
    test = [i for i in range(len(classes)) if i not in base]
    evaluation = [classes[i] for i in test]
    start = time.process_time()
    raw = [np.stack([pixels(p) for p in patches]) for patches in evaluation]
    raw_cpu = time.process_time() - start
    start = time.process_time()
    hist = [np.stack([histogram(p) for p in patches]) for patches in evaluation]
    hist_cpu = time.process_time() - start
    with tempfile.TemporaryDirectory() as tmp:
        tiny_resnet(Path(tmp) / "resnet")
        hub = load_backbone(f"hf:{Path(tmp) / 'resnet'}")
        parameters = sum(p.numel() for p in hub.backbone.parameters())
        cache = FeatureCache()
        start = time.process_time()
        every = [p for patches in classes for p in patches]
        feats = hub.embed(every, cache=cache, batch_size=120).numpy()
        embed_cpu = time.process_time() - start
        again = hub.embed(every, cache=cache).numpy()  # all from the cache: no forward pass
        assert np.array_equal(feats, again) and cache.hits == len(every)
    per_class = feats.reshape(len(classes), PER_CLASS, -1)
    base_mean = per_class[base].reshape(-1, per_class.shape[-1]).mean(0)
    resnet = [per_class[i] for i in test]
    cl2n = [l2(f - base_mean) for f in resnet]
    normed = [l2(f) for f in resnet]
    rows = [
        ("chance", None, None, 0.0),
        ("raw pixels 32x32, nearest centroid", raw, nearest_centroid, raw_cpu),
        ("colour histogram 4x4x4 + logistic regression", hist, logistic, hist_cpu),
        ("random-init HF ResNet, nearest centroid", resnet, nearest_centroid, 0.0),
        ("random-init HF ResNet, SimpleShot CL2N nearest centroid", cl2n, nearest_centroid, 0.0),
        ("random-init HF ResNet, linear probe (L2-normalised)", normed, probe, 0.0),
    ]
    results = {"benchmark": "own_photos", "command": " ".join(["python", *sys.argv]), "episodes": args.episodes,
               "seed": args.seed, "way": WAY, "queries_per_class": QUERIES, "patches_per_class": PER_CLASS,
               "patch_sides": list(SIDES), "grid": list(GRID), "base_regions": base, "evaluation_regions": test,
               "resnet_parameters": parameters, "feature_dim": int(feats.shape[1]),
               "embedding": {"images": len(every), "cpu_seconds": embed_cpu,
                             "forward_passes_on_second_call": 0},
               "rows": []}
    for name, features, classify, prep_cpu in rows:
        row = {"row": name, "features_cpu_seconds": prep_cpu}
        for shots in (1, 5):
            suite = episodes(len(test), shots, args.episodes, args.seed + shots)
            if classify is None:
                scores, cpu = [1 / WAY] * args.episodes, 0.0
            else:
                scores, cpu = run_row(features, classify, suite, shots)
            mean, ci = confidence_interval(np.asarray(scores))
            row[f"{shots}-shot"] = {"accuracy": 100 * mean, "ci95": 100 * ci if classify else 0.0,
                                    "cpu_seconds": cpu}
            print(f"{name:58s} {shots}-shot {100 * mean:5.1f} +- {100 * ci if classify else 0:.1f} %  "
                  f"({cpu:.1f} CPU-s)", flush=True)
        results["rows"].append(row)
    out = Path(__file__).parent / "results"
    (out / "own_photos.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Own photos: 5-way few-shot on patches of scikit-learn's sample photos ({args.episodes} episodes)",
             "", f"`{results['command']}` (one thread). 14 evaluation regions, 10 base regions; "
             f"{PER_CLASS} patches per region, sides {SIDES[0]}-{SIDES[1]} px, JPEG / PNG / RGBA PNG. "
             f"The random-init ResNet has {parameters:,} parameters ({feats.shape[1]} features); embedding all "
             f"{len(every)} images once took {embed_cpu:.1f} CPU-s, the second call none (feature cache). The "
             "linear probe is scikit-learn's default (C = 1) on unit-length features, untuned: with 5 to 25 "
             "examples of 64 features it regularises too strongly; nothing here was tuned on these episodes.", "",
             "| row | 1-shot % | 5-shot % | CPU-s (1-shot / 5-shot episodes) |", "|---|---|---|---|"]
    for row in results["rows"]:
        one, five = row["1-shot"], row["5-shot"]
        lines.append(f"| {row['row']} | {one['accuracy']:.1f} ± {one['ci95']:.1f} | {five['accuracy']:.1f} ± "
                     f"{five['ci95']:.1f} | {one['cpu_seconds']:.1f} / {five['cpu_seconds']:.1f} |")
    (out / "own_photos.md").write_text("\n".join(lines) + "\n")
    print(f"-> {out / 'own_photos.json'}, {out / 'own_photos.md'}")


if __name__ == "__main__":
    main()
