"""One writer per folder: a run folder or a benchmark folder is claimed with a lock file for as long as it is written.

Two trainings into one `output_dir` would both exit 0, one result silently lost and their checkpoints interleaved.
`hold_lock` is the finer lock of processes that share one benchmark: each holds the units it runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from cllmfs_trainer.errors import UserError

LOCK_FILE = ".cllmfs.lock"


@contextlib.contextmanager
def claim_folder(path: str | os.PathLike, what: str = "output_dir") -> Iterator[Path]:
    """Hold `path/.cllmfs.lock` for the block, so that a second writer of the same folder stops at once.

    Two trainings into one folder would both exit 0 with one result silently lost and their checkpoints interleaved.
    The lock file is created exclusively and names its holder (process id, host, start time); it is removed when the
    block ends. A lock left by a process of this host that no longer runs (killed with SIGKILL) is taken over.

    Args:
        path (`str` or `os.PathLike`):
            The folder; it is created if missing.
        what (`str`, *optional*, defaults to `"output_dir"`):
            The option or field it came from, for the message.

    Raises:
        `UserError`: naming the holder when another live process holds the folder.
    """
    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError:
            other = _read_lock(lock)
            if _holder_alive(other):
                raise UserError(
                    f"{what} {folder} is in use by another run ({other}); wait for it to finish or choose another "
                    f"{what} (remove {lock} only if that process is gone)"
                ) from None
            lock.unlink(missing_ok=True)  # its process is gone: a stale lock
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(holder + "\n")
        break
    else:
        raise UserError(f"{what} {folder}: could not claim {lock}; another run is starting there")
    try:
        yield folder
    finally:
        if _read_lock(lock) == holder:
            lock.unlink(missing_ok=True)


def _read_lock(lock: Path) -> str:
    try:
        return lock.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _holder_alive(holder: str) -> bool:
    """Whether the process named in a lock still runs; a lock of another host, or an unreadable one, counts as live."""
    match = re.match(r"pid (\d+) on (\S+) ", holder)
    if match is None or match.group(2) != socket.gethostname():
        return True  # being written this instant, damaged, or another host's: let the user decide
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike, wait: bool = True) -> Iterator[bool]:
    """Hold the lock file `path` for the block; yields whether it is held.

    An OS lock (`filelock`), so a process that dies, even by SIGKILL, holds nothing any more.

    Args:
        path (`str` or `os.PathLike`):
            The lock file; its folder is created if missing.
        wait (`bool`, *optional*, defaults to `True`):
            Wait while another process holds it; otherwise yield `False` at once.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
