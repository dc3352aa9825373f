"""One word per concept: what each flag of the ``fewshot`` command means, declared once.

Every flag of every command is declared in :data:`FLAGS` with the setting it fills
(argparse's ``dest``), the kind of value it takes and what it means; :func:`problems`
checks the parser against the table, so a word that takes a count in one command and a
folder in another (``--query`` before issue 28) cannot come back, and a new flag is
declared (and its word thought about) before it ships. Old spellings stay for a while as
deprecated aliases (:func:`fewshot.cli.flags.deprecated`), listed in :data:`DEPRECATED`:
they do what the new flag does and warn once, ``fewshot: warning: --query is deprecated,
use --queries``.

The words, where two concepts were close: ``--query N`` is a count (query examples per
class of an episode), ``--queries`` the query images of your own task; ``--episodes`` the
length of a loop over episodes (training steps, or test episodes); ``--inner-steps K`` the
adaptation steps of an inner loop, whose bound is ``--max-steps``; ``-o/--option`` sets
what the command runs (the method or its transfer strategy), ``--X-option`` the part X
(backbone, head, metadata); ``--split-scheme`` names how a dataset is split, ``--X-split``
one split; ``--meta`` is the meta-dataset file, ``--metadata`` a model's description.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Iterable

#: The kinds of value a flag takes: an integer, a real number, nothing (a switch), repeated
#: KEY=VALUE settings, a choice among names, or text (a name, a path; one or several).
KINDS = ("count", "number", "switch", "settings", "choice", "text")


@dataclass(frozen=True)
class Flag:
    """What a flag means: the setting it fills (``dest``), its value's ``kind`` (:data:`KINDS`)
    and ``metavar`` (None: argparse's default, or any), and the ``concept`` in words."""

    dest: str
    kind: str
    concept: str
    metavar: str | None = None


def _data(dest: str, concept: str, kind: str = "text", metavar: str | None = None) -> Flag:
    return Flag(dest, kind, concept, metavar)


FLAGS: dict[str, Flag] = {
    # -- what to run on -------------------------------------------------------------------------
    "--dataset": Flag("dataset", "text", "the dataset (or task family) by name"),
    "--env": Flag("dataset", "text", "the dataset, said of an environment family (maml-rl)"),
    "--style": Flag("style", "text", "a style of the dataset's images: --dataset D --style S is D:S", "STYLE"),
    "--data-root": Flag("data_root", "text", "the folder holding datasets"),
    "--split-scheme": Flag("split_scheme", "text", "how a dataset's classes are split (vinyals, ...)", "SCHEME"),
    "--path": _data("path", "a folder dataset's folder or CSV"),
    "--image-size": Flag("image_size", "count", "pixels a side images are resized to"),
    "--channels": Flag("channels", "count", "image channels: 1 grey, 3 RGB"),
    "--rotations": Flag("rotations", "switch", "rotated copies of the classes as extra classes"),
    "--no-rotations": Flag("rotations", "switch", "no rotated copies"),
    "--train-classes": _data("train_classes", "the classes of a folder dataset to train on", metavar="A,B,..."),
    "--val-classes": _data("val_classes", "the classes of a folder dataset to validate on", metavar="A,B,..."),
    "--test-classes": _data("test_classes", "the classes of a folder dataset held out", metavar="A,B,..."),
    "--val-ratio": Flag("val_ratio", "number", "fraction of classes held out for validation"),
    "--test-ratio": Flag("test_ratio", "number", "fraction of classes held out for testing"),
    "--split-seed": Flag("split_seed", "count", "seed of a folder dataset's class split"),
    "--train-split": Flag("train_split", "text", "the split to train on"),
    "--val-split": Flag("val_split", "text", "the split to validate (score) on"),
    "--eval-split": Flag("eval_split", "text", "the split to test on"),
    "--embed-split": Flag("embed_split", "text", "the split the embedding maps show"),
    # -- episodes -------------------------------------------------------------------------------
    "--way": Flag("way", "count", "classes per episode (task)"),
    "--shot": Flag("shot", "count", "labelled (support) examples per class"),
    "--query": Flag("query", "count", "query examples per class of an episode"),
    "--train-way": Flag("train_way", "count", "classes per training episode"),
    "--train-shot": Flag("train_shot", "count", "support examples per class in training"),
    "--train-query": Flag("train_query", "count", "query examples per class in training"),
    "--episodes": Flag("episodes", "count", "how many episodes the command's loop runs: meta-training steps "
                       "(train, tune, demo, zoo build) or test episodes (evaluate)"),
    "--seed": Flag("seed", "count", "seed of the command's random draws"),
    "--domains": Flag("domains", "text", "target domains to test on too (a dataset, or DATASET:STYLE)", "DOMAIN"),
    "--within-groups": Flag("within_groups", "switch", "each episode's classes from one group of the dataset"),
    # -- what runs: methods, parts and their options ------------------------------------------------
    "--option": Flag("option", "settings", "an option of what the command runs: the method, or its transfer "
                     "strategy", "KEY=VALUE"),
    "-o": Flag("option", "settings", "short for --option", "KEY=VALUE"),
    "--backbone": Flag("backbone", "text", "the network that gives features"),
    "--backbone-option": Flag("backbone_option", "settings", "an option of the backbone", "KEY=VALUE"),
    "--head": Flag("head", "text", "a test-time head on a model's features", "HEAD"),
    "--head-option": Flag("head_option", "settings", "an option of the head", "KEY=VALUE"),
    "--adapt": Flag("adapt", "text", "a transfer strategy to adapt a trained model with", "STRATEGY"),
    "--distance": Flag("distance", "choice", "distance to class prototypes"),
    "--inner-steps": Flag("inner_steps", "count", "adaptation steps of an inner loop (MAML family)", "K"),
    "--adapt-steps": Flag("inner_steps", "count", "adaptation steps of maml-rl's evaluation (--inner-steps)", "K"),
    "--max-steps": Flag("max_steps", "count", "the bound on inner-loop and fine-tuning step counts", "N"),
    "--inner-lr": Flag("inner_lr", "number", "learning rate of the inner loop"),
    "--first-order": Flag("first_order", "switch", "first-order meta-gradient"),
    "--rollouts": Flag("rollouts", "count", "rollouts per adaptation step (maml-rl)"),
    # -- training -------------------------------------------------------------------------------
    "--config": Flag("config", "text", "a JSON file of training settings"),
    "--resume": Flag("resume", "text", "a run folder to continue", "RUN_DIR"),
    "--meta-batch": Flag("meta_batch", "count", "episodes per meta-training step"),
    "--augment": Flag("augment", "choice", "random changes to training images"),
    "--optimizer": Flag("optimizer", "choice", "the outer-loop optimiser"),
    "--momentum": Flag("momentum", "number", "momentum of the outer optimiser"),
    "--lr": Flag("lr", "number", "the outer learning rate"),
    "--lr-step": Flag("lr_step", "count", "steps between learning-rate decays"),
    "--cpu-minutes": Flag("cpu_minutes", "number", "CPU budget of a training run"),
    "--val-every": Flag("val_every", "count", "steps between validations"),
    "--val-episodes": Flag("val_episodes", "count", "episodes of one validation"),
    "--checkpoint-every": Flag("checkpoint_every", "count", "steps between checkpoints"),
    "--nproc": Flag("nproc", "count", "processes one meta-batch is split over (torch.distributed)"),
    "--weights": Flag("weights", "choice", "a run's best or last checkpoint"),
    # -- where things are -------------------------------------------------------------------------
    "--out": Flag("out", "text", "where the command writes its result (a folder or file)"),
    "--runs": Flag("runs", "text", "the runs folder, which holds the run store"),
    "--zoo": Flag("zoo", "text", "the model zoo's folder"),
    "--meta": Flag("meta", "text", "the meta-dataset file of model selection"),
    "--metadata": Flag("metadata", "text", "a JSON file describing a model"),
    "--metadata-option": Flag("metadata_option", "settings", "a field of a model's description", "KEY=VALUE"),
    "--support": Flag("support", "text", "your task's labelled images: one sub-folder per class", "FOLDER"),
    "--queries": Flag("queries", "text", "your task's query images (files or folders)"),
    "--selection": Flag("selection", "text", "a file of model-selection results", "FILE"),
    # -- how it computes --------------------------------------------------------------------------
    "--device": Flag("device", "text", "where the command computes (auto, cpu, cuda, cuda:N, mps)", "DEVICE"),
    "--precision": Flag("precision", "choice", "fp32, or autocast to bf16 / fp16"),
    "--tf32": Flag("tf32", "switch", "TF32 matmuls on GPUs"),
    "--no-tf32": Flag("tf32", "switch", "no TF32"),
    "--deterministic": Flag("deterministic", "switch", "deterministic algorithms"),
    "--no-deterministic": Flag("deterministic", "switch", "no deterministic algorithms"),
    "--workers": Flag("workers", "count", "worker processes"),
    # -- what it prints -----------------------------------------------------------------------------
    "--json": Flag("json", "switch", "the result as one JSON document on stdout (fewshot.cli.schemas)"),
    "--quiet": Flag("quiet", "switch", "no progress or status lines"),
    "-q": Flag("quiet", "switch", "short for --quiet"),
    "--per-episode": Flag("per_episode", "switch", "with --json, each episode's score"),
    # -- one command's own ---------------------------------------------------------------------------
    "--quick": Flag("quick", "switch", "demo: a tiny run, to check the set-up"),
    "--format": Flag("format", "choice", "export: fewshot, or the Hugging Face folder form"),
    "--projection": Flag("projection", "choice", "report: the 2-D projection of embeddings"),
    "--space": Flag("space", "settings", "tune: a dimension of the search", "NAME=RANGE"),
    "--trials": Flag("trials", "count", "tune: trials to run"),
    "--sampler-seed": Flag("sampler_seed", "count", "tune: seed of the search"),
    "--classes": Flag("classes", "count", "advise: classes of the meta-training set"),
    "--images-per-class": Flag("images_per_class", "number", "advise: images per class of the meta-training set"),
    "--cross-domain": Flag("cross_domain", "switch", "advise: the new tasks come from another domain"),
    "--rules": Flag("rules", "switch", "advise: the documented rules only"),
    "--kind": Flag("kind", "text", "runs: only records of this kind"),
    "--method": Flag("method", "text", "runs: only records of this method"),
    "--check": Flag("check", "switch", "zoo list: load and check every model"),
    "--image-shape": Flag("image_shape", "count", "zoo add: the input a model takes, C H W"),
    "--bn": Flag("bn", "choice", "zoo add: BatchNorm statistics on new tasks"),
    "--overwrite": Flag("overwrite", "switch", "zoo add: replace a model of the same name"),
    "--preset": Flag("preset", "choice", "zoo build: which zoo"),
    "--only": Flag("only", "text", "zoo build: only these models", "NAME"),
    "--tasks": Flag("tasks", "count", "select build: tasks of the meta-dataset"),
    "--sources": Flag("sources", "choice", "select build: where tasks come from"),
    "--target": Flag("target", "choice", "select: the accuracy predicted (after finetune or linear-probe)"),
    "--verify": Flag("verify", "count", "select: adapt the top K models for real", "K"),
    "--resamples": Flag("resamples", "count", "select evaluate: bootstrap resamples"),
    "--all-zoos": Flag("all_zoos", "switch", "select monitor: verifications of every zoo"),
}

#: Old spellings, kept as deprecated aliases, and the flag each became.
DEPRECATED: dict[str, str] = {
    "--query": "--queries",  # predict, select: the query images (a count everywhere else)
    "--split": "--split-scheme",  # a split scheme, where --X-split names one split
    "--meta-option": "--metadata-option",  # "meta" is the meta-dataset (--meta)
    "-m": "--metadata-option",
    "--steps": "--episodes",  # zoo build: training steps, which train calls --episodes
}


def kind_of(action: argparse.Action) -> str:
    """The :data:`KINDS` entry of the value ``action`` takes."""
    if action.nargs == 0:
        return "switch"
    if action.type is int:
        return "count"
    if action.type is float:
        return "number"
    if isinstance(action, argparse._AppendAction) and action.metavar and "=" in action.metavar:
        return "settings"
    return "choice" if action.choices is not None else "text"


def problems(commands: Iterable[tuple[str, argparse.ArgumentParser]]) -> list[str]:
    """Every departure of the commands' flags from :data:`FLAGS` and :data:`DEPRECATED`: a flag
    not declared, one used with another setting, kind or metavar than declared (a word with two
    meanings), a deprecated spelling shown in the help or without its replacement beside it, and
    a declared flag no command has."""
    found, seen = [], set()
    for name, parser in commands:
        by_flag = {s: a for a in parser._actions for s in a.option_strings}
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            replacement = getattr(action, "replacement", None)
            for flag in action.option_strings:
                where = f"`fewshot {name}` {flag}"
                if replacement is not None:  # an old spelling
                    new = by_flag.get(replacement)
                    if DEPRECATED.get(flag) != replacement:
                        found.append(f"{where}: deprecated for {replacement}, but DEPRECATED does not say so")
                    if new is None or new.dest != action.dest:
                        found.append(f"{where}: its replacement {replacement} is not there with dest {action.dest}")
                    if action.help != argparse.SUPPRESS:
                        found.append(f"{where}: deprecated, yet shown in the help")
                    continue
                seen.add(flag)
                meaning = FLAGS.get(flag)
                if meaning is None:
                    found.append(f"{where}: not declared in fewshot.cli.words.FLAGS")
                    continue
                if action.dest != meaning.dest:
                    found.append(f"{where}: sets {action.dest}, but the word means {meaning.dest} ({meaning.concept})")
                if kind_of(action) != meaning.kind:
                    found.append(f"{where}: takes a {kind_of(action)}, but the word takes a {meaning.kind} "
                                 f"({meaning.concept})")
                metavar = action.metavar if isinstance(action.metavar, str) or action.metavar is None else None
                if meaning.metavar is not None and metavar != meaning.metavar:
                    found.append(f"{where}: shows {metavar or action.dest.upper()}, but the word shows "
                                 f"{meaning.metavar}")
    found += [f"{flag}: declared in FLAGS, but no command has it" for flag in sorted(set(FLAGS) - seen)]
    return found


__all__ = ["DEPRECATED", "FLAGS", "Flag", "KINDS", "kind_of", "problems"]
