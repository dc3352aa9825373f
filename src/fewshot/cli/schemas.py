"""What each command prints with ``--json``: one JSON document on stdout, its keys documented here, once.

A command's document is a JSON object, or a list of objects (``many``), with the
:class:`Document`'s ``keys`` always and its ``optional`` keys where the case arises (a
regression suite has ``mse`` where a classification one has ``accuracy``). The keys are
stable: a script may rely on them; a key is added to a document here before any command
prints it, and none is renamed or removed without a deprecation. Undefined numbers (the
interval of a single episode) are ``null`` (:mod:`fewshot.cli.output`). Progress and status
lines go to stderr, never into the document.

``tests/test_cli_json.py`` runs every command with ``--json`` and checks its document
against :data:`JSON_OUTPUT`, and fails on a command (from the parser) missing here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Document:
    """One command's ``--json`` document: ``summary`` says what it is; ``keys`` (name -> what it
    holds) are always present, ``optional`` ones in some cases; ``many``: a list of such objects."""

    summary: str
    keys: Mapping[str, str]
    optional: Mapping[str, str] = field(default_factory=dict)
    many: bool = False

    def problems(self, document: Any) -> list[str]:
        """What in ``document`` (parsed JSON) departs from this description (empty: nothing)."""
        if self.many and not isinstance(document, list):
            return [f"a list of objects, not {type(document).__name__}"]
        found = []
        for item in document if self.many else [document]:
            if not isinstance(item, dict):
                return [f"an object, not {type(item).__name__}"]
            missing = sorted(set(self.keys) - set(item))
            unknown = sorted(set(item) - set(self.keys) - set(self.optional))
            found += [f"missing key {k!r}" for k in missing] + [f"undocumented key {k!r}" for k in unknown]
        return sorted(set(found))


# -- shared parts ---------------------------------------------------------------------------------

_RUN_ROW = {
    "id": "the record's id in the run store (`fewshot runs show ID`)",
    "kind": "train, evaluate, tune-trial, select-verify, ...",
    "created": "when it was recorded, ISO 8601 with the UTC offset",
    "method": "the method (or head, or model) the record is of; null where none",
    "dataset": "the dataset; null where none",
    "split": "the split evaluated or validated on; null where none",
    "seed": "the seed; null where none",
    "run_dir": "the run folder, absolute; null where none",
    "config": "the settings the run was made with (an object)",
    "metrics": "its results (an object: accuracy, ci95, way, shot, ... for an evaluation; steps, val_accuracy, "
               "... for training)",
    "seconds": "wall-clock seconds", "cpu_seconds": "CPU seconds of the process",
    "host": "the machine (hostname, platform)", "version": "the fewshot version that recorded it",
}

_ZOO_ENTRY = {
    "name": "the model's name in the zoo",
    "file": "its weights file, in the zoo folder", "sha256": "SHA-256 of the weights file",
    "metadata_sha256": "SHA-256 of its metadata file", "added": "when it was added, ISO 8601",
    "architecture": "the backbone (conv4, resnet12, mlp, hf:..., a registered one)",
    "parameters": "number of parameters", "feature_dim": "length of its feature vector",
    "image_shape": "the input it takes, [channels, height, width]",
    "objective": "what it was trained for (protonet, baseline, supervised, random-init, ...)",
    "source": "the data it was trained on",
}

_OPTIONS = "its options: {name: {default, required, type, constraint}}"

_EVALUATION = {
    "method": "the method, or method+strategy, or backbone+head, evaluated",
    "dataset": "the dataset", "split": "the split the episodes come from",
    "way": "classes per episode", "shot": "support examples per class", "query": "query examples per class",
    "episodes": "number of episodes",
    "metric": "what is measured: accuracy (%), mse or return; the key of that name holds the mean",
    "ci95": "half-width of the 95% confidence interval of the mean (null for one episode)",
    "seconds": "wall-clock seconds", "device": "where it ran", "precision": "fp32, bf16 or fp16",
    "peak_memory_mb": "peak memory in MB (null where not measured)",
    "head": "the test-time head (null: the method's own adaptation)", "head_options": "the head's options, or null",
    "transductive": "whether a query's prediction depended on the episode's other queries",
    "base_features": "what a head that centres on base-class features was given, or null",
}

# -- every command ----------------------------------------------------------------------------------

JSON_OUTPUT: dict[str, Document] = {
    "train": Document("the finished (or already finished) run", {
        "method": "the method trained", "dataset": "the dataset", "run_dir": "the run folder",
        "run_id": "its record in the run store (null: not recorded)", "steps": "meta-training steps done",
        "metric": "the validation metric: accuracy, mse or return",
        "best": "the best validation score in that metric (null: no validation split)",
        "best_ci95": "its 95% interval half-width, or null", "seconds": "wall-clock seconds of this call",
        "cpu_seconds": "CPU seconds, counted across resumes", "images_per_second": "training throughput",
        "device": "where it trained", "peak_memory_mb": "peak memory in MB, or null",
        "finished_before": "true: the run had finished before this call; nothing was trained or recorded",
    }),
    "evaluate": Document("the result on the suite of test episodes", _EVALUATION, optional={
        "accuracy": "classification: mean accuracy in %", "mse": "regression: mean query MSE",
        "return": "reinforcement: mean return after the last adaptation step",
        "by_step": "reinforcement: [{steps, return, ci95}] after 0..K adaptation steps",
        "within_groups": "true: each episode's classes came from one group (--within-groups)",
        "per_episode": "with --per-episode: each episode's score",
        "per_episode_by_step": "reinforcement, with --per-episode: each episode's return after each step",
    }),
    "methods": Document("every registered method (or the one named)", {
        "name": "the method's name", "summary": "what it does, in a sentence",
        "tasks": "the task kinds it solves", "learns_across_tasks": "whether `fewshot train` meta-trains it",
        "needs_backbone": "whether it needs a trained network", "test_mode": "how it adapts at test time",
        "options": _OPTIONS}, many=True),
    "heads": Document("every test-time head (or the one named)", {
        "name": "the head's name", "summary": "what it does, in a sentence",
        "transductive": "whether it sees all queries of an episode at once",
        "uses_base_features": "whether it centres on the training split's features", "options": _OPTIONS},
        many=True),
    "data list": Document("the datasets and task families fewshot knows", {
        "name": "the name --dataset takes", "kind": "dataset, or task family (generated tasks)",
        "summary": "what it is, in a sentence"}, many=True),
    "data info": Document("one dataset's splits", {
        "name": "the dataset", "image_shape": "[channels, height, width]",
        "splits": "{split: {classes, images, min_per_class, max_per_class}}"}),
    "runs": Document("the recorded runs, oldest first", _RUN_ROW, many=True),
    "runs list": Document("the recorded runs, oldest first (as `fewshot runs`)", _RUN_ROW, many=True),
    "runs show": Document("one recorded run", _RUN_ROW),
    "demo": Document("the demo's figures", {
        "dataset": "digits or omniglot", "device": "where it ran", "out": "the demo's folder",
        "accuracy": "{shots: {method: test accuracy in %}} for 1 and 5 shots",
        "your_task": "the fitted model on new classes: {accuracy (0-1), images, confidence (0-1)}"}),
    "export": Document("the written model", {
        "model": "what was exported (method, or backbone+head)", "out": "the file or folder written",
        "format": "fewshot or hf", "image_shape": "the input it takes, [channels, height, width]",
        "calibration": "{fitted, temperature, episodes, split}: how its probabilities were calibrated",
        "classes": "the classes of a model fitted with --support (it predicts without one), else null"}),
    "predict": Document("one object per query image", {
        "path": "the image file", "label": "the predicted class (a support sub-folder's name)",
        "probability": "the calibrated probability of that class",
        "probabilities": "{class: probability} for every class"}, many=True),
    "report": Document("the written report", {
        "path": "the page (index.html)", "figures": "{figure: PNG file} of the figures drawn",
        "missing": "{figure: why it has no data} of those not drawn"}),
    "tune": Document("the search so far (this call's trials and earlier ones of the same --out)", {
        "study": "the study's name in the runs folder's tune.sqlite",
        "best": "the best trial: {number, params, val_accuracy, val_ci95, config}",
        "trials": "every trial: {number, state, params, val_accuracy, val_ci95, run_dir} (and error, if failed)",
        "config_path": "best.json, for `fewshot train --config`", "summary_path": "tune.json"}),
    "advise": Document("the recommendation", {
        "method": "the method to use", "strategy": "the transfer strategy to adapt with, or null",
        "expected_accuracy": "the accuracy to expect in %, or null (the rules give none)",
        "ci95": "its interval half-width, or null", "source": "records (the run store) or rules",
        "reasons": "why, one sentence each", "evidence": "the nearest evaluate records the advice rests on",
        "setting": "the problem asked about: {way, shot, classes, images_per_class, cross_domain}"}),
    "zoo list": Document("the zoo's models, by name", _ZOO_ENTRY, many=True),
    "zoo add": Document("the added model's index entry", {"zoo": "the zoo folder", **_ZOO_ENTRY}),
    "zoo build": Document("the built zoo", {
        "zoo": "the zoo folder", "preset": "the preset built", "models": "the names of every model in the zoo",
        "cpu_seconds": "CPU seconds of this build"}),
    "select": Document("the zoo ranked for your task", {
        "support": "the support folder", "way": "classes of the task", "images": "support images",
        "shots": "images per class", "target": "the accuracy predicted: after finetune or linear-probe",
        "meta_rows": "meta-dataset rows the meta-learner was fitted on",
        "meta_learner": "which meta-learner ranked: {source (shipped or built), description, file}, and for the "
                        "shipped one trained_on",
        "selection_cpu_seconds": "CPU seconds of the selection",
        "finetune_all_cpu_seconds_estimate": "CPU seconds fine-tuning every model would take, on average",
        "ranking": "best first: [{rank, model, rank_score, predicted_accuracy, uncertainty, interval, coverage, "
                   "selection_cpu_seconds}], with measured_accuracy and protocol for the verified ones, and with the "
                   "shipped meta-learner outside_training (the meta-features outside its training range)"},
        optional={"monitor": "with --verify: the meta-learner's running error {verifications, rmse, mean_error, "
                             "rmse_last_10}"}),
    "select build": Document("the meta-dataset", {
        "path": "the meta-dataset file", "total": "its rows", "tasks": "tasks", "models": "models",
        "added": "rows added by this call", "workers": "processes used", "seconds": "wall-clock seconds",
        "cpu_seconds": "CPU seconds"}),
    "select evaluate": Document("the meta-learner against every baseline, leave-one-group-out", {
        "tasks": "tasks", "models": "models", "rows": "rows used", "groups": "the task groups held out in turn",
        "report": "{selector: {measure: {mean, low, high}}}: Kendall tau, regret, ... with bootstrap intervals",
        "cost": "CPU seconds of selecting against fine-tuning every model",
        "target": "the ground truth: finetune or linear-probe", "meta": "the meta-dataset file",
        "zoo": "the zoo folder"}),
    "select monitor": Document("the recorded verifications of the meta-learner", {
        "verifications": "[{id, created, model, predicted, measured, error, running_rmse}], oldest first",
        "summary": "{verifications, rmse, mean_error, rmse_last_10} (only verifications when there are none)"}),
}


def check_document(command: str, document: Any) -> list[str]:
    """What in ``command``'s parsed ``--json`` output departs from its documented keys."""
    return JSON_OUTPUT[command].problems(document)


__all__ = ["Document", "JSON_OUTPUT", "check_document"]
