"""What an operator meets on a long night: streaks of failures, data that changes under the
loop, a budget changed on resume, leftovers of killed engines, private run directories, a
read-only or full disk. The engine pauses with a reason, or says one line; it never loses
a result and a restart works."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from engine.control import send_command
from engine.integrity import cache_dir

from .conftest import make_engine, run_engine

ROOT = Path(__file__).resolve().parents[2]


def test_a_streak_of_failed_runs_pauses_the_loop_until_a_person_resumes(repo, background):
    steps = [{"set": {"MODE": "crash", "SLEEP": 0.02 + i / 1000}} for i in range(3)] + [{"set": {"LR": 0.02}}]
    bg = background(make_engine(repo, steps, loop__baseline_runs=1, loop__max_failures_in_a_row=3,
                                loop__max_experiments=5))
    bg.wait_for(lambda: bg.state().paused and bg.state().error, why="the pause after 3 crashes")
    error = bg.state().error
    assert "3 experiments in a row failed" in error and "#0004" in error and "boom" in error
    assert [r.status for r in bg.results()] == ["baseline", "crash", "crash", "crash"]
    assert send_command(bg.rd.socket, "resume")["ok"]
    bg.thread.join(20)
    assert [r.status for r in bg.results()][-1] == "keep"  # the streak was looked at: the loop goes on


def test_data_that_changes_under_the_loop_pauses_it(repo, background):
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    data = bytes(range(256)) * 64
    (cache / "train.bin").write_bytes(data)
    (cache / "manifest.json").write_text(json.dumps(
        {"artifacts": {"train.bin": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}}))
    bg = background(make_engine(repo, [{"set": {"MODE": "slow"}, "sleep": 0}], loop__baseline_runs=1))
    bg.wait_for(lambda: bg.phase_is("running", 2), why="experiment 2 running")
    with open(cache / "train.bin", "r+b") as f:  # one flipped byte
        f.seek(100)
        f.write(b"\xff")
    assert send_command(bg.rd.socket, "skip")["ok"]
    bg.wait_for(lambda: bg.state().paused and bg.state().error, why="the pause on changed data")
    assert "train.bin no longer matches its manifest" in bg.state().error
    assert len(bg.results()) == 2  # no experiment started on the changed data


def test_a_new_budget_measures_the_best_again_before_comparing(repo):
    first = run_engine(repo, [{"set": {"LR": 0.02}}], loop__max_experiments=3, loop__baseline_runs=1)
    assert [r.status for r in first.results] == ["baseline", "keep", "discard"]
    kept = first.results[1].commit
    again = run_engine(repo, [{"set": {"WIDTH": 128}}], loop__max_experiments=2, loop__baseline_runs=1,
                       loop__budget_seconds=2)
    new = again.results[3:]
    assert [(r.status, r.budget) for r in new] == [("baseline", 2.0), ("keep", 2.0)]
    assert new[0].commit == kept  # the best so far, measured at the new budget
    assert new[1].parent == kept and again.s.standing.baseline_budget == 2.0


def test_the_run_directory_is_private_and_leftovers_are_cleaned(repo):
    engine = run_engine(repo, [{"set": {"LR": 0.02}}, {"set": {"LR": 0.005}}], loop__max_experiments=3,
                        loop__baseline_runs=1)
    rd = engine.rd
    assert stat.S_IMODE(rd.root.stat().st_mode) == 0o700 and stat.S_IMODE(rd.root.parent.stat().st_mode) == 0o700
    # What a kill -9 leaves: a checkpoint of a discarded run, an exported tree, temporary files.
    (rd.experiment(3) / "scratch").mkdir()
    (rd.experiment(3) / "scratch" / "checkpoint.pt").write_bytes(b"x" * 1000)
    (rd.experiment(3) / "src").mkdir()
    (rd.root / ".state.json.abc123").write_text("{")
    (rd.root / ".results.tsv.abc123").write_text("")
    os.chmod(rd.root, 0o755)
    run_engine(repo, [], loop__max_experiments=0 or 1, loop__baseline_runs=1)
    assert not (rd.experiment(3) / "scratch").exists() and not (rd.experiment(3) / "src").exists()
    assert (rd.experiment(2) / "scratch" / "checkpoint.pt").exists()  # the best keeps its checkpoint
    assert not list(rd.root.glob(".state.json.*")) and not list(rd.root.glob(".results.tsv.*"))
    assert stat.S_IMODE(rd.root.stat().st_mode) == 0o700


def _in_small_tmpfs(script: str, size_mb: int, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a Python script in a private mount namespace with a small tmpfs at /mnt/small."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no user/mount namespaces here: {probe.stderr.decode().strip()}")
    small = tmp_path / "small"
    small.mkdir()
    path = tmp_path / "scenario.py"
    path.write_text(script)
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={size_mb}m tmpfs {small} && "
                                       f"exec {sys.executable} {path} {small}"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_a_read_only_run_directory_is_one_line_and_exit_2(repo, tmp_path, capsys):
    script = '''
import subprocess, sys
from pathlib import Path
small = Path(sys.argv[1])
from tests.engine.genome import make_repo
repo = make_repo(small / "repo")
(repo / ".autoresearch").mkdir()
subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
out = subprocess.run([sys.executable, "-m", "autoresearch", "--repo", str(repo), "run", "--headless",
                      "--max-experiments", "1"], capture_output=True, text=True)
print("RC", out.returncode)
print("ERR", out.stderr.strip().replace(chr(10), " | "))
'''
    done = _in_small_tmpfs(script, 32, tmp_path)
    assert "RC 2" in done.stdout, done.stdout + done.stderr
    err = next(line for line in done.stdout.splitlines() if line.startswith("ERR "))[4:]
    assert err.startswith("autoresearch: cannot write the run directory") and " | " not in err, err


DISK_FULL = '''
import json, os, subprocess, sys, time
from pathlib import Path
small = Path(sys.argv[1])
os.environ["AUTORESEARCH_CACHE"] = str(small / "cache")
from tests.engine.genome import make_repo
repo = make_repo(small / "repo")
run = repo / ".autoresearch" / "t"
report = {}

def engine(steps, **overrides):
    return subprocess.Popen([sys.executable, "-m", "tests.engine.genome", str(repo), "t", json.dumps(steps),
                             json.dumps({"loop.baseline_runs": 1, **overrides})],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

def state():
    try:
        return json.loads((run / "state.json").read_text())
    except (OSError, ValueError):
        return {}

# 1. The disk fills up while experiment 2 trains.
proc = engine([{"set": {"MODE": "slow"}}], **{"loop.min_free_gb": 0})
while not (state().get("phase") == "running" and state().get("experiment") == 2):
    time.sleep(0.05)
hog = small / "hog"
with open(hog, "wb") as f:
    try:
        while True:
            f.write(b"\\0" * (1 << 20))
            f.flush()
    except OSError:
        pass
out, _ = proc.communicate(timeout=120)
report["full_rc"] = proc.returncode
report["full_out"] = out
report["results_after_full"] = [json.loads(line)["status"] for line in (run / "results.jsonl").read_text().splitlines()]

# 2. A restart while the disk is still full: one line, nothing lost.
proc = engine([], **{"loop.min_free_gb": 0, "loop.max_experiments": 1})
out, _ = proc.communicate(timeout=120)
report["still_full_rc"] = proc.returncode
report["still_full_out"] = out

# 3. Some space is freed, but less than min_free_gb: the restart pauses with the reason.
os.truncate(hog, max(0, hog.stat().st_size - 6 * (1 << 20)))
proc = engine([], **{"loop.min_free_gb": 1, "loop.max_experiments": 1})
deadline = time.time() + 60
while not state().get("paused") and time.time() < deadline:
    time.sleep(0.05)
report["low_disk_error"] = state().get("error")
subprocess.run([sys.executable, "-m", "autoresearch", "--repo", str(repo), "ctl", "stop", "--tag", "t"],
               capture_output=True)
proc.communicate(timeout=60)

# 4. Space is back: the restart works and the loop goes on.
hog.unlink()
proc = engine([{"set": {"LR": 0.02}}], **{"loop.min_free_gb": 0, "loop.max_experiments": 1})
out, _ = proc.communicate(timeout=120)
report["freed_rc"] = proc.returncode
lines = (run / "results.jsonl").read_text().splitlines()
report["final"] = [(json.loads(line)["n"], json.loads(line)["status"]) for line in lines]
print("REPORT " + json.dumps(report))
'''


def test_a_full_disk_loses_nothing_and_a_restart_works(tmp_path):
    done = _in_small_tmpfs(DISK_FULL, 48, tmp_path)
    line = next((x for x in done.stdout.splitlines() if x.startswith("REPORT ")), None)
    assert line, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(line[7:])
    assert report["full_rc"] == 1, report["full_out"]
    assert "Traceback" not in report["full_out"]
    errors = [x for x in report["full_out"].splitlines() if " error: " in x]
    assert len(errors) == 1 and "no space left on device" in errors[0], report["full_out"]
    assert report["results_after_full"][0] == "baseline"  # every line of the journal still parses
    assert report["still_full_rc"] == 1 and "Traceback" not in report["still_full_out"], report["still_full_out"]
    assert "free" in (report["low_disk_error"] or "") and "min_free_gb = 1" in report["low_disk_error"]
    assert report["freed_rc"] == 0
    numbers = [n for n, _ in report["final"]]
    assert numbers == list(range(1, len(numbers) + 1))  # no gap, no duplicate
    assert report["final"][0] == [1, "baseline"] and report["final"][-1][1] == "keep"


def test_an_edited_trusted_scorer_stops_the_engine(repo, background):
    """The scorer's copy of prepare.py is checked before every evaluation: something with the
    user's rights (an unsandboxed run, a command agent) could edit it during the run."""
    bg = background(make_engine(repo, [{"set": {"LR": 0.02, "SLEEP": 1.0}}], loop__baseline_runs=1,
                                loop__max_experiments=3, loop__hang_seconds=10))
    bg.wait_for(lambda: bg.phase_is("running", 2), why="experiment 2 training")
    with open(bg.rd.scorer, "a") as f:
        f.write("\n# edited during the run\n")
    bg.thread.join(30)
    assert bg.rc == 1 and "trusted scorer" in bg.state().error
    assert [r.status for r in bg.results()] == ["baseline", "interrupted"]
