"""Free space on the disks holding the outputs folder and the database, against a threshold.

New work is refused in words naming the disk while either has less than ``min_free_mb`` free
(the two may be one disk, or two). statvfs is a cheap call, so it is asked at every submit.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from storage.errors import DiskFullError

log = logging.getLogger(__name__)
MB = 1024 * 1024


@dataclass(frozen=True)
class LowDisk:
    """One disk under the threshold: what it holds, in words, and its free megabytes."""

    holds: str
    free_mb: float


def _existing(path: Path) -> Path:
    """The path itself or its nearest existing parent (where it would be created)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_mb(folder: Path) -> float | None:
    """Free megabytes on the disk holding ``folder``; None if it cannot be read."""
    try:
        return shutil.disk_usage(_existing(folder)).free / MB
    except OSError:
        return None


class DiskSpace:
    """The bot's free-space guard (scheduling.disk.SpaceGuard) over the outputs and database."""

    def __init__(
        self, outputs_dir: Path, db_path: Path, *, min_free_mb: float, wait_limit_s: float
    ) -> None:
        self.outputs_dir = Path(outputs_dir)
        self.db_path = Path(db_path)
        self.min_free_mb = min_free_mb
        self.wait_limit_s = wait_limit_s

    def places(self) -> list[tuple[str, Path]]:
        """What each watched folder holds, in words, with the folder."""
        return [
            (f"{self.outputs_dir.as_posix().rstrip('/')}/", self.outputs_dir),
            (f"the database ({self.db_path})", self.db_path.parent),
        ]

    def low(self) -> list[LowDisk]:
        """The disks with less than the threshold free (one entry per disk, naming all it holds)."""
        disks: dict[object, tuple[list[str], float]] = {}
        for holds, folder in self.places():
            where = _existing(folder)
            free = free_mb(where)
            if free is None or free >= self.min_free_mb:
                continue
            try:
                key: object = os.stat(where).st_dev
            except OSError:
                key = holds
            names, _ = disks.setdefault(key, ([], free))
            names.append(holds)
        return [LowDisk(" and ".join(names), free) for names, free in disks.values()]

    def words(self, disk: LowDisk) -> str:
        """'The disk holding outputs/ is full (12 MB free, under the 300 MB the bot keeps)'."""
        return (
            f"The disk holding {disk.holds} is full ({disk.free_mb:,.0f} MB free, under the "
            f"{self.min_free_mb:,.0f} MB the bot keeps free)"
        )

    def admit(self) -> None:
        """Raise DiskFullError if the outputs or the database disk is under the threshold."""
        low = self.low()
        if low:
            words = self.words(low[0])
            log.warning("new work refused: %s", words)
            raise DiskFullError(f"{words}; an admin needs to free space.")

    def outputs_full(self) -> str:
        """A full outputs disk in words (it refused a write, whatever the threshold says)."""
        holds, folder = self.places()[0]
        free = free_mb(folder)
        shown = "" if free is None else f" ({free:,.0f} MB free)"
        return f"The disk holding {holds} is full{shown}"
