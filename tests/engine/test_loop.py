"""The whole loop, in process, with real git and real train/evaluate subprocesses."""

from __future__ import annotations

import csv
import json

from engine import gitops
from engine.integrity import cache_dir
from engine.results import experiment_ref
from engine.rundir import RunDir

from .conftest import make_engine, run_engine
from .genome import git, make_repo


def test_every_status_of_a_run(tmp_path):
    repo = make_repo(tmp_path / "repo", timeout=2.0, hang=0.5)
    user_head = git(repo, "rev-parse", "HEAD")
    steps = [
        {"set": {"LR": 0.02}},  # 3 keep: closer to the bowl's bottom at 0.04
        {"set": {"LR": 0.005}},  # 4 discard
        {"set": {"MODE": "crash"}},  # 5
        {"set": {"MODE": "timeout"}},  # 6: keeps printing past the wall-clock limit
        {"set": {"MODE": "hang"}},  # 7: silent and idle
        {"set": {"MODE": "nan"}},  # 8
        {"set": {"MODE": "oom"}},  # 9
        {"set": {"MODE": "sigkill"}},  # 10: killed by signal 9, not by the engine -> oom
        {"write": {"prepare.py": "print('hacked evaluator')\n"}},  # 11 rejected
        {"desc": "do nothing"},  # 12 rejected: empty
        {"set": {"LR": 0.03}, "write": {"notes/new.py": "x = 1\n"}},  # 13 rejected: new untracked file
        {"set": {"MODE": "tamper"}},  # 14 crash: the experiment's files are read-only in the sandbox
        {"set": {"MODE": "evalnan"}},  # 15 nan from eval.json
        {"set": {"WIDTH": 128}},  # 16 keep
    ]
    engine = run_engine(repo, steps, loop__max_experiments=16, loop__max_failures_in_a_row=10)
    rd = engine.rd
    results = rd.read_results()
    statuses = [r.status for r in results]
    # Without a sandbox (no bwrap here) training may write its copy of the files, never the scorer's.
    tampered = "crash" if engine.s.sandbox.enabled else "discard"
    assert statuses == ["baseline", "baseline", "keep", "discard", "crash", "timeout", "hang", "nan", "oom",
                        "oom", "rejected", "rejected", "rejected", tampered, "nan", "keep"]
    by_n = {r.n: r for r in results}
    assert [r.n for r in results] == list(range(1, 17))

    # Decisions carry their numbers; the metric comes from eval.json.
    assert by_n[3].delta < -by_n[3].threshold and len(by_n[3].runs) == 2  # kept after its confirmation run
    assert by_n[4].delta > 0
    assert json.loads((rd.experiment(3) / "eval.json").read_text())["val_bpb"] == by_n[3].metric
    assert by_n[1].noise is not None and by_n[2].noise == 0.0
    assert by_n[3].train_seconds == 0.02 and by_n[3].peak_mem_mb == 640.0

    # Failures say why, and keep the end of the log.
    assert "boom" in by_n[5].error and any("boom" in line for line in by_n[5].log_tail)
    assert "wall time" in by_n[6].error and "measured by the engine" in by_n[6].error
    assert "no output" in by_n[7].error
    assert by_n[8].error.startswith("FAIL")
    assert "prepare.py" in by_n[11].error
    assert "empty" in by_n[12].error
    assert "notes/new.py" in by_n[13].error
    assert (repo / ".autoresearch" / "t" / "worktree" / "prepare.py").read_text() == (repo / "prepare.py").read_text()
    assert by_n[16].metric < by_n[3].metric

    # Git: every committed experiment has a ref, the branch sits on the best commit,
    # the worktree is clean and the user's checkout untouched.
    wt = rd.worktree
    branch_tip = git(repo, "rev-parse", gitops.branch_name("t"))
    assert branch_tip == by_n[16].commit == engine.s.standing.best.commit
    for n in (3, 4, 5, 14, 16):
        assert git(repo, "rev-parse", experiment_ref("t", n)) == by_n[n].commit
    assert "LR = 0.005" in git(repo, "show", f"{experiment_ref('t', 4)}:train.py")
    assert by_n[11].commit is None and by_n[12].commit is None
    assert git(wt, "status", "--porcelain", "--untracked-files=all") == ""
    assert not (wt / "notes").exists()
    assert git(repo, "rev-parse", "HEAD") == user_head
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""  # .autoresearch is excluded
    assert "/.autoresearch/" in (repo / ".git" / "info" / "exclude").read_text()
    assert (repo / ".gitignore").exists() is False

    # The run directory.
    for n in range(1, 17):
        d = rd.experiment(n)
        assert (d / "hypothesis.md").exists() and (d / "diff.patch").exists()
        if n not in (11, 12, 13):
            assert (d / "run.log").exists()
    assert "+LR = 0.02" in (rd.experiment(3) / "diff.patch").read_text()
    assert "notes/new.py" in (rd.experiment(13) / "diff.patch").read_text()
    log = (rd.experiment(3) / "run.log").read_text()
    assert "training_seconds: 0.02" in log and "=== autoresearch: evaluation" in log and "val_bpb:" in log
    checkpoints = sorted(p.parent.parent.name for p in rd.experiments.glob("*/scratch/checkpoint.pt"))
    assert checkpoints == ["0016"]  # only the best is kept on disk

    with open(rd.results_tsv, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert all(len(row) == 5 for row in rows) and len(rows) == 17
    assert rows[3][0] == by_n[3].commit[:7] and rows[3][3] == "keep" and abs(float(rows[3][1]) - by_n[3].metric) < 1e-6
    assert rows[5][1] == "0.000000"

    state = rd.read_state()
    assert state.phase == "stopped" and state.best.n == 16
    assert state.counts["rejected"] == 3 and state.baseline.runs == 2
    events = [json.loads(line) for line in rd.events_jsonl.read_text().splitlines()]
    types = {e["type"] for e in events}
    assert {"engine", "phase", "proposal", "result", "usage", "measurement"} <= types
    phases = [e["phase"] for e in events if e["type"] == "phase" and e.get("n") == 3]
    assert phases == ["proposing", "checking", "running", "evaluating", "confirming", "deciding"]
    assert [e["metric"] for e in events if e["type"] == "measurement" and e["n"] == 3] == [by_n[3].runs[0]]
    assert not rd.lock.exists() and not rd.socket.exists()


def test_a_change_that_reaches_for_the_validation_data_or_the_evaluator_is_rejected(tmp_path):
    repo = make_repo(tmp_path / "repo")
    steps = [
        {"append": {"train.py": "\nimport prepare\nCHEAT = prepare.load_split('val')\n"}, "desc": "train on val"},
        {"append": {"train.py": "\nimport prepare\nprepare.nats_of = lambda *a: (0.0, 1)\n"}, "desc": "patch"},
        {"append": {"train.py": "\n# val.bin is off limits; a comment may say so\n"}, "desc": "comment"},
    ]
    results = run_engine(repo, steps, loop__max_experiments=5).rd.read_results()
    assert [r.status for r in results][2:] == ["rejected", "rejected", "discard"]
    assert "reads the validation split" in results[2].error and results[2].commit is None
    assert "evaluator's internals" in results[3].error and "patches the evaluator" in results[3].error


def test_training_gets_a_minimal_environment_without_api_keys(repo, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws")
    monkeypatch.setenv("MY_PRIVATE_SETTING", "x")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    engine = run_engine(repo, [{"set": {"MODE": "env"}}], loop__max_experiments=2, loop__baseline_runs=1)
    log = (engine.rd.experiment(2) / "run.log").read_text()
    env = json.loads(next(line[4:] for line in log.splitlines() if line.startswith("ENV ")))
    assert "ANTHROPIC_API_KEY" not in env and "OPENAI_API_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert "MY_PRIVATE_SETTING" not in env
    assert env["OMP_NUM_THREADS"] == "2" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["AUTORESEARCH_TIME_BUDGET"] == "1"
    scratch = "/scratch" if engine.s.sandbox.enabled else str(engine.rd.experiment(2) / "scratch")
    assert env["AUTORESEARCH_CHECKPOINT"] == f"{scratch}/checkpoint.pt" and env["HOME"] == f"{scratch}/home"
    assert env["AUTORESEARCH_CACHE"] == ("/data" if engine.s.sandbox.enabled else str(cache_dir()))


def test_noise_threshold_versus_strict_rule(tmp_path):
    small_gain = [{"set": {"LR": 0.0101}}]  # about 0.004 lower than the baseline
    noisy = run_engine(make_repo(tmp_path / "a"), small_gain, loop__max_experiments=2, loop__baseline_runs=1,
                       loop__min_delta=0.01, loop__noise_prior=0.0)
    strict = run_engine(make_repo(tmp_path / "b"), small_gain, loop__max_experiments=2, loop__baseline_runs=1,
                        loop__min_delta=0.01, loop__decision="strict")
    a, b = noisy.results[-1], strict.results[-1]
    assert a.status == "discard" and a.threshold == 0.01 and -0.01 < a.delta < 0
    assert b.status == "keep" and b.threshold == 0.0 and len(b.runs) == 2  # strict still confirms


def test_agent_errors_and_usage_are_journaled(repo):
    steps = [
        {"error": "the model refused", "cost": 0.25},  # non-transient: recorded as crash
        {"error": "rate limited", "transient": True, "cost": 0.1},  # retried, nothing recorded
        {"set": {"LR": 0.02}, "emit": ["Thinking about ", "the learning rate."], "cost": 0.5},
    ]
    engine = run_engine(repo, steps, loop__max_experiments=3, loop__baseline_runs=1)
    results = engine.results
    assert [r.status for r in results] == ["baseline", "crash", "keep"]
    assert results[1].error == "the model refused" and results[1].description.startswith("agent error")
    assert results[2].agent == {"name": "scripted", "model": "script-1", "input_tokens": 100, "output_tokens": 10,
                                   "cache_read_tokens": 0, "cache_write_tokens": 0, "cost_usd": 0.5}
    state = engine.rd.read_state()
    assert state.cost_usd == 0.85 and state.agent == {"name": "scripted", "model": "script-1"}
    events = [json.loads(line) for line in engine.rd.events_jsonl.read_text().splitlines()]
    chunks = [e["text"] for e in events if e["type"] == "hypothesis" and e["n"] == 3]
    assert chunks == ["Thinking about ", "the learning rate."]
    assert any(e["type"] == "error" and "rate limited" in e["message"] for e in events)
    assert len([e for e in events if e["type"] == "usage"]) == 3


def test_truncated_journal_lines_are_repaired_on_resume(repo):
    engine = run_engine(repo, [{"set": {"LR": 0.02}}], loop__max_experiments=3)
    rd = engine.rd
    with open(rd.results_jsonl, "a") as f:
        f.write('{"n": 4, "status": "ke')  # a power cut mid-write
    with open(rd.events_jsonl, "a") as f:
        f.write('{"ts": 1, "type": "pha')
    resumed = run_engine(repo, [{"set": {"WIDTH": 128}}], loop__max_experiments=1)
    results = rd.read_results()
    assert [r.n for r in results] == [1, 2, 3, 4] and results[3].status == "keep"
    assert all(line.startswith("{") and line.endswith("}") for line in rd.results_jsonl.read_text().splitlines())
    for line in rd.events_jsonl.read_text().splitlines():
        json.loads(line)
    assert len(rd.results_tsv.read_text().splitlines()) == 5
    assert resumed.s.standing.best.n == 4


def test_data_cache_is_prepared_when_missing_and_fingerprinted(repo):
    engine = run_engine(repo, [], loop__max_experiments=1, loop__baseline_runs=1)
    run_info = json.loads((engine.rd.root / "run.json").read_text())
    assert run_info["manifest_sha256"] and run_info["prepare_sha256"]
    assert "preparing data" in (engine.rd.root / "prepare.log").read_text()


def test_stale_lock_of_a_dead_engine_is_taken_over(repo):
    rd = RunDir.for_tag(repo, "t")
    rd.root.mkdir(parents=True)
    rd.lock.write_text("999999\n")
    engine = run_engine(repo, [], loop__max_experiments=1, loop__baseline_runs=1)
    assert engine.s.lock.took_over_pid == 999999
    assert engine.results[0].status == "baseline"


def test_untrusted_text_reaches_no_terminal_journal_or_commit_raw(repo):
    evil = "\x1b]52;c;ZXZpbA==\x07\x1b[2J\u202e"
    steps = [{"set": {"LR": 0.02}, "desc": f"tune {evil}LR"}, {"set": {"MODE": "evil"}}]
    lines: list[str] = []
    engine = make_engine(repo, steps, loop__max_experiments=3, loop__baseline_runs=1)
    engine.s._out = lines.append
    assert engine.run() == 0
    rd = engine.rd
    crashed = rd.read_results()[2]
    assert crashed.status == "crash" and "gone" in crashed.error and "evil" in crashed.error
    commit_message = git(rd.worktree, "log", "-1", "--format=%B", rd.read_results()[1].commit)
    for text in ("\n".join(lines), rd.results_jsonl.read_text(), rd.events_jsonl.read_text(),
                 (rd.experiment(2) / "hypothesis.md").read_text(), commit_message):
        assert "\x1b" not in text and "\\u001b" not in text and "\u202e" not in text and "\\u202e" not in text
        assert "\x07" not in text and "\\u0007" not in text


def test_an_agent_that_takes_too_long_is_stopped_and_recorded(repo):
    """agent_timeout holds for every agent: a stuck proposal is a crash, and the loop goes on."""
    steps = [{"sleep": 30, "set": {"LR": 0.02}}, {"set": {"LR": 0.02}}]
    engine = make_engine(repo, steps, loop__max_experiments=3, loop__baseline_runs=1, loop__agent_timeout=1.0)
    engine.s.agent_stop_wait = 0.2
    assert engine.run() == 0
    results = engine.results
    assert [r.status for r in results] == ["baseline", "crash", "keep"]
    assert "agent_timeout" in results[1].error and results[1].wall_seconds < 10
