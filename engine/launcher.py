"""Starting an engine in the background, for `autoresearch` and the monitor's restart key.

The engine always runs as its own detached process (own session, no terminal, output
to ``engine.log`` in the run directory), so closing the terminal or losing the SSH
connection ends only the monitor. It gets the command line the user typed (plus
``--headless`` and the tag), so its options are parsed and checked exactly once, by
the same code as a foreground run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import UsageError
from .lock import holder_pid
from .rundir import RUNS_DIRNAME, RunDir

ENGINE_START_TIMEOUT = 20.0  # seconds to wait for a new engine to take its lock
STARTED_MARK = "--- started in the background at"


def engine_argv(argv: list[str], tag: str, has_run: bool) -> list[str]:
    """The user's arguments turned into a headless run of ``tag``.

    ``autoresearch [opts]`` and ``autoresearch [opts] run [run opts]`` (``has_run``) both
    become ``... run [run opts] --headless --tag TAG``; options given stay as given.
    """
    return [*argv, *([] if has_run else ["run"]), "--headless", "--tag", tag]


def engine_process(argv: list[str]) -> list[str]:
    """The process that runs an engine with these `autoresearch` arguments."""
    return [sys.executable, "-m", "autoresearch", *argv]


def start_detached(argv: list[str], repo: Path, tag: str, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``python -m autoresearch ARGV`` detached, its output appended to engine.log."""
    run = RunDir.for_tag(repo, tag)
    run.root.mkdir(parents=True, exist_ok=True)
    with open(run.root / "engine.log", "ab") as log:
        log.write(f"\n{STARTED_MARK} {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        log.flush()
        return subprocess.Popen(
            engine_process(argv),
            cwd=cwd or Path.cwd(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def start_and_wait(argv: list[str], repo: Path, tag: str, timeout: float = ENGINE_START_TIMEOUT) -> int:
    """Start an engine and wait until it holds the tag's lock. Returns its pid.

    If it exits at once (bad input, a second engine), its one-line reason becomes ours
    and whatever this function created on disk is removed again.
    """
    runs = repo / RUNS_DIRNAME
    created_runs = not runs.exists()
    run = RunDir.for_tag(repo, tag)
    created_root = not run.root.exists()
    proc = start_detached(argv, repo, tag)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            reason = last_log_line(run.root / "engine.log").removeprefix("autoresearch: ")
            if created_root:
                shutil.rmtree(run.root, ignore_errors=True)
                if created_runs:
                    shutil.rmtree(runs, ignore_errors=True)
            raise UsageError(reason or f"the engine exited at once (status {code})")
        if holder_pid(run.lock) == proc.pid:
            return proc.pid
        time.sleep(0.05)
    return proc.pid  # still starting (e.g. building the data cache): attach anyway


def restart(repo: Path, tag: str) -> int:
    """Start the engine of an existing tag again (the monitor's `r`). Returns its pid."""
    return start_detached(["--repo", str(repo), "run", "--headless", "--tag", tag], repo, tag, cwd=repo).pid


def last_log_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except FileNotFoundError:
        return ""
    lines = [line for line in lines if line and not line.startswith(STARTED_MARK)]
    return lines[-1] if lines else ""

