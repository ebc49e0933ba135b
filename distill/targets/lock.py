"""Advisory folder locks, so that two runs never write one folder at once, and cleanup of what dead writers left.

A lock is a `filelock.FileLock` (the lock the Hugging Face caches use: ``flock`` on Unix, ``msvcrt`` on
Windows) on a lock file inside the folder, taken without waiting: a second writer is refused at once with
`FolderBusyError`, naming the folder and the PID written into the lock file. The operating system drops
the lock when its holder exits, however it exits, so a killed run never leaves a stale lock. Under
``accelerate launch`` / torchrun the processes of one run write one folder together, so each locks its own
rank's file (``.lock-rank{R}``): the ranks of one run never block each other, while a second run's rank 0
is refused as long as the first run's rank 0 is alive.

Writers here write under ``.NAME.tmp-PID`` (and move an old version aside to ``.NAME.old-PID``)
before a rename; `remove_dead_temporaries` removes those whose PID is no longer alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import filelock

logger = logging.getLogger(__name__)

TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>[0-9]{1,7})")
MAX_PID = 1 << 22  # the largest pid_max Linux allows


class FolderBusyError(ValueError):
    """A folder that another process holds the lock of; the message names the folder and that process's PID."""


@contextlib.contextmanager
def file_lock(path: str | Path, what: str, *, wait: bool = False) -> Iterator[Path]:
    """Hold the lock of the file ``path`` (created if need be) for the ``with`` block, with this PID written in it.

    Without ``wait`` a lock held elsewhere raises `FolderBusyError` at once (``what`` names what is
    locked, in the message); with ``wait`` it blocks until the holder lets go. The lock belongs to
    its open file: taking the same file twice, even in one process, conflicts.
    """
    path = Path(path)
    lock = filelock.FileLock(path, thread_local=False)
    try:
        lock.acquire(blocking=wait)
    except filelock.Timeout:
        pid = _read_pid(path)
        holder = f"process {pid}" if pid.isdigit() else "another process"
        if pid == str(os.getpid()):
            holder += " (this process)"
        raise FolderBusyError(f"{path.parent}: the {what} folder is in use by {holder} (lock file {path.name}); "
                              f"wait for it to finish, or use another folder") from None  # fmt: skip
    try:
        _write(path, f"{os.getpid()}\n")
        yield path
    finally:
        _write(path, "")
        lock.release()


def _write(path: Path, text: str) -> None:
    """Replace the lock file's text (the holder's PID), never through a symlink; the PID only informs, so a
    system that will not let the holder write its own lock file (Windows) loses nothing but the PID."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.ftruncate(fd, 0)
            os.write(fd, text.encode("ascii"))
        finally:
            os.close(fd)


def _read_pid(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()[:32]
    except OSError:
        return ""


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "run", *, rank: int = 0) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if need be) for process ``rank`` of a run; see the module docstring.

    Locks on different folders nest freely; a second holder of one folder and rank gets
    `FolderBusyError` naming the folder and the holder's PID.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / f".lock-rank{int(rank)}", what) as path:
        yield path


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one of another user counts as alive)."""
    if not 0 < pid < MAX_PID:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temporaries(folder: str | Path) -> list[Path]:
    """Remove the ``.NAME.tmp-PID`` / ``.NAME.old-PID`` files and folders in ``folder`` whose PID is dead.

    Those of live processes are kept: another process of the same run may be writing them now. PIDs
    are only meaningful on this machine, so call this while holding the folder's lock and before
    the processes of the run (on other machines too) start writing. Returns what was removed.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        match = TEMPORARY.fullmatch(path.name)
        if match is None or not 0 < int(match["pid"]) < MAX_PID or pid_alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        logger.info("removed %s, left by process %s, which is no longer running", path, match["pid"])
        removed.append(path)
    return removed
