"""One engine per tag: ``engine.lock`` holds the pid under an exclusive flock.

The kernel drops the flock when the process dies, however it dies (kill -9 too), so
a lock file left behind by a dead engine is simply taken over. The pid inside is for
people and the monitor; the flock is what decides.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import UsageError


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (FileNotFoundError, ValueError, OSError):
        return None


def is_locked(path: Path) -> bool:
    """True when a live engine holds the lock (checked without taking it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock if we got it
    return False


def holder_pid(path: Path) -> int | None:
    return _read_pid(path) if is_locked(path) else None


class EngineLock:
    def __init__(self, path: Path, tag: str):
        self.path = Path(path)
        self.tag = tag
        self._fd: int | None = None
        self.took_over_pid: int | None = None  # pid in a stale lock we replaced

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _read_pid(self.path)
            who = f" (pid {pid})" if pid else ""
            raise UsageError(f"another engine{who} is already running tag {self.tag!r}; "
                             f"use `autoresearch ctl stop --tag {self.tag}` or pick another --tag") from None
        stale = os.read(fd, 64).decode(errors="replace").strip()
        self.took_over_pid = int(stale) if stale.isdigit() and int(stale) != os.getpid() else None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
