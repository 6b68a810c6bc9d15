"""Reading a run directory as it changes. No Textual here: the app wraps these batches.

One ``RunWatcher`` thread owns every file handle. It wakes when watchdog reports a
change in the run directory (or on a short poll when watchdog cannot run), reads only
the bytes that are new since last time, and hands one ``Batch`` to the consumer.
It then waits until the consumer calls ``ack()`` before reading again: that is the
back-pressure. While it waits the files keep growing, so the next read picks up
everything at once; a burst of 2,000 log lines a second becomes a few batches a second.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.lock import is_locked
from engine.results import Result, State, parse_results
from engine.rundir import RunDir, parse_jsonl_lines, read_json
from engine.untrusted import strip_control
from tui.flights import pick_flight, read_flights, several

# A file that grew by more than this while we were not looking is read from its tail:
# the screen only ever shows the last few thousand lines anyway.
LOG_BACKLOG_BYTES = 256 * 1024
EVENTS_BACKLOG_BYTES = 256 * 1024
SMALL_FILE_BYTES = 512 * 1024  # diff.patch, hypothesis.md, eval.json: read at most this much
WAKE_EVENTS = ("modified", "created", "moved", "deleted", "closed")  # writes, not reads
# Importing watchdog waits this long after the first batch, so it does not compete with
# the first frame for the CPU (two cores, one GIL).
STARTUP_QUIET_S = 0.3
BUSY_RATE = 200.0  # log lines per second: above this, batches come less often...
FLOOD_RATE = 1000.0  # ...and above this, at flood_interval (3 a second)
# Each poll that finds nothing new doubles the wait before the next, up to this many
# times the poll interval: an idle run costs a few reads a minute, and the first change
# (or a file event) brings the interval back at once.
POLL_BACKOFF = 4


@dataclass
class Batch:
    """Everything new since the previous batch. Empty fields mean "no change".

    Results and the state come typed (engine/results.py); events stay dicts, one per
    line of events.jsonl, since their fields depend on their type.
    """

    state: State | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    results_reset: bool = False  # results.jsonl was replaced: ``results`` is the whole list
    log_n: int | None = None  # the experiment whose run.log ``log_lines`` come from
    log_reset: bool = False  # a different run.log (new experiment): clear the pane first
    log_lines: list[str] = field(default_factory=list)
    log_partial: str | None = None  # an unfinished last line (progress bars), or None
    log_skipped_bytes: int = 0  # bytes jumped over because the backlog was too large
    diff: str | None = None  # the current experiment's diff.patch, when it changed
    alive: bool | None = None  # engine process alive, when that changed
    lock_pid: int | None = None

    def is_empty(self) -> bool:
        return (
            self.state is None
            and not self.events
            and not self.results
            and not self.results_reset
            and not self.log_reset
            and not self.log_lines
            and self.log_partial is None
            and self.diff is None
            and self.alive is None
        )


class FileTail:
    """Reads the new complete lines of one growing file.

    Survives the file not existing yet, being truncated, or being replaced (new inode):
    each of those restarts from the beginning and says so through ``reset``.
    """

    def __init__(self, path: Path, backlog_bytes: int | None = None):
        self.path = path
        self.backlog_bytes = backlog_bytes  # None: always read everything
        self.offset = 0
        self.inode: int | None = None
        self.reset = False  # set by read(): the file was replaced or truncated
        self.skipped = 0  # set by read(): bytes skipped to honour backlog_bytes
        self.partial = b""  # bytes after the last newline (not consumed)

    def read(self) -> bytes:
        """New bytes up to and including the last newline (b"" when nothing new)."""
        self.reset = False
        self.skipped = 0
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if self.inode is not None and (st.st_ino != self.inode or st.st_size < self.offset):
                    self.reset = True
                    self.offset = 0
                self.inode = st.st_ino
                size = st.st_size
                if size == self.offset:
                    return b""
                start = self.offset
                if self.backlog_bytes is not None and size - start > self.backlog_bytes:
                    start = size - self.backlog_bytes
                    f.seek(start)
                    data = f.read(size - start)
                    cut = data.find(b"\n") + 1  # drop the line we landed in the middle of
                    self.skipped = start + cut - self.offset
                    data = data[cut:]
                else:
                    f.seek(start)
                    data = f.read(size - start)
        except FileNotFoundError:
            if self.inode is not None:
                self.reset = True
            self.inode = None
            self.offset = 0
            self.partial = b""
            return b""
        end = data.rfind(b"\n") + 1
        self.partial = data[end:]
        self.offset = self.offset + self.skipped + end
        return data[:end]


def decode_log_lines(data: bytes) -> list[str]:
    """Bytes of complete lines -> printable lines (ANSI stripped, ``\\r`` resolved)."""
    if not data:
        return []
    text = data.decode("utf-8", errors="replace")
    if text.endswith("\n"):
        text = text[:-1]
    return strip_control(text).split("\n")


def read_small(path: Path, limit: int = SMALL_FILE_BYTES) -> str | None:
    """A small text file (at most ``limit`` bytes, marked when cut), or None if missing."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except (FileNotFoundError, IsADirectoryError):
        return None
    text = data[:limit].decode("utf-8", errors="replace")
    if len(data) > limit:
        text += f"\n[... cut at {limit // 1024} KiB ...]\n"
    return text


def engine_alive(run: RunDir) -> bool:
    """The engine holds an flock on engine.lock while it lives (the kernel drops it on
    any death, kill -9 included), so this is not fooled by a recycled pid."""
    return is_locked(run.lock)


def read_lock_pid(run: RunDir) -> int | None:
    try:
        return int(run.lock.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError, OSError):
        return None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class RunReader:
    """The stateful part of watching: what has been read so far. Single-threaded.

    ``collect()`` returns a Batch of what changed; the watcher thread calls it in a loop,
    tests and benchmarks call it directly.
    """

    def __init__(self, run: RunDir, alive: Callable[[RunDir], bool] = engine_alive):
        self.run = run
        self._alive_fn = alive
        self._state_stamp: tuple[int, int, int] | None = None
        self.state = State()
        self._events = FileTail(run.events_jsonl, backlog_bytes=EVENTS_BACKLOG_BYTES)
        self._results = FileTail(run.results_jsonl)
        self.log_n: int | None = None
        self._log: FileTail | None = None
        self._log_partial = b""
        self._diff_stamp: tuple[int, int, int] | None = None
        self.alive: bool | None = None
        self._latest_event_n: int | None = None
        # The experiment whose run.log and diff.patch to read, when the monitor chose one
        # (several workers: the selected row); None: the one state.json names. Set from
        # the UI thread (one assignment), read here.
        self.follow: int | None = None

    def current_n(self) -> int | None:
        if self.follow is not None:
            return self.follow
        flights = read_flights(self.state)
        if several(self.state, flights) and flights:  # what the view will select first (tui/model.py)
            return pick_flight(flights)
        if self.state.experiment is not None:
            return self.state.experiment
        return self._latest_event_n

    def collect(self) -> Batch:
        batch = Batch()
        run = self.run

        stamp = _stamp(run.state_json)
        if stamp != self._state_stamp:
            self._state_stamp = stamp
            raw = read_json(run.state_json)
            if isinstance(raw, dict):  # missing or half-written: keep the last good one
                self.state = State.from_dict(raw)
                batch.state = self.state

        data = self._events.read()
        if data:
            batch.events = list(parse_jsonl_lines(data))
            for ev in batch.events:
                if isinstance(ev.get("n"), int):
                    self._latest_event_n = ev["n"]

        data = self._results.read()
        if self._results.reset:
            batch.results_reset = True
        if data:  # a line that is not a record (no integer n, no status) is skipped
            batch.results = parse_results(parse_jsonl_lines(data))

        n = self.current_n()
        if n is not None and n != self.log_n:
            self.log_n = n
            self._log = FileTail(run.experiment(n) / "run.log", backlog_bytes=LOG_BACKLOG_BYTES)
            self._log_partial = b""
            self._diff_stamp = None
            batch.log_reset = True
        batch.log_n = self.log_n
        if self._log is not None:
            data = self._log.read()
            if self._log.reset:
                batch.log_reset = True
            batch.log_lines = decode_log_lines(data)
            batch.log_skipped_bytes = self._log.skipped
            if self._log.partial != self._log_partial:
                self._log_partial = self._log.partial
                batch.log_partial = decode_log_lines(self._log.partial + b"\n")[-1] if self._log.partial else ""

            diff_path = run.experiment(self.log_n) / "diff.patch"  # type: ignore[arg-type]
            stamp = _stamp(diff_path)
            if stamp != self._diff_stamp:
                self._diff_stamp = stamp
                batch.diff = read_small(diff_path) or ""

        alive = self._alive_fn(run)
        if alive != self.alive:
            self.alive = alive
            batch.alive = alive
            batch.lock_pid = read_lock_pid(run) if alive else None
        return batch


class RunWatcher:
    """The one watcher thread: wakes on file changes, reads, hands over, waits for ack."""

    def __init__(
        self,
        run: RunDir,
        on_batch: Callable[[Batch], None],
        *,
        use_watchdog: bool = True,
        poll_interval: float = 1.0,
        fallback_poll_interval: float = 0.1,
        min_interval: float = 0.05,
        flood_interval: float = 1 / 3,
        alive: Callable[[RunDir], bool] = engine_alive,
    ):
        self.reader = RunReader(run, alive=alive)
        self.run = run
        self.on_batch = on_batch
        self.use_watchdog = use_watchdog
        self.poll_interval = poll_interval
        self.fallback_poll_interval = fallback_poll_interval
        # Quiet time between batches, so bursts coalesce: short for a normal log (a line
        # shows within ~0.1 s), longer while a log floods (nobody reads 1,000 lines a
        # second, and each batch costs a repaint: CPU here, bandwidth over SSH).
        self.min_interval = min_interval
        self.flood_interval = flood_interval
        self._wake = threading.Event()
        self._acked = threading.Event()
        self._acked.set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        self._watched_dirs: set[Path] = set()
        self.watchdog_error: str | None = None
        self.error: BaseException | None = None

    # -- consumer side -----------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="run-watcher", daemon=True)
        self._thread.start()

    def ack(self) -> None:
        """The consumer finished with the last batch; the next one may come."""
        self._acked.set()

    def poke(self) -> None:
        """Read now (for example after sending a command)."""
        self._wake.set()

    def follow(self, n: int | None) -> None:
        """Read experiment n's run.log and diff.patch from now on (None: the one state.json
        names). The switch comes as a batch with ``log_reset``, like a new experiment."""
        if n != self.reader.follow:
            self.reader.follow = n
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._acked.set()
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=2)
            except Exception:
                pass
            self._observer = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def polling(self) -> bool:
        """True when changes are found by polling only (watchdog off or unavailable)."""
        return not self.use_watchdog or self.watchdog_error is not None

    # -- watcher thread ------------------------------------------------------------

    def _start_observer(self) -> None:
        try:
            from watchdog import events as wd
            from watchdog.observers import Observer

            wake = self._wake

            class _Wake(wd.FileSystemEventHandler):
                def on_any_event(self, event: Any) -> None:
                    # Our own reads raise "opened"/"closed_no_write": waking on them would
                    # make the watcher chase its own tail.
                    if event.event_type in WAKE_EVENTS:
                        wake.set()

            self._handler = _Wake()
            # Ask the kernel for writes only (inotify mask), not for every read we do.
            self._filter = [
                wd.FileModifiedEvent, wd.FileCreatedEvent, wd.FileMovedEvent, wd.FileDeletedEvent,
                wd.FileClosedEvent, wd.DirCreatedEvent, wd.DirMovedEvent, wd.DirDeletedEvent,
            ]
            observer = Observer()
            observer.schedule(self._handler, str(self.run.root), recursive=False, event_filter=self._filter)
            self._watched_dirs = {self.run.root}
            observer.daemon = True
            observer.start()
            self._observer = observer
        except Exception as e:  # no inotify watches left, unsupported filesystem, ...
            self.watchdog_error = f"{type(e).__name__}: {e}"
            self._observer = None

    def spacing(self, rate: float) -> float:
        """Seconds from one batch to the next, given the log's rate in lines per second."""
        if rate >= FLOOD_RATE:
            return self.flood_interval
        if rate >= BUSY_RATE:
            return (self.min_interval + self.flood_interval) / 2
        return self.min_interval

    def _post(self, batch: Batch) -> bool:
        self._watch_experiment_dir()
        if batch.is_empty():
            return False
        self._acked.clear()
        self.on_batch(batch)
        return True

    def _wait_for_ack(self) -> bool:
        """Back-pressure: no new batch until the consumer is done with the last one."""
        while not self._acked.wait(0.5):
            if self._stop.is_set():
                return False
        return not self._stop.is_set()

    def _watch_experiment_dir(self) -> None:
        """Also watch the current experiment's directory (its run.log and diff.patch)."""
        if self._observer is None or self.reader.log_n is None:
            return
        exp = self.run.experiment(self.reader.log_n)
        if exp in self._watched_dirs or not exp.is_dir():
            return
        try:
            self._observer.schedule(self._handler, str(exp), recursive=False, event_filter=self._filter)
            self._watched_dirs.add(exp)
        except Exception:
            pass  # the poll still picks changes up, just later
        if not self.run.experiments.is_dir() or self.run.experiments in self._watched_dirs:
            return
        try:  # new experiment directories appear here
            self._observer.schedule(self._handler, str(self.run.experiments), recursive=False, event_filter=self._filter)
            self._watched_dirs.add(self.run.experiments)
        except Exception:
            pass

    def _loop(self) -> None:
        try:
            self._post(self.reader.collect())  # the first batch, before watchdog is even imported
            if self.use_watchdog and not self._stop.wait(STARTUP_QUIET_S):
                self._start_observer()  # imported here, off the UI thread, after the first frame
            next_post = last_post = time.monotonic()
            quiet = 0  # polls in a row that found nothing
            while not self._stop.is_set():
                if not self._wait_for_ack():
                    return
                gap = next_post - time.monotonic()
                if gap > 0 and self._stop.wait(gap):  # let a burst pile up into one batch
                    return
                self._wake.clear()
                batch = self.reader.collect()
                if self._post(batch):
                    quiet = 0
                    now = time.monotonic()
                    rate = len(batch.log_lines) / max(now - last_post, 1e-3)
                    if batch.log_skipped_bytes:
                        rate = float("inf")
                    last_post, next_post = now, now + self.spacing(rate)
                    continue
                interval = self.poll_interval if self._observer is not None else self.fallback_poll_interval
                if not self._wake.wait(interval * min(2 ** quiet, POLL_BACKOFF)):
                    quiet = min(quiet + 1, 8)  # the poll found nothing and nothing woke us: wait longer next time
                else:
                    quiet = 0
        except BaseException as e:  # reported by the consumer; never kills the process
            self.error = e
            raise

