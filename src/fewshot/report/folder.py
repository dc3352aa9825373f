"""The report's folder: built beside its destination, marked, renamed into place.

fewshot replaces a folder only when it wrote every file in it: each report folder holds
:data:`MARKER`, the list of the files fewshot wrote there, and a folder that lacks it,
or holds anything else, is refused. A folder being built (or an earlier report being
replaced) holds :data:`BUILDING`, naming the process doing it; a later report to the
same destination removes such leftovers of a process that no longer runs (one that was
killed), and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, FewShotError
from ..io import parse_json, write_json

MARKER = ".fewshot-report.json"
BUILDING = ".fewshot-building.json"
_MARKER_BYTES = 1 << 20  # a marker lists a dozen names; anything larger is not ours


def _read_small_json(path: Path) -> object | None:
    try:
        if not path.is_file() or path.stat().st_size > _MARKER_BYTES:
            return None
        return parse_json(path.read_bytes(), str(path))
    except (OSError, ValueError, FewShotError):
        return None


def written_files(folder: Path) -> set[str] | None:
    """Names of the files fewshot wrote in ``folder`` (from its marker), or None when the
    folder is not a fewshot report."""
    marker = _read_small_json(folder / MARKER)
    if not isinstance(marker, dict) or marker.get("kind") != "report" or not isinstance(marker.get("files"), list):
        return None
    return {str(name) for name in marker["files"]} | {MARKER, BUILDING}


def check_destination(out: Path) -> None:
    """Refuse ``out`` unless it is absent, an empty folder, or a report holding only what
    fewshot wrote there."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another --out")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    written = written_files(out)
    if written is None:
        raise ConfigError(f"{out} exists and is not a fewshot report (it has no {MARKER}); fewshot replaces only "
                          f"folders it wrote: choose another --out")
    foreign = [name for name in entries if name not in written or (out / name).is_symlink()
               or not (out / name).is_file()]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ConfigError(f"{out} is a fewshot report but also holds files fewshot did not write ({shown}); "
                          f"move them out or choose another --out")


def _mark_building(folder: Path) -> None:
    write_json(folder / BUILDING, {"pid": os.getpid(), "host": socket.gethostname()})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(out: Path) -> list[Path]:
    """Remove the temporary folders of earlier reports to ``out`` whose process was killed.

    Only ``.OUT.*`` folders beside ``out`` that hold :data:`BUILDING` naming a process
    of this host that no longer runs; returns what was removed.
    """
    removed = []
    if not out.parent.is_dir():
        return removed
    for path in out.parent.iterdir():  # not glob: a folder name may hold [ or *
        if not path.name.startswith(f".{out.name}.") or path.is_symlink() or not path.is_dir():
            continue
        info = _read_small_json(path / BUILDING)
        if not isinstance(info, dict) or info.get("host") != socket.gethostname():
            continue
        pid = info.get("pid")
        if isinstance(pid, int) and pid > 0 and pid != os.getpid() and not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def new_build_folder(out: Path) -> Path:
    """A fresh, marked folder beside ``out`` to build the report in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    _mark_building(built)
    return built


def publish(built: Path, out: Path) -> None:
    """Mark ``built`` as fewshot's, then put it at ``out`` by renames, replacing an earlier
    report there (checked by :func:`check_destination` first)."""
    files = sorted(p.name for p in built.iterdir() if p.name != BUILDING)
    write_json(built / MARKER, {"kind": "report", "fewshot": __version__, "files": [*files, MARKER]})
    # Shared reports: mkdtemp and the atomic writes make owner-only files.
    built.chmod(0o755)
    for path in built.iterdir():
        path.chmod(0o644)
    check_destination(out)  # again, just before replacing: the folder may have changed meanwhile
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        _mark_building(out)  # a kill from here on leaves `old` marked, for remove_leftovers
        os.replace(out, old)
        os.replace(built, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, out)
    (out / BUILDING).unlink(missing_ok=True)


def discard(built: Path) -> None:
    shutil.rmtree(built, ignore_errors=True)
