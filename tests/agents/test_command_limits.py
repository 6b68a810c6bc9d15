"""The command agent under pressure: endless output, a narrowed environment, cancellation,
an engine that dies, and a restarted engine reaping what a dead one left. Real shell
scripts, real processes and real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from engine.agents.base import AgentError, ProposalCancelled
from engine.agents.command import MAX_EMIT_CHARS, WORKTREE_VAR, CommandAgent, OutputScan, reap_stale_group
from engine.config import AgentConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # an upper bound for a condition to become true; never a timing assertion


def command_agent(command: str, timeout: float = 60.0, **config) -> CommandAgent:
    return CommandAgent(AgentConfig(name="command", command=command, command_timeout=timeout, **config), kill_grace=0.5)


def write_script(tmp_path: Path, body: str, name: str = "agent.sh") -> str:
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read_pids(*files: Path) -> list[int]:
    wait_until(lambda: all(f.exists() and f.read_text().strip() for f in files), "the agent to write its pids")
    return [int(f.read_text()) for f in files]


def end_group(pgid: int | None, worktree: Path) -> None:
    """Never leave a test's agent behind, even when the test fails; and touch only a group
    that provably is that agent's (reap_stale_group checks)."""
    reap_stale_group(pgid, worktree)


# --- output ------------------------------------------------------------------------

ENGINE_MEASURING_MEMORY = """
import json, resource, sys
from pathlib import Path
from engine.agents.base import ProposalContext
from engine.agents.command import CommandAgent
from engine.config import AgentConfig

shown = []
ctx = ProposalContext(n=1, worktree=Path(sys.argv[1]), program="p", mutable=["train.py"], history=[],
                      best=None, last_result=None, last_log_tail="", notes=[], emit=shown.append)
agent = CommandAgent(AgentConfig(name="command", command=sys.argv[2]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
proposal = agent.propose(ctx)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kb": after - before, "hypothesis": proposal.hypothesis,
                  "description": proposal.description, "shown": sum(map(len, shown)),
                  "last_shown": shown[-1], "bytes": agent.last_output.bytes}))
"""


def test_a_huge_line_costs_the_engine_no_memory_and_later_hypothesis_lines_count(worktree, tmp_path):
    line_mb = 64
    cmd = write_script(
        tmp_path,
        "sed -i 's/^LR = 0.01$/LR = 0.02/' train.py\n"
        f"head -c {line_mb * 1024 * 1024} /dev/zero | tr '\\0' x\n"
        "echo\n"
        "echo 'HYPOTHESIS: A larger learning rate converges faster.'\n"
        "echo 'DESCRIPTION: LR 0.01 -> 0.02'\n"
        "seq 1 5000\n",  # more lines after the convention than any fixed window keeps
    )
    result = subprocess.run(
        [sys.executable, "-c", ENGINE_MEASURING_MEMORY, str(worktree), cmd],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["hypothesis"] == "A larger learning rate converges faster."
    assert out["description"] == "LR 0.01 -> 0.02"
    assert out["bytes"] > line_mb * 1024 * 1024  # it was all read ...
    assert out["grew_kb"] < line_mb * 1024 // 2  # ... and never held in memory
    assert out["shown"] <= MAX_EMIT_CHARS + 200  # the monitor got a bounded part
    assert "not shown" in out["last_shown"] or out["shown"] < MAX_EMIT_CHARS


def test_the_output_shown_is_bounded_and_says_where_it_stops(make_context, tmp_path):
    cmd = write_script(tmp_path, "sed -i 's/^LR = 0.01$/LR = 0.03/' train.py\nyes 'a line of chatter' | head -n 200000\n")
    ctx = make_context()
    agent = command_agent(cmd)
    agent.propose(ctx)
    shown = "".join(ctx.emitted)
    assert len(shown) <= MAX_EMIT_CHARS + 200
    assert shown.endswith("the rest is not shown ...]\n")
    assert agent.last_output.lines == 200_000
    assert len(agent.last_output.head) + len(agent.last_output.tail) <= 400


def test_lines_and_characters_split_across_reads_are_put_back_together():
    shown: list[str] = []
    scan = OutputScan(shown.append)
    for chunk in (b"HYPO", b"THESIS: caf\xc3", b"\xa9 au lait\nDESCRIP", b"TION: one \x1b[31mline\x1b[0m\nno newline"):
        scan.feed(chunk)
    scan.close()
    assert scan.found() == ("café au lait", "one line")
    assert shown == ["HYPOTHESIS: café au lait\n", "DESCRIPTION: one line\n", "no newline\n"]


# --- environment -----------------------------------------------------------------------


def test_env_narrows_what_the_agent_cli_sees(make_context, tmp_path, monkeypatch, worktree):
    monkeypatch.setenv("MY_AGENT_TOKEN", "for-the-agent")
    monkeypatch.setenv("ENGINE_ONLY_SECRET", "not-for-the-agent")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-engine")
    monkeypatch.setenv("LANG", "C.UTF-8")
    seen = tmp_path / "env.json"
    cmd = write_script(
        tmp_path,
        f"{sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))' > {seen}\n"
        "sed -i 's/^LR = 0.01$/LR = 0.03/' train.py\n",
    )
    command_agent(cmd, env=["MY_AGENT_TOKEN", "NOT_SET_ANYWHERE"]).propose(make_context())
    env = json.loads(seen.read_text())
    assert env["MY_AGENT_TOKEN"] == "for-the-agent"
    assert env["LANG"] == "C.UTF-8" and env["PATH"] == os.environ["PATH"] and env["HOME"] == os.environ["HOME"]
    assert env["AUTORESEARCH_EXPERIMENT"] == "3" and env["AUTORESEARCH_MUTABLE"] == "train.py"
    assert env[WORKTREE_VAR] == str(worktree.resolve())
    assert "ENGINE_ONLY_SECRET" not in env and "ANTHROPIC_API_KEY" not in env
    assert "NOT_SET_ANYWHERE" not in env
    allowed = {"MY_AGENT_TOKEN", "PATH", "HOME", "LANG", "TERM", "AUTORESEARCH_EXPERIMENT", "AUTORESEARCH_MUTABLE",
               WORKTREE_VAR, "PWD", "OLDPWD", "SHLVL", "_", "LC_CTYPE"}  # the last ones the shell or Python set
    assert set(env) <= allowed, set(env) - allowed


def test_without_env_the_agent_cli_gets_the_whole_environment(make_context, tmp_path, monkeypatch):
    monkeypatch.setenv("SOME_USER_VARIABLE", "kept")
    seen = tmp_path / "env.txt"
    cmd = write_script(tmp_path, f"echo \"$SOME_USER_VARIABLE\" > {seen}\nsed -i 's/^LR = 0.01$/LR = 0.03/' train.py\n")
    command_agent(cmd).propose(make_context())
    assert seen.read_text().strip() == "kept"


# --- the process group: cancel, engine death, reaping ---------------------------------------

STUBBORN = (
    "trap '' TERM\n"
    "sleep 300 &\n"
    "echo $! > {pids}.helper\n"
    "echo $$ > {pids}.shell\n"
    "echo 'thinking'\n"
    "while true; do sleep 0.1; done\n"
)


def test_cancel_kills_the_whole_group_and_reports_it(make_context, tmp_path, worktree):
    pids = tmp_path / "pids"
    cmd = write_script(tmp_path, STUBBORN.format(pids=pids))
    groups: list[int | None] = []
    ctx = make_context(on_process_group=groups.append)
    box: dict = {}

    def work() -> None:
        try:
            command_agent(cmd).propose(ctx)
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    helper, shell = read_pids(Path(f"{pids}.helper"), Path(f"{pids}.shell"))
    try:
        pgid = groups[0]
        assert os.getpgid(helper) == pgid and os.getpgid(shell) == pgid
        ctx.cancel.set()  # the engine gives up on the proposal
        thread.join(WAIT)
        assert not thread.is_alive()
        assert isinstance(box.get("error"), ProposalCancelled)
        assert gone(helper) and gone(shell)  # dead when propose returns, not some time later
        assert groups == [pgid, None]
    finally:
        end_group(groups[0] if groups else None, worktree)


ENGINE_THAT_DIES = """
import sys, threading, time
from pathlib import Path
from engine.agents.base import ProposalContext
from engine.agents.command import CommandAgent
from engine.config import AgentConfig

ctx = ProposalContext(n=1, worktree=Path(sys.argv[1]), program="p", mutable=["train.py"], history=[],
                      best=None, last_result=None, last_log_tail="", notes=[],
                      on_process_group=lambda pgid: Path(sys.argv[3]).write_text(str(pgid)))
agent = CommandAgent(AgentConfig(name="command", command=sys.argv[2]))
threading.Thread(target=agent.propose, args=(ctx,), name="agent", daemon=True).start()  # as the engine does
time.sleep(600)
"""


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_the_agent_dies_with_the_engine(worktree, tmp_path, how):
    pids = tmp_path / "pids"
    group_file = tmp_path / "group"
    cmd = write_script(tmp_path, STUBBORN.format(pids=pids) + "\n")
    engine = subprocess.Popen(
        [sys.executable, "-c", ENGINE_THAT_DIES, str(worktree), cmd, str(group_file)],
        cwd=REPO_ROOT, start_new_session=True,
    )
    agent_pids: list[int] = []
    leader = None
    try:
        agent_pids = read_pids(Path(f"{pids}.helper"), Path(f"{pids}.shell"))
        leader = int(group_file.read_text())
        agent_pids.append(leader)
        assert all(os.getpgid(p) == leader for p in agent_pids)
        engine.send_signal(how)  # killed outright, or ended without a chance to clean up
        engine.wait(WAIT)
        wait_until(lambda: all(gone(p) for p in agent_pids), "the agent's processes to die with the engine")
    finally:
        end_group(leader, worktree)
        if engine.poll() is None:
            engine.kill()
            engine.wait()


def test_a_restarted_engine_reaps_only_this_runs_agent_group(worktree, tmp_path):
    clean_env = {"PATH": os.environ["PATH"]}
    marked = subprocess.Popen(["sleep", "300"], cwd=tmp_path, start_new_session=True,
                              env={**clean_env, WORKTREE_VAR: str(worktree.resolve())})
    inside = subprocess.Popen(["sleep", "300"], cwd=worktree, start_new_session=True, env=clean_env)
    other_run = subprocess.Popen(["sleep", "300"], cwd=tmp_path, start_new_session=True,
                                 env={**clean_env, WORKTREE_VAR: str(tmp_path / "another" / "worktree")})
    unrelated = subprocess.Popen(["sleep", "300"], cwd=tmp_path, start_new_session=True, env=clean_env)
    procs = [marked, inside, other_run, unrelated]
    try:
        assert reap_stale_group(marked.pid, worktree) is True
        assert reap_stale_group(inside.pid, worktree) is True
        assert reap_stale_group(other_run.pid, worktree) is False
        assert reap_stale_group(unrelated.pid, worktree) is False
        assert reap_stale_group(None, worktree) is False
        marked.wait(WAIT)
        inside.wait(WAIT)
        assert marked.returncode == -signal.SIGKILL and inside.returncode == -signal.SIGKILL
        assert other_run.poll() is None and unrelated.poll() is None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_the_commands_own_exit_comes_back_through_the_leash(make_context):
    with pytest.raises(AgentError) as info:
        command_agent("echo 'about to go'; kill -KILL $$").propose(make_context())  # the shell itself dies
    assert "status -9" in str(info.value) and "about to go" in str(info.value)
    with pytest.raises(AgentError) as info:
        command_agent("echo 'quota exceeded' >&2; exit 7").propose(make_context())
    assert "status 7: quota exceeded" in str(info.value)
