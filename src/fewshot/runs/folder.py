"""A run folder, and the one door to every form a trained model takes.

A run lives in one folder::

    config.json                       the TrainConfig
    state.json                        step, history, best validation, optimiser settings
    checkpoint-NNNNNNN.safetensors    weights, optimiser tensors and RNG state at step N
    best-NNNNNNN.safetensors          weights with the best validation score

:class:`Run` is the only code that names these files. It reads a run (config, checked
state, best or last weights, the run's own test protocol) and writes one for the
trainer, crash-consistently:

* every file is written atomically (:func:`fewshot.io.atomic_path`), and a checkpoint
  is on disk (``fsync``, file and folder) before the state that names it is written;
* the state is written last, so at every moment the state on disk names files that
  exist;
* cleanup (old checkpoints, a failed run's files) re-reads the state on disk first and
  never removes a file it names, whatever the writer believed (a Ctrl-C can land
  between the rename of the state and the writer's own bookkeeping);
* a reader of a run that is still training reads a consistent pair: when the file the
  state named is replaced meanwhile, it reads the state again and loads the new file.

:meth:`Run.open` reads any trained model: a run folder, an exported model
(:mod:`fewshot.runs.exported`), or a Hugging Face backbone named ``hf:<folder or hub id>``
(:mod:`fewshot.runs.hub`).
"""

from __future__ import annotations

import contextlib
import re
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import CheckpointError, ConfigError, FewShotError
from ..io import LOCK_NAME, FolderLock, load_tensors, read_json, save_tensors, write_json
from ..models.hub import is_hub_name
from .exported import Exported, folder_kind, is_model_file
from .hub import HubSource
from .model import Loaded, Protocol, build_checked
from .state import named_files, state_problem

CONFIG = "config.json"
STATE = "state.json"
WHICH = ("best", "last")
#: The files of a run folder, and the temporary files of their atomic writes: the only
#: names a run ever writes, overwrites or removes (a user's other files are never touched).
RUN_FILE = re.compile(r"^(config\.json|state\.json|(checkpoint|best)-\d{7}\.safetensors)$")
LEFTOVER = re.compile(r"^\.(config\.json|state\.json|(checkpoint|best)-\d{7}\.safetensors)\.\w+\.tmp$")
#: How often a reader re-reads the state of a live run whose named file was replaced meanwhile.
READ_TRIES = 5


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:07d}.safetensors"


def best_name(step: int) -> str:
    return f"best-{step:07d}.safetensors"


class Run:
    """One run folder: its files, config, state, weights and test protocol.

    Reading needs nothing but the path. Writing (the trainer's) starts with :meth:`lock`
    and goes through :meth:`write_config`, :meth:`write_checkpoint`, :meth:`write_best`
    and :meth:`commit`; :meth:`clean_up` after a failure and :meth:`unlock` at the end.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock: FolderLock | None = None
        #: Files of the folder this writer may remove once no state on disk names them:
        #: those it wrote, and those a state it read or wrote named.
        self._owned: set[str] = set()
        self._created: set[str] = set()  # files this process wrote (a failed new run removes these)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # -- finding and opening ----------------------------------------------------------

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """Whether ``path`` is a run folder (it holds a run's state)."""
        return (Path(path) / STATE).exists()

    @classmethod
    def open(cls, path: str | Path) -> "Run | Exported | HubSource":
        """What ``path`` holds, to :meth:`load` from: a run folder (a :class:`Run`), an
        exported model (an :class:`~fewshot.runs.exported.Exported`), or, named
        ``hf:<folder or hub id>``, a Hugging Face backbone (a
        :class:`~fewshot.runs.hub.HubSource`). A Hugging Face model folder named without
        the prefix is recognised and refused in one line saying how to name it."""
        if is_hub_name(str(path)):
            return HubSource(str(path))
        path = Path(path)
        if cls.is_run(path):
            return cls(path)
        if folder_kind(path) == "hub":
            # Named as a path, it would be ambiguous with a fewshot export's config.json: the prefix says it.
            raise ConfigError(f"{path} is a Hugging Face model folder, not a fewshot run or exported model; name it "
                              f"hf:{path} (e.g. `fewshot evaluate hf:{path} --dataset D --head simpleshot`), or add "
                              f"its backbone to a model zoo (`fewshot zoo add NAME {path}`)")
        if is_model_file(path):
            return Exported(path)
        raise ConfigError(f"{path} is neither a run folder (with {STATE}) nor an exported model "
                          "(.safetensors file, or a folder with config.json and model.safetensors)")

    @classmethod
    def find(cls, target: str | Path) -> list[Path]:
        """The run folders ``target`` names: itself, or those below it (hidden folders skipped)."""
        target = Path(target)
        if cls.is_run(target):
            return [target]
        if not target.is_dir():
            raise CheckpointError(f"{target} is not a fewshot run folder (no {STATE}); "
                                  "name run folders, or folders that hold them")
        inner = sorted(p.parent for p in target.rglob(STATE) if not any(
            part.startswith(".") for part in p.relative_to(target).parts))
        if not inner:
            raise CheckpointError(f"{target} holds no fewshot run (no {STATE} in it or below it)")
        return inner

    # -- reading ----------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.path / STATE

    @cached_property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(read_json(self.path / CONFIG))

    @cached_property
    def state(self) -> dict[str, Any]:
        """The state as first read (:meth:`read_state` reads it again)."""
        return self.read_state()

    @property
    def protocol(self) -> Protocol:
        """The run's own test episodes: its config's way, shot and query."""
        return Protocol.of(self.config)

    def require(self) -> None:
        """Refuse a folder that holds no run, in one line."""
        if not self.is_run(self.path):
            raise CheckpointError(f"{self.path} is not a fewshot run folder (no {STATE}); train one with "
                                  "`fewshot train`")

    def read_state(self) -> dict[str, Any]:
        """The state on disk, checked for the fields the trainer relies on: a damaged or
        edited file is a :class:`CheckpointError`, never a crash."""
        state = read_json(self.state_path)
        problem = state_problem(state)
        if problem:
            raise CheckpointError(f"{self.state_path} {problem}; the run folder is damaged")
        self._owned |= named_files(state)
        return state

    def weights_file(self, state: dict, which: str = "best") -> Path:
        """The file of ``state``'s ``best`` weights (the last without a best) or ``last``."""
        entry = state.get("best") if which == "best" and state.get("best") else {"file": state["checkpoint"]}
        if entry["file"] is None:
            raise CheckpointError(f"{self.path} holds no checkpoint yet; train it further with "
                                  f"`fewshot train --resume {self.path}`")
        return self.path / entry["file"]

    def read_weights(self, which: str = "best", state: dict | None = None
                     ) -> tuple[dict, dict[str, torch.Tensor], Path]:
        """A consistent (state, tensors, file) of ``which`` weights (of ``state``, a state
        just read, if given), even while the run trains: a file replaced between reading
        the state and reading it is followed to the state that replaced it."""
        state = self.read_state() if state is None else state
        for attempt in range(READ_TRIES):
            path = self.weights_file(state, which)
            try:
                return state, load_tensors(path), path
            except CheckpointError:
                if attempt + 1 == READ_TRIES or path.exists():
                    raise
                newer = self.read_state()
                if self.weights_file(newer, which) == path:
                    raise  # the state on disk still names it: really missing
                state = newer

    def load(self, which: str = "best", *, backbone: nn.Module | None = None) -> Loaded:
        """The run's method with its ``best`` (or ``last``) weights; ``backbone``: the module
        of a run trained with your own backbone (its weights are loaded into it)."""
        if which not in WHICH:
            raise ConfigError(f"which weights: choose one of {', '.join(WHICH)}, not '{which}'")
        self.require()
        config = self.config
        state = self.read_state()
        state, tensors, path = self.read_weights(which, state)
        method = build_checked(config, tuple(state["image_shape"]), tensors, path, backbone=backbone)
        source = {"run": str(self.path), "weights": which, "steps": state.get("step"), "data": state.get("data")}
        return Loaded(config, method, state["image_shape"], state.get("preprocessing"), state.get("calibration"),
                      source, path, state=state)

    # -- writing (the trainer) --------------------------------------------------------

    def lock(self, resume: bool) -> bool:
        """Lock the run folder (creating it for a new run) and check it can be written;
        returns whether this call made the folder."""
        if resume:
            self.check_resumable()
        elif self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {self.path} is a file, not a folder; choose another --out")
        made_dir = not self.path.exists()
        if made_dir:
            try:
                self.path.mkdir(parents=True)
            except FileExistsError:  # made meanwhile by another process: not ours
                made_dir = False
            except OSError as e:
                raise ConfigError(f"cannot create the run folder {self.path} ({e.strerror}); "
                                  "choose a writable --out") from None
        try:
            self._lock = FolderLock(self.path)
        except FewShotError:
            if made_dir:
                self.path.rmdir()
            raise
        if not resume and not self.is_run(self.path):
            clash = sorted(p.name for p in self.path.iterdir() if RUN_FILE.match(p.name))
            if clash:
                self.unlock()
                raise ConfigError(f"{self.path} already holds {clash[0]}, which this run would overwrite; "
                                  "choose an empty or new --out (a --config file may live anywhere else)")
        return made_dir

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def check_resumable(self) -> None:
        if not self.state_path.is_file():
            raise CheckpointError(f"nothing to resume in {self.path}: it holds no {STATE}")

    def check_same_run(self, config: TrainConfig) -> None:
        if not self.config.same_run(config):
            raise ConfigError(f"{self.path} was trained with a different config; resume without changing settings "
                              "(only --device and --precision may change)")

    def _write(self, name: str) -> Path:
        self._created.add(name)  # before writing: a write that fails half-way is ours to remove
        self._owned.add(name)
        return self.path / name

    def write_config(self, config: TrainConfig) -> None:
        write_json(self._write(CONFIG), config.to_dict())

    def write_checkpoint(self, step: int, tensors: dict[str, torch.Tensor]) -> str:
        """Write the checkpoint of ``step`` (on disk before this returns); returns its name
        for the state that will name it."""
        name = checkpoint_name(step)
        save_tensors(self._write(name), tensors)
        return name

    def write_best(self, step: int, tensors: dict[str, torch.Tensor]) -> str:
        """Write the best weights, found at ``step``; returns their name for the state."""
        name = best_name(step)
        save_tensors(self._write(name), tensors)
        return name

    def commit(self, state: dict[str, Any]) -> None:
        """Write ``state`` (the files it names are already on disk); only then are the
        files the previous state named, and this writer's unnamed ones, garbage."""
        write_json(self._write(STATE), state)
        self._remove_unnamed(self._owned)

    def weights_of(self, state: dict, which: str = "best") -> tuple[dict[str, torch.Tensor], Path]:
        """The tensors ``state`` names (the writer's own, in-memory state) and their file."""
        path = self.weights_file(state, which)
        return load_tensors(path), path

    def remove_leftovers(self) -> None:
        """Temporary files of this run's writes that a killed process never finished
        (see :func:`fewshot.io.atomic_path`); nothing else, under the run's lock."""
        for path in self.path.glob(".*.tmp"):
            if LEFTOVER.match(path.name):
                path.unlink(missing_ok=True)

    def clean_up(self, *, new: bool, made_dir: bool) -> None:
        """After a failure or an interrupt: a new run whose state on disk names no
        checkpoint has nothing to resume from, so what it wrote (and the folder, if it
        made it) goes; otherwise only what this writer wrote that the state on disk does
        not name. A user's own files in the folder always stay."""
        with contextlib.suppress(KeyboardInterrupt):
            named = self._named_on_disk()
            if new and named == set():
                for name in self._created:
                    (self.path / name).unlink(missing_ok=True)
                self._created.clear()
                self.unlock()
                if made_dir:
                    with contextlib.suppress(OSError):  # someone put other files there meanwhile: leave them
                        self.path.rmdir()
            else:
                self._remove_unnamed(self._created)

    def _named_on_disk(self) -> set[str] | None:
        """The files the state on disk names (none: no state yet); None when it cannot be
        read, and then nothing may be removed."""
        try:
            return named_files(read_json(self.state_path))
        except CheckpointError:
            return set() if not self.state_path.exists() else None

    def _remove_unnamed(self, candidates: set[str]) -> None:
        named = self._named_on_disk()
        if named is None:
            return
        for name in sorted(candidates - named - {CONFIG, STATE}):
            (self.path / name).unlink(missing_ok=True)
            self._created.discard(name)
            self._owned.discard(name)


def remove_unfinished_run(run_dir: Path) -> None:
    """Delete the run files in ``run_dir`` of a run fewshot started and will never finish
    (a trial of an interrupted search; its killed process left its lock file too), then
    the folder if that leaves it empty."""
    if not run_dir.is_dir():
        return
    for path in run_dir.iterdir():
        if RUN_FILE.match(path.name) or LEFTOVER.match(path.name) or path.name == LOCK_NAME:
            path.unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:  # something else is in it: not ours to remove
        pass


__all__ = ["CONFIG", "LEFTOVER", "READ_TRIES", "RUN_FILE", "Run", "STATE", "WHICH", "best_name", "checkpoint_name",
           "remove_unfinished_run"]
