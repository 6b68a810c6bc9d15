"""Child processes: environment, streamed logs, limits, and nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from engine.decide import classify_failure
from engine.runner import ProcessResult, kill_stale_group, minimal_env, run_process


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_minimal_env_keeps_what_training_needs_and_drops_secrets():
    source = {
        "PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
        "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4",
        "ANTHROPIC_API_KEY": "sk", "OPENAI_API_KEY": "sk", "GITHUB_TOKEN": "t", "HF_TOKEN": "t",
        "AWS_SECRET_ACCESS_KEY": "a", "CUDA_SECRET_TOKEN": "x", "SSH_AUTH_SOCK": "/s", "RANDOM_VAR": "1",
    }
    env = minimal_env({"AUTORESEARCH_TIME_BUDGET": "60"}, source=source)
    assert env == {
        "PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
        "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4",
        "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "AUTORESEARCH_TIME_BUDGET": "60",
    }


def test_output_is_streamed_to_the_log_and_the_summary_parsed(tmp_path):
    log = tmp_path / "run.log"
    seen_while_running = []

    def tick():
        if log.exists() and "first" in log.read_text() and not seen_while_running:
            seen_while_running.append(True)

    code = ("import time, sys\nprint('first', flush=True)\ntime.sleep(0.4)\nprint('FAIL? no', flush=True)\n"
            "sys.stderr.write('to stderr\\n')\nprint('---')\nprint('training_seconds: 12.5')\n"
            "print('peak_mem_mb: 300.1')\nprint('not a pair')\n")
    result = run_process(py(code), cwd=tmp_path, env=minimal_env(), log_path=log, tick=tick)
    assert result.returncode == 0 and result.reason == "exited"
    assert seen_while_running == [True]  # the line reached the log before the process ended
    text = log.read_text()
    assert text.index("first") < text.index("to stderr") < text.index("training_seconds")
    assert result.summary == {"training_seconds": "12.5", "peak_mem_mb": "300.1"}
    assert result.fail_line == "FAIL? no"
    assert classify_failure(result) == "nan"  # a FAIL line means nan even with exit 0


def test_timeout_kills_the_whole_group_even_when_sigterm_is_ignored(tmp_path):
    code = (
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('child', child.pid, flush=True)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "while True:\n    print('busy', flush=True); time.sleep(0.05)\n"
    )
    started = []
    result = run_process(py(code), cwd=tmp_path, env=minimal_env(), log_path=tmp_path / "log", timeout=0.8,
                         grace=0.3, on_start=started.append)
    assert result.reason == "timeout" and result.returncode == -9
    child = int(next(line for line in result.tail if line.startswith("child")).split()[1])
    assert not _alive(child) and not _alive(started[0])
    assert "stopping the process group: timeout" in (tmp_path / "log").read_text()
    assert classify_failure(result) == "timeout"


def test_silent_idle_process_is_a_hang_but_a_busy_silent_one_is_not(tmp_path):
    hang = run_process(py("import time; print('start', flush=True); time.sleep(600)"), cwd=tmp_path,
                       env=minimal_env(), log_path=tmp_path / "a", timeout=20, hang_seconds=0.5, grace=0.3)
    assert hang.reason == "hang" and hang.wall_seconds < 10
    busy = run_process(py("import time\nt = time.time()\nwhile time.time() - t < 1.2: pass\nprint('done')"),
                       cwd=tmp_path, env=minimal_env(), log_path=tmp_path / "b", timeout=20, hang_seconds=0.5)
    assert busy.reason == "exited" and busy.returncode == 0


def test_should_kill_stops_a_run_on_request(tmp_path):
    t0 = time.monotonic()
    result = run_process(py("import time; time.sleep(600)"), cwd=tmp_path, env=minimal_env(),
                         log_path=tmp_path / "log", should_kill=lambda: time.monotonic() - t0 > 0.3, grace=0.5)
    assert result.reason == "killed" and classify_failure(result) == "killed"


def test_classification_of_failures():
    def res(code, tail, reason="exited"):
        return ProcessResult(returncode=code, reason=reason, wall_seconds=1, pid=1, tail=tail)

    assert classify_failure(res(0, ["ok"])) is None
    assert classify_failure(res(1, ["RuntimeError: boom"])) == "crash"
    assert classify_failure(res(1, ["torch.OutOfMemoryError: CUDA out of memory."])) == "oom"
    assert classify_failure(res(1, ["MemoryError"])) == "oom"
    assert classify_failure(res(-9, ["step 5"])) == "oom"  # the kernel's OOM killer
    assert classify_failure(res(-11, ["step 5"])) == "crash"
    assert classify_failure(res(1, ["FAIL loss is nan at step 3"])) == "nan"
    assert classify_failure(res(-9, [], reason="hang")) == "hang"


def test_a_stale_training_group_is_ended_only_in_its_own_worktree(tmp_path):
    (tmp_path / "wt").mkdir()
    (tmp_path / "other").mkdir()
    mine = subprocess.Popen(py("import time; time.sleep(600)"), cwd=tmp_path / "wt", start_new_session=True)
    theirs = subprocess.Popen(py("import time; time.sleep(600)"), cwd=tmp_path / "other", start_new_session=True)
    try:
        assert kill_stale_group(theirs.pid, tmp_path / "wt") is False
        assert kill_stale_group(mine.pid, tmp_path / "wt") is True
        assert mine.wait(5) == -9
        assert theirs.poll() is None
        assert kill_stale_group(None, tmp_path / "wt") is False
    finally:
        for p in (mine, theirs):
            p.kill()
            p.wait()


def test_a_stale_group_whose_leader_died_is_still_ended(tmp_path):
    """kill -9 of an unsandboxed run's leader leaves its children in the group: reap them."""
    (tmp_path / "wt").mkdir()
    code = ("import subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            "print(child.pid, flush=True); time.sleep(600)")
    leader = subprocess.Popen(py(code), cwd=tmp_path / "wt", start_new_session=True, stdout=subprocess.PIPE, text=True)
    child = int(leader.stdout.readline())
    try:
        leader.kill()
        leader.wait()
        assert _alive(child)
        assert kill_stale_group(leader.pid, tmp_path / "wt") is True
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        try:
            os.kill(child, 9)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
