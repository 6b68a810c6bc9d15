"""Several workers on one machine (``[loop] workers``), with the stand-in genome: numbers
stay global and contiguous, a keep from each worker ends up in the best (the later one
re-applied on the earlier and measured again there), a change that no longer applies is
discarded with the reason, skip names its experiment, and kill -9 with two experiments
running loses neither."""

from __future__ import annotations

import json
import os
import re

import psutil

from autoresearch.commands import format_status
from engine.control import send_command
from engine.runs import status_data
from engine.rundir import RunDir

from .conftest import log_text, make_engine, processes_in, run_engine
from .genome import git
from .test_recovery import kill_minus_9_when, start_engine, wait_until


def events(rd: RunDir) -> list[dict]:
    return [json.loads(line) for line in rd.events_jsonl.read_text().splitlines()]


def test_two_workers_number_contiguously_and_merge_a_keep_from_each(repo):
    steps = [
        {"set": {"LR": 0.02, "SLEEP": 0.3}},  # both beat the baseline, on different lines:
        {"set": {"BIAS": -0.2, "SLEEP": 0.3}},  # the second decided is re-applied on the first
        {"set": {"MODE": "env"}},
    ]
    engine = run_engine(repo, steps, loop__workers=2, loop__max_experiments=10, loop__hang_seconds=10)
    results = engine.results
    rd = engine.rd
    assert sorted(r.n for r in results) == list(range(1, 11))  # none lost, none twice, no gap
    assert [r.n for r in rd.read_results()] == [r.n for r in results]
    assert all(r.worker in (0, 1) for r in results) and {r.worker for r in results} == {0, 1}
    assert {r.worker for r in results if r.baseline} == {0, 1}  # the baseline runs ran side by side

    keeps = [r for r in results if r.status == "keep"]
    assert len(keeps) == 2 and {k.worker for k in keeps} == {0, 1}, [(r.n, r.status, r.error) for r in results]
    first, second = keeps
    assert second.rebased and second.rebased_runs and second.parent == first.commit
    assert len(second.runs) == 2  # measured again from scratch on the new best: a run and its confirmation
    final = git(repo, "show", f"{second.commit}:train.py")
    assert "LR = 0.02" in final and "BIAS = -0.2" in final
    assert git(repo, "rev-parse", "autoresearch/t") == second.commit  # the branch is at the best
    assert git(rd.worktree, "rev-parse", "HEAD") == second.commit
    assert git(repo, "rev-parse", f"refs/autoresearch/t/{second.n:04d}") == second.commit
    own, other = ("+LR = 0.02", "+BIAS = -0.2") if second.description.startswith("LR") else ("+BIAS = -0.2", "+LR = 0.02")
    patch = (rd.experiment(second.n) / "diff.patch").read_text()  # what it changed on the new best
    assert own in patch and other not in patch
    rebased = [e for e in events(rd) if e["type"] == "rebased"]
    assert [e["n"] for e in rebased] == [second.n] and rebased[0]["onto"] == first.commit

    # Every event about an experiment names its worker; each worker got half the threads.
    assert all("worker" in e for e in events(rd) if e.get("n") is not None and e["type"] != "command")
    env_run = next(r for r in results if r.description == "MODE=env")
    env = json.loads(log_text(rd.experiment(env_run.n) / "run.log").split("ENV ", 1)[1].splitlines()[0])
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert rd.read_state().flights == []  # nothing in flight once stopped
    assert git(rd.lane_worktree(0), "status", "--porcelain") == ""


def test_a_change_that_no_longer_applies_on_the_new_best_is_discarded_with_the_reason(repo):
    steps = [{"set": {"LR": 0.02, "SLEEP": 0.3}}, {"set": {"LR": 0.03, "SLEEP": 0.3}}]  # the same line
    engine = run_engine(repo, steps, loop__workers=2, loop__max_experiments=4, loop__hang_seconds=10)
    changes = [r for r in engine.results if not r.baseline]
    assert sorted(r.status for r in changes) == ["discard", "keep"]
    lost = next(r for r in changes if r.status == "discard")
    assert "no longer applies on the new best" in lost.error
    kept = next(r for r in changes if r.status == "keep")
    assert engine.s.standing.best.n == kept.n and not kept.rebased


def test_two_agents_proposing_the_same_change_at_once_measure_it_once(repo):
    steps = [{"set": {"LR": 0.02}}, {"set": {"LR": 0.02}}, {"set": {"WIDTH": 100}, "desc": "asked again"}]
    engine = run_engine(repo, steps, loop__workers=2, loop__max_experiments=4, loop__hang_seconds=10)
    changes = [r for r in engine.results if not r.baseline]
    assert sorted(r.description for r in changes) == ["LR=0.02", "asked again"]
    assert sorted(r.n for r in engine.results) == [1, 2, 3, 4]  # the dropped proposal kept its number
    dropped = [e for e in events(engine.rd) if e["type"] == "proposal_dropped"]
    twin = next(r for r in changes if r.description == "LR=0.02")
    assert len(dropped) == 1 and dropped[0]["reason"] == f"the same change as #{twin.n:04d}, which another worker is measuring"
    assert dropped[0]["worker"] != twin.worker


def test_skip_names_the_experiment_when_two_are_running(repo, background):
    steps = [{"set": {"MODE": "slow", "WIDTH": 100}}, {"set": {"MODE": "slow", "WIDTH": 110}}]
    bg = background(make_engine(repo, steps, loop__workers=2, loop__max_experiments=4, loop__hang_seconds=10,
                                loop__timeout_seconds=60))

    def both_running():
        flights = bg.state().flights
        return len(flights) == 2 and all(f.get("phase") == "running" and not f.get("baseline_run") for f in flights)

    bg.wait_for(both_running, 30, "two changes training")
    numbers = sorted(f["experiment"] for f in bg.state().flights)
    shown = format_status(status_data(repo, "t"))  # `autoresearch status`: a line per worker
    for n in numbers:
        assert re.search(rf"^worker [01]: #{n:04d} running for \d+ s  MODE=slow", shown, re.M), shown
    reply = send_command(bg.rd.socket, "skip")
    assert not reply["ok"] and "2 experiments are running" in reply["reason"]
    assert send_command(bg.rd.socket, "skip", f"#{numbers[0]}")["ok"]
    bg.wait_for(lambda: any(r.n == numbers[0] for r in bg.results()), 20, "the skipped one recorded")
    bg.wait_for(lambda: [f["experiment"] for f in bg.state().flights] == [numbers[1]], 5, "its flight ended")
    assert bg.state().flights[0]["phase"] == "running"  # the other one trains on (4 experiments: no new one)
    assert send_command(bg.rd.socket, "skip", str(numbers[1]))["ok"]
    bg.thread.join(30)
    got = {r.n: r.status for r in bg.results()}
    assert got[numbers[0]] == "skipped" and got[numbers[1]] == "skipped"


def test_kill_minus_9_with_two_running_records_both_and_resume_goes_on(repo):
    rd = RunDir.for_tag(repo, "t")
    proc = start_engine(repo, [{"set": {"MODE": "slow", "WIDTH": 100}}, {"set": {"MODE": "slow", "WIDTH": 110}}],
                        **{"loop.workers": 2, "loop.hang_seconds": 10, "loop.timeout_seconds": 60})

    def both_training():
        flights = rd.read_state().flights
        if len(flights) == 2 and all(f.get("train_pgid") and not f.get("baseline_run") for f in flights) \
                and all("step 2" in log_text(rd.experiment(f["experiment"]) / "run.log") for f in flights):
            return flights, [psutil.Process(f["train_pgid"]) for f in flights]
        return None

    flights, trainers = kill_minus_9_when(proc, both_training, 40, "two changes training")
    for trainer in trainers:  # training dies with its engine
        wait_until(lambda: not trainer.is_running() or trainer.status() == psutil.STATUS_ZOMBIE, 10, "trainer gone")
    wait_until(lambda: processes_in(rd.root) == [], 10, "no orphans")
    before = rd.read_results()
    assert [r.status for r in before] == ["baseline", "baseline"]

    again = start_engine(repo, [], **{"loop.workers": 2, "loop.max_experiments": 2, "loop.hang_seconds": 10})
    out, _ = again.communicate(timeout=90)
    assert again.returncode == 0, out
    results = rd.read_results()
    assert results[:2] == before
    assert sorted(r.n for r in results) == [1, 2, 3, 4, 5, 6]  # in the order they were decided
    interrupted = {r.n: r for r in results if r.status == "interrupted"}
    assert sorted(interrupted) == sorted(f["experiment"] for f in flights)
    assert {r.worker for r in interrupted.values()} == {f["worker"] for f in flights} == {0, 1}
    assert all(r.description.startswith("MODE=slow") and r.commit for r in interrupted.values())
    assert all(r.status in ("discard", "keep") for r in results[4:])  # the loop went on
    assert processes_in(rd.root) == []


def test_each_worker_gets_its_own_gpu_and_a_share_of_the_threads(monkeypatch):
    from engine import config, lanes

    monkeypatch.setattr(lanes, "cuda_available", lambda: True)
    monkeypatch.setattr(config, "cuda_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert config.LoopConfig().effective_workers() == 2  # default: one per visible GPU
    assert [lane.env for lane in lanes.make_lanes(2)] == [
        {"OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "8", "CUDA_VISIBLE_DEVICES": "3"},
        {"OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "8", "CUDA_VISIBLE_DEVICES": "5"},
    ]
    assert [lane.env["CUDA_VISIBLE_DEVICES"] for lane in lanes.make_lanes(3)] == ["3", "5", "3"]  # they share
    assert lanes.make_lanes(1)[0].env == {}  # one worker: the whole machine, as before
    monkeypatch.setattr(config, "cuda_available", lambda: False)
    assert config.LoopConfig().effective_workers() == 1  # a CPU: one worker unless asked


def test_status_names_each_workers_ray_node():
    """With --ray, `autoresearch status` says which node each worker's experiment runs on."""
    d = {"engine_alive": True, "tag": "t", "pid": 42, "phase": "running", "experiment": 4, "counts": {},
         "experiments": 3, "flights": [
        {"worker": 1, "experiment": 5, "phase": "evaluating", "description": "LR=0.02", "node": "box-2 (10.0.0.6)"},
        {"worker": 0, "experiment": 4, "phase": "running", "description": "WIDTH=3"},
    ]}
    shown = format_status(d)
    assert "worker 0: #0004 running  WIDTH=3" in shown, shown
    assert "worker 1 on box-2 (10.0.0.6): #0005 evaluating  LR=0.02" in shown, shown
