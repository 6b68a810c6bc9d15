"""A real engine process killed with -9, stopped with SIGTERM, and raced by a second one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from engine.rundir import RunDir

from .conftest import log_text, processes_in
from .genome import git

ROOT = Path(__file__).resolve().parents[2]


def start_engine(repo: Path, steps: list[dict], tag: str = "t", **overrides) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.engine.genome", str(repo), tag, json.dumps(steps), json.dumps(overrides)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_until(check, timeout: float = 20.0, why: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {why}")


def kill_minus_9_when(proc: subprocess.Popen, ready, timeout: float = 20.0, why: str = ""):
    """Wait until ``ready()`` gives something true, then SIGKILL the engine; returns what it
    gave. The engine is dead afterwards whatever happened."""
    try:
        value = wait_until(ready, timeout, why)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return value
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def running(rd: RunDir, n: int) -> bool:
    s = rd.read_state()
    return s.phase == "running" and s.experiment == n and bool(s.train_pgid)


def test_kill_minus_9_then_resume_loses_nothing(repo):
    rd = RunDir.for_tag(repo, "t")
    proc = start_engine(repo, [{"set": {"LR": 0.02}}, {"set": {"MODE": "slow"}}], **{"loop.baseline_runs": 1})
    def training() -> psutil.Process | None:
        if running(rd, 3) and "step 2" in log_text(rd.experiment(3) / "run.log"):
            return psutil.Process(rd.read_state().train_pgid)
        return None

    trainer = kill_minus_9_when(proc, training, why="experiment 3 training")
    # The training process dies with its engine: nothing is left running in the worktree.
    wait_until(lambda: not trainer.is_running() or trainer.status() == psutil.STATUS_ZOMBIE, 10, "trainer gone")
    wait_until(lambda: processes_in(rd.root) == [], 10, "no orphans")
    assert rd.lock.exists()  # left behind by the dead engine: stale, to be taken over
    before = rd.read_results()
    assert [r.status for r in before] == ["baseline", "keep"]

    again = start_engine(repo, [{"set": {"WIDTH": 128}}], **{"loop.max_experiments": 1})
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out
    results = rd.read_results()
    assert results[:2] == before  # nothing lost, nothing rewritten
    assert [(r.n, r.status) for r in results] == [(1, "baseline"), (2, "keep"), (3, "interrupted"), (4, "keep")]
    interrupted = results[2]
    assert interrupted.description == "MODE=slow" and interrupted.commit
    assert git(repo, "rev-parse", "refs/autoresearch/t/0003") == interrupted.commit
    assert results[3].parent == results[1].commit  # resumed from the last kept commit
    assert 'MODE = "ok"' in (rd.worktree / "train.py").read_text()
    events = [json.loads(line) for line in rd.events_jsonl.read_text().splitlines()]
    assert [e["event"] for e in events if e["type"] == "engine"] == ["start", "resume", "exit"]
    assert not rd.lock.exists() and not rd.socket.exists()


def test_sigterm_stops_cleanly_and_a_second_engine_is_refused(repo):
    rd = RunDir.for_tag(repo, "t")
    proc = start_engine(repo, [{"set": {"MODE": "children"}}], **{"loop.baseline_runs": 1})
    try:
        wait_until(lambda: running(rd, 2) and "working" in log_text(rd.experiment(2) / "run.log"),
                   why="experiment 2 training")
        def names() -> list[str]:
            return [" ".join(p.cmdline()) for p in processes_in(rd.root) if p.name() != "bwrap"]

        def training() -> list[str]:
            return [n for n in names() if "runpy" in n and "evaluate" not in n]

        # The training process and, started halfway through its budget, the next one (engine/warm.py).
        wait_until(lambda: len(training()) == 2, 10, "the next training process")
        assert len(training()) == 2 and sum("time.sleep(600)" in n for n in names()) == 1, names()

        second = subprocess.run(
            [sys.executable, "-m", "autoresearch", "run", "--headless", "--repo", str(repo), "--tag", "t"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert second.returncode == 2
        assert "already running" in second.stderr and len(second.stderr.strip().splitlines()) == 1

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, out  # stopped by a signal: not a clean finish
    # train.py ignores SIGTERM: the engine had to SIGKILL the group after the grace period.
    assert processes_in(rd.root) == []
    results = rd.read_results()
    assert [r.status for r in results] == ["baseline", "interrupted"]
    state = rd.read_state()
    assert state.phase == "stopped" and state.train_pgid is None
    assert not rd.lock.exists() and not rd.socket.exists()
    assert git(rd.worktree, "status", "--porcelain", "--untracked-files=all") == ""


def test_a_whole_job_sigterm_records_interrupted_not_crash(repo):
    """systemd, SLURM or `kill -- -PGID` signal every process of the job at once: the training
    process may die of the signal before the engine has seen its own. Worst order first."""
    rd = RunDir.for_tag(repo, "t")
    for attempt in range(3):
        proc = start_engine(repo, [{"set": {"MODE": "slow", "SLEEP": 0.02 + attempt / 100}}],
                            **{"loop.baseline_runs": 1})
        try:
            n = 2 + attempt
            wait_until(lambda: running(rd, n) and "step 2" in log_text(rd.experiment(n) / "run.log"),
                       why=f"experiment {n} training")
            os.killpg(rd.read_state().train_pgid, signal.SIGTERM)
            time.sleep(0.3)  # the engine's own SIGTERM arrives a little later
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 128 + signal.SIGTERM, out
        last = rd.read_results()[-1]
        assert (last.n, last.status) == (n, "interrupted"), (last.status, last.error)
    assert processes_in(rd.root) == []
