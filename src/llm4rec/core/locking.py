"""An OS advisory lock held by a stage while it writes, so that two runs never write one
run folder or one download at once.

Snakemake's own locks cannot be relied on for this: with its file persistence, any run that
finishes removes the whole `.snakemake/locks` folder, the locks of runs still going included
(README, notes), so a second run on the same target then starts the same jobs. A training
stage holds ``{run}/{stage}.lock`` and a download ``<file>.part.lock``: `flock` on that file,
released by the kernel when the process ends however it ends (a killed run leaves no stale
lock, at most an unlocked file). The holder writes its pid, host, start time and command
into the file, so that the process refused can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path


class LockedError(RuntimeError):
    """Another process holds the lock; the message names it and the lock file."""


def _holder(fd: int) -> str:
    """What the holder wrote into the lock file (it may not have written it yet)."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its name yet"


@contextlib.contextmanager
def exclusive(path: str | Path, what: str) -> Iterator[Path]:
    """Hold an exclusive `flock` on ``path`` (created) while the block runs, or refuse at once
    with :class:`LockedError` naming ``what``, the holder and the lock file.

    The file is removed on release. A process that opened it just before that would lock a
    removed file, so the lock counts only when the path still names the file locked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LockedError(
                f"{what} is being written by another process ({holder}); lock file {path}. Two runs must not "
                "write it at once: wait for that one to finish, or stop it, then run again"
            ) from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        command = " ".join(sys.argv)[:300]
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}: {command}\n".encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
