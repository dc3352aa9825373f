"""Crash-safe persistence: safetensors for tensors, JSON for state, never pickle.

Every write goes to a temporary file in the target's folder, is flushed to disk, then
renamed over the target, so a crash leaves either the old file or the new one, never
half of one; a folder of several files (:func:`atomic_folder`) is written to a new
temporary folder beside it and exchanged with the old one in one rename. A write that
fails (a full disk, a read-only folder) removes its temporary file and is a
:class:`~fewshot.errors.CheckpointError` naming the path. Written files get the
permissions of any file the user creates (``0666`` less the umask), not the ``0600`` of
a temporary file.

Temporaries are named ``.NAME.XXXXXXXX.tmp`` beside ``NAME`` (:data:`TEMPORARY`) and
locked (``flock``) by the process writing them. A write interrupted by Ctrl-C, or by
SIGTERM / SIGHUP (turned into an exception while a write is under way, when nothing
else handles them), removes its temporary; one killed outright (SIGKILL) leaves it, and
the next write of the same target sweeps it, having checked with the lock that its
writer is gone.

Every JSON read is bounded: only regular files are read (a FIFO, a device such as
``/dev/zero`` or a folder is refused before a byte is read), at most
:data:`MAX_JSON_BYTES` bytes of them, and every JSON text (files, and strings such as
safetensors metadata, store rows or ``-o`` values) is checked before it is parsed: values
nest at most :data:`MAX_JSON_DEPTH` deep and numbers have at most :data:`MAX_JSON_DIGITS`
digits; fewshot's own files stay far below all of these.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import math
import os
import re
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Iterator

from .errors import CheckpointError, ConfigError, FewShotError

#: The largest JSON file fewshot reads (a run's state of 10^6 steps is about 2 MB).
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


#: The name of a temporary written beside ``NAME`` (its random part from :mod:`tempfile`).
TEMPORARY = r"\.{name}\.\w+\.tmp"


def temporary_pattern(name: str) -> re.Pattern:
    """The names of fewshot's temporaries for a target named ``name``."""
    return re.compile("^" + TEMPORARY.format(name=re.escape(name)) + "$")


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While this is entered, SIGTERM and SIGHUP raise :class:`SystemExit` (exit status
    128 + the signal) instead of ending the process on the spot, so the ``finally``
    clauses that remove temporaries run. Signals the program handles (or ignores)
    itself are left alone, and so is every thread but the main one (only it may)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            previous[sig] = signal.signal(sig, _raise_exit)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _hold(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive ``flock``: the mark of a live writer."""
    import fcntl

    # Never blocks (a FIFO) nor follows a link: such a name is not one of ours.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not (stat.S_ISREG(os.fstat(fd).st_mode) or stat.S_ISDIR(os.fstat(fd).st_mode)):
            raise OSError(errno.EINVAL, "not a file or folder fewshot writes", str(path))
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def remove_folder(folder: Path, names: re.Pattern | None = None) -> None:
    """Remove the files of ``folder`` (those ``names`` matches, if given), then the folder
    if that empties it. Only for folders fewshot made; nothing below a sub-folder is touched."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.is_file() and not entry.is_symlink() and (names is None or names.match(entry.name)):
            entry.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def sweep_temporaries(path: str | os.PathLike, names: re.Pattern | None = None) -> None:
    """Remove the temporaries of writes of ``path`` whose writer is gone (killed before it
    could clean up): files, or staging folders (:func:`atomic_folder`, of which only
    ``names`` are removed). A temporary whose writer still holds its lock is left."""
    path = Path(path)
    pattern = temporary_pattern(path.name)
    try:
        candidates = [p for p in path.parent.iterdir() if pattern.match(p.name)]
    except OSError:
        return
    for candidate in candidates:
        try:
            fd = _hold(candidate)
        except OSError:  # in use, or not ours to open: leave it
            continue
        try:
            if candidate.is_dir() and not candidate.is_symlink():
                remove_folder(candidate, names)
            else:
                candidate.unlink(missing_ok=True)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary is flushed to disk (``fsync``) before the rename and the rename before
    this returns, so a file written after it (a state naming a checkpoint) can never
    name a file a power cut undoes. Errors of the caller's own writing propagate
    unchanged; failures to create, flush or rename the file are a :class:`CheckpointError`.
    """
    path = Path(path)
    with interruptible():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            sweep_temporaries(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as e:
            raise write_failure(path, e) from None
        tmp_path = Path(tmp)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)  # ours alone: a sweep leaves it while we live
            # mkstemp makes the file private (0600); a finished file gets the mode any new file
            # would, 0666 less the umask (group-readable by the usual 022 or 002).
            os.fchmod(fd, 0o666 & ~_UMASK)
            yield tmp_path
            try:
                os.chmod(tmp_path, 0o666 & ~_umask())
                with open(tmp_path, "rb+") as f:  # the file as the caller left it
                    os.fsync(f.fileno())
                os.replace(tmp_path, path)
            except OSError as e:
                raise write_failure(path, e) from None
            _sync_folder(path.parent)
        finally:
            tmp_path.unlink(missing_ok=True)
            os.close(fd)


def exchange(new: Path, old: Path) -> Path:
    """Put folder ``new`` in the place of folder ``old``; returns where the old one now is.

    On Linux this is one ``renameat2(RENAME_EXCHANGE)``: at every moment ``old``'s path
    holds one whole folder. Elsewhere (or on a file system without it) the old folder
    is renamed aside first, so for a moment the path holds nothing.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(old), rename_exchange) == 0:
            return new
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(old))
    aside = Path(tempfile.mkdtemp(prefix=f".{old.name}.", suffix=".tmp", dir=old.parent))
    os.rename(old, aside)  # onto an empty folder: allowed
    os.rename(new, old)
    return aside


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, names: re.Pattern) -> Iterator[Path]:
    """Yield a new, empty temporary folder beside ``path``; on success it takes the place
    of ``path`` (missing, or an existing folder of files ``names`` matches) as one
    rename, and the old folder's files are removed. A failure, or an interrupt, leaves
    ``path`` as it was and removes the temporary folder."""
    path = Path(path)
    with interruptible():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            sweep_temporaries(path, names)
            staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        except OSError as e:
            raise write_failure(path, e) from None
        try:
            fd = _hold(staging)
        except OSError as e:
            staging.rmdir()
            raise write_failure(path, e) from None
        left = staging
        try:
            os.chmod(staging, 0o777 & ~_umask())
            yield staging
            _sync_folder(staging)
            try:
                if path.is_dir() and not path.is_symlink():
                    left = exchange(staging, path)
                else:
                    os.rename(staging, path)
                    left = None
            except OSError as e:
                raise write_failure(path, e) from None
            _sync_folder(path.parent)
        finally:
            os.close(fd)
            if left is not None:
                remove_folder(left, names)


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
