"""Opening the monitor in this terminal, or serving it to a browser.

Textual is imported only here, when a monitor really opens, so `autoresearch status`
and the engine never load it. Starting engines is engine/launcher.py's job.
"""

from __future__ import annotations

import ipaddress
import shlex
import sys
from pathlib import Path

from engine.lock import holder_pid
from engine.rundir import RunDir


def run_monitor(run: RunDir) -> int:
    from tui.app import MonitorApp

    result = MonitorApp(run).run()
    reattach = f"autoresearch tui --tag {run.tag}"
    if result == "stop":
        print(f"autoresearch: asked the loop ({run.tag}) to stop; `{reattach}` shows how it ended.")
    elif holder_pid(run.lock):
        print(f"autoresearch: the loop ({run.tag}) keeps running; reattach with `{reattach}`.")
    return 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_monitor(repo: Path, tag: str, host: str, port: int) -> int:
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
