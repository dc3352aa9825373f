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

Every JSON read is bounded: at most :data:`MAX_JSON_BYTES` bytes are read (a file that
is larger, or a link to ``/dev/zero``, is refused without reading it all) and values
may nest at most :data:`MAX_JSON_DEPTH` deep; fewshot's own files stay far below both.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
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
    """The bytes of ``path``, refusing (with ``error``) a file of more than ``limit`` bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{path} is missing") from None
    except IsADirectoryError:
        raise error(f"{path} cannot be read (it is a folder, not a file)") from None
    except OSError as e:
        raise error(f"{path} cannot be read ({e.strerror or e})") from None
    if len(data) > limit:
        raise error(f"{path} is larger than {limit:,} bytes; it is not a file fewshot wrote or expects")
    return data


def parse_json(text: str | bytes, label: str, error: type[FewShotError] = CheckpointError) -> Any:
    """JSON ``text`` (from ``label``), refusing nesting deeper than :data:`MAX_JSON_DEPTH`."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{label} is not valid JSON ({e}); the file is damaged") from None
    except RecursionError:
        value = None
        depth = MAX_JSON_DEPTH + 1
    else:
        depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise error(f"{label} nests lists or objects more than {MAX_JSON_DEPTH} deep; it is not a file fewshot "
                    "wrote or expects")
    return value


def json_depth(value: Any) -> int:
    """How deep lists and objects nest in ``value`` (0 for a plain value), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def read_json(path: str | os.PathLike, error: type[FewShotError] = CheckpointError,
              limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file, read within bounds (size and depth); any problem is one ``error``."""
    return parse_json(read_bounded(path, limit, error), str(path), error)


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
