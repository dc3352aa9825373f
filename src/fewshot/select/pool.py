"""Building the meta-dataset: many tasks × every zoo model, with the ground truth, in parallel.

For each task (:mod:`.tasks`) and each model of a :class:`~fewshot.select.index.Zoo` the
build records one row in the store (:mod:`.metastore`): the task's and model's
meta-features and scores (:mod:`.metafeatures`), the query accuracy after a linear probe
and after fine-tuning (:mod:`.measure`), and the costs in CPU seconds: support features,
scores (together: what selection costs), linear probe (beyond the support features: the
fit and the query features), fine-tuning (what trying every model costs). A model whose
weights or metadata changed since its rows were computed has them recomputed.

**Parallel.** With ``workers > 1`` the (task, model) work is spread over processes
(``ProcessPoolExecutor``, spawn, one thread each): the main process lists the pairs not
yet done, grouped by task, and each idle worker takes the next task and computes its
missing models (features, task meta-features and the episode are computed once per
task). Rows go straight from the workers to the database. **Workers die with their
parent**: on Linux each asks the kernel for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), and on every system a watchdog thread ends the worker
when its parent process is gone, so a killed build never leaves workers writing rows.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import resource
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from ..progress import bar as progress_bar

from ..errors import ConfigError, FewShotError, TrainingError
from ..models.pretrained import Pretrained
from .index import Zoo
from .measure import measure
from .metafeatures import describe_task, selection_row
from .metastore import MetaStore, default_meta_path
from .tasks import MAX_SUPPORT, SOURCES, TaskSource, TaskSpec, sample_tasks

META_FORMAT = "fewshot-meta"
META_VERSION = 2  # 2: a sixth task group (eval-rotated), score.knn_view, task.domain.*, hashes of metadata


@dataclass
class BuildSettings:
    """What defines a meta-dataset's rows (stored with them; a resume must match)."""

    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    seed: int = 0
    finetune: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": META_FORMAT, "version": META_VERSION, "sources": sorted(self.sources), "seed": self.seed,
                "finetune": self.finetune, "max_support": MAX_SUPPORT}


class _Job:
    """The work of one process: episodes, models and the store, each opened once."""

    def __init__(self, zoo_root: str, meta_path: str, settings: dict, data_root: str | None, worker: int):
        self.zoo = Zoo(zoo_root)
        self.store = MetaStore(meta_path)
        self.settings = settings
        self.source = TaskSource(settings["sources"], settings["seed"], data_root)
        self.worker = worker
        self._models: dict[str, tuple[Pretrained, str]] = {}

    def model(self, name: str) -> tuple[Pretrained, str]:
        if name not in self._models:
            self._models[name] = (self.zoo.load(name), self.zoo.fingerprint(name))
        return self._models[name]

    def run(self, task: TaskSpec, models: Sequence[str]) -> int:
        """Compute and store the rows of ``task`` for ``models``; returns how many were added."""
        episode = self.source.episode(task)
        described = describe_task(episode.support_x, episode.support_y, self.source.groups[task.group].dataset)
        added = 0
        for name in models:
            model, sha = self.model(name)
            try:
                row, costs, features = selection_row(model, episode.support_x, episode.support_y)
                args = (model, episode.support_x, episode.support_y, episode.query_x, episode.query_y, episode.way)
                acc_lp, cpu_lp = measure(*args, "linear-probe", support_features=features)
                acc_ft, cpu_ft = measure(*args, "finetune", self.settings["finetune"])
            except FewShotError as e:
                raise type(e)(f"task {task.task}, model {name}: {e}") from None
            added += self.store.insert({
                "task": task.task, "model": name, "grp": task.group, "model_sha256": sha,
                "features": json.dumps({**described, **row}, sort_keys=True), "accuracy_lp": acc_lp,
                "accuracy_ft": acc_ft, **costs, "cpu_lp": cpu_lp, "cpu_ft": cpu_ft, "worker": self.worker,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return added


_WORKER: dict[str, _Job] = {}


def _die_with(parent: int) -> None:
    """End this process when ``parent`` dies: the kernel's parent-death signal on Linux, and
    a watchdog thread everywhere (it also covers the moment before the signal was armed)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass  # the watchdog below still ends the worker
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)  # no cleanup: the store's rows are committed one transaction at a time

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _init_worker(zoo_root: str, meta_path: str, settings: dict, data_root: str | None, parent: int) -> None:
    _die_with(parent)
    # One thread per process: the processes are the parallelism, and tiny models lose
    # more to a busy thread pool than they gain from it.
    torch.set_num_threads(1)
    _WORKER["job"] = _Job(zoo_root, meta_path, settings, data_root, os.getpid())


def _run_in_worker(task: TaskSpec, models: list[str]) -> int:
    return _WORKER["job"].run(task, models)


@dataclass
class BuildResult:
    """What a build did: rows added now and in all, processes, wall and CPU seconds."""

    added: int
    total: int
    tasks: int
    models: int
    workers: int
    seconds: float
    cpu_seconds: float
    path: Path

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def build_meta_dataset(zoo: Zoo | str | Path, tasks: int = 100, *, path: str | Path | None = None,
                       sources: Sequence[str] = SOURCES, seed: int = 0, workers: int = 1,
                       finetune: dict | None = None, models: Sequence[str] | None = None,
                       data_root: str | Path | None = None, progress: bool = True) -> BuildResult:
    """Build (or resume, or extend) the meta-dataset of ``zoo``: ``tasks`` tasks × its models.

    ``workers`` processes share the work (1: this process alone). ``finetune`` options
    go to the fine-tuning of the ground truth. ``models`` restricts the build to some of
    the zoo's models. Returns a :class:`BuildResult`; CPU seconds include the workers'.
    """
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    if int(workers) < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if int(tasks) < 1:
        raise ConfigError(f"the meta-dataset needs at least one task, got {tasks}")
    names = list(models) if models is not None else zoo.names()
    for name in names:
        zoo.check(name)  # a broken entry fails now, in one line, not in a worker
    if not names:
        raise ConfigError(f"the zoo {zoo.root} holds no models; add some with `fewshot zoo add` or `fewshot zoo build`")
    path = Path(path) if path else default_meta_path(zoo)
    settings = BuildSettings(sorted(set(sources)), int(seed), dict(finetune or {})).to_dict()
    if finetune:
        from ..methods.transfer import FineTune

        FineTune(torch.nn.Identity(), "finetune", **finetune)  # reject bad options here, not per row
    store = MetaStore(path)
    store.claim_settings(settings)
    specs = sample_tasks(tasks, settings["sources"], settings["seed"])
    shas = {name: zoo.fingerprint(name) for name in names}
    done = store.done()
    stale = [pair for pair, sha in done.items() if pair[1] in shas and sha != shas[pair[1]]]
    store.delete(stale)  # rows of a model whose weights changed are recomputed
    done = {pair for pair in done if pair not in set(stale)}
    todo = [(t, [m for m in names if (t.task, m) not in done]) for t in specs]
    todo = [(t, ms) for t, ms in todo if ms]
    pairs = sum(len(ms) for _, ms in todo)

    start, cpu0, children0 = time.perf_counter(), time.process_time(), _children_cpu()
    added = 0
    with progress_bar(len(specs) * len(names), initial=len(specs) * len(names) - pairs, unit="pair",
                      desc=f"meta-dataset ({workers} process{'es' if workers > 1 else ''})", enabled=progress) as bar:
        if workers == 1:
            # One thread, as each worker of a parallel build: the same work, comparable times.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                job = _Job(str(zoo.root), str(path), settings, str(data_root) if data_root else None, os.getpid())
                for task, ms in todo:
                    added += job.run(task, ms)
                    bar.update(len(ms))
            finally:
                torch.set_num_threads(threads)
        elif todo:
            import multiprocessing
            from concurrent.futures.process import BrokenProcessPool

            context = multiprocessing.get_context("spawn")
            try:
                with ProcessPoolExecutor(int(workers), mp_context=context, initializer=_init_worker,
                                         initargs=(str(zoo.root), str(path), settings,
                                                   str(data_root) if data_root else None, os.getpid())) as pool:
                    futures = {pool.submit(_run_in_worker, task, ms): len(ms) for task, ms in todo}
                    for future in as_completed(futures):
                        added += future.result()
                        bar.update(futures[future])
            except BrokenProcessPool:
                raise TrainingError(f"a worker process of the meta-dataset build died (killed, or out of memory); "
                                    f"the rows it finished are in {path}: run the same command again to "
                                    f"resume") from None
    cpu = time.process_time() - cpu0 + _children_cpu() - children0
    return BuildResult(added, store.count(), len(specs), len(names), int(workers), time.perf_counter() - start,
                       cpu, path)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


__all__ = ["BuildResult", "BuildSettings", "META_FORMAT", "META_VERSION", "build_meta_dataset"]
