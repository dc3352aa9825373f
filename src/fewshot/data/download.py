"""Where data lives, and fetching it with checksums."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..progress import bar as progress_bar

from ..errors import DataError
from ..io import atomic_path, require_folder


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$FEWSHOT_DATA``, else ``~/.cache/fewshot``."""
    if root:
        return require_folder(root, "the data root (--data-root)")
    if os.environ.get("FEWSHOT_DATA"):
        return require_folder(os.environ["FEWSHOT_DATA"], "the data root ($FEWSHOT_DATA)")
    return Path.home() / ".cache" / "fewshot"


def cache_dir(root: Path) -> Path:
    """Where decoded array caches go: ``$FEWSHOT_CACHE``, else ``<root>/.cache`` when the
    data root is writable, else ``~/.cache/fewshot/.cache`` (shared read-only data)."""
    if os.environ.get("FEWSHOT_CACHE"):
        path = require_folder(os.environ["FEWSHOT_CACHE"], "the cache folder ($FEWSHOT_CACHE)")
    elif root.exists() and os.access(root, os.W_OK):
        path = root / ".cache"
    else:
        path = Path.home() / ".cache" / "fewshot" / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def download(url: str, dest: Path, md5: str | None = None, *, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (atomically), checking its MD5 when one is given.

    A failed or mismatching download leaves nothing at ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(dest) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as out, progress_bar(total, unit="B", unit_scale=True, desc=dest.name,
                                                       enabled=progress) as bar:
                received = 0
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
                    received += len(block)
            # urllib returns a short body without complaint when the connection drops.
            if total is not None and received != total:
                raise OSError(f"the connection closed after {received} of {total} bytes")
            if md5 is not None and digest.hexdigest() != md5:
                raise DataError(
                    f"{dest.name} downloaded from {url} has MD5 {digest.hexdigest()}, expected {md5}; "
                    "the download is corrupt or the file changed upstream. Nothing was kept: try again, "
                    f"or place a good copy at {dest}"
                )
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"could not download {url} ({reason}); place the file at {dest} yourself") from None
    return dest


def ensure_files(folder: Path, files: dict[str, tuple[str, str | None]], *, dataset: str) -> list[Path]:
    """Make sure every file of ``files`` (name -> (url, md5)) is in ``folder``.

    Files already present are taken as they are (a user's own copy need not match the
    official checksum); missing ones are downloaded and checked. When a download fails
    the error lists every missing file and where to put it.
    """
    paths = [folder / name for name in files]
    missing = [p for p in paths if not p.exists()]
    if os.environ.get("FEWSHOT_OFFLINE") and missing:
        raise _missing_error(dataset, folder, files, missing, "FEWSHOT_OFFLINE is set")
    for path in missing:
        url, md5 = files[path.name]
        try:
            download(url, path, md5)
        except DataError as e:
            if "MD5" in str(e):
                raise
            raise _missing_error(dataset, folder, files, [p for p in paths if not p.exists()], str(e)) from None
    return paths


def _missing_error(dataset: str, folder: Path, files: dict, missing: list[Path], why: str) -> DataError:
    names = ", ".join(p.name for p in missing)
    urls = " ".join(files[p.name][0] for p in missing)
    return DataError(
        f"{dataset}: {names} not found in {folder} and could not be downloaded ({why}). "
        f"Put them there (from {urls}) or point --data-root / FEWSHOT_DATA at a folder holding {dataset}/"
    )
