"""The one episodic trainer, used by every method.

It writes a run folder through its :class:`~fewshot.runs.Run` (layout, loading and
crash-consistent writes: :mod:`fewshot.runs.folder`): every file is written atomically,
and the run's state (written last) names the checkpoint it belongs to, so a run killed
or interrupted at any moment resumes from a consistent state. Episodes are indexed by
step (see :mod:`fewshot.data.episodes`) and the RNG state is saved, so a resumed run
ends exactly where an uninterrupted one would. A run that fails before its first
checkpoint leaves nothing behind.

``config.augment`` changes the images of training episodes (never validation's) at
random, from a stream seeded by the run's seed and the step
(:func:`fewshot.data.augment.augment_batch`), so a resumed run stays the same run.

A dataset's task kind (:mod:`fewshot.taskkind`) says how it is validated and what the
best score is: classification datasets by accuracy (higher is better), regression
families (``sinusoid``, see :mod:`fewshot.data.tasks`) by the query mean squared error
(lower is better), environment families by return; the method is built with the
kind's ``task``.

**Devices**: the run's :class:`~fewshot.runtime.Runtime` is resolved once, from the
config's requests and the task kind's device rule (:func:`fewshot.runtime.resolve_runtime`).
The model is built and initialised on the CPU
(the same initial weights on every device), then moved to the runtime's device; the
dataset is copied there once and episodes are gathered there. ``config.precision``
runs each step's loss under autocast, with a gradient scaler for fp16 (its state is
checkpointed). Checkpoints hold CPU tensors only, plus the device's RNG state: a run
trained on a GPU resumes on a CPU and back. Before the first step, a dry run of this
process's share of the meta-batch measures the memory the step needs
(:func:`fewshot.memory.check_step_fits`), so a meta-batch that cannot fit fails at once.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, budget, devices
from .calibration import calibrate, calibration_sampler
from .config import CONSTRAINTS, TrainConfig
from .data import ClassDataset, load_dataset, load_source
from .data.augment import augment_batch, augmentable
from .data.tasks import input_shape, is_generated, make_sampler, splits, task_kind
from .distributed import check_split, from_environment
from .errors import CheckpointError, ConfigError, DataError, StoreError, TrainingError
from .evaluate import evaluate
from .methods import resolved_options
from .memory import check_batch_data_fits, check_step_fits
from .params import validate
from .progress import bar as progress_bar, status
from .runs import Run, build_model, load_weights, model_tensors
from .runs.checkpoint import optimizer_checkpoint, restore_optimizer
from .runs.inputs import describe_data, describe_inputs, preprocessing_of
from .runs.result import TrainResult
from .runtime import Runtime, resolve_runtime
from .store import RunStore, record_run

LOG_EVERY = 50
#: Episodes the temperature of probabilities is fitted on at the end of training.
CALIBRATION_EPISODES = 100


class Trainer:
    """Meta-trains ``config.method`` on episodes and keeps the best checkpoint.

    ``dataset`` may be passed in to share one loaded dataset between runs; otherwise it
    is loaded from ``config.dataset`` (under ``data_root``). A generated task family
    (``sinusoid``) loads nothing: its sampler draws the tasks.

    ``device`` / ``precision`` (default: the config's) say where and how it computes;
    given here, they replace the config's (they are runtime settings, see
    :data:`fewshot.config.RUNTIME`). ``runtime``, instead, is one resolved already
    (:func:`fewshot.runtime.resolve_runtime`); the task kind's device rule still applies.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path, *, dataset: ClassDataset | None = None,
                 backbone: nn.Module | None = None, data_root: str | Path | None = None,
                 runs: str | Path | None = None, device: str | torch.device | None = None,
                 precision: str | None = None, runtime: Runtime | None = None):
        if dataset is not None and not isinstance(dataset, ClassDataset):
            raise ConfigError(f"dataset must be a ClassDataset (fewshot.data.from_arrays or load_dataset), "
                              f"got {type(dataset).__name__}")
        if backbone is not None and not isinstance(backbone, nn.Module):
            raise ConfigError(f"backbone must be an nn.Module mapping images to (batch, features), "
                              f"got {type(backbone).__name__}")
        if runtime is not None and (device is not None or precision is not None):
            raise ConfigError("give a Trainer either a runtime or device/precision, not both")
        overrides = {k: str(v) for k, v in (("device", device), ("precision", precision)) if v is not None}
        if runtime is not None:
            overrides = {"device": runtime.requested, "precision": runtime.precision}
        if overrides:
            config = dataclasses.replace(config, **overrides)
        # What is recorded is what is trained: a dataset passed in names itself (an
        # in-memory one as such), and a module passed in is the backbone.
        config = describe_inputs(config, dataset, backbone)
        self.config, self.run_dir, self.runs, self.backbone = config, Path(run_dir), runs, backbone
        name = config.dataset
        self.kind = task_kind(name)
        # Decided once, with the kind's device rule (reinforcement: "auto" means the CPU).
        if runtime is None:
            runtime = resolve_runtime(config=config, kind=self.kind, what=name)
        self.kind.check_device(runtime.device, name)
        self.runtime, self.device = runtime, runtime.device
        runtime.apply()
        self.metric = self.kind.metric
        if is_generated(name):
            self.dataset = load_source(name, data_root, **config.dataset_options)
        else:
            self.dataset = dataset if dataset is not None else load_dataset(name, data_root, **config.dataset_options)
        way, shot, query = config.train_shape
        self.sampler = make_sampler(name, self.dataset, config.train_split, way, shot, query, seed=config.seed,
                                    device=self.device)
        self.val_sampler = None
        if self.dataset is not None and config.way < 2:  # training may be wider (a recipe's train_way), testing too
            raise ConfigError(f"way must be at least 2: an episode of {config.way} class asks nothing; use --way 2 or more")
        known = splits(name, self.dataset)
        if config.val_split and config.val_split not in known and config.val_split != "val":
            raise ConfigError(f"{name if self.dataset is None else self.dataset.name} has no split '{config.val_split}' to "
                              f"validate on; its splits are: {', '.join(known)} (or pass --val-split none)")
        # Datasets without a "val" split train without validation and keep the last weights.
        if config.val_split in known:
            # A fixed validation suite: the same episodes at every validation; at fewer ways
            # than the test's when the split has fewer classes.
            val_way = config.way if self.dataset is None else self._val_way(config)
            self.val_sampler = make_sampler(name, self.dataset, config.val_split, val_way, config.shot,
                                            config.query, seed=config.seed + 1, device=self.device)
        self.input_shape = input_shape(name, self.dataset)
        if config.augment != "none" and (self.dataset is None or not augmentable(self.input_shape)):
            raise ConfigError(f"augment '{config.augment}' changes images of at least 8x8 pixels; {name} has "
                              f"inputs of shape {tuple(self.input_shape)}: use augment 'none'")
        classes = self.dataset.split_classes(config.train_split) if self.dataset is not None else None
        self.method = build_model(config, self.input_shape, classes, backbone=backbone).to(self.device)
        if not self.method.learns_across_tasks:
            raise ConfigError(f"method '{config.method}' learns nothing across tasks; evaluate it directly")
        self.dist = from_environment(self.device)
        if config.meta_batch < self.dist.world_size:
            raise ConfigError(f"--meta-batch {config.meta_batch} gives {self.dist.world_size} processes nothing to do; "
                              f"use a meta-batch of at least {self.dist.world_size}")
        check_split(self.method, self.dist.world_size)
        self.dist.broadcast_parameters(self.method)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, config.lr_step or 10**12, config.lr_gamma)
        if config.lr_schedule == "cosine":  # MAML++'s outer-rate annealing (config.py)
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, config.episodes, config.lr_min)
        self.scaler = self.runtime.grad_scaler()
        self.state: dict[str, Any] = {
            "step": 0, "checkpoint": None, "best": None, "history": {"train": [], "val": []},
            "seconds": 0.0, "cpu_seconds": 0.0, "image_shape": list(self.input_shape),
            "version": __version__, "done": False, "log": {"loss": 0.0, "accuracy": 0.0, "count": 0},
            "data": describe_data(config, self.dataset), "calibration": None,
            "method_options": resolved_options(self.method),  # every option, defaults included
        }
        if self.dataset is not None:
            self.state["preprocessing"] = preprocessing_of(self.dataset).to_dict()
        self.folder = Run(self.run_dir)  # the run folder: its files, locks and crash-consistent writes

    def _val_way(self, config: TrainConfig) -> int:
        """The way of validation episodes: the test way, or (said on screen) the classes the
        validation split has; one class is refused: a 1-way episode scores 100 % always."""
        have = len(self.dataset.split_classes(config.val_split))
        if have < 2:
            raise ConfigError(f"the '{config.val_split}' split has {have} class; validating {config.way}-way needs "
                              f"{config.way}: hold out more classes (--val-ratio, or --val-classes) or pass "
                              "--val-split none")
        if have < config.way:
            warnings.warn(f"validating {have}-way, not {config.way}-way: the '{config.val_split}' split has only "
                          f"{have} classes (hold out more with --val-ratio, or test at --way {have})", stacklevel=3)
        return min(config.way, have)

    def _optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.method.parameters() if p.requires_grad]
        if self.method.own_step:  # the method computed its update (fewshot.methods.base): applied as given
            if self.config.lr_schedule == "cosine":
                raise ConfigError(f"{self.config.method} computes its own update here; a cosine lr schedule would scale it")
            return torch.optim.SGD(params, lr=1.0)
        if self.config.optimizer == "rmsprop":
            return torch.optim.RMSprop(params, lr=self.config.lr, alpha=0.95, momentum=self.config.momentum,
                                       weight_decay=self.config.weight_decay)
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.config.lr, momentum=self.config.momentum,
                                   weight_decay=self.config.weight_decay)
        return torch.optim.Adam(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    # -- checkpoints ------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        optim_tensors, optimizer = optimizer_checkpoint(self.optimizer)
        tensors = {**model_tensors(self.method), **optim_tensors, **devices.rng_tensors(self.device)}
        name = self.folder.write_checkpoint(self.state["step"], tensors)  # on disk before the state names it
        self.state.update(checkpoint=name, optimizer=optimizer, scheduler=self.scheduler.state_dict(),
                          scaler=self.scaler.state_dict() if self.scaler is not None else None)
        self.folder.commit(self.state)

    def _restore(self) -> None:
        state = self.folder.read_state()
        # A run recorded before folder paths were made absolute names its folder relatively.
        if not describe_inputs(self.folder.config, None, None).same_run(self.config):
            self.folder.check_same_run(self.config)
        if state.get("checkpoint") is None:
            return  # killed before its first checkpoint: start over
        tensors, path = self.folder.weights_of(state, "last")  # CPU tensors whatever device wrote them
        load_weights(self.method, tensors, path)
        best = self.folder.weights_file(state, "best")
        if state.get("best") is not None and not best.is_file():
            raise CheckpointError(f"{best}, the run's best weights, is missing; the run folder is damaged")
        restore_optimizer(state, tensors, path, str(self.folder.state_path), self.optimizer, self.scheduler,
                          self.scaler)
        try:
            # A device stream this device cannot take (a GPU run resumed on the CPU) is left
            # out: episodes come from the sampler's own seeds, so the run stays the same run.
            devices.restore_rng(tensors, self.device)
        except (KeyError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{path} holds no valid RNG state ({e}); the checkpoint is damaged") from None
        self.state = state

    # -- the loop ----------------------------------------------------------------------

    def run(self, *, resume: bool = False, progress: bool = True, record: bool = True,
            pause_at_cpu_minutes: float | None = None) -> TrainResult:
        """Train (or, with ``resume``, continue) the run; the main process holds an
        exclusive lock on the run folder throughout, so a second writer is refused.
        ``pause_at_cpu_minutes`` stops it at that CPU time (counted across resumes), checkpointed, not
        finished, validated or recorded (``result.paused``): a resume continues the same run."""
        validate("Trainer.run", {"pause_at_cpu_minutes": pause_at_cpu_minutes},
                 {"pause_at_cpu_minutes": CONSTRAINTS["cpu_minutes"]})
        if pause_at_cpu_minutes is not None and self.dist.active:  # decided on this process's clock alone
            raise ConfigError("pause_at_cpu_minutes works in one process; stop a distributed run with cpu_minutes")
        made_dir = self.folder.lock(resume) if self.dist.is_main else False
        try:
            return self._run(resume, progress, record, made_dir, pause_at_cpu_minutes)
        finally:
            self.folder.unlock()

    def _run(self, resume: bool, progress: bool, record: bool, made_dir: bool, pause: float | None) -> TrainResult:
        config = self.config
        exists = Run.is_run(self.run_dir)
        self.dist.barrier()  # every process looks before the main one creates anything
        if exists:
            if not resume:
                raise ConfigError(f"{self.run_dir} already holds a run; pass --resume to continue it, or choose another --out")
            self._restore()
            if self.dist.is_main:
                self.folder.remove_leftovers()
            if self._finished():
                return self._finished_before(record)
        elif resume:
            self.folder.check_resumable()
        elif self.dist.is_main:
            try:
                self.folder.write_config(config)
                self.folder.commit(self.state)
            except BaseException:  # a full disk, or a Ctrl-C: leave nothing behind
                self.folder.clean_up(new=True, made_dir=made_dir)
                raise
        self.dist.barrier()  # every process has read the state before the main one writes again
        try:
            return self._train(progress, record, pause)
        except BaseException:
            # A new run that failed before its first checkpoint has nothing to resume
            # from: it is removed, so the same command can simply be run again. Any other
            # run keeps exactly what its state on disk names.
            if self.dist.is_main:
                self.folder.clean_up(new=not exists, made_dir=made_dir)
            raise

    def _train(self, progress: bool, record: bool, pause: float | None) -> TrainResult:
        config = self.config
        start_step = self.state["step"]
        wall, cpu = time.perf_counter(), time.process_time()
        seconds0, cpu0 = self.state["seconds"], self.state["cpu_seconds"]
        log = self.state["log"]
        self.method.train()
        # The process CPU time at which the budget is spent: checked inside a step too (fewshot.budget).
        deadline = None if config.cpu_minutes is None else cpu + 60 * config.cpu_minutes - cpu0
        exhausted = config.cpu_minutes is not None and cpu0 >= 60 * config.cpu_minutes
        paused = pause is not None and cpu0 >= 60 * pause
        if start_step < config.episodes and not (exhausted or paused):
            self._check_memory(start_step, deadline if self.dist.is_main else None)
        devices.reset_peak_memory(self.device)
        with progress_bar(config.episodes, initial=start_step, desc=f"training {config.method}", unit="step",
                          enabled=progress and self.dist.is_main) as bar:
            for step in range(start_step, start_step if exhausted or paused else config.episodes):
                outcome = self._step(step, deadline is not None and time.process_time() >= deadline, deadline)
                if outcome is None:  # the budget ran out inside the step: nothing of it was applied
                    self._stop_in_step(progress, seconds0 + time.perf_counter() - wall, cpu0 + time.process_time() - cpu)
                    break
                loss, acc, out_of_budget = outcome
                log["loss"] += loss
                log["accuracy"] += acc
                log["count"] += 1
                self.state["step"] = step + 1
                if log["count"] == LOG_EVERY or step + 1 == config.episodes:
                    self.state["history"]["train"].append(
                        [step + 1, log["loss"] / log["count"], log["accuracy"] / log["count"]])
                    score = log["accuracy"] / log["count"]  # the run's metric, whatever the key says
                    bar.set_postfix({"loss": f"{log['loss'] / log['count']:.3f}",
                                     **({"acc": f"{score:.1f}"} if self.metric == "accuracy" else
                                        {self.metric: f"{score:.3g}"})})
                    log.update(loss=0.0, accuracy=0.0, count=0)
                self.state["cpu_seconds"] = cpu0 + time.process_time() - cpu
                validate = (step + 1) % config.val_every == 0 or step + 1 == config.episodes or out_of_budget
                if validate and self.dist.is_main:
                    self._validate(progress)
                self.state["seconds"] = seconds0 + time.perf_counter() - wall
                self.state["cpu_seconds"] = cpu0 + time.process_time() - cpu
                paused = pause is not None and not validate and self.state["cpu_seconds"] >= 60 * pause
                if (validate or paused or (step + 1) % config.checkpoint_every == 0) and self.dist.is_main:
                    self._save_checkpoint()
                bar.update()
                if out_of_budget or paused:
                    break
        if paused:  # checkpointed in the loop, or (a resume already past the mark) before this call
            return dataclasses.replace(self._finish(False), paused=True)
        self.state["done"] = True
        if self.dist.is_main:
            if self.state["step"] == start_step and self.state["checkpoint"] is None:
                self._save_checkpoint()
            if self.kind.logits and not self.state.get("calibration"):
                status("calibrating the confidence of the trained model", enabled=progress)
                self.state["calibration"] = self._calibrate()
            self.folder.commit(self.state)
        self.dist.barrier()
        return self._finish(record and self.dist.is_main)

    def _stop_in_step(self, progress: bool, seconds: float, cpu_seconds: float) -> None:
        """End a run whose budget ran out inside a step: the last completed step's weights,
        validated (unless they were) and checkpointed."""
        if self.dist.is_main:
            val, best = self.state["history"]["val"][-1:], self.state["best"] or {}
            if self.state["step"] not in ([v[0] for v in val] if self.val_sampler is not None else [best.get("step")]):
                self._validate(progress)
            self.state.update(seconds=seconds, cpu_seconds=cpu_seconds)
            self._save_checkpoint()

    def _finished(self) -> bool:
        """Whether the restored run has nothing left to do: it ran to its end, and its
        config (which a resume may extend, e.g. more episodes) asks for no more steps or CPU time."""
        c, s = self.config, self.state
        spent = c.cpu_minutes is not None and s["cpu_seconds"] >= 60 * c.cpu_minutes
        return bool(s["done"]) and (s["step"] >= c.episodes or spent)

    def _finished_before(self, record: bool) -> TrainResult:
        """A resumed run that had already finished trains nothing more. It is recorded only
        if the store has no record of it (the store failed when it finished: the remedy
        that message gives is this resume)."""
        recorded = self._record_id() if record and self.dist.is_main else None
        result = self._finish(record and self.dist.is_main and recorded is None)
        return dataclasses.replace(result, finished_before=True,
                                   run_id=recorded if recorded is not None else result.run_id)

    def _record_id(self) -> int | None:
        """The id of this run folder's ``train`` record in the store, or None."""
        here = str(self.run_dir.resolve())
        try:
            return next((r["id"] for r in RunStore(self.runs).list("train") if r["run_dir"] == here), None)
        except StoreError:
            return None

    def _step(self, step: int, out_of_budget: bool, deadline: float | None) -> tuple[float, float, bool] | None:
        """One meta-update; returns the meta-batch's mean loss and accuracy and whether
        (on the main process's clock) the CPU budget is spent, agreed by every process; or
        None, nothing applied and the RNG as before, when the main process's budget ran out
        inside the step (its ``deadline``, :mod:`fewshot.budget`; the others run their share out)."""
        # Training episodes only, seeded by the step: a resumed run changes them as the first did.
        episodes = augment_batch(self.sampler.batch(step, self.config.meta_batch), self.config.augment,
                                 self.config.seed, step)
        mine = episodes[self.dist.rank :: self.dist.world_size]
        self.optimizer.zero_grad(set_to_none=True)
        deadline = deadline if self.dist.is_main else None
        rng = devices.rng_tensors(self.device) if deadline is not None else None
        # Float64 statistics, kept on the host: they are five numbers (MPS has no float64).
        stats = torch.zeros(5, dtype=torch.float64)
        if mine:
            try:
                with self.runtime.autocast(), budget.cpu_deadline(deadline):
                    loss, metrics = self.method.loss(mine)
            except budget.OutOfBudget:
                stats[4] = 1.0
            else:
                # This process's share of the mean over the whole meta-batch.
                share = loss.float() * (len(mine) / len(episodes))
                (self.scaler.scale(share) if self.scaler is not None else share).backward()
                stats[:3] = torch.tensor([loss.item() * len(mine), metrics.get(self.metric, math.nan) * len(mine),
                                          len(mine)])
        stats[3] = float(out_of_budget and self.dist.is_main)
        if self.dist.active:
            # Summed before the scaler looks for overflow, so every process skips the same steps.
            self.dist.all_reduce_gradients(self.method.parameters())
            self.dist.all_reduce_(stats)
        if stats[4] > 0:  # abandoned by the main process: every process drops the step
            self.optimizer.zero_grad(set_to_none=True)
            if rng is not None:
                devices.restore_rng(rng, self.device)
            return None
        mean_loss = float(stats[0] / stats[2])
        if not math.isfinite(mean_loss):
            raise TrainingError(f"training loss became {mean_loss} at step {step}; lower --lr and train again"
                                + (" (or use --precision bf16 or fp32)" if self.config.precision == "fp16" else ""))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped (and the scale lowered) if a gradient overflowed
            self.scaler.update()
            with warnings.catch_warnings():  # a skipped step is the scaler's design, not a misuse of the scheduler
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                self.scheduler.step()
        else:
            self.optimizer.step()
            self.scheduler.step()
        return mean_loss, float(stats[1] / stats[2]), bool(stats[3] > 0)

    def _check_memory(self, step: int, deadline: float | None) -> None:
        """Fail before training if this process's share of a meta-batch cannot fit (see
        :func:`fewshot.memory.check_step_fits`); every process agrees on the verdict. A dry
        run the CPU budget (``deadline``) cuts short passes: the first step then stops at once.
        Reinforcement runs are not checked: their rollouts and small policies live on the host."""
        if self.kind.host_only:
            return
        # Every process draws the whole meta-batch: its data must fit before it is drawn.
        problem = check_batch_data_fits(self.sampler.batch(step, 1), self.config.meta_batch, self.device)
        if problem is None:
            episodes = self.sampler.batch(step, self.config.meta_batch)
            mine = episodes[self.dist.rank :: self.dist.world_size]
            try:
                with budget.cpu_deadline(deadline):
                    problem = check_step_fits(self.method, mine, self.device, self.config.precision,
                                              optimizer_slots={"adam": 2, "rmsprop": 2}.get(self.config.optimizer, 1),
                                              meta_batch=self.config.meta_batch)
            except budget.OutOfBudget:
                problem = None
        verdict = torch.tensor([0.0 if problem is None else 1.0])
        self.dist.all_reduce_(verdict)
        if problem is not None:
            raise ConfigError(problem)
        if verdict.item() > 0:
            raise ConfigError("another process's share of the meta-batch does not fit its device; see its message")

    def _validate(self, progress: bool) -> None:
        """Validation on the fixed suite (accuracy, or MSE for regression); keeps the best
        weights (the last, without a val split)."""
        step = self.state["step"]
        result = None
        if self.val_sampler is not None:
            with devices.fork_rng(self.device):  # validation must not shift the training RNG stream
                result = evaluate(self.method, self.val_sampler, self.config.val_episodes, progress=progress,
                                  desc="validating", device=self.device, precision=self.config.precision)
            self.method.train()
            self.state["history"]["val"].append([step, result.value, result.ci95])
        best = self.state["best"]
        if result is None or best is None or result.better_than(best.get(self.metric)):
            name = self.folder.write_best(step, model_tensors(self.method))
            # Recorded in the state by the checkpoint that always follows a validation.
            self.state["best"] = {"step": step, "file": name, self.metric: result.value if result else None,
                                  "ci95": result.ci95 if result else None}

    def _calibrate(self) -> dict:
        """The temperature of the weights the run ships (best, else last), fitted on the
        validation split's episodes (see :mod:`fewshot.calibration`)."""
        try:
            sampler, split = calibration_sampler(self.dataset, self.config)
        except (ConfigError, DataError) as e:  # e.g. too few images per class for the suite
            return {"temperature": 1.0, "fitted": False, "why": str(e)}
        with torch.random.fork_rng():  # building a model reseeds; the run's RNG stream stays as saved
            model = build_model(self.config, self.input_shape, backbone=copy.deepcopy(self.backbone))
            tensors, path = self.folder.weights_of(self.state, "best")
            load_weights(model, tensors, path)
            return calibrate(model, sampler, min(self.config.val_episodes, CALIBRATION_EPISODES), split)

    def _finish(self, record: bool) -> TrainResult:
        images_per_step = self.config.meta_batch * self.sampler.way * sum(self.config.train_shape[1:])
        best = self.state["best"] or {}
        steps = self.state["step"]
        seconds, cpu_seconds = self.state["seconds"], self.state["cpu_seconds"]
        peak, peak_kind = devices.peak_memory(self.device)
        scores = {"best_accuracy": None, self.kind.best_key: best.get(self.metric)}  # the kind's field holds it
        result = TrainResult(self.run_dir, steps, best_ci95=best.get("ci95"), seconds=seconds, cpu_seconds=cpu_seconds,
                             images_per_second=images_per_step * steps / seconds if seconds > 0 else math.nan,
                             metric=self.metric, **scores, device=str(self.device), peak_memory_kind=peak_kind,
                             peak_memory_mb=None if peak is None else round(peak / 2**20, 1))
        if record:
            c = self.config
            metrics = {"steps": steps, f"val_{self.metric}": best.get(self.metric), "val_ci95": result.best_ci95,
                       "metric": self.metric, "best_step": best.get("step"), "images_per_second": result.images_per_second,
                       "final_loss": (self.state["history"]["train"] or [[0, math.nan]])[-1][1],
                       "device": devices.describe(self.device), "precision": c.precision,
                       "peak_memory_mb": result.peak_memory_mb, "peak_memory_kind": peak_kind}
            try:
                result.run_id = record_run("train", runs=self.runs, config=c.to_dict(), metrics=metrics,
                                           method=c.method, dataset=c.dataset, split=c.train_split, seed=c.seed,
                                           run_dir=str(self.run_dir.resolve()), seconds=seconds, cpu_seconds=cpu_seconds)
            except StoreError as e:  # the trained run is safe in its folder; only its record is missing
                result.record_error = str(e)
        return result

