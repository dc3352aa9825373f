"""Reading archive members into memory, within bounds.

fewshot never extracts an archive to disk: the Omniglot zips and the CIFAR tar.gz
archives are read member by member into memory, and MNIST's gzipped idx files whole. A
damaged or hostile archive can still claim, or inflate to, far more than any official
dataset (a "zip bomb": kilobytes that decompress to gigabytes), so every archive is
read through a :class:`ReadBudget`, which counts the members visited and the bytes
decompressed and refuses the archive past :data:`MAX_MEMBERS` members or
:data:`MAX_BYTES` bytes. The limits are far above every official archive: Omniglot's
larger zip holds 19,280 images (5 MB), CIFAR-10's and CIFAR-100's pickles about 180 MB,
MNIST's training images 47 MB.

Member names are checked as well (:func:`check_member`, :func:`check_name`): nothing is
written to disk, but an archive holding absolute or ``..`` paths, links or devices is
not an official one and is refused outright rather than half-read.
"""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..errors import DataError

MAX_MEMBERS = 100_000
MAX_BYTES = 1 << 30

_TAMPERED = "refusing a tampered archive: replace it with the official file"


class ReadBudget:
    """Counts the members and bytes read from one archive; past the limits, a :class:`DataError`.

    The limits are read from the module when the budget is made, so tests can lower them.
    """

    def __init__(self, archive: str | Path):
        self.archive = archive
        self.max_members, self.max_bytes = MAX_MEMBERS, MAX_BYTES
        self.members = 0
        self.bytes = 0

    def count(self, name: str) -> None:
        """One more member visited."""
        self.members += 1
        if self.members > self.max_members:
            raise DataError(f"{self.archive} holds more than {self.max_members:,} members (at '{name}'), far more "
                            f"than any official dataset archive; {_TAMPERED}")

    def charge(self, size: int, name: str) -> None:
        """``size`` more bytes decompressed (read, or passed over in a stream)."""
        self.bytes += max(int(size), 0)
        if self.bytes > self.max_bytes:
            raise DataError(f"{self.archive} inflates to more than {self.max_bytes:,} bytes (at '{name}'), far more "
                            f"than any official dataset archive; {_TAMPERED}")

    def read(self, handle: BinaryIO, name: str) -> bytes:
        """All of ``handle`` (one member, or a whole gzip stream), but never more than
        the bytes left: a member that claims to be small cannot inflate past the limit."""
        data = handle.read(self.max_bytes - self.bytes + 1)
        self.charge(len(data), name)
        return data


def check_name(name: str, archive: str | Path) -> PurePosixPath:
    """``name`` as a relative path, refusing absolute paths and ``..`` components."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")) or ":" in (path.parts or ("",))[0]:
        raise DataError(f"{archive} holds member '{name}' with an absolute or '..' path; {_TAMPERED}")
    return path


def check_member(member: tarfile.TarInfo, archive: str | Path) -> PurePosixPath:
    """A tar ``member``'s path, refusing links, devices, absolute paths and ``..`` components."""
    path = check_name(member.name, archive)
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive} holds '{member.name}', a link or special file; {_TAMPERED}")
    return path


__all__ = ["MAX_BYTES", "MAX_MEMBERS", "ReadBudget", "check_member", "check_name"]
