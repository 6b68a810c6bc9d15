"""Overlap (``[loop] overlap``): two lanes per device take turns to train, so that one
experiment trains while the one before it is scored. Stand-in genome, whose "slowscore"
evaluation takes 1.5 s: the turn is never shared, the next training starts while the
last is scored, and an experiment waiting for its turn is skipped, stopped or killed
like one in flight."""

from __future__ import annotations

import json
import os
import threading

import pytest

from engine.config import ConfigError, load_config
from engine.control import send_command
from engine.rundir import RunDir

from .conftest import make_engine, processes_in, run_engine
from .test_recovery import kill_minus_9_when, start_engine, wait_until


def events(rd: RunDir) -> list[dict]:
    return [json.loads(line) for line in rd.events_jsonl.read_text().splitlines()]


def test_one_trains_while_the_other_is_scored_and_the_device_is_never_shared(repo):
    steps = [{"set": {"MODE": "slowscore", "SLEEP": 0.6, "WIDTH": 100 + k}} for k in range(6)]
    engine = run_engine(repo, steps, loop__overlap=True, loop__max_experiments=8, loop__hang_seconds=10)
    results = engine.results
    assert sorted(r.n for r in results) == list(range(1, 9)), [(r.n, r.status, r.error) for r in results]
    assert {r.worker for r in results} == {0, 1}
    spans = sorted(span for r in results for span in r.train_spans)
    assert len(spans) >= 8
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 0.05, spans  # one training at a time on the device (the turn)
    # Some training started while an experiment before it was still being scored (1.5 s).
    scored = [r for r in results if not r.baseline and r.train_spans]
    overlapped = [(a.n, b.n) for a in scored for b in results if b is not a and b.train_spans
                  and a.train_spans[-1][1] <= b.train_spans[0][0] < a.ended_at - 0.5]
    assert overlapped, [(r.n, r.train_spans, r.ended_at) for r in results]
    assert any(e["type"] == "phase" and e["phase"] == "waiting" for e in events(engine.rd))
    # Both lanes had the whole machine (one device): no thread split as between workers.
    assert all(lane.env == {} for lane in engine.s.lanes) and len(engine.s.lanes) == 2
    assert engine.rd.read_state().flights == []


def test_an_experiment_waiting_for_its_turn_can_be_skipped(repo, background):
    steps = [{"set": {"MODE": "slow", "WIDTH": 100}}, {"set": {"MODE": "slow", "WIDTH": 110}}]
    bg = background(make_engine(repo, steps, loop__overlap=True, loop__max_experiments=4, loop__hang_seconds=10,
                                loop__timeout_seconds=60))

    def one_trains_one_waits():
        flights = [f for f in bg.state().flights if not f.get("baseline_run")]
        return len(flights) == 2 and sorted(str(f.get("phase")) for f in flights) == ["running", "waiting"] and flights

    flights = bg.wait_for(one_trains_one_waits, 40, "a change training and one waiting for its turn")
    waiting = next(f for f in flights if f["phase"] == "waiting")
    training = next(f for f in flights if f["phase"] == "running")
    assert send_command(bg.rd.socket, "skip", f"#{waiting['experiment']}")["ok"]
    bg.wait_for(lambda: any(r.n == waiting["experiment"] for r in bg.results()), 10, "the waiting one recorded")
    skipped = next(r for r in bg.results() if r.n == waiting["experiment"])
    assert skipped.status == "skipped" and skipped.train_spans == []  # it never trained
    assert send_command(bg.rd.socket, "skip", f"#{training['experiment']}")["ok"]
    bg.thread.join(30)
    assert not bg.thread.is_alive()
    assert processes_in(bg.rd.root) == []  # the waiting lane's warm process went with it


def test_kill_minus_9_with_one_training_and_one_waiting_records_both(repo):
    rd = RunDir.for_tag(repo, "t")
    proc = start_engine(repo, [{"set": {"MODE": "slow", "WIDTH": 100}}, {"set": {"MODE": "slow", "WIDTH": 110}}],
                        **{"loop.overlap": True, "loop.hang_seconds": 10, "loop.timeout_seconds": 60})

    def one_trains_one_waits():
        flights = [f for f in rd.read_state().flights if not f.get("baseline_run")]
        phases = sorted(str(f.get("phase")) for f in flights)
        return phases == ["running", "waiting"] and flights

    flights = kill_minus_9_when(proc, one_trains_one_waits, 40, "a change training and one waiting")
    wait_until(lambda: processes_in(rd.root) == [], 10, "no orphans")
    again = start_engine(repo, [], **{"loop.overlap": True, "loop.max_experiments": 2, "loop.hang_seconds": 10})
    out, _ = again.communicate(timeout=90)
    assert again.returncode == 0, out
    results = rd.read_results()
    interrupted = {r.n for r in results if r.status == "interrupted"}
    assert interrupted == {f["experiment"] for f in flights}  # the waiting one too: it had a number
    assert sorted(r.n for r in results) == list(range(1, len(results) + 1))


def test_lanes_pair_up_on_each_device_and_share_its_turn(monkeypatch):
    from engine import config, lanes

    monkeypatch.setattr(lanes, "cuda_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    four = lanes.make_lanes(2, overlap=True)
    assert [lane.env.get("CUDA_VISIBLE_DEVICES") for lane in four] == ["3", "3", "5", "5"]
    assert all(lane.env["OMP_NUM_THREADS"] == "8" for lane in four)  # a device's share, not a lane's
    assert four[0].turn is four[1].turn and four[2].turn is four[3].turn and four[0].turn is not four[2].turn
    assert isinstance(four[0].turn, type(threading.Lock()))
    two = lanes.make_lanes(1, overlap=True)
    assert len(two) == 2 and two[0].turn is two[1].turn and all(lane.env == {} for lane in two)
    assert lanes.make_lanes(1)[0].turn is None  # without overlap: no turns, as before
    monkeypatch.setattr(config, "cuda_available", lambda: False)


def test_overlap_is_a_boolean_refused_with_ray_and_turns_pipelining_off(repo):
    with pytest.raises(ConfigError, match="overlap must be true or false"):
        load_config(repo, {"loop.overlap": "yes"})
    with pytest.raises(ConfigError, match="not with ray"):
        load_config(repo, {"loop.overlap": True, "loop.ray": "auto"})
    config = load_config(repo, {"loop.overlap": True, "agent.name": "command", "agent.command": "true"})
    assert not config.effective_pipeline()  # each lane proposes while the other trains


def test_the_overlap_flag_reaches_the_configuration():
    from autoresearch.cli import build_parser
    from autoresearch.options import run_overrides

    parser = build_parser()
    assert run_overrides(parser.parse_args(["run", "--overlap"]))["loop.overlap"] is True
    assert run_overrides(parser.parse_args(["run", "--no-overlap"]))["loop.overlap"] is False
    assert "loop.overlap" not in run_overrides(parser.parse_args(["run"]))
