"""Shared pieces of the monitor benchmarks: a fake run directory and a private tmux.

The monitor is measured as users run it: the real `autoresearch tui` process in a real
terminal (tmux), attached to a run directory written by the fake engine of the tests
(so no training competes for the CPU being measured).
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tui.fake_engine import FakeEngine, history  # noqa: E402

TMUX = shutil.which("tmux")


def make_run(results: int = 40, tag: str = "bench") -> tuple[Path, FakeEngine]:
    """A git repo with a run of ``results`` finished experiments and #results running."""
    root = Path(tempfile.mkdtemp(prefix="autoresearch-bench-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    repo = root / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    engine = FakeEngine(repo, tag, t0=time.time())
    engine.start()
    history(engine, results)
    engine.begin(results, "raise LEARNING_RATE 0.003 -> 0.004", "A higher learning rate converges faster.", at=time.time())
    engine.log(results, "step 0 | loss 3.0")
    return repo, engine


class Tmux:
    count = 0

    def __init__(self, width: int = 160, height: int = 50):
        if TMUX is None:
            sys.exit("these benchmarks need tmux")
        Tmux.count += 1  # a fresh server each time: a dying one must not swallow the next session
        self.name = f"ar-bench-{os.getpid()}-{Tmux.count}"
        self.width, self.height = width, height
        self.env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "NO_COLOR")}
        self.env["TERM"] = "xterm-256color"

    def _tmux(self, *args: str) -> str:
        return subprocess.run([TMUX, "-L", self.name, *args], capture_output=True, text=True, env=self.env).stdout

    def start(self, command: str) -> float:
        """Start ``command`` in a fresh session; returns the monotonic time just before."""
        t0 = time.monotonic()
        self._tmux("new-session", "-d", "-s", "b", "-x", str(self.width), "-y", str(self.height), command)
        return t0

    def pane_pid(self) -> int:
        return int(self._tmux("display-message", "-p", "-t", "b", "#{pane_pid}").strip())

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "b")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "b", *keys)

    def wait_for(self, predicate, timeout: float = 30.0, poll: float = 0.005) -> float:
        """Poll the screen until ``predicate(screen)``; returns the monotonic time it held."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.screen()):
                return time.monotonic()
            time.sleep(poll)
        raise SystemExit(f"timed out; the screen was:\n{self.screen()}")

    def kill(self) -> None:
        self._tmux("kill-server")
        socket_dir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
        (socket_dir / self.name).unlink(missing_ok=True)  # tmux leaves its socket file behind


# The monitor's source tree to measure: this checkout, or another copy of it (an older
# version, to compare before and after in one session on the same shared machine).
TREE = Path(os.environ.get("AUTORESEARCH_BENCH_TREE") or ROOT).resolve()


def monitor_command(repo: Path, tag: str = "bench", tree: Path | None = None) -> str:
    # exec: the pane's process is the monitor itself, so its pid is the one to measure.
    # cd: `python -m` imports the monitor from the current directory first.
    tree = tree or TREE
    return (f"cd {shlex.quote(str(tree))} && exec {shlex.quote(sys.executable)} -m autoresearch "
            f"--repo {shlex.quote(str(repo))} tui --tag {tag}")


def full_frame(screen: str) -> bool:
    """Every pane of the live screen is drawn with data."""
    return all(s in screen for s in ("engine running", "Training log #", "step 0 | loss", "val_bpb", "Utilization", "Pending change", "Quit"))


def summary(values: list[float], unit: str = "") -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
    return (f"median {statistics.median(values):.3f}{unit}  p95 {p95:.3f}{unit}  "
            f"min {values[0]:.3f}{unit}  max {values[-1]:.3f}{unit}  (n={len(values)})")
