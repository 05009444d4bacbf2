"""A full disk: the errors that say so, and what the scheduler asks about free space.

Kept free of other imports: storage's DiskFullError derives from DiskFull. The bot supplies a
``SpaceGuard`` (storage.space.DiskSpace) that knows the folders and the threshold; the
scheduler only asks it whether to admit work and how to word a full outputs disk.
A job whose images the full disk refused waits in scheduling/disk_wait.py.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.requests import GenerationResult

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
Saved = tuple["GenerationResult", dict[str, Any]]


class DiskFull(Exception):
    """A disk the bot writes to is full; the message names it (storage.DiskFullError is one)."""


class OutputsStayedFull(DiskFull):
    """A job's images waited for space longer than the limit; the job fails with these words."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error means a full disk: ENOSPC/EDQUOT from the OS, or a DiskFull."""
    return isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno in FULL_ERRNOS)


class ImagesUnsaved(Exception):
    """A job's images were made but the full disk refused them; ``retry()`` saves them again."""

    def __init__(self, cause: OSError, retry: Callable[[], Saved]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retry = retry


def saving(save: Callable[[], Saved]) -> Saved:
    """Run ``save``; a full disk becomes ImagesUnsaved carrying ``save`` to try again later."""
    try:
        return save()
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise ImagesUnsaved(exc, lambda: saving(save)) from exc


class SpaceGuard(Protocol):
    """What the scheduler asks about free disk space."""

    wait_limit_s: float

    def admit(self) -> None:
        """Raise DiskFull (in words naming the disk) if new work must be refused now."""

    def outputs_full(self) -> str:
        """A full outputs disk in words: which folder, how much is free."""


class NoGuard:
    """No threshold: everything is admitted (tests and the command line)."""

    wait_limit_s = 3600.0

    def admit(self) -> None:
        """Admit everything."""

    def outputs_full(self) -> str:
        """A full outputs disk in words."""
        return "The disk holding the outputs folder is full"
