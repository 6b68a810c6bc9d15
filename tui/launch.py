"""``autoresearch`` (no command), ``autoresearch tui`` and ``autoresearch serve``.

The engine always runs as its own detached process (own session, output to
``engine.log`` in the run directory), so closing the terminal or losing the SSH
connection ends only the monitor. Textual is imported only when a monitor opens.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from engine.errors import UsageError
from engine.lock import holder_pid
from engine.rundir import RUNS_DIRNAME, RunDir, list_tags
from tui.rundata import read_lock_pid

ENGINE_START_TIMEOUT = 20.0  # seconds to wait for a new engine to take its lock


def default_tag(now: float | None = None) -> str:
    """Today's date like "nov23" (the engine's default tag)."""
    t = time.localtime(now)
    return time.strftime("%b", t).lower() + str(t.tm_mday)


def resolve_repo(args: argparse.Namespace) -> Path:
    """The repository's top level: the nearest directory up with a .git (dir or file).

    A file-system walk rather than `git rev-parse`: attaching should not pay for a
    subprocess before the first frame. The engine does the thorough checks.
    """
    repo = Path(getattr(args, "repo", ".") or ".").expanduser()
    if not repo.is_dir():
        raise UsageError(f"{repo} is not a directory")
    repo = repo.resolve()
    for candidate in (repo, *repo.parents):
        if (candidate / ".git").exists():
            return candidate
    raise UsageError(f"{repo} is not a git repository")


def engine_pid(run: RunDir) -> int | None:
    """The pid of the engine holding this run's lock, if it is alive."""
    return holder_pid(run.lock)


def resolve_tag(repo: Path, tag: str | None) -> str:
    """The given tag (it must exist) or the latest one (there must be one)."""
    tags = list_tags(repo)
    if tag is not None:
        if tag not in tags:
            known = ", ".join(tags[-5:]) if tags else "none yet"
            raise UsageError(f"no run tagged {tag!r} in {repo} (known: {known})")
        return tag
    if not tags:
        raise UsageError(f"no runs yet in {repo}; start one with `autoresearch`")
    return tags[-1]


def engine_command(repo: Path, tag: str, run_args: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "autoresearch", "--repo", str(repo), "run", "--headless", "--tag", tag, *run_args]


def run_flags(args: argparse.Namespace) -> list[str]:
    """The `autoresearch run` options the user gave, to pass on to a detached engine."""
    flags = []
    for name in ("agent", "budget", "max_experiments", "max_cost", "model", "agent_command", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            flags += ["--" + name.replace("_", "-"), str(value)]
    return flags


def start_engine(repo: Path, tag: str, run_args: list[str] = ()) -> subprocess.Popen:
    """Start the engine detached: its own session, no terminal, output to engine.log."""
    run = RunDir.for_tag(repo, tag)
    run.root.mkdir(parents=True, exist_ok=True)
    with open(run.root / "engine.log", "ab") as log:
        log.write(f"\n--- started by the monitor at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        log.flush()
        return subprocess.Popen(
            engine_command(repo, tag, run_args),
            cwd=repo,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def _last_line(path: Path) -> str:
    try:
        lines = [l.strip() for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    except FileNotFoundError:
        return ""
    lines = [l for l in lines if not l.startswith("--- started by the monitor")]
    return lines[-1] if lines else ""


def start_and_wait(repo: Path, tag: str, run_args: list[str] = (), timeout: float = ENGINE_START_TIMEOUT) -> int:
    """Start a new engine and wait until it holds the lock. Returns its pid.

    If it exits at once (bad input, a second engine), its one-line reason becomes ours
    and whatever this function created on disk is removed again.
    """
    runs = repo / RUNS_DIRNAME
    created_runs = not runs.exists()
    run = RunDir.for_tag(repo, tag)
    created_root = not run.root.exists()
    proc = start_engine(repo, tag, run_args)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            reason = _last_line(run.root / "engine.log").removeprefix("autoresearch: ")
            if created_root:
                shutil.rmtree(run.root, ignore_errors=True)
                if created_runs:
                    shutil.rmtree(runs, ignore_errors=True)
            raise UsageError(reason or f"the engine exited at once (status {code})")
        if read_lock_pid(run) == proc.pid:
            return proc.pid
        time.sleep(0.05)
    return proc.pid  # still starting (e.g. building the data cache): attach anyway


def run_monitor(run: RunDir) -> int:
    from tui.app import MonitorApp

    result = MonitorApp(run).run()
    reattach = f"autoresearch tui --tag {run.tag}"
    if result == "stop":
        print(f"autoresearch: asked the loop ({run.tag}) to stop; `{reattach}` shows how it ended.")
    elif engine_pid(run):
        print(f"autoresearch: the loop ({run.tag}) keeps running; reattach with `{reattach}`.")
    return 0


def cmd_default(args: argparse.Namespace) -> int:
    """Attach to the running engine of the latest (or given) tag, or start one and attach.

    Also serves `autoresearch run` without --headless: its options go to the new engine.
    """
    repo = resolve_repo(args)
    run_args = run_flags(args)
    tag = getattr(args, "tag", None)
    tags = list_tags(repo)
    if tag is None and tags and engine_pid(RunDir.for_tag(repo, tags[-1])):
        tag = tags[-1]
    tag = tag or default_tag()
    run = RunDir.for_tag(repo, tag)
    if not engine_pid(run):
        pid = start_and_wait(repo, tag, run_args)
        print(f"autoresearch: engine started for tag {tag} (pid {pid}); log in {run.root / 'engine.log'}")
    elif run_args:
        print(f"autoresearch: an engine is already running tag {tag}; attaching (ignoring {' '.join(run_args)})")
    return run_monitor(run)


def cmd_tui(args: argparse.Namespace) -> int:
    repo = resolve_repo(args)
    tag = resolve_tag(repo, getattr(args, "tag", None))
    return run_monitor(RunDir.for_tag(repo, tag))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    host = getattr(args, "host", "127.0.0.1") or "127.0.0.1"
    port = int(getattr(args, "port", 8000))
    if not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, not {port}")
    repo = resolve_repo(args)
    tag = resolve_tag(repo, getattr(args, "tag", None))
    if not is_loopback(host):
        print(
            f"autoresearch: warning: serving on {host} exposes the monitor (and its pause/skip/keep/stop keys) "
            "to anyone who can reach this address; prefer 127.0.0.1 with `ssh -L`.",
            file=sys.stderr,
        )
    from textual_serve.server import Server

    command = shlex.join([sys.executable, "-m", "autoresearch", "--repo", str(repo), "tui", "--tag", tag])
    print(f"autoresearch: serving the monitor for {tag} at http://{host}:{port}", file=sys.stderr)
    Server(command, host=host, port=port, title=f"autoresearch {tag}").serve()
    return 0
