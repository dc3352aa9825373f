"""Crash-safe persistence: safetensors for tensors, JSON for state, never pickle.

Every write goes to a temporary file in the target's folder, is flushed to disk, then
renamed over the target, so a crash leaves either the old file or the new one, never
half of one. A write that fails (a full disk, a read-only folder) removes its
temporary file and is a :class:`~fewshot.errors.CheckpointError` naming the path.
Written files get the permissions of any file the user creates (``0666`` less the
umask), not the ``0600`` of a temporary file.

Every JSON read is bounded: only regular files are read (a FIFO, a device such as
``/dev/zero`` or a folder is refused before a byte is read), at most
:data:`MAX_JSON_BYTES` bytes of them, and every JSON text (files, and strings such as
safetensors metadata, store rows or ``-o`` values) is checked before it is parsed: values
nest at most :data:`MAX_JSON_DEPTH` deep and numbers have at most :data:`MAX_JSON_DIGITS`
digits; fewshot's own files stay far below all of these.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Iterator

from .errors import CheckpointError, ConfigError, FewShotError

#: The largest JSON file fewshot reads (a run's state.json of 10^6 steps is about 2 MB).
MAX_JSON_BYTES = 64 << 20
#: The deepest nesting of lists and objects fewshot accepts in a JSON file.
MAX_JSON_DEPTH = 64

if TYPE_CHECKING:  # torch and safetensors are imported when tensors are saved: config files need neither
    import torch


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_failure(path: str | os.PathLike, e: BaseException) -> CheckpointError:
    """The one-line error of a write that failed (full disk, read-only folder, ...)."""
    reason = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
    return CheckpointError(f"cannot write {path} ({reason}); free some space or choose a writable folder, "
                           "then run the command again")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Errors of the caller's own writing propagate unchanged; failures to create, flush or
    rename the file are a :class:`CheckpointError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp makes the file private (0600); a finished file gets the mode any new file
        # would, 0666 less the umask (group-readable by the usual 022 or 002).
        os.fchmod(fd, 0o666 & ~_UMASK)
        os.close(fd)
    except OSError as e:
        raise write_failure(path, e) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            os.chmod(tmp_path, 0o666 & ~_umask())
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, path)
        except OSError as e:
            raise write_failure(path, e) from None
        _sync_folder(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Flush the rename itself, so a power cut cannot undo it after a later file names it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename is still atomic
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    with atomic_path(path) as tmp:
        try:
            tmp.write_text(text)
        except OSError as e:
            raise write_failure(path, e) from None


def read_bounded(path: str | os.PathLike, limit: int, error: type[FewShotError] = CheckpointError) -> bytes:
    """The bytes of ``path``, refusing (with ``error``) a file of more than ``limit`` bytes, and
    anything that is not a regular file (a folder; a FIFO or device, whose read could block forever
    or never end), checked on the opened file before a byte is read."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer would otherwise block before the check.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{path} is missing") from None
    except IsADirectoryError:
        raise error(f"{path} cannot be read (it is a folder, not a file)") from None
    except OSError as e:
        raise error(f"{path} cannot be read ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise error(f"{path} cannot be read (it is a folder, not a file)")
        if not stat.S_ISREG(mode):
            raise error(f"{path} cannot be read (it is not a regular file but a pipe, socket or device); "
                        "give a file")
        with os.fdopen(fd, "rb") as f:
            fd = -1
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"{path} cannot be read ({e.strerror or e})") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > limit:
        raise error(f"{path} is larger than {limit:,} bytes; it is not a file fewshot wrote or expects")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]}{'...' if len(text) > 20 else ''} is too large to be finite")
    return value


def parse_json(text: str | bytes, label: str, error: type[FewShotError] = CheckpointError, *,
               finite: bool = False, limit: int = MAX_JSON_BYTES) -> Any:
    """JSON ``text`` (from ``label``), bounded before it is parsed: at most ``limit`` bytes, lists
    and objects nested at most :data:`MAX_JSON_DEPTH` deep, numbers of at most
    :data:`MAX_JSON_DIGITS` digits; with ``finite``, ``NaN``, ``Infinity`` and numbers too large
    for a float are refused too. Every JSON text fewshot parses comes through here."""
    if len(text) > limit:
        raise error(f"{label} is larger than {limit:,} bytes; it is not JSON fewshot wrote or expects")
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode(json.detect_encoding(text), "surrogatepass")
        except UnicodeDecodeError as e:
            raise error(f"{label} is not valid JSON ({e}); the file is damaged") from None
    bare = _JSON_STRING.sub('""', text)  # brackets and digits inside strings do not count
    if _json_depth_of_text(bare) > MAX_JSON_DEPTH:
        raise error(f"{label} nests lists or objects more than {MAX_JSON_DEPTH} deep; it is not a file fewshot "
                    "wrote or expects")
    long_number = _LONG_NUMBER.search(bare)
    if long_number:
        raise error(f"{label} holds a number of more than {MAX_JSON_DIGITS} digits "
                    f"({long_number.group()[:12]}...); it is not a file fewshot wrote or expects")
    hooks: dict[str, Any] = {"parse_constant": _refuse_constant, "parse_float": _finite_float} if finite else {}
    try:
        value = json.loads(text, **hooks)
    except json.JSONDecodeError as e:
        raise error(f"{label} is not valid JSON ({e}); the file is damaged") from None
    except (ValueError, RecursionError) as e:  # a non-finite number, or Python's int-string limit
        raise error(f"{label} holds an invalid number ({one_line_reason(e)})") from None
    return value


#: The most digits a number in a JSON text may have (Python refuses ints of more than 4,300).
MAX_JSON_DIGITS = 400
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_LONG_NUMBER = re.compile(r"[0-9]{%d,}" % (MAX_JSON_DIGITS + 1))
_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _json_depth_of_text(bare: str) -> int:
    """How deep brackets nest in JSON text whose strings are blanked, without parsing it."""
    brackets = _BRACKETS.sub("", bare)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def json_or_text(text: str, label: str) -> Any:
    """A command-line value: its JSON value when it is JSON (``5``, ``true``, ``[1, 2]``), else the
    text itself; a number too long to be one is a :class:`ConfigError` rather than a string."""
    try:
        return parse_json(text, label, ConfigError)
    except ConfigError:
        if re.fullmatch(r"\s*[-+]?[0-9.eE+-]*[0-9]{%d,}[0-9.eE+-]*\s*" % (MAX_JSON_DIGITS + 1), text):
            raise ConfigError(f"{label}: the number {text.strip()[:12]}... has more than {MAX_JSON_DIGITS} digits; "
                              "give a smaller one") from None
        return text


def one_line_reason(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def read_json(path: str | os.PathLike, error: type[FewShotError] = CheckpointError,
              limit: int = MAX_JSON_BYTES, *, finite: bool = False) -> Any:
    """A JSON file, read within bounds (a regular file; size, depth and digits); any problem is one ``error``."""
    return parse_json(read_bounded(path, limit, error), str(path), error, finite=finite, limit=limit)


def require_folder(path: str | os.PathLike, what: str, error: type[FewShotError] = ConfigError) -> Path:
    """``path`` as a Path, refusing (one line) one that exists but is not a folder; a missing
    folder is fine (it is made when first written)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise error(f"{what} {path} is a file, not a folder; name a folder (it is created if missing)")
    return path


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as one safetensors file (contiguous CPU copies, shared storage allowed)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(flat, str(tmp), metadata=metadata)
        except (OSError, SafetensorError) as e:
            raise write_failure(path, e) from None


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it is truncated or damaged") from None


LOCK_NAME = ".fewshot.lock"


class FolderLock:
    """An exclusive lock on a folder fewshot writes (a run, a search), held until :meth:`release`.

    It is an ``flock`` on the file ``LOCK_NAME`` (a name fewshot reserves) in the
    folder: the kernel drops it when the holder exits or is killed, so a crash never
    leaves a folder locked. A second process that tries to write the folder meanwhile is
    refused at once, in one line. The holder removes the file when it lets go; a holder
    checks, once locked, that the file it locked is still the one in the folder, so a
    removal can never let two processes in.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "run folder"):
        import fcntl

        self.path = Path(folder) / LOCK_NAME
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            except OSError as e:
                raise write_failure(self.path, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                pid = f" (process {holder})" if holder.isdigit() else ""
                raise ConfigError(f"another fewshot process{pid} is writing the {what} {Path(folder)}; wait until "
                                  "it finishes or stop it, then run the command again") from None
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # the holder before us removed that file as we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd

    def release(self) -> None:
        """Remove the lock file and unlock (a second call does nothing)."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing the last descriptor releases the flock
        self.fd = None
