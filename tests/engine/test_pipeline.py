"""Pipelined proposals with the stand-in genome: the agent writes experiment N+1 while N
trains; a kept N means N+1 is re-applied on the new best (or dropped and asked again);
pause, stop and kill -9 leave no number, gap or half-applied change behind."""

from __future__ import annotations

import json

from engine.control import send_command
from engine.rundir import RunDir

from .conftest import make_engine, run_engine
from .genome import git
from .test_recovery import kill_minus_9_when, start_engine


def events(rd: RunDir) -> list[dict]:
    return [json.loads(line) for line in rd.events_jsonl.read_text().splitlines()]


def test_a_proposal_written_during_a_kept_run_is_rebased_and_run(repo):
    steps = [
        {"set": {"LR": 0.02, "SLEEP": 0.5}},  # 2: kept; while it trains the agent writes 3
        {"set": {"BIAS": -0.1}},  # 3: written on the old best (LR 0.01), re-applied on LR 0.02
    ]
    engine = run_engine(repo, steps, loop__max_experiments=3, loop__baseline_runs=1, loop__pipeline=True,
                        loop__hang_seconds=10)
    agent = engine.s.agent
    results = engine.results
    assert [(r.n, r.status) for r in results] == [(1, "baseline"), (2, "keep"), (3, "keep")]
    assert results[2].rebased and not results[1].rebased
    # The agent saw #2 in flight (and its diff) when it wrote #3, at the old best.
    third = agent.contexts[1]
    assert third.n == 3 and third.in_flight.n == 2 and "+LR = 0.02" in third.in_flight_diff
    assert third.worktree == engine.rd.next_worktree
    final = git(engine.rd.worktree, "show", f"{results[2].commit}:train.py")
    assert "LR = 0.02" in final and "BIAS = -0.1" in final  # both changes, on top of each other
    assert results[2].parent == results[1].commit
    states = [e for e in events(engine.rd) if e["type"] == "proposal"]
    assert [e["n"] for e in states] == [2, 3]


def test_a_proposal_that_no_longer_applies_is_dropped_and_asked_again(repo):
    steps = [
        {"set": {"LR": 0.02, "SLEEP": 0.5}},  # 2: kept
        {"set": {"LR": 0.03}, "desc": "conflicting"},  # written on LR 0.01: conflicts with #2's LR line
        {"set": {"WIDTH": 128}, "desc": "asked again"},  # 3: asked again after the drop
    ]
    engine = run_engine(repo, steps, loop__max_experiments=3, loop__baseline_runs=1, loop__pipeline=True,
                        loop__hang_seconds=10)
    results = engine.results
    assert [r.n for r in results] == [1, 2, 3]  # the dropped proposal took no number
    assert results[2].description == "asked again" and not results[2].rebased
    dropped = [e for e in events(engine.rd) if e["type"] == "proposal_dropped"]
    assert len(dropped) == 1 and dropped[0]["n"] == 3 and dropped[0]["description"] == "conflicting"
    assert git(engine.rd.worktree, "status", "--porcelain", "--untracked-files=all") == ""


def test_pause_while_a_proposal_is_pending_then_resume_runs_it(repo, background):
    steps = [{"set": {"LR": 0.02, "SLEEP": 1.0}}, {"set": {"BIAS": -0.1}}]
    bg = background(make_engine(repo, steps, loop__baseline_runs=1, loop__max_experiments=3, loop__pipeline=True,
                                loop__hang_seconds=10))
    bg.wait_for(lambda: bg.phase_is("running", 2), why="experiment 2 training")
    assert send_command(bg.rd.socket, "pause")["ok"]
    bg.wait_for(lambda: bg.state().phase == "paused", why="the pause")
    assert (bg.state().next_proposal or {}).get("n") == 3  # written, not run
    assert [r.n for r in bg.results()] == [1, 2]
    assert send_command(bg.rd.socket, "resume")["ok"]
    bg.thread.join(30)
    assert [(r.n, r.status) for r in bg.results()] == [(1, "baseline"), (2, "keep"), (3, "keep")]


def test_kill_while_a_proposal_is_pending_leaves_no_gap_and_nothing_half_applied(repo):
    rd = RunDir.for_tag(repo, "t")
    proc = start_engine(repo, [{"set": {"LR": 0.02, "SLEEP": 3.0}}, {"set": {"BIAS": -0.1}, "sleep": 1.0}],
                        **{"loop.baseline_runs": 1, "loop.pipeline": True, "loop.hang_seconds": 10,
                           "loop.timeout_seconds": 20})
    kill_minus_9_when(proc, lambda: (rd.read_state().next_proposal or {}).get("n") == 3, 60, why="a pending proposal")
    again = start_engine(repo, [{"set": {"LR": 0.03}}], **{"loop.max_experiments": 1, "loop.baseline_runs": 1})
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out
    results = rd.read_results()
    assert [(r.n, r.status) for r in results[:2]] == [(1, "baseline"), (2, "interrupted")]
    assert [r.n for r in results] == [1, 2, 3]
    for wt in (rd.worktree, rd.next_worktree):
        assert git(wt, "status", "--porcelain", "--untracked-files=all") == ""
    assert "BIAS = 0.0" in (rd.next_worktree / "train.py").read_text()  # the pending edit is gone
