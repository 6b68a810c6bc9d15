"""Run train.py / prepare.py as child processes the engine can always take back.

Each child gets its own process group (so one signal reaches everything it spawned),
a minimal environment (no API keys or other secrets), and its output streamed into a
log file as it arrives. The caller's ``tick`` runs every poll so the engine can write
heartbeats and notice control commands while a run is in progress.
"""

from __future__ import annotations

import collections
import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

POLL_SECONDS = 0.05
CPU_SAMPLE_SECONDS = 1.0  # how often (at most) the hang detector reads the tree's CPU time
KILL_GRACE_SECONDS = 5.0  # SIGTERM first; SIGKILL if the group is still there after this
MAX_LOG_BYTES = 64 * 1024 * 1024  # a runaway printer cannot fill the disk
TAIL_LINES = 400

# Copied from the engine's environment into the child's when set. Everything else
# (API keys, tokens, cloud credentials) stays behind.
_PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "USER", "LOGNAME", "TERM")
_PASS_THROUGH_PREFIXES = ("CUDA_", "NVIDIA_", "OMP_", "MKL_", "OPENBLAS_", "PYTORCH_CUDA_ALLOC", "HIP_", "ROCR_")
_PASS_THROUGH_NAMES = ("LD_LIBRARY_PATH", "VIRTUAL_ENV", "CONDA_PREFIX", "NUMEXPR_NUM_THREADS", "TORCH_HOME")
# Never passed, whatever the prefix rules above say.
_SECRET_HINT = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|AUTH", re.IGNORECASE)


def minimal_env(extra: dict[str, str] | None = None, source: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a training or evaluation process gets."""
    source = dict(os.environ if source is None else source)
    env: dict[str, str] = {}
    for key, value in source.items():
        if _SECRET_HINT.search(key):
            continue
        if key in _PASS_THROUGH or key in _PASS_THROUGH_NAMES or key.startswith(_PASS_THROUGH_PREFIXES):
            env[key] = value
    env.setdefault("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep the worktree free of __pycache__
    env.update(extra or {})
    return env


@dataclass
class ProcessResult:
    returncode: int | None  # negative: killed by that signal (as subprocess reports it)
    reason: str  # "exited", "timeout", "hang", "killed" (by a request: skip or stop)
    wall_seconds: float
    pid: int
    tail: list[str] = field(default_factory=list)  # the last lines of output, decoded
    summary: dict[str, str] = field(default_factory=dict)  # key: value lines after "---"
    fail_line: str | None = None  # the first line starting with FAIL
    log_truncated: bool = False

    @property
    def killed_by_signal(self) -> int | None:
        return -self.returncode if self.returncode is not None and self.returncode < 0 else None


def _set_parent_death_signal() -> None:
    """In the child, before exec: die with SIGKILL when the engine dies (even kill -9)."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


try:  # Linux only; elsewhere the orphan sweep at start-up covers it
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


class _OutputPump(threading.Thread):
    """Copies the child's output into the log as it arrives and keeps the tail."""

    def __init__(self, stream, log, log_bytes_before: int, echo: Callable[[bytes], None] | None = None):
        super().__init__(name="output-pump", daemon=True)
        self.stream = stream
        self.echo = echo
        self.log = log
        self.written = log_bytes_before
        self.truncated = False
        self.write_error: str | None = None
        self.last_output = time.monotonic()
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.summary: dict[str, str] = {}
        self.fail_line: str | None = None
        self._in_summary = False
        self._partial = b""

    def run(self) -> None:
        fd = self.stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.last_output = time.monotonic()
            self._write(chunk)
            if self.echo is not None:
                self.echo(chunk)
            self._scan(chunk)
        if self._partial:
            self._line(self._partial)
            self._partial = b""

    def _write(self, chunk: bytes) -> None:
        if self.write_error is not None:
            return  # the log cannot be written (a full disk): keep draining the pipe, keep the tail
        try:
            if self.written >= MAX_LOG_BYTES:
                if not self.truncated:
                    self.truncated = True
                    self.log.write(b"\n[autoresearch] log truncated: output beyond 64 MiB is dropped\n")
                    self.log.flush()
                return
            self.log.write(chunk)
            self.log.flush()  # the monitor tails this file
            self.written += len(chunk)
        except (OSError, ValueError) as e:  # ValueError: the log was closed under a child that lingers
            self.write_error = getattr(e, "strerror", None) or str(e)

    def _scan(self, chunk: bytes) -> None:
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > 65536:  # a line without end: keep its last part only
            self._partial = self._partial[-65536:]
        for raw in lines:
            self._line(raw)

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        self.tail.append(text)
        stripped = text.strip()
        if self.fail_line is None and stripped.startswith("FAIL"):
            self.fail_line = stripped
        if stripped == "---":
            self._in_summary = True
            self.summary = {}
        elif self._in_summary and ":" in stripped:
            key, _, value = stripped.partition(":")
            if key and " " not in key.strip():
                self.summary[key.strip()] = value.strip()


def spawn(argv: list[str], *, cwd: Path, env: dict[str, str], stdin: int = subprocess.DEVNULL) -> subprocess.Popen:
    """Start a child the engine can always take back: its own session and process group,
    killed by the kernel if the engine dies, output (both streams) on a pipe."""
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own session and process group
        preexec_fn=_set_parent_death_signal,
    )


def run_process(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    timeout: float | None = None,
    hang_seconds: float | None = None,
    tick: Callable[[], None] | None = None,
    should_kill: Callable[[], bool] | None = None,
    grace: float = KILL_GRACE_SECONDS,
    on_start: Callable[[int], None] | None = None,
    echo: Callable[[bytes], None] | None = None,
) -> ProcessResult:
    """Run ``argv`` to completion, appending its output to ``log_path`` (see ``supervise``)."""
    proc = spawn(argv, cwd=cwd, env=env)
    if on_start is not None:
        on_start(proc.pid)
    return supervise(proc, log_path=log_path, timeout=timeout, hang_seconds=hang_seconds, tick=tick,
                     should_kill=should_kill, grace=grace, echo=echo)


def supervise(
    proc: subprocess.Popen,
    *,
    log_path: Path,
    timeout: float | None = None,
    hang_seconds: float | None = None,
    tick: Callable[[], None] | None = None,
    should_kill: Callable[[], bool] | None = None,
    grace: float = KILL_GRACE_SECONDS,
    echo: Callable[[bytes], None] | None = None,
) -> ProcessResult:
    """Watch a started child to its end, appending its output to ``log_path``.

    The clock starts now (a warm process's start-up before this call is not counted).
    Ends it early (SIGTERM to the group, SIGKILL after ``grace``) when it passes
    ``timeout`` seconds, shows neither output nor CPU progress for ``hang_seconds``,
    or ``should_kill()`` turns true. Nothing it started outlives this call.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        before = log.tell()
        start = time.monotonic()
        pump = _OutputPump(proc.stdout, log, before, echo)
        pump.start()
        reason = "exited"
        cpu = _TreeCpu(proc.pid)
        cpu.advanced()  # the tree's CPU so far (a warm start-up) is not progress
        last_progress = start
        next_sample = start
        sample_every = min(CPU_SAMPLE_SECONDS, (hang_seconds or CPU_SAMPLE_SECONDS) / 4)
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if tick is not None:
                    tick()
                if should_kill is not None and should_kill():
                    reason = "killed"
                elif timeout is not None and now - start > timeout:
                    reason = "timeout"
                elif hang_seconds is not None:
                    if now >= next_sample:
                        next_sample = now + sample_every
                        if cpu.advanced():
                            last_progress = now
                    if now - max(last_progress, pump.last_output) > hang_seconds:
                        reason = "hang"
                if reason != "exited":
                    write_note(log, f"stopping the process group: {reason}")
                    terminate_group(proc, grace)
                    break
                try:
                    proc.wait(timeout=POLL_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
        except BaseException:
            terminate_group(proc, grace)
            raise
        finally:
            proc.wait()
            _kill_leftovers(proc.pid)
            pump.join(timeout=5)
            proc.stdout.close()
        wall = time.monotonic() - start
    return ProcessResult(
        returncode=proc.returncode,
        reason=reason,
        wall_seconds=wall,
        pid=proc.pid,
        tail=list(pump.tail),
        summary=dict(pump.summary),
        fail_line=pump.fail_line,
        log_truncated=pump.truncated,
    )


def write_note(log, text: str) -> None:
    """An ``[autoresearch]`` line of the engine's own in a run's log (binary file)."""
    try:
        log.write(f"\n[autoresearch] {text}\n".encode())
        log.flush()
    except (OSError, ValueError):
        pass  # a full disk (the note is also in the result's error), or a closed log


def terminate_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the child's process group; SIGKILL whatever is left after ``grace``."""
    pgid = proc.pid  # start_new_session: the child leads its own group
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(pgid):
            return
        time.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)


def _kill_leftovers(pgid: int) -> None:
    """Daemons the run left behind in its group (data loader workers and the like)."""
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # Zombies still count for killpg(0); only live members matter.
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return False


def kill_stale_group(pgid: int | None, within: Path) -> bool:
    """At start-up: end the process group a previous (killed) engine left running.

    Only a group one of whose live members runs inside this run's directory is touched
    (the leader may be gone, its children not), so a recycled pid of some unrelated
    program is safe.
    """
    if not pgid:
        return False
    root = Path(within).resolve()
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE \
                    and Path(p.cwd()).resolve().is_relative_to(root):
                _signal_group(pgid, signal.SIGKILL)
                return True
        except (psutil.Error, OSError):
            continue
    return False


class _TreeCpu:
    """CPU seconds used by a process and all its descendants, for the hang detector."""

    def __init__(self, pid: int):
        self.pid = pid
        self.last = -1.0

    def total(self) -> float:
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return self.last
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                continue
        return total

    def advanced(self) -> bool:
        """True when the tree used noticeably more CPU since the last call."""
        now = self.total()
        moved = now - self.last > 0.01
        self.last = max(self.last, now)
        return moved
