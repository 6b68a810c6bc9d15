"""Decisions a researcher can trust, end to end with the stand-in genome: a candidate is
confirmed before it is kept, every measurement is journaled (and survives kill -9), the
best is re-measured against drift, and baseline and kept runs carry a holdout score."""

from __future__ import annotations

import json
from pathlib import Path

from engine.rundir import RunDir

from .conftest import run_engine
from .genome import git
from .test_recovery import kill_minus_9_when, start_engine


def test_a_candidate_that_wins_once_is_discarded_and_one_that_wins_twice_is_kept(repo):
    steps = [{"set": {"LR": 0.0101, "MODE": "lucky"}},  # 0.1 better on its first run only
             {"set": {"LR": 0.02}}]  # really better: wins both runs
    engine = run_engine(repo, steps, loop__max_experiments=3, loop__baseline_runs=1)
    base, lucky, good = engine.results
    assert base.status == "baseline" and base.holdout == base.metric + 0.1  # the baseline is scored on the holdout
    assert lucky.status == "discard" and len(lucky.runs) == 2
    assert lucky.runs[0] < base.metric - 0.09 and abs(lucky.runs[1] - base.metric) < 0.01
    assert lucky.metric == (lucky.runs[0] + lucky.runs[1]) / 2 and lucky.holdout == lucky.runs[1] + 0.1
    assert good.status == "keep" and good.runs == [good.metric, good.metric] and good.holdout == good.metric + 0.1
    assert lucky.noise_dof is not None and lucky.threshold > 0
    tsv = engine.rd.results_tsv.read_text().splitlines()
    assert tsv[2].split("\t")[1] == f"{lucky.metric:.6f}"  # Karpathy's row carries the mean
    events = [json.loads(line) for line in engine.rd.events_jsonl.read_text().splitlines()]
    confirming = [e for e in events if e["type"] == "phase" and e["phase"] == "confirming"]
    assert {e["n"] for e in confirming} == {2, 3}
    state = engine.rd.read_state()
    assert state.noise is not None and state.noise.dof >= 2  # both candidates' two runs count


def test_a_forced_keep_needs_no_confirmation(repo, background):
    from engine.control import send_command

    from .conftest import make_engine

    bg = background(make_engine(repo, [{"set": {"LR": 0.005, "SLEEP": 1.5}}], loop__baseline_runs=1,
                                loop__max_experiments=2, loop__hang_seconds=10))
    bg.wait_for(lambda: bg.phase_is("running", 2), why="experiment 2 training")
    assert send_command(bg.rd.socket, "keep")["ok"]
    bg.thread.join(30)
    kept = bg.results()[-1]
    assert kept.status == "keep" and kept.forced and len(kept.runs) == 1


def test_both_runs_survive_a_kill_between_them(repo):
    rd = RunDir.for_tag(repo, "t")
    proc = start_engine(repo, [{"set": {"LR": 0.02, "SLEEP": 3.0}}], **{"loop.baseline_runs": 1,
                                                                       "loop.hang_seconds": 10,
                                                                       "loop.timeout_seconds": 20})
    state = kill_minus_9_when(proc, lambda: (st := rd.read_state()).phase == "confirming" and st.train_pgid and st,
                              60, why="the confirmation run")
    first = state.runs
    assert len(first) == 1
    again = start_engine(repo, [{"set": {"LR": 0.03}}], **{"loop.max_experiments": 1, "loop.baseline_runs": 1})
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out
    results = rd.read_results()
    assert [(r.n, r.status) for r in results] == [(1, "baseline"), (2, "interrupted"), (3, "keep")]
    assert results[1].runs == first  # the first run's number is not lost
    events = [json.loads(line) for line in rd.events_jsonl.read_text().splitlines()]
    assert [e["metric"] for e in events if e["type"] == "measurement" and e["n"] == 2] == first


def test_the_best_is_re_measured_every_few_experiments_and_when_throughput_moves(tmp_path):
    from .genome import make_repo

    repo = make_repo(tmp_path / "repo")
    steps = [{"set": {"LR": 0.02}}, {"set": {"WIDTH": 66}}, {"set": {"WIDTH": 67}}, {"set": {"WIDTH": 68}}]
    engine = run_engine(repo, steps, loop__max_experiments=6, loop__baseline_runs=1, loop__remeasure_every=3)
    statuses = [(r.n, r.status, r.remeasure) for r in engine.results]
    assert statuses[:2] == [(1, "baseline", False), (2, "keep", False)]
    remeasures = [r for r in engine.results if r.remeasure]
    assert remeasures and remeasures[0].status == "baseline" and "3 experiments since" in remeasures[0].description
    assert remeasures[0].commit == engine.results[1].commit and remeasures[0].holdout is not None
    best = engine.s.standing
    assert best.best.n == 2 and best.best_runs == 3  # two runs when kept, one re-measure

    # Throughput: runs that report 60% more tokens/s than the best trigger a re-measure.
    repo2 = make_repo(tmp_path / "repo2")
    fast = [{"set": {"TOKENS": 1600, "WIDTH": w}} for w in (60, 61, 62, 63)]
    engine = run_engine(repo2, fast, loop__max_experiments=6, loop__baseline_runs=1)
    drift = [r for r in engine.results if r.remeasure]
    assert drift and "throughput moved +60%" in drift[0].description, [r.description for r in engine.results]
    assert all(r.tokens_per_sec in (1000.0, 1600.0) for r in engine.results if r.scored)
    assert all(r.load_avg is not None for r in engine.results)


def test_seeds_are_not_ideas_for_the_heuristic(tmp_path):
    from engine.agents.base import ProposalContext
    from engine.agents.heuristic import HeuristicAgent, read_constants

    from .genome import git

    train = "LR = 0.01\nSEED = 0  # random seed\n"
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / "train.py").write_text(train)
    git(wt, "init", "-q")
    agent = HeuristicAgent(seed=0)
    moved = set()
    for n in range(3, 9):
        (wt / "train.py").write_text(train)
        ctx = ProposalContext(n=n, worktree=wt, program="", mutable=["train.py"], history=[], best=None,
                              last_result=None, last_log_tail="", notes=[])
        try:
            agent.propose(ctx)
        except Exception:
            break
        after = read_constants((wt / "train.py").read_text())
        moved |= {k for k, c in after.items() if c.value != {"LR": 0.01, "SEED": 0}[k]}
    assert moved == {"LR"}


def test_the_decision_rule_in_force_is_in_the_state(repo):
    engine = run_engine(repo, [], loop__max_experiments=1, loop__baseline_runs=1)
    config = engine.rd.read_state().config["loop"]
    assert config["confirm_runs"] == 1 and config["noise_prior"] == 0.01 and config["drift_ratio"] == 0.2
    assert Path(engine.rd.root).is_dir()


def test_a_best_caught_reading_ahead_on_a_re_measure_is_revoked(repo):
    # #2 cheats only from its third evaluation on: its run and confirmation pass, #3 (built on it)
    # is caught, and #4, the drift guard's re-measure of the best, catches the best itself.
    steps = [{"set": {"LR": 0.02, "MODE": "cheat"}}, {"set": {"WIDTH": 100}}, {"set": {"WIDTH": 100}}]
    engine = run_engine(repo, steps, loop__max_experiments=5, loop__baseline_runs=1, loop__remeasure_every=1,
                        loop__max_failures_in_a_row=5)
    results = engine.results
    assert [(r.n, r.status) for r in results][:4] == [(1, "baseline"), (2, "keep"), (3, "crash"), (4, "crash")]
    caught = results[3]
    assert caught.remeasure and caught.revokes == 2 and "no longer the best" in caught.error
    assert engine.s.standing.best.n == 1  # back to the baseline
    assert results[4].parent == results[0].commit  # the next change is measured against it
    assert 'MODE = "ok"' in git(engine.rd.worktree, "show", f"{results[4].parent}:train.py")
