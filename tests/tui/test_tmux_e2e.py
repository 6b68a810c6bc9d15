"""End to end: the real `autoresearch` in tmux, against the real engine and a tiny genome.

The screen shows a running experiment, `p` pauses the loop, `q` leaves the engine
running, and a second `autoresearch tui` attaches to it again. With two workers, a row
per running experiment, and skip acts on the selected one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.lock import holder_pid
from engine.rundir import RunDir
from tests.gitrepo import committed_repo
from tests.tui.fake_engine import FakeEngine
from tui.log_pane import MAX_LINES

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="needs tmux")

TRAIN_PY = '''\
"""Tiny genome for the monitor's end-to-end test: prints steps, writes a checkpoint."""
import json, os, time

LR = 0.01
STEPS = 40


def main():
    budget = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "2"))
    start = time.time()
    step = 0
    while time.time() - start < budget:
        step += 1
        print(f"step {step:04d} | loss {3.0 / step:.4f} | lr {LR}", flush=True)
        time.sleep(0.1)
    with open(os.environ["AUTORESEARCH_CHECKPOINT"], "w") as f:
        json.dump({"metric": 1.0 + abs(LR - 0.02) + 1.0 / STEPS}, f)
    print("---")
    print(f"training_seconds: {budget}")
    print(f"num_steps: {step}")


if __name__ == "__main__":
    main()
'''

PREPARE_PY = '''\
"""Tiny evaluator: `evaluate` turns the checkpoint into eval.json."""
import json, os, sys
from pathlib import Path

if len(sys.argv) > 1 and sys.argv[1] == "evaluate":
    # Started before training ends (--wait): score only once the engine says go.
    if "--wait" in sys.argv and sys.stdin.readline().strip() != "go":
        sys.exit(0)
    rest = [a for a in sys.argv[2:] if a not in ("--holdout", "--wait")]
    args = dict(zip(rest[0::2], rest[1::2]))
    metric = json.load(open(args["--checkpoint"]))["metric"]
    json.dump({"val_bpb": metric}, open(args["--out"], "w"))
    print(f"val_bpb: {metric}")
else:
    cache = Path(os.environ["AUTORESEARCH_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "manifest.json").write_text("{}")
'''


@pytest.fixture
def genome(tmp_path: Path) -> Path:
    return committed_repo(tmp_path / "genome", {
        "train.py": TRAIN_PY,
        "prepare.py": PREPARE_PY,
        "program.md": "Lower val_bpb. Edit only train.py.\n",
        "autoresearch.toml": "[loop]\nbudget_seconds = 3\nbaseline_runs = 1\nhang_seconds = 30\n",
    })


class Tmux:
    """A private tmux server (its own socket), so nothing leaks in from another session."""

    def __init__(self, name: str, env: dict[str, str]):
        self.socket = name
        self.env = env

    def run(self, *args: str, check: bool = True) -> str:
        out = subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True, env=self.env)
        if check and out.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {out.stderr}")
        return out.stdout

    def start(self, command: str, width: int, height: int) -> None:
        self.run("new-session", "-d", "-s", "e2e", "-x", str(width), "-y", str(height), command)
        self.run("set-option", "-t", "e2e", "remain-on-exit", "on")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "e2e", check=False)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "e2e", *keys)

    def wait_for(self, predicate, what: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; the screen was:\n{screen}")

    def kill(self) -> None:
        self.run("kill-server", check=False)
        socket_dir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
        (socket_dir / self.socket).unlink(missing_ok=True)  # tmux leaves its socket file behind


def test_monitor_in_tmux_against_the_real_engine(genome, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "NO_COLOR", "ANTHROPIC_API_KEY")}
    env.update(TERM="xterm-256color", AUTORESEARCH_CACHE=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    tmux = Tmux(f"autoresearch-e2e-{os.getpid()}", env)
    cli = f"{shlex.quote(sys.executable)} -m autoresearch --repo {shlex.quote(str(genome))}"
    run = RunDir.for_tag(genome, "e2e")
    pid = None
    try:
        # 1. `autoresearch` with no command: starts a detached engine and attaches.
        tmux.start(f"{cli} --tag e2e", 120, 40)
        tmux.wait_for(lambda s: "RUNNING" in s and "step 0" in s, "a running experiment with its log")
        pid = holder_pid(run.lock)
        assert pid is not None and os.getsid(pid) == pid  # the engine has its own session
        screen = tmux.screen()
        assert "engine running" in screen and "Training log" in screen and "val_bpb" in screen

        # 2. p: the engine acknowledges and will hold after this experiment.
        tmux.keys("p")
        tmux.wait_for(lambda s: "pause: accepted" in s, "the engine's acknowledgement")
        state = run.read_state()
        assert state.pause_requested or state.paused

        # 3. q, Enter (the default: leave it running): the monitor ends, the engine does not.
        tmux.keys("q")
        tmux.wait_for(lambda s: "Leave it running" in s, "the quit dialog")
        tmux.keys("Enter")
        tmux.wait_for(lambda s: "keeps running" in s, "the monitor's goodbye")
        assert holder_pid(run.lock) == pid

        # 4. A second monitor attaches to the same engine, now paused.
        tmux.kill()
        tmux.start(f"{cli} tui --tag e2e", 80, 24)
        tmux.wait_for(lambda s: "engine running" in s and "PAUSED" in s, "the second monitor on the paused run", timeout=90)
        assert holder_pid(run.lock) == pid
        results = [json.loads(line) for line in run.results_jsonl.read_text().splitlines()]
        assert results and results[0]["status"] == "baseline"
    finally:
        tmux.kill()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 20
            while holder_pid(run.lock) and time.monotonic() < deadline:
                time.sleep(0.1)


def test_log_keeps_painting_past_its_line_limit(repo, tmp_path):
    """Textual's Log stops repainting once it drops old lines; ours must not (real terminal)."""
    engine = FakeEngine(repo, "flood").start()
    engine.begin(1, "d", "h")
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "NO_COLOR")}
    env.update(TERM="xterm-256color", XDG_CONFIG_HOME=str(tmp_path / "config"))
    tmux = Tmux(f"autoresearch-flood-{os.getpid()}", env)
    try:
        tmux.start(f"{shlex.quote(sys.executable)} -m autoresearch --repo {shlex.quote(str(repo))} tui --tag flood", 100, 30)
        tmux.wait_for(lambda s: "Training log #0001" in s, "the monitor")
        engine.log(1, *[f"line {i:05d}" for i in range(MAX_LINES + 100)])  # at the limit
        tmux.wait_for(lambda s: f"line {MAX_LINES + 99:05d}" in s, "the first lines")
        engine.log(1, *[f"more {i:05d}" for i in range(50)])  # each write now drops old lines
        tmux.wait_for(lambda s: "more 00049" in s, "the newest line painted past the limit", timeout=15)
    finally:
        tmux.kill()
        engine.release()


TWO_WORKERS_TOML = """\
[loop]
budget_seconds = 30
timeout_seconds = 90
hang_seconds = 30
baseline_runs = 2
remeasure_every = 0
warm_imports = []
"""


def test_two_workers_in_tmux_against_the_real_engine(tmp_path):
    """`autoresearch --workers 2` on the engine tests' stand-in genome, slowed down (each
    baseline run prints for ~30 s): a row per running experiment, ] moves the panes to the
    other one, and s skips the selected one by its number."""
    from tests.engine.genome import TRAIN_PY as STAND_IN, make_repo, set_constant

    repo = make_repo(tmp_path / "genome", train_py=set_constant(STAND_IN, "MODE", "slow"), config=False)
    (repo / "autoresearch.toml").write_text(TWO_WORKERS_TOML)
    subprocess.run(["git", "-C", str(repo), "add", "autoresearch.toml"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "two workers"], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "NO_COLOR", "ANTHROPIC_API_KEY")}
    env.update(TERM="xterm-256color", AUTORESEARCH_CACHE=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    tmux = Tmux(f"autoresearch-workers-{os.getpid()}", env)
    cli = f"{shlex.quote(sys.executable)} -m autoresearch --repo {shlex.quote(str(repo))}"
    run = RunDir.for_tag(repo, "w2")
    pid = None

    def row(worker: int) -> re.Pattern[str]:
        return re.compile(rf"#(\d{{4}})  w{worker}  running")

    try:
        tmux.start(f"{cli} run --tag w2 --workers 2", 120, 40)
        screen = tmux.wait_for(lambda s: row(0).search(s) and row(1).search(s), "a row per worker, both training")
        pid = holder_pid(run.lock)
        assert "2 of 2 workers" in screen
        first, second = (int(row(k).search(screen).group(1)) for k in (0, 1))
        selected = int(re.search(r"▸ #(\d{4})", screen).group(1))
        other = second if selected == first else first
        tmux.wait_for(lambda s: f"Training log #{selected:04d}" in s and "step " in s, "the selected one's log")

        tmux.keys("]")  # the other row: the log follows it
        tmux.wait_for(lambda s: f"▸ #{other:04d}" in s and f"Training log #{other:04d}" in s, "the other one's log")

        tmux.keys("s")
        tmux.wait_for(lambda s: f"Skip #{other:04d}?" in s, "the dialog naming it")
        tmux.keys("y")
        tmux.wait_for(lambda s: f"skip #{other:04d}: accepted" in s, "the engine's acknowledgement")
        deadline = time.monotonic() + 20
        while not any(r.n == other and r.status == "skipped" for r in run.read_results()):
            assert time.monotonic() < deadline, "the skipped experiment was not recorded"
            time.sleep(0.2)
        assert not any(r.n == selected for r in run.read_results())  # the other one runs on
    finally:
        tmux.kill()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 20
            while holder_pid(run.lock) and time.monotonic() < deadline:
                time.sleep(0.1)
