"""`autoresearch tui` with several runs and no engine: a list of the runs to open one."""

from __future__ import annotations

import os

import pytest

from autoresearch.cli import main
from engine.rundir import RunDir
from tests.tui.conftest import wait_for
from tests.tui.fake_engine import T0, FakeEngine, history
from tui import launch
from tui.runs_screen import RunsApp, RunsScreen, summarize_all
from tui.table import VirtualTable


def make_runs(repo) -> dict[str, FakeEngine]:
    """Three finished runs: one stopped cleanly, one that failed, one whose engine died."""
    runs = {}
    for i, (tag, count, phase) in enumerate([("nov21", 12, "stopped"), ("nov22", 40, "error"), ("nov23", 7, "running")]):
        engine = FakeEngine(repo, tag, t0=T0 - (3 - i) * 86400).start()
        history(engine, count)
        at = engine.t0 + 3600 * (i + 1)
        engine.set_state(phase=phase, heartbeat_at=at, updated_at=at,
                         error="GitError: could not commit: index.lock exists" if phase == "error" else None)
        engine.release()
        for path in (engine.run.results_jsonl, engine.run.events_jsonl):  # written "then", not now
            os.utime(path, (at, at))
        runs[tag] = engine
    return runs


def test_runs_are_summarized_newest_first(repo):
    runs = make_runs(repo)
    summaries = summarize_all(repo, ["nov21", "nov22", "nov23"])
    assert [s.tag for s in summaries] == ["nov23", "nov22", "nov21"]
    by_tag = {s.tag: s for s in summaries}
    assert [by_tag[t].state for t in ("nov21", "nov22", "nov23")] == ["stopped", "error", "gone"]
    assert [by_tag[t].experiments for t in ("nov21", "nov22", "nov23")] == [12, 40, 7]
    best = runs["nov22"].standing.best
    assert (by_tag["nov22"].best, by_tag["nov22"].best_n) == (best.metric, best.n)
    assert by_tag["nov22"].error.startswith("GitError")


def test_a_live_engine_is_running_or_paused(repo, engine):
    engine.set_state(phase="running")
    assert summarize_all(repo, ["test"])[0].state == "running"
    engine.set_state(phase="paused", paused=True)
    assert summarize_all(repo, ["test"])[0].state == "paused"


@pytest.mark.anyio
async def test_enter_opens_the_highlighted_run_and_q_leaves(repo):
    make_runs(repo)
    app = RunsApp(repo, ["nov21", "nov22", "nov23"], clock=lambda: T0)
    async with app.run_test(size=(100, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        await wait_for(pilot, lambda: screen.runs is not None, "the runs")
        table = screen.query_one(VirtualTable)
        assert [r.tag for r in table.rows] == ["nov23", "nov22", "nov21"]
        await pilot.press("down")
        assert "index.lock exists" in str(screen.query_one("#runs-note").render())  # why nov22 failed
        await pilot.press("enter")
    assert app.return_value == "nov22"

    app = RunsApp(repo, ["nov21", "nov22", "nov23"], clock=lambda: T0)
    async with app.run_test(size=(100, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.runs is not None, "the runs")
        await pilot.press("q")
    assert app.return_value is None


@pytest.fixture
def opened(monkeypatch):
    """What `autoresearch tui` opens (the monitor itself is not started) and whom it asks."""
    calls: dict[str, list] = {"asked": [], "opened": []}

    def choose(repo, tags):
        calls["asked"].append(list(tags))
        return calls.get("answer", tags[0])

    monkeypatch.setattr(launch, "choose_run", choose)
    monkeypatch.setattr(launch, "run_monitor", lambda run: calls["opened"].append(run.tag) or 0)
    return calls


def test_tui_with_several_runs_and_no_engine_asks_which(repo, opened):
    make_runs(repo)
    opened["answer"] = "nov22"
    assert main(["--repo", str(repo), "tui"]) == 0
    assert opened["asked"] == [["nov21", "nov22", "nov23"]] and opened["opened"] == ["nov22"]
    opened["answer"] = None  # the user left the list: nothing opens
    assert main(["--repo", str(repo), "tui"]) == 0
    assert opened["opened"] == ["nov22"]


def test_tui_opens_a_single_run_a_named_one_or_the_running_one_without_asking(repo, opened):
    FakeEngine(repo, "nov21").start().release()
    assert main(["--repo", str(repo), "tui"]) == 0
    make_runs(repo)
    assert main(["--repo", str(repo), "tui", "--tag", "nov21"]) == 0
    live = FakeEngine(repo, "nov24").start()
    try:
        assert main(["--repo", str(repo), "tui"]) == 0
    finally:
        live.release()
    assert opened["asked"] == [] and opened["opened"] == ["nov21", "nov21", "nov24"]


def test_without_a_terminal_the_most_recent_run_opens(repo, monkeypatch):
    make_runs(repo)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert launch.choose_run(repo, ["nov21", "nov22", "nov23"]) == "nov23"
    assert RunDir.for_tag(repo, "nov23").root.is_dir()
