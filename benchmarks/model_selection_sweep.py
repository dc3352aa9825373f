"""Model selection rebuilt on the sweep ground truth, a 26-model zoo with heads, groups as the unit (issue #29).

One command does everything, resumably (the zoo and the finished tasks are kept under
``--work``):

1. **The zoo** (26 tiny models, seconds each): Conv-4 at widths 8/16/32, ResNet-12 and MLPs
   trained by fewshot's own trainer, and Hugging Face ResNet, ConvNeXt and ViT configs
   trained here from scratch as image classifiers (their heads kept, so LEEP and NCE apply);
   sources: the three Omniglot background alphabet groups, digits 0-4 (with rotations) and
   the training regions of the sample photos (:mod:`fewshot.data.photos`, in grey);
   training methods: supervised with a head (Baseline / Baseline++, Chen et al. 2019,
   arXiv:1904.04232), ProtoNet (arXiv:1703.05175), first-order MAML (arXiv:1703.03400);
   two training lengths; one untrained control. All at 16×16 input.
2. **The meta-dataset**: ``--tasks`` tasks of the seven held-out groups
   (:mod:`fewshot.select.tasks`) × every model: task and model meta-features, every
   transferability score (N-LEEP and PARC among them) and k-NN signal, and three ground
   truths: the **sweep** (:func:`fewshot.select.sweep.sweep`: the linear probe, fine-tuning at
   2 learning rates × 2 lengths and LP-FT, chosen on 2 stratified validation folds inside the
   support set, then measured on the queries; a setting whose model fails to fit its own
   support set is passed over for the next), the linear probe alone, and the old fixed
   20-step fine-tune (for the collapse count only). Written as
   ``model_selection_meta.csv.gz`` in the committed format (``accuracy_finetune`` is now the
   sweep's accuracy; see the README proposal).
3. **The judgement** (:mod:`model_selection_groups`): leave-one-group-out with related groups
   held out together, the meta-learner variant chosen by nested validation on training groups
   only, intervals over groups first and over tasks second, paired differences, per-group
   regrets; plus the collapse check of the sweep and of the fixed recipe.

    OMP_NUM_THREADS=1 FEWSHOT_DATA=/work/shared/data python benchmarks/model_selection_sweep.py --tasks 112 --build-cpu-minutes 150

(the committed results: 112 tasks, 16 per group; about 64 CPU-minutes of building, 18 of judging)

Writes benchmarks/results/model_selection.{json,md} and model_selection_meta.csv.gz.
``--analyse-only`` re-judges the rows already built.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from model_selection import finite, load_meta_csv, write_meta_csv  # noqa: E402
from model_selection_groups import evaluate, markdown  # noqa: E402

from fewshot.data import to_float_images  # noqa: E402
from fewshot.io import write_json  # noqa: E402
from fewshot.select.index import Zoo  # noqa: E402
from fewshot.select.measure import measure  # noqa: E402
from fewshot.select.metafeatures import describe_task, fit_images, selection_row  # noqa: E402
from fewshot.select.recipes import BATCHES, MAML_EPISODES, ZooSpec, build_zoo, source_dataset  # noqa: E402
from fewshot.select.sweep import PROBE, Setting, collapse_report, collapsed, model_adapter, sweep  # noqa: E402
from fewshot.select.tasks import TaskSource, sample_tasks  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SIDE = 16
SHAPE = (1, SIDE, SIDE)
#: The sweep of the ground truth: the probe, fine-tuning at 2 learning rates and 2 lengths, LP-FT.
#: Smaller than fewshot.select.sweep.SWEEP (25/100 steps, and 0.1 × 100) to fit the CPU budget.
GRID = (PROBE, Setting("finetune", 0.01, 20), Setting("finetune", 0.01, 60), Setting("finetune", 0.1, 20),
        Setting("lp-ft", 0.01, 20))
FIXED = {"steps": 20}  # the previous meta-dataset's fixed recipe
TASK_SOURCES = ["digits", "omniglot", "photos"]


def _spec(name, backbone, objective, source, options, steps, shape=None, method=None, **train):
    train = {"episodes": steps, **train}
    return ZooSpec(name, backbone, objective, source, options, method or {}, SIDE, train,
                   shape or (20, 1, 5, 1))


LONG, SHORT, HUB_STEPS = 400, 50, 500  # training steps
C8, C16, C32 = {"width": 8}, {"width": 16}, {"width": 32}
R12 = {"widths": [4, 8, 16, 32]}
MAML = {"inner_steps": 1, "inner_lr": 0.4, "first_order": True}
#: Models fewshot's trainer builds (steps: training length).
TRAINED = [
    _spec("conv8-baseline-asian", "conv4", "baseline", "omniglot:bg-asian", C8, LONG, BATCHES),
    _spec("conv16-baseline-european", "conv4", "baseline", "omniglot:bg-european", C16, LONG, BATCHES),
    _spec("conv32-baseline-other", "conv4", "baseline", "omniglot:bg-other", C32, LONG, BATCHES),
    _spec("conv16-baseline-asian-short", "conv4", "baseline", "omniglot:bg-asian", C16, SHORT, BATCHES),
    _spec("conv32-baseline++-asian", "conv4", "baseline++", "omniglot:bg-asian", C32, LONG, BATCHES),
    _spec("conv16-baseline-digits", "conv4", "baseline", "digits", C16, LONG, BATCHES, train_way=20),
    _spec("conv8-protonet-other", "conv4", "protonet", "omniglot:bg-other", C8, LONG),
    _spec("conv16-protonet-asian", "conv4", "protonet", "omniglot:bg-asian", C16, LONG),
    _spec("conv32-protonet-european", "conv4", "protonet", "omniglot:bg-european", C32, LONG),
    _spec("conv16-protonet-european-short", "conv4", "protonet", "omniglot:bg-european", C16, SHORT),
    _spec("conv16-protonet-digits", "conv4", "protonet", "digits", C16, LONG, train_way=10, train_query=3),
    _spec("conv16-maml-asian", "conv4", "maml", "omniglot:bg-asian", C16, 150, MAML_EPISODES, MAML),
    _spec("conv16-maml-digits", "conv4", "maml", "digits", C16, 150, MAML_EPISODES, MAML),
    _spec("resnet12-baseline-other", "resnet12", "baseline", "omniglot:bg-other", R12, LONG, BATCHES),
    _spec("resnet12-protonet-digits", "resnet12", "protonet", "digits", R12, LONG, train_way=10, train_query=3),
    _spec("mlp64-baseline-digits", "mlp", "baseline", "digits", {"hidden": [64]}, LONG, BATCHES, train_way=20),
    _spec("mlp128-protonet-european", "mlp", "protonet", "omniglot:bg-european", {"hidden": [128]}, LONG),
    _spec("conv16-baseline-photos", "conv4", "baseline", "photos", C16, LONG, (12, 5, 1, 1)),
    _spec("conv32-protonet-photos", "conv4", "protonet", "photos", C32, LONG, (12, 1, 5, 1)),
    ZooSpec("conv16-random", "conv4", "random-init", "none", C16, image_size=SIDE),
]
#: Hugging Face configs trained here from scratch as image classifiers: (name, kind, source, steps).
HUB = [("hf-resnet-asian", "resnet", "omniglot:bg-asian", HUB_STEPS),
       ("hf-resnet-digits", "resnet", "digits", HUB_STEPS),
       ("hf-convnext-european", "convnext", "omniglot:bg-european", HUB_STEPS),
       ("hf-vit-other", "vit", "omniglot:bg-other", HUB_STEPS), ("hf-vit-digits", "vit", "digits", HUB_STEPS),
       ("hf-resnet-photos", "resnet", "photos", HUB_STEPS)]


def hub_config(kind: str, classes: list[str]):
    import transformers

    labels = {"id2label": {i: c for i, c in enumerate(classes)}, "label2id": {c: i for i, c in enumerate(classes)}}
    if kind == "resnet":
        return transformers.ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1],
                                         layer_type="basic", architectures=["ResNetForImageClassification"], **labels)
    if kind == "convnext":
        return transformers.ConvNextConfig(num_channels=1, num_stages=2, patch_size=2, hidden_sizes=[16, 32],
                                           depths=[1, 1],
                                           architectures=["ConvNextForImageClassification"], **labels)
    return transformers.ViTConfig(image_size=SIDE, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  architectures=["ViTForImageClassification"], **labels)


def source_images(source: str, data_root, cache: dict):
    """(images at 16×16, labels, class names, source metadata) of a zoo source."""
    data, split, meta = source_dataset(source, SIDE, data_root, cache)
    ids = data.split_classes(split)
    images = [data.class_images(c) for c in ids]
    x = to_float_images(torch.cat(images))
    y = torch.cat([torch.full((len(im),), i) for i, im in enumerate(images)])
    names = [data.class_names[c] for c in ids]
    return x, y, names, {**meta, "split": split, "num_classes": len(ids), "classes": names}


def train_hub(zoo: Zoo, name: str, kind: str, source: str, steps: int, work: Path, data_root, cache: dict,
              seed: int = 0) -> None:
    """Train a Hugging Face config from scratch with its classifier head (cross-entropy, Adam,
    batches of 64), save it with save_pretrained and a preprocessor config, add it to the zoo."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    start = time.process_time()
    x, y, names, meta = source_images(source, data_root, cache)
    torch.manual_seed(seed)
    model = transformers.AutoModelForImageClassification.from_config(hub_config(kind, names))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(len(y), (64,), generator=generator)
        pixels = (fit_images(x[batch], SHAPE) - 0.5) / 0.5  # what the zoo's HubBackbone does with mean = std = 0.5
        loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits, y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    folder = work / "hub" / name
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": SIDE, "width": SIDE}, "image_mean": [0.5], "image_std": [0.5], "do_resize": True}))
    zoo.add(name, folder, overwrite=True, metadata={
        "source": meta, "train_cpu_seconds": time.process_time() - start, "steps": steps,
        "zoo_spec": {"name": name, "backbone": f"hf-{kind}", "objective": "supervised (classifier head)",
                     "source": source}})


def build(zoo_root: Path, work: Path, data_root) -> Zoo:
    zoo = build_zoo(zoo_root, TRAINED, cpu_minutes=0.5, progress=False, data_root=data_root)
    cache: dict = {}
    for name, kind, source, steps in HUB:
        if name not in zoo:
            train_hub(zoo, name, kind, source, steps, work, data_root, cache)
            print(f"zoo: {name} done", flush=True)
    return zoo


def build_rows(zoo: Zoo, tasks: int, rows_path: Path, data_root, deadline_cpu: float,
               deadline_wall: float | None = None) -> list[dict]:
    """One record per (task, model), appended to ``rows_path`` task by task (a rerun resumes)."""
    done = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    finished = {r["task"] for r in done}
    source = TaskSource(TASK_SOURCES, 0, data_root)
    names = zoo.names()
    models = {n: zoo.load(n) for n in names}
    cpu0 = time.process_time()
    for spec in sample_tasks(tasks, TASK_SOURCES):
        if spec.task in finished:
            continue
        if time.process_time() - cpu0 > deadline_cpu or (deadline_wall and time.time() > deadline_wall):
            print(f"CPU or wall-clock budget of the build reached before {spec.task}: stopping", flush=True)
            break
        episode = source.episode(spec)
        data = (episode.support_x, episode.support_y, episode.query_x, episode.query_y)
        described = describe_task(episode.support_x, episode.support_y, source.groups[spec.group].dataset)
        records = []
        for name in names:
            model = models[name]
            row, costs, features = selection_row(model, episode.support_x, episode.support_y)
            probe, cpu_lp = measure(model, *data, episode.way, "linear-probe", support_features=features)
            fixed, cpu_fixed = measure(model, *data, episode.way, "finetune", FIXED)
            result = sweep(model_adapter(model, episode.way), *data, episode.way, GRID)
            records.append({"task": spec.task, "grp": spec.group, "model": name, "way": episode.way,
                            "shot": spec.shot, "features": {**described, **row}, "accuracy_ft": result["accuracy"],
                            "accuracy_lp": probe, "accuracy_fixed": fixed, "setting": result["setting"],
                            "validation": result["validation"], "failed_to_fit": result["failed_to_fit"],
                            "support_accuracy": result["support_accuracy"], "collapsed": result["collapsed"],
                            "fixed_collapsed": collapsed(fixed, probe, episode.way), **costs, "cpu_lp": cpu_lp,
                            "cpu_ft": result["cpu_seconds"], "cpu_fixed": cpu_fixed})
        with rows_path.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
        done += records
        print(f"{spec.task} ({episode.way}-way {spec.shot}-shot) done, "
              f"{(time.process_time() - cpu0) / 60:.1f} CPU-min", flush=True)
    return done


def zoo_table(zoo: Zoo) -> list[dict]:
    out = []
    for name in zoo.names():
        meta = zoo.metadata(name)
        spec = meta.get("zoo_spec") or {}
        source = meta.get("source") or {}
        out.append({"name": name, "backbone": spec.get("backbone"), "objective": spec.get("objective"),
                    "source": spec.get("source"), "parameters": meta.get("parameters"),
                    "source_classes": source.get("num_classes"), "head": bool(zoo.load(name).head is not None),
                    "steps": source.get("steps", meta.get("steps")),
                    "train_cpu_seconds": round(float(meta.get("train_cpu_seconds") or 0.0), 1)})
    return out


def ground_truths(records: list[dict], names: list[str]) -> dict:
    tasks = sorted({r["task"] for r in records})
    table = {(r["task"], r["model"]): r for r in records}
    out = {}
    for key, label in (("accuracy_ft", "sweep"), ("accuracy_lp", "linear probe"), ("accuracy_fixed", "fixed 20-step")):
        m = np.array([[table[t, n][key] for n in names] for t in tasks])
        means = dict(zip(names, m.mean(0).round(2).tolist()))
        out[label] = {"mean": means, "best_on_average": max(means, key=means.get),
                      "tasks_with_tied_best": int(((m == m.max(1, keepdims=True)).sum(1) > 1).sum())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench/model_selection_sweep", help="zoo and rows (kept, resumable)")
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--build-cpu-minutes", type=float, default=20.0,
                        help="stop starting new tasks after this much CPU in the meta-dataset build")
    parser.add_argument("--stop-at", default=None, help="UTC time HH:MM after which no new task is started")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--targets", nargs="*", default=["finetune"], choices=["finetune", "linear-probe"],
                        help="ground truths to judge on (finetune: the sweep's accuracy column)")
    parser.add_argument("--analyse-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data_root = os.environ.get("FEWSHOT_DATA")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start, cpu0 = time.perf_counter(), time.process_time()
    zoo = Zoo(work / "zoo") if args.analyse_only else build(work / "zoo", work, data_root)
    cpu_zoo = time.process_time() - cpu0
    rows_path = work / "rows.jsonl"
    if args.analyse_only:
        records = [json.loads(line) for line in rows_path.read_text().splitlines()]
    else:
        deadline = None
        if args.stop_at:
            now = time.gmtime()
            hour, minute = (int(v) for v in args.stop_at.split(":"))
            deadline = time.time() + ((hour * 60 + minute) - (now.tm_hour * 60 + now.tm_min)) * 60 - now.tm_sec
        records = build_rows(zoo, args.tasks, rows_path, data_root, args.build_cpu_minutes * 60, deadline)
    cpu_build = time.process_time() - cpu0 - cpu_zoo
    names = zoo.names()
    complete = {t for t in {r["task"] for r in records} if sum(r["task"] == t for r in records) == len(names)}
    records = [r for r in records if r["task"] in complete]
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    meta_path = results / "model_selection_meta.csv.gz"
    write_meta_csv(meta_path, records, extra=("finetune_setting", "collapsed", "accuracy_fixed_20_steps"),
                   values=lambda r: [r["setting"], int(r["collapsed"]), r["accuracy_fixed"]])
    state = {"records": records, "names": names, "groups": Counter(r["grp"] for r in records if r["model"] == names[0]),
             "cpu0": cpu0, "cpu_zoo": cpu_zoo, "cpu_build": cpu_build, "start": start}
    write_results(results, zoo, state, {}, 0.0, args)  # before judging: an interrupted judgement keeps these
    cpu_analysis0 = time.process_time()
    evaluations = {}
    for target in args.targets:
        rows = load_meta_csv(meta_path, target)
        evaluations["sweep" if target == "finetune" else target] = evaluate(rows, args)
        print(f"{target}: judged", flush=True)
        write_results(results, zoo, state, evaluations, time.process_time() - cpu_analysis0, args)


def write_results(results: Path, zoo: Zoo, state: dict, evaluations: dict, cpu_analysis: float, args) -> None:
    records, names, groups = state["records"], state["names"], state["groups"]
    cpu_zoo, cpu_build = state["cpu_zoo"], state["cpu_build"]
    complete = {r["task"] for r in records}
    cpu = time.process_time() - state["cpu0"]
    fixed = collapse_report([{**r, "collapsed": r["fixed_collapsed"], "accuracy": r["accuracy_fixed"],
                              "probe_accuracy": r["accuracy_lp"], "setting": "finetune steps=20"} for r in records])
    swept = collapse_report([{**r, "accuracy": r["accuracy_ft"], "probe_accuracy": r["accuracy_lp"]} for r in records])
    chosen = dict(Counter(r["setting"] for r in records).most_common())
    passed = Counter(name for r in records for name in r.get("failed_to_fit", []))
    failed = {"runs": sum(bool(r.get("failed_to_fit")) for r in records),
              "settings_passed_over": dict(passed.most_common())}
    truths = ground_truths(records, names)
    load = os.getloadavg()
    out = {"benchmark": "model_selection_sweep", "command": " ".join(["python", *sys.argv]),
           "tasks": len(complete), "tasks_per_group": dict(sorted(groups.items())), "models": len(names),
           "zoo": zoo_table(zoo), "sweep": [s.name for s in GRID], "validation_folds": 2,
           "collapse": {"sweep": swept, "fixed_20_steps": fixed}, "chosen_settings": chosen, "failed_to_fit": failed,
           "ground_truths": truths, "evaluations": evaluations,
           "cpu_seconds": {"zoo_this_run": cpu_zoo, "meta_dataset_this_run": cpu_build, "analysis": cpu_analysis,
                           "total_this_run": cpu,
                           "zoo_training_all_models": sum(float(zoo.metadata(n).get("train_cpu_seconds") or 0)
                                                          for n in names),
                           "meta_dataset_all_rows": sum(r["cpu_features"] + r["cpu_scores"] + r["cpu_lp"]
                                                        + r["cpu_ft"] + r["cpu_fixed"] for r in records)},
           "wall_seconds": time.perf_counter() - state["start"],
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "torch_threads": 1, "load_average_at_end": load}}
    write_json(results / "model_selection.json", finite(out))
    c = out["cpu_seconds"]
    lines = [f"Model selection on the sweep ground truth: {len(complete)} tasks × {len(names)} models. "
             f"`{out['command']}`, one thread, load average {load[0]:.1f} on {os.cpu_count()} cores at the end. "
             f"CPU: training the zoo {c['zoo_training_all_models'] / 60:.1f} min, the meta-dataset's rows "
             f"{c['meta_dataset_all_rows'] / 60:.1f} min (features, scores, probe, sweep, fixed recipe), "
             f"judging {cpu_analysis / 60:.1f} min. Tasks per group: "
             + ", ".join(f"{g} {n}" for g, n in sorted(groups.items())) + ".", "",
             "## The zoo", "", "| model | backbone | training | source | parameters | source classes | head | "
             "steps | train CPU s |", "|---|---|---|---|---|---|---|---|---|"]
    for z in out["zoo"]:
        lines.append(f"| {z['name']} | {z['backbone']} | {z['objective']} | {z['source']} | {z['parameters']:,} | "
                     f"{z['source_classes'] or '-'} | {'yes' if z['head'] else 'no'} | {z['steps'] or '-'} | "
                     f"{z['train_cpu_seconds']} |")
    lines += ["", "## The ground truth", "",
              f"Sweep: {', '.join(s.name for s in GRID)}; chosen on 2 stratified validation folds of the support "
              f"set, then measured on the queries.", "",
              f"- collapsed runs (within 2 points of chance while the model's probe is ≥ 10 points above it): "
              f"sweep **{swept['collapsed']} of {swept['runs']}**, old fixed 20-step fine-tune "
              f"**{fixed['collapsed']} of {fixed['runs']}**",
              f"- runs where the best setting on validation failed to fit the support set (under half of it right, "
              f"or chance) and the next was taken (or, when none fit, the best-fitting one): "
              f"**{failed['runs']} of {swept['runs']}** (passed over: "
              + (", ".join(f"{k} {v}" for k, v in passed.most_common()) or "none") + ")",
              "- settings the sweep chose: " + ", ".join(f"{k} {v}" for k, v in chosen.items()),
              "- best model on average: " + "; ".join(f"{k} {v['best_on_average']}" for k, v in truths.items()),
              "- tasks with several truly best models: "
              + "; ".join(f"{k} {v['tasks_with_tied_best']}" for k, v in truths.items()), "",
              "| model | sweep | linear probe | fixed 20-step fine-tune |", "|---|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{truths[k]['mean'][n]:.1f}" for k in truths) + " |")
    lines.append("")
    if not evaluations:
        lines.append("(Not judged yet.)")
    for label, result in evaluations.items():
        lines += ["## Judged on the " + label + " ground truth", ""] + markdown(result, label, args.resamples)
    (results / "model_selection.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:3]), flush=True)


if __name__ == "__main__":
    main()
