"""`autoresearch report`: a run's journal as Markdown, checked against a snapshot.

The fixture journal covers every kind of record a night produces: two baseline runs,
two kept changes (one forced), a discard, crashes, a timeout, an out-of-memory run, a
rejected change and an interrupted one, agent costs and diffs. Dates are fixed and
shown in UTC, so the snapshot is the same on every machine. To refresh it after an
intended change: UPDATE_SNAPSHOTS=1 pytest tests/engine/test_report.py, then read the
diff of tests/engine/snapshots/report.md by eye.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import pytest

from autoresearch.cli import main
from engine.report import build_report, chart_svg, md
from engine.results import Result
from engine.rundir import RunDir, append_jsonl, atomic_write_json

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).parent / "snapshots" / "report.md"
T0 = datetime(2026, 11, 23, 22, 0, tzinfo=timezone.utc).timestamp()
BASE = "b" * 40
SANDBOX = "bwrap 0.9.0"


def make_run(repo: Path, tag: str = "nov23") -> RunDir:
    """A git repository with a run directory holding the fixture journal."""
    repo.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    rd = RunDir.for_tag(repo, tag)
    rd.experiments.mkdir(parents=True)
    atomic_write_json(rd.run_info, {"tag": tag, "created_at": T0, "base_commit": BASE, "budget": 60.0})
    for r in fixture_results():
        append_jsonl(rd.results_jsonl, r.to_dict())
    diffs = {
        3: "--- a/train.py\n+++ b/train.py\n@@ -10,3 +10,3 @@\n-WARMUP_STEPS = 100\n+WARMUP_STEPS = 20\n",
        4: "--- a/train.py\n+++ b/train.py\n@@ -8 +8 @@\n-BATCH_SIZE = 16\n+BATCH_SIZE = 32\n",
        # A change that tries to end the report's code fence and inject HTML.
        9: "--- a/train.py\n+++ b/train.py\n@@ -40,2 +40,4 @@\n-    lr = LR\n+    # ```\n+    # <img src=x onerror=alert(1)>\n"
           "+    lr = LR * 0.5 * (1 + math.cos(math.pi * step / STEPS))\x1b[31m\n"
           + "".join(f"+    pad_{i} = {i}\n" for i in range(100)),
    }
    for n, diff in diffs.items():
        (rd.experiment(n)).mkdir()
        (rd.experiment(n) / "diff.patch").write_text(diff)
    return rd


def fixture_results() -> list[Result]:
    common = {"sandbox": SANDBOX, "budget": 60.0}
    t = T0

    def at(i: int, wall: float) -> dict:
        return {"started_at": t + i * 600, "ended_at": t + i * 600 + wall, "wall_seconds": wall}

    def claude(cost: float) -> dict:
        return {"name": "claude", "model": "claude-sonnet-5-5", "input_tokens": 12000, "cost_usd": cost}

    return [
        Result(n=1, status="baseline", metric=2.1, runs=[2.1], holdout=2.12, baseline=True, commit=BASE,
               description="baseline: unmodified train.py (run 1 of 2)", train_seconds=60.0, peak_mem_mb=1536.0,
               load_avg=0.42, tokens_per_sec=5000.0, noise=0.0, noise_dof=0, **at(1, 90.0), **common),
        Result(n=2, status="baseline", metric=2.102, runs=[2.102], holdout=2.122, baseline=True, commit=BASE,
               delta=0.002, noise=0.001414, noise_dof=1, description="baseline: unmodified train.py (run 2 of 2)",
               train_seconds=60.0, peak_mem_mb=1536.0, load_avg=1.5, **at(2, 90.0), **common),
        Result(n=3, status="keep", metric=2.081, runs=[2.08, 2.082], holdout=2.101, delta=-0.02, threshold=0.004243,
               noise=0.0015, noise_dof=2, commit="c3" * 20, parent=BASE, agent=claude(0.42),
               description="lower the learning-rate warm-up to 20 steps",
               hypothesis="With only 60 s of training, 100 warm-up steps waste a sixth of the budget;\n"
                          "20 steps should be enough for Muon to stay stable. " + "More words. " * 40,
               train_seconds=60.0, peak_mem_mb=1540.0, **at(3, 190.0), **common),
        Result(n=4, status="discard", metric=2.09, runs=[2.09], delta=0.009, threshold=0.004243, commit="c4" * 20,
               parent="c3" * 20, agent=claude(0.31), description="double the batch size (16 -> 32)",
               hypothesis="Bigger batches, fewer steps.", train_seconds=60.0, peak_mem_mb=2900.0, **at(4, 95.0),
               **common),
        Result(n=5, status="crash", commit="c5" * 20, agent=claude(0.2), description="fused QKV projection",
               error="exit status 1: RuntimeError: shape '[8, 256, 3, 4, 32]' is invalid", **at(5, 20.0), **common),
        Result(n=6, status="timeout", commit="c6" * 20, agent=claude(0.18), description="deeper model (12 layers)",
               error="killed after 210 s of wall time (limit 210 s, measured by the engine)", **at(6, 215.0),
               **common),
        Result(n=7, status="oom", commit="c7" * 20, agent=claude(0.12), description="context 4096",
               error="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", **at(7, 30.0),
               **common),
        Result(n=8, status="rejected", agent=claude(0.05), description="swap | the *order* of <b>layers</b>",
               error="touched files outside the mutable scope: prepare.py", **at(8, 5.0), **common),
        Result(n=9, status="keep", metric=2.0835, runs=[2.0835], holdout=2.1, delta=0.0025, threshold=0.004243,
               forced=True, commit="c9" * 20, parent="c3" * 20, agent=claude(0.25),
               description="cosine schedule, kept by hand",
               hypothesis="# Not a heading\nA cosine decay should end lower.", train_seconds=60.0,
               peak_mem_mb=1540.0, **at(9, 100.0), **common),
        Result(n=10, status="crash", commit="ca" * 20, agent=claude(0.1), description="GELU -> SwiGLU",
               error="exit status 1: NameError: name 'F' is not defined", **at(10, 18.0), **common),
        Result(n=11, status="interrupted", description="weight tying", error="the engine was stopped during this experiment",
               **at(11, 40.0), **common),
    ]


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    return make_run(tmp_path / "repo")


def test_report_matches_the_snapshot(run: RunDir):
    text = build_report(run, image="report.svg", tz=timezone.utc)
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(text, encoding="utf-8")
    assert text == SNAPSHOT.read_text(encoding="utf-8")


def test_report_renders_as_text_on_github(run: RunDir):
    text = build_report(run, tz=timezone.utc)
    assert "\x1b" not in text
    prose = re.sub(r"(?ms)^(`{3,})\w*\n.*?^\1$", "", text)  # outside the code blocks:
    assert "<img" not in prose and re.search(r"(?<!\\)<", prose) is None  # no raw HTML
    assert "<img" in text and "````diff" in text  # a fence longer than the diff's own backticks
    assert r"swap \| the \*order\* of \<b>layers\</b>" in text  # a table cell stays one cell
    for line in text.splitlines():  # every table row has as many cells as its header
        if line.startswith("| "):
            cells = len(line.replace(r"\|", "").split("|")) - 2
            assert cells in (2, 3, 5), line
    assert "> \\# Not a heading A cosine decay should end lower." in text
    assert "![" not in text  # no image without --out
    assert md("1. first") == r"1\. first" and md("- item") == r"\- item"


def test_out_writes_the_markdown_and_a_valid_chart(run: RunDir, capsys):
    out = run.root.parent.parent / "report.md"
    assert main(["report", "--repo", str(out.parent), "--out", str(out)]) == 0
    assert "report.svg" in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# autoresearch report: nov23\n")
    assert "![val_bpb by experiment](report.svg)" in text
    svg = ET.parse(out.with_suffix(".svg")).getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    points = [c for c in svg.iter("{http://www.w3.org/2000/svg}circle") if c.find("{http://www.w3.org/2000/svg}title") is not None]
    assert len(points) == 5  # the scored experiments: 2 baselines, 2 keeps, 1 discard
    assert len(list(svg.iter("{http://www.w3.org/2000/svg}polyline"))) == 1  # the running best


def test_stdout_is_the_report_for_the_latest_tag(run: RunDir, capsys):
    assert main(["report", "--repo", str(run.root.parent.parent)]) == 0
    assert capsys.readouterr().out == build_report(run)


def test_a_reader_that_stops_early_gets_no_broken_pipe(tmp_path: Path):
    rd = make_run(tmp_path / "repo")
    for n in range(12, 2500):  # more than a pipe holds, so the writer meets the closed pipe
        r = Result(n=n, status="discard", metric=2.2, delta=0.1, description=f"try number {n} " + "x" * 60)
        append_jsonl(rd.results_jsonl, r.to_dict())
    command = f"set -o pipefail; {sys.executable} -m autoresearch report --repo {tmp_path / 'repo'} | head -1"
    p = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.stdout == "# autoresearch report: nov23\n"
    assert "BrokenPipe" not in p.stderr and "Traceback" not in p.stderr and "Exception ignored" not in p.stderr
    assert p.returncode == 0, p.stderr


def test_an_unknown_tag_is_one_line_and_exit_2(run: RunDir, capsys):
    assert main(["report", "--repo", str(run.root.parent.parent), "--tag", "dec1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoresearch: unknown tag 'dec1'") and len(err.splitlines()) == 1


def test_a_run_without_results_is_reported_as_such(tmp_path: Path):
    rd = RunDir.for_tag(tmp_path, "empty")
    rd.root.mkdir(parents=True)
    assert "has no experiments yet" in build_report(rd)
    assert chart_svg([]) is None
