"""Control commands over the real Unix socket, against an engine running in a thread."""

from __future__ import annotations

import json
import stat

import pytest

from engine.control import ControlError, send_command
from engine.integrity import manifest_path

from .conftest import log_text, make_engine, processes_in
from .genome import git


def events(bg, type_):
    return [json.loads(line) for line in bg.rd.events_jsonl.read_text().splitlines()
            if json.loads(line).get("type") == type_]


def test_socket_is_private_and_answers_ping(repo, background):
    bg = background(make_engine(repo, [{"sleep": 30}], loop__baseline_runs=1))
    bg.wait_for(lambda: bg.phase_is("proposing"), why="proposing")
    mode = stat.S_IMODE(bg.rd.socket.stat().st_mode)
    assert mode == 0o600
    reply = send_command(bg.rd.socket, "ping")
    assert reply["ok"] and "proposing" in reply["message"]
    assert send_command(bg.rd.socket, "resume") == {"ok": False, "result": "refused", "reason": "not paused"}
    bg.stop()
    assert not bg.rd.socket.exists() and not bg.rd.lock.exists()
    with pytest.raises(ControlError):
        send_command(bg.rd.socket, "ping")


def test_pause_resume_and_stop(repo, background):
    bg = background(make_engine(repo, [{"set": {"LR": 0.02, "SLEEP": 0.5}}, {"set": {"WIDTH": 128}}],
                                loop__baseline_runs=1))
    bg.wait_for(lambda: bg.phase_is("running", 2), why="experiment 2 running")
    reply = send_command(bg.rd.socket, "pause")
    assert reply["ok"] and "after experiment #0002" in reply["message"]
    assert not send_command(bg.rd.socket, "pause")["ok"]  # already requested
    bg.wait_for(lambda: bg.phase_is("paused"), why="paused")
    assert [r.status for r in bg.results()] == ["baseline", "keep"]
    assert bg.state().paused is True
    assert send_command(bg.rd.socket, "resume")["ok"]
    bg.wait_for(lambda: len(bg.results()) >= 3, why="experiment 3")
    assert bg.results()[2].status == "keep"
    assert send_command(bg.rd.socket, "stop")["ok"]
    bg.thread.join(20)
    assert bg.rc == 0 and bg.state().phase == "stopped"
    acks = [(e["cmd"], e["result"]) for e in events(bg, "command")]
    assert acks[:4] == [("pause", "accepted"), ("pause", "refused"), ("resume", "accepted"), ("stop", "accepted")]


def test_skip_kills_the_run_and_reverts(repo, background):
    bg = background(make_engine(repo, [{"set": {"MODE": "slow"}}, {"set": {"LR": 0.02}}], loop__baseline_runs=1,
                                loop__max_experiments=3))
    bg.wait_for(lambda: bg.phase_is("running", 2), why="experiment 2 running")
    bg.wait_for(lambda: "step 3" in log_text(bg.rd.experiment(2) / "run.log"), why="training output")
    assert send_command(bg.rd.socket, "skip")["ok"]
    bg.thread.join(20)
    results = bg.results()
    assert [r.status for r in results] == ["baseline", "skipped", "keep"]
    assert results[1].commit and results[1].error == "skipped by a human"
    assert processes_in(bg.rd.root) == []
    assert 'MODE = "slow"' not in (bg.rd.worktree / "train.py").read_text()
    assert not send_command_possible(bg)


def send_command_possible(bg) -> bool:
    try:
        send_command(bg.rd.socket, "ping")
        return True
    except ControlError:
        return False


def test_keep_forces_a_worse_change_and_is_refused_for_a_crash_or_a_baseline(repo, background):
    steps = [
        {"set": {"LR": 0.005, "SLEEP": 1.0}},  # worse, but a human wants it
        {"set": {"MODE": "crash"}, "sleep": 0.6},
        {"set": {"WIDTH": 128}},
    ]
    bg = background(make_engine(repo, steps, loop__baseline_runs=1, loop__max_experiments=4))
    bg.wait_for(lambda: bg.phase_is("running", 1), why="baseline running")
    reply = send_command(bg.rd.socket, "keep")
    assert not reply["ok"] and "baseline" in reply["reason"]
    bg.wait_for(lambda: bg.phase_is("running", 2), why="experiment 2 running")
    assert send_command(bg.rd.socket, "keep")["ok"]
    bg.wait_for(lambda: bg.phase_is("proposing", 3), why="experiment 3 proposing")
    assert send_command(bg.rd.socket, "keep")["ok"]  # accepted now, refused once it crashes
    bg.thread.join(20)
    r = {x.n: x for x in bg.results()}
    assert r[2].status == "keep" and r[2].forced is True and r[2].delta > 0
    assert r[3].status == "crash"
    assert r[4].parent == r[2].commit  # the forced keep advanced the branch
    keeps = [(e["result"], e["reason"]) for e in events(bg, "command") if e["cmd"] == "keep"]
    assert keeps[0][0] == "refused" and keeps[1][0] == "accepted" and keeps[2][0] == "accepted"
    assert keeps[3][0] == "refused" and "crash" in keeps[3][1]


def test_notes_reach_the_next_proposal_once(repo, background):
    engine = make_engine(repo, [{"set": {"LR": 0.02}, "sleep": 0.8}, {"set": {"WIDTH": 128}}, {"set": {"SLEEP": 0.03}}],
                         loop__baseline_runs=1, loop__max_experiments=4)
    agent = engine.s.agent
    bg = background(engine)
    bg.wait_for(lambda: bg.phase_is("proposing", 2), why="agent thinking")
    assert not send_command(bg.rd.socket, "note", "   ")["ok"]
    reply = send_command(bg.rd.socket, "note", "try a wider model")
    assert reply["ok"]
    assert bg.state().notes_pending == ["try a wider model"]
    bg.thread.join(20)
    assert [c.notes for c in agent.contexts] == [[], ["try a wider model"], []]
    r = {x.n: x for x in bg.results()}
    assert r[2].notes == [] and r[3].notes == ["try a wider model"] and r[4].notes == []
    assert "try a wider model" in (bg.rd.experiment(3) / "hypothesis.md").read_text()


def test_transient_agent_failures_pause_until_resume(repo, background):
    steps = [{"error": "overloaded", "transient": True}] * 3 + [{"set": {"LR": 0.02}}]
    bg = background(make_engine(repo, steps, loop__baseline_runs=1, loop__max_experiments=2))
    bg.wait_for(lambda: bg.state().error, why="the pause on repeated failures")
    state = bg.state()
    assert state.paused is True and "3 times in a row" in state.error and "overloaded" in state.error
    bg.wait_for(lambda: bg.phase_is("paused"), why="phase paused")
    assert any("3 times" in e["message"] for e in events(bg, "error"))
    assert send_command(bg.rd.socket, "resume")["ok"]
    bg.thread.join(20)
    assert [r.status for r in bg.results()] == ["baseline", "keep"]
    assert bg.state().error is None


def test_cost_cap_pauses_and_resume_goes_on(repo, background):
    steps = [{"set": {"LR": 0.02}, "cost": 0.6}, {"set": {"WIDTH": 128}, "cost": 0.6}, {"set": {"SLEEP": 0.03}}]
    bg = background(make_engine(repo, steps, loop__baseline_runs=1, loop__max_experiments=4, agent__max_cost=1.0))
    bg.wait_for(lambda: bg.phase_is("paused"), why="cost cap")
    assert len(bg.results()) == 3 and "cost cap" in bg.state().error and bg.state().cost_usd == 1.2
    reply = send_command(bg.rd.socket, "resume")
    assert reply["ok"] and "cost cap" in reply["message"]
    bg.thread.join(20)
    assert len(bg.results()) == 4


def test_a_changed_data_manifest_rejects_and_pauses(repo, background):
    bg = background(make_engine(repo, [{"set": {"LR": 0.02}, "sleep": 0.5}], loop__baseline_runs=1))
    bg.wait_for(lambda: bg.phase_is("proposing", 2), why="proposing")
    manifest_path().write_text('{"files": {"evil": 1}}')  # e.g. a train.py that rewrote the cache
    bg.wait_for(lambda: bg.phase_is("paused"), why="paused on the manifest")
    r = bg.results()[-1]
    assert r.status == "rejected" and "manifest" in r.error
    assert "manifest" in bg.state().error
    assert git(bg.rd.worktree, "status", "--porcelain") == ""
