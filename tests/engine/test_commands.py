"""The command line: bad input is one line and exit 2 with nothing written; status,
history and ctl read and steer runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


from autoresearch.cli import main

from .conftest import make_engine, run_engine
from .genome import git, make_repo

ROOT = Path(__file__).resolve().parents[2]


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(path))] = (st.st_size, st.st_mtime_ns)
    return out


def assert_usage_error(capsys, argv: list[str], expect: str, watched: Path) -> None:
    before = snapshot(watched)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoresearch: ") and expect in err and len(err.splitlines()) == 1, err
    assert snapshot(watched) == before, "bad input must not write anything"


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train.py").write_text("")
    assert_usage_error(capsys, ["run", "--headless", "--repo", str(plain)], "not a git repository", plain)

    repo = make_repo(tmp_path / "repo")
    r = str(repo)
    (repo / "program.md").unlink()
    assert_usage_error(capsys, ["run", "--headless", "--repo", r], "has no program.md", repo)
    git(repo, "checkout", "--", "program.md")
    (repo / "autoresearch.toml").write_text("[loop\nbudget = ")
    assert_usage_error(capsys, ["run", "--headless", "--repo", r], "malformed", repo)
    (repo / "autoresearch.toml").write_text("[loop]\nbudjet_seconds = 5\n")
    assert_usage_error(capsys, ["run", "--headless", "--repo", r], "unknown key", repo)
    for line, expect in (('budget_seconds = "abc"', "must be a number"), ("hang_seconds = nan", "finite"),
                         ("timeout_seconds = inf", "finite"), ('sandbox = "maybe"', "sandbox"),
                         ("baseline_runs = 1.5", "whole number"), ('mutable = "train.py"', "list of strings")):
        (repo / "autoresearch.toml").write_text(f"[loop]\n{line}\n")
        assert_usage_error(capsys, ["run", "--headless", "--repo", r], expect, repo)
    (repo / "autoresearch.toml").write_text("[agent]\ncommand = 3\n")
    assert_usage_error(capsys, ["run", "--headless", "--repo", r], "must be a string", repo)
    git(repo, "checkout", "--", "autoresearch.toml")
    assert_usage_error(capsys, ["run", "--headless", "--repo", r, "--budget", "-1"], "budget", repo)
    for bad in ("nan", "inf"):
        assert_usage_error(capsys, ["run", "--headless", "--repo", r, "--budget", bad], "finite", repo)
    assert_usage_error(capsys, ["run", "--headless", "--repo", r, "--tag", "../up"], "bad tag", repo)
    assert_usage_error(capsys, ["run", "--headless", "--repo", r, "--agent", "claude"], "ANTHROPIC_API_KEY", repo)
    assert_usage_error(capsys, ["run", "--headless", "--repo", r, "--agent", "command"], "command", repo)
    assert_usage_error(capsys, ["status", "--repo", r], "no runs", repo)
    git(repo, "rm", "-q", "--cached", "program.md")
    git(repo, "commit", "-q", "-m", "untrack program.md")
    assert_usage_error(capsys, ["run", "--headless", "--repo", r], "not committed", repo)


def test_without_a_sandbox_llm_agents_refuse_and_the_heuristic_warns(repo, tmp_path):
    """No bubblewrap on PATH: the command and claude agents run arbitrary code, so they
    need sandbox = "off" to run; the heuristic (constants only) runs with a warning."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))
    env = {**os.environ, "PATH": str(bin_dir)}
    cmd = [sys.executable, "-m", "autoresearch", "--repo", str(repo), "run", "--headless"]
    refused = subprocess.run([*cmd, "--agent", "command", "--agent-command", "true"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and not (repo / ".autoresearch").exists()
    assert len(refused.stderr.strip().splitlines()) == 1 and "bubblewrap" in refused.stderr, refused.stderr
    assert 'sandbox = "off"' in refused.stderr
    ran = subprocess.run([*cmd, "--agent", "heuristic", "--max-experiments", "1", "--tag", "h"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "UNSANDBOXED" in ran.stdout
    record = json.loads((repo / ".autoresearch" / "h" / "results.jsonl").read_text().splitlines()[0])
    assert record["sandbox"].startswith("off: bubblewrap not found")
    (repo / "autoresearch.toml").write_text((repo / "autoresearch.toml").read_text() + 'sandbox = "off"\n')
    git(repo, "commit", "-qam", "sandbox off by choice")
    chosen = subprocess.run([*cmd, "--agent", "command", "--agent-command", "true", "--max-experiments", "1",
                             "--tag", "c"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr


def test_unknown_tag_and_missing_note_text(repo, capsys):
    run_engine(repo, [], loop__max_experiments=1, loop__baseline_runs=1)
    r = str(repo)
    for argv in (["status", "--repo", r, "--tag", "dec1"], ["history", "--repo", r, "--tag", "dec1"],
                 ["ctl", "pause", "--repo", r, "--tag", "dec1"]):
        assert_usage_error(capsys, argv, "unknown tag 'dec1'", repo)
    assert_usage_error(capsys, ["ctl", "note", "--repo", r], "needs the note's text", repo)
    assert main(["ctl", "pause", "--repo", r]) == 2  # the run exists but no engine runs it
    assert "no engine is running tag 't'" in capsys.readouterr().err


def test_status_and_history_of_a_finished_run(repo, capsys):
    run_engine(repo, [{"set": {"LR": 0.02}}, {"set": {"MODE": "crash"}}], loop__max_experiments=3,
               loop__baseline_runs=1)
    r = str(repo)
    assert main(["status", "--repo", r]) == 0
    out = capsys.readouterr().out
    assert "tag t: engine not running" in out and "agent scripted (script-1)" in out
    assert "best: #0002" in out and "experiments: 3 (baseline 1, crash 1, keep 1)" in out
    assert main(["status", "--repo", r, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["engine_alive"] is False and data["tag"] == "t" and data["best"]["n"] == 2
    assert data["config"]["loop"]["budget_seconds"] == 1 and data["agent"]["name"] == "scripted"
    assert data["cost_usd"] == 0.0 and data["counts"] == {"baseline": 1, "keep": 1, "crash": 1}
    assert main(["history", "--repo", r]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["#", "status", "val_bpb"] and len(lines) == 4
    assert "keep" in lines[2] and "LR=0.02" in lines[2] and "crash" in lines[3]
    assert main(["history", "--repo", r, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["status"] for x in records] == ["baseline", "keep", "crash"]


def test_history_into_a_pipe_that_closes_early_is_quiet(repo):
    run_engine(repo, [{"set": {"LR": 0.02}}], loop__max_experiments=3, loop__baseline_runs=1)
    for command in ("history", "status"):
        done = subprocess.run(f"{sys.executable} -m autoresearch --repo {repo} {command} | head -1", shell=True,
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.stdout.count("\n") == 1 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_ctl_and_status_against_a_live_engine(repo, background, capsys):
    bg = background(make_engine(repo, [{"sleep": 30}], loop__baseline_runs=1))
    bg.wait_for(lambda: bg.phase_is("proposing", 2), why="proposing")
    r = str(repo)
    assert main(["ctl", "pause", "--repo", r]) == 0
    assert "pause: accepted: will pause after experiment #0002" in capsys.readouterr().out
    assert main(["ctl", "resume", "--repo", r]) == 0
    assert main(["ctl", "resume", "--repo", r]) == 1
    assert "resume: refused: not paused" in capsys.readouterr().out
    assert main(["ctl", "note", "smaller", "batches", "--repo", r]) == 0
    assert "note: accepted" in capsys.readouterr().out
    assert bg.state().notes_pending == ["smaller batches"]
    # Words after an option still belong to the note.
    assert main(["ctl", "note", "--repo", r, "try", "rope"]) == 0
    assert "note: accepted" in capsys.readouterr().out
    assert bg.state().notes_pending == ["smaller batches", "try rope"]
    assert main(["status", "--repo", r, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["engine_alive"] is True and data["pid"] == os.getpid() and data["phase"] == "proposing"
    assert main(["ctl", "stop", "--repo", r]) == 0
    bg.thread.join(20)
    assert not bg.thread.is_alive()


def test_headless_run_prints_phases_and_results(repo):
    proc = subprocess.run(
        [sys.executable, "-m", "autoresearch", "run", "--headless", "--repo", str(repo), "--tag", "cli",
         "--agent", "heuristic", "--max-experiments", "3", "--budget", "2", "--seed", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any("starting tag cli" in line and "agent heuristic" in line for line in lines)
    assert any(line.split()[1:3] == ["#0003", "proposing"] for line in lines if len(line.split()) > 2)
    results = [line for line in lines if " val_bpb " in line]
    assert len(results) == 3 and "baseline" in results[0]
    state = json.loads((repo / ".autoresearch" / "cli" / "state.json").read_text())
    assert state["budget"] == 2 and state["config"]["loop"]["seed"] == 1 and state["phase"] == "stopped"


def test_prepare_runs_prepare_py_in_the_repo(repo, capfd):
    from engine.integrity import manifest_path

    assert main(["prepare", "--repo", str(repo), "--force"]) == 0
    assert "preparing data" in capfd.readouterr().out  # passed straight through
    assert manifest_path().exists()
    assert main(["prepare", "--repo", str(repo), "--source", str(repo / "no-such-dir")]) == 2
    assert "no such file" in capfd.readouterr().err
