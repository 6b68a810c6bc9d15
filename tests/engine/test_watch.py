"""Watching a loop that another program drives (engine/watch.py), without Textual:
Karpathy's results.tsv as Results, the incremental tails of results.tsv and run.log,
read-only git, the training process found and killed; and `history --from`.

The fixture is a repository laid out as Karpathy's autoresearch leaves it mid-run: branch
autoresearch/nov25 with a commit per kept experiment (discarded and crashed ones reset
away), results.tsv in his format, a run.log written like his train.py writes it, an
uncommitted edit to train.py and a file whose mtime moved (so that any git command that
refreshes the index would write it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch.cli import main
from engine.errors import UsageError
from engine.results import running_best
from engine.watch import (
    TSV_HEADER,
    TrainingProcess,
    WatchReader,
    commit_text,
    find_training,
    is_training_command,
    kill_training,
    parse_results_tsv,
    pending_diff,
    read_git,
    read_results_tsv,
)
from tests.gitrepo import committed_repo, git

TRAIN_PY = '''\
"""Stand-in for Karpathy's train.py: constants at the top. Run, it prints progress the way
his does (one line rewritten with a carriage return) and then hangs."""
import time

DEPTH = 8
MATRIX_LR = 0.04
WARMUP_RATIO = 0.0
TOTAL_BATCH_SIZE = 2**19

if __name__ == "__main__":
    for step in range(3):
        print(f"\\rstep {step:05d} | loss: {9 - step:.6f}", end="", flush=True)
    time.sleep(600)
'''

# Karpathy's run.log so far: what uv and torch print, then train.py's progress line.
RUN_LOG = "Using CPython 3.10.12\nnum_params_M: 50.3\n\rstep 00000 (0.0%) | loss: 9.011\rstep 00001 (0.1%) | loss: 8.742   "


def _edit(repo: Path, old: str, new: str) -> None:
    path = repo / "train.py"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _experiment(repo: Path, old: str, new: str, message: str) -> str:
    _edit(repo, old, new)
    git(repo, "commit", "-q", "-am", message)
    return git(repo, "rev-parse", "--short=7", "HEAD")


def karpathy_repo(path: Path) -> dict:
    """The fixture repository; returns what the tests check against."""
    repo = committed_repo(path, {
        "train.py": TRAIN_PY,
        "prepare.py": "# the fixed evaluator\nMAX_SEQ_LEN = 2048\n",
        "program.md": "# autoresearch\nLOOP FOREVER: edit train.py, commit, run, log to results.tsv.\n",
        "pyproject.toml": "[project]\nname = 'autoresearch'\n",
    })
    git(repo, "checkout", "-q", "-b", "autoresearch/nov25")
    base = git(repo, "rev-parse", "--short=7", "HEAD")
    lr = _experiment(repo, "MATRIX_LR = 0.04", "MATRIX_LR = 0.05", "increase matrix LR to 0.05")
    deep = _experiment(repo, "DEPTH = 8", "DEPTH = 24", "depth 24")
    git(repo, "reset", "-q", "--hard", "HEAD~1")  # crashed (out of memory): reset
    warm = _experiment(repo, "WARMUP_RATIO = 0.0", "WARMUP_RATIO = 0.1", "add 10% warmup")
    git(repo, "reset", "-q", "--hard", "HEAD~1")  # discarded
    batch = _experiment(repo, "TOTAL_BATCH_SIZE = 2**19", "TOTAL_BATCH_SIZE = 2**18", "halve the batch size")
    head = _experiment(repo, "DEPTH = 8", "DEPTH = 10", "depth 10")  # running now: no row yet
    rows = [
        (base, "0.997900", "44.0", "keep", "baseline"),
        (lr, "0.993200", "44.2", "keep", "increase matrix LR to 0.05"),
        (deep, "0.000000", "0.0", "crash", "depth 24 (OOM)"),
        (warm, "0.995100", "44.0", "discard", "add 10% warmup"),
        (batch, "0.990500", "38.5", "keep", "halve the batch size"),
    ]
    (repo / "results.tsv").write_text(TSV_HEADER + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    (repo / "run.log").write_text(RUN_LOG)
    _edit(repo, "WARMUP_RATIO = 0.0", "WARMUP_RATIO = 0.05")  # the agent's next idea, uncommitted
    later = time.time() + 100
    os.utime(repo / "prepare.py", (later, later))  # stat-dirty, same content: `git diff` would rewrite the index
    return {"repo": repo, "base": base, "lr": lr, "deep": deep, "warm": warm, "batch": batch, "head": head}


def start_training(repo: Path, own_group: bool = True, script: str = "train.py") -> subprocess.Popen:
    """The fake training run: `python train.py` in the repository, as `uv run train.py` would."""
    return subprocess.Popen([sys.executable, script], cwd=repo, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=own_group)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def found(repo: Path, pid: int, timeout: float = 10.0) -> TrainingProcess:
    """Wait until find_training sees ``pid`` (the child needs a moment to exec python)."""
    deadline = time.monotonic() + timeout
    while True:
        t = find_training(repo)
        if t is not None and t.pid == pid:
            return t
        if time.monotonic() > deadline:
            raise AssertionError(f"train.py (pid {pid}) was not found; found {t}")
        time.sleep(0.05)


def tree_state(repo: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file in the repository, .git included."""
    out = {}
    for dirpath, _, files in os.walk(repo):
        for name in files:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(repo))] = (st.st_size, st.st_mtime_ns)
    return out


def porcelain(repo: Path) -> str:
    return git(repo, "--no-optional-locks", "status", "--porcelain")


@pytest.fixture
def karpathy(tmp_path: Path) -> dict:
    return karpathy_repo(tmp_path / "autoresearch")


# --- results.tsv ------------------------------------------------------------------------------

TSV = (
    TSV_HEADER + "\n"
    "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
    "b2c3d4e\t0.993200\t44.2\tkeep\tincrease LR to 0.04\n"
    "\n"
    "c3d4e5f\t1.005000\t44.0\tdiscard\tswitch to GeLU activation\n"
    "only\ttwo\n"
    "d4e5f6a\t0.000000\t0.0\tcrash\tdouble model width (OOM)\n"
    "e5f6a7b\tnot-a-number\t44.0\tkeep\tgarbled\n"
    "f6a7b8c\t0.990000\t44.0\tmaybe\tunknown status\n"
    "a7b8c9d\t0.991000\t40.5\tKEEP\tmixed case, CRLF\r\n"
    "b8c9d0e\t0.992000\t40.5\tdiscard\ta\ttab in the description\n"
)


def test_results_tsv_rows_become_results():
    results, skipped = parse_results_tsv(TSV)
    assert skipped == [6, 8, 9]  # line numbers of the three malformed lines; blank lines are no rows
    assert [r.n for r in results] == [1, 2, 3, 4, 5, 6]
    assert [r.status for r in results] == ["keep", "keep", "discard", "crash", "keep", "discard"]
    assert [r.metric for r in results] == [0.9979, 0.9932, 1.005, None, 0.991, 0.992]  # a crash's 0 is no value
    assert all(r.metric_name == "val_bpb" for r in results)
    first, lr, gelu, crash, keep, tabbed = results
    assert first.baseline and not any(r.baseline for r in results[1:])
    assert first.commit == "a1b2c3d" and first.description == "baseline" and first.peak_mem_mb == 44.0 * 1024
    assert crash.peak_mem_mb is None and crash.failed and crash.description == "double model width (OOM)"
    assert first.delta is None and lr.delta == pytest.approx(0.9932 - 0.9979)
    assert gelu.delta == pytest.approx(1.005 - 0.9932) and keep.delta == pytest.approx(0.991 - 0.9932)
    assert tabbed.description == "a tab in the description"
    # The running best and the counts follow the engine's own rule: the latest keep.
    assert [best for _, best in running_best(results)] == [0.9979, 0.9932, 0.9932, 0.9932, 0.991, 0.991]
    from engine.results import Standing

    assert Standing.of(results).grouped_counts() == {"keep": 3, "discard": 2, "failed": 1, "other": 0}


def test_a_header_names_the_metric_and_rows_without_one_still_count():
    results, skipped = parse_results_tsv("commit\tval_loss\tmemory_gb\tstatus\tdescription\nabc1234\t2.5\t1\tkeep\tx\n")
    assert results[0].metric_name == "val_loss" and skipped == []
    results, skipped = parse_results_tsv("abc1234\t0.99\t1.0\tkeep\tno header\n")
    assert len(results) == 1 and results[0].metric == 0.99


def test_bad_results_files_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        read_results_tsv(tmp_path / "missing.tsv")
    with pytest.raises(UsageError, match="is a directory"):
        read_results_tsv(tmp_path)
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(UsageError, match="binary file"):
        read_results_tsv(binary)
    jsonl = tmp_path / "results.jsonl"
    jsonl.write_text('{"n": 1, "status": "keep", "metric": 0.99}\n')
    with pytest.raises(UsageError, match="not a results.tsv"):
        read_results_tsv(jsonl)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    assert read_results_tsv(empty) == ([], [])
    header_only = tmp_path / "header.tsv"
    header_only.write_text(TSV_HEADER + "\n")
    assert read_results_tsv(header_only) == ([], [])


# --- the reader: incremental tails ------------------------------------------------------------------


def quiet_reader(repo: Path) -> WatchReader:
    """A reader that only tails files (git and the process table far apart)."""
    return WatchReader(repo, git_interval=1e9, proc_interval=1e9, find=lambda _repo: None)


def test_results_tsv_is_tailed_incrementally(karpathy):
    repo = karpathy["repo"]
    tsv = repo / "results.tsv"
    reader = quiet_reader(repo)
    batch = reader.collect()
    assert [r.status for r in batch.results] == ["keep", "keep", "crash", "discard", "keep"]
    assert not batch.results_reset and reader.collect().results == []  # nothing new: nothing read

    with open(tsv, "a") as f:
        f.write(f"{karpathy['head']}\t0.989000\t44.0\tkeep\tdepth 10\n")
    new = reader.collect().results
    assert [(r.n, r.description) for r in new] == [(6, "depth 10")]
    assert new[0].delta == pytest.approx(0.989 - 0.9905)  # against the best of the rows read before

    with open(tsv, "a") as f:
        f.write("abcdef0\t0.995000\t44.0\tdiscard\tno newline yet")  # an agent's editor may end so
    assert reader.collect().results == []  # it may still be growing...
    assert [r.description for r in reader.collect().results] == ["no newline yet"]  # ...not after a poll
    with open(tsv, "a") as f:
        f.write("\nbadline\nabcdef1\t0.996000\t44.0\tdiscard\tnext\n")
    batch = reader.collect()
    assert [(r.n, r.description) for r in batch.results] == [(8, "next")]
    assert batch.skipped == [9]  # the line numbers stay right across the unterminated row

    # An agent that rewrites the whole file (an edited description) starts the list over.
    text = tsv.read_text().replace("depth 24 (OOM)", "depth 24 (out of memory at step 3)")
    with open(tsv, "r+") as f:  # in place: same inode, and longer than before
        f.write(text)
    batch = reader.collect()
    assert batch.results_reset and len(batch.results) == 8 and batch.skipped == [9]
    assert batch.results[2].description == "depth 24 (out of memory at step 3)"

    tsv.unlink()
    batch = reader.collect()
    assert batch.results_reset and batch.results == [] and not reader.results_exist


def test_run_log_is_tailed_like_a_terminal(karpathy):
    repo = karpathy["repo"]
    log = repo / "run.log"
    reader = quiet_reader(repo)
    batch = reader.collect()
    assert batch.log_lines == ["Using CPython 3.10.12", "num_params_M: 50.3"]
    assert batch.log_partial == "step 00001 (0.1%) | loss: 8.742"  # the progress line, as last rewritten

    with open(log, "a") as f:
        f.write("\rstep 00002 (0.2%) | loss: 8.510   \rstep 00003 (0.3%) | loss: 8.400   ")
    batch = reader.collect()
    assert batch.log_lines == [] and batch.log_partial == "step 00003 (0.3%) | loss: 8.400"
    assert reader.collect().log_partial is None  # unchanged: no news
    consumed = reader.log.tail.offset
    assert consumed > len(RUN_LOG)  # rewritten progress is consumed, not re-read at every poll

    with open(log, "a") as f:
        f.write("\rstep 00953 (100.0%) | loss: 3.100   \n---\nval_bpb:          0.989000\ntraining_seconds: 300.1\n")
    batch = reader.collect()
    assert batch.log_lines == ["step 00953 (100.0%) | loss: 3.100   ", "---", "val_bpb:          0.989000",
                               "training_seconds: 300.1"]
    assert batch.log_partial == "" and not batch.log_reset

    log.write_text("Using CPython 3.10.12\n")  # `uv run train.py > run.log`: the next experiment
    batch = reader.collect()
    assert batch.log_reset and batch.log_lines == ["Using CPython 3.10.12"]
    # A new run that already outgrew the old one when we look is noticed too (its start differs).
    log.write_text("x" * 10 + "\n" + "new run line\n" * 20)
    batch = reader.collect()
    assert batch.log_reset and batch.log_lines[0] == "xxxxxxxxxx" and len(batch.log_lines) == 21
    # A log that grew by megabytes unseen is read from its tail.
    with open(log, "a") as f:
        f.write("".join(f"line {i}\n" for i in range(200_000)))
    batch = reader.collect()
    assert batch.log_skipped_bytes > 0 and batch.log_lines[-1] == "line 199999"
    assert batch.log_lines[0].startswith("line ") and len(batch.log_lines) < 200_000


# --- git, read-only ------------------------------------------------------------------------------


def test_git_is_read_without_writing_anything(karpathy):
    repo = karpathy["repo"]
    before, status_before = tree_state(repo), porcelain(repo)
    assert "M train.py" in status_before and "prepare.py" not in status_before
    view = read_git(repo)
    assert view.error is None and view.branch == "autoresearch/nov25" and view.head.startswith(karpathy["head"])
    assert [c.subject for c in view.commits] == ["depth 10", "halve the batch size", "increase matrix LR to 0.05", "genome"]
    diff = pending_diff(repo)
    assert "-WARMUP_RATIO = 0.0\n+WARMUP_RATIO = 0.05" in diff and "prepare.py" not in diff
    shown = commit_text(repo, karpathy["warm"])  # a discarded commit, reset away but still readable
    assert "add 10% warmup" in shown and "+WARMUP_RATIO = 0.1" in shown
    reader = WatchReader(repo, find=lambda _repo: None)
    batch = reader.collect()
    assert batch.git == view and batch.diff == diff
    assert tree_state(repo) == before  # the index file included: same size, same mtime
    assert porcelain(repo) == status_before
    assert not (repo / ".autoresearch").exists()


def test_git_runs_at_most_every_few_seconds(karpathy):
    now = [1000.0]
    reader = WatchReader(karpathy["repo"], git_interval=3.0, proc_interval=2.0, clock=lambda: now[0],
                         find=lambda _repo: None)
    for _ in range(5):
        reader.collect()
    assert reader.git_calls == 1
    now[0] += 3.0
    reader.collect()
    reader.collect()
    assert reader.git_calls == 2
    reader.refresh_soon()
    reader.collect()
    assert reader.git_calls == 3


def test_not_a_repository(tmp_path):
    from engine.watch import repo_root

    with pytest.raises(UsageError, match="not a git repository"):
        repo_root(tmp_path)
    with pytest.raises(UsageError, match="no such directory"):
        repo_root(tmp_path / "missing")


# --- the training process ------------------------------------------------------------------------


def test_what_counts_as_a_training_command():
    for cmd in (["uv", "run", "train.py"], ["python", "-u", "train.py"], ["/r/.venv/bin/python3", "train.py"],
                ["torchrun", "--nproc_per_node", "8", "train.py"], ["python3.10", "/r/train.py", "--x"]):
        assert is_training_command(cmd), cmd
    for cmd in (["vim", "train.py"], ["less", "train.py"], ["bash", "-c", "uv run train.py > run.log 2>&1"],
                ["python", "prepare.py"], ["git", "diff", "train.py"], []):
        assert not is_training_command(cmd), cmd


def test_the_training_process_is_found_and_killed_by_its_group(karpathy, tmp_path):
    repo = karpathy["repo"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "train.py").write_text(TRAIN_PY)
    other = start_training(elsewhere)  # the same script in another directory is not this loop's
    viewer = subprocess.Popen(["tail", "-f", "train.py"], cwd=repo, stdout=subprocess.DEVNULL)  # nor a pager
    proc = start_training(repo)
    try:
        training = found(repo, proc.pid)
        assert training.cmdline == (sys.executable, "train.py") and training.pgid == proc.pid
        assert found(elsewhere, other.pid).pid == other.pid
        outcome = kill_training(training, grace=5.0)
        assert outcome.ended and f"pid {proc.pid}" in outcome.message and "SIGTERM" in outcome.message
        assert f"process group {proc.pid}" in outcome.message
        assert proc.wait(timeout=10) == -signal.SIGTERM
        assert find_training(repo) is None
        assert other.poll() is None and viewer.poll() is None  # nothing else was touched
    finally:
        for p in (proc, other, viewer):
            stop(p)


def test_a_group_shared_with_others_is_not_signalled(karpathy):
    """Started without job control (as an agent's shell tool does), train.py shares the group
    of the program that started it: here pytest's own. Only its tree is signalled."""
    repo = karpathy["repo"]
    proc = start_training(repo, own_group=False)
    try:
        training = found(repo, proc.pid)
        assert training.pgid == os.getpgrp()
        outcome = kill_training(training, grace=5.0)
        assert outcome.ended and "its 1 process" in outcome.message
        assert proc.wait(timeout=10) == -signal.SIGTERM  # and this test is still here to say so
    finally:
        stop(proc)


def test_a_run_that_ignores_sigterm_gets_sigkill(karpathy):
    repo = karpathy["repo"]
    (repo / "stubborn").mkdir()
    (repo / "stubborn" / "train.py").write_text(
        "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "train.py"], cwd=repo / "stubborn", stdout=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert proc.stdout.readline() == b"ready\n"  # the handler is in place
        training = found(repo, proc.pid)  # a working directory inside the repository counts
        outcome = kill_training(training, grace=0.5)
        assert outcome.ended and "SIGKILL" in outcome.message
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop(proc)


def test_a_process_that_is_gone_or_a_recycled_pid_is_left_alone(karpathy):
    repo = karpathy["repo"]
    proc = start_training(repo)
    try:
        training = found(repo, proc.pid)
        impostor = TrainingProcess(training.pid, training.create_time - 100, training.cmdline, training.pgid)
        outcome = kill_training(impostor)
        assert outcome.ended and "already ended" in outcome.message
        assert proc.poll() is None  # the pid belongs to another process than the one we saw: untouched
    finally:
        stop(proc)
    assert "already ended" in kill_training(training).message


def test_the_reader_reports_the_training_process_as_it_comes_and_goes(karpathy):
    repo = karpathy["repo"]
    reader = WatchReader(repo, git_interval=1e9, proc_interval=0.0)
    batch = reader.collect()
    assert batch.training_changed and batch.training is None
    assert not reader.collect().training_changed
    proc = start_training(repo)
    try:
        training = found(repo, proc.pid)
        batch = reader.collect()
        assert batch.training_changed and batch.training == training
        assert not reader.collect().training_changed
    finally:
        stop(proc)
    batch = reader.collect()
    assert batch.training_changed and batch.training is None


# --- autoresearch history --from -------------------------------------------------------------------


def test_history_from_a_results_tsv(tmp_path, capsys):
    path = tmp_path / "results.tsv"
    path.write_text(TSV)
    assert main(["history", "--from", str(path)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split()[:3] == ["#", "status", "val_bpb"] and len(lines) == 7
    assert lines[1].split()[:3] == ["1", "keep", "0.997900"] and lines[1].endswith("baseline")
    assert "crash" in lines[4] and "-" in lines[4].split() and "double model width (OOM)" in lines[4]
    assert "-0.004700" in lines[2] and "a1b2c3d" in lines[1]
    assert captured.err.strip() == f"autoresearch: skipped 3 malformed lines of {path} (line 6, 8, 9)"

    assert main(["history", "--from", str(path), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["status"] for r in records] == ["keep", "keep", "discard", "crash", "keep", "discard"]
    assert records[0]["metric"] == 0.9979 and records[0]["metric_name"] == "val_bpb" and records[0]["baseline"]
    assert records[3]["metric"] is None and records[1]["commit"] == "b2c3d4e"


def test_history_from_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not\na results file\n")
    for argv, expect in ((["history", "--from", str(tmp_path / "nope.tsv")], "no such file"),
                         (["history", "--from", str(bad)], "not a results.tsv"),
                         (["history", "--from", str(bad), "--tag", "nov25"], "takes no --tag")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("autoresearch: ") and expect in err and len(err.splitlines()) == 1, err


def test_watch_refuses_what_is_not_a_loop(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert main(["watch", str(plain)]) == 2
    assert "not a git repository" in capsys.readouterr().err
    bare = committed_repo(tmp_path / "other", {"README.md": "hi\n"})
    assert main(["watch", str(bare)]) == 2
    assert "neither train.py nor results.tsv" in capsys.readouterr().err
    assert not (plain / ".autoresearch").exists() and not (bare / ".autoresearch").exists()
