"""Pictures of each screen (pytest-textual-snapshot), from a fixed run and a fixed clock.

Update after an intended change with: pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import time

import pytest

from tests.tui.conftest import FixedSampler, fixed_clock, wait_for
from tests.tui.fake_engine import FakeEngine, history
from tui.app import MonitorApp
from tui.log_pane import LogPane
from tui.util_pane import UtilPane

LOG = [f"step {i:05d} | loss {3.2 / (1 + i / 100):.4f} | lr 4.00e-03 | dt 102ms | tok/s 40213" for i in range(0, 400, 10)]


@pytest.fixture(autouse=True)
def _utc(monkeypatch):
    """Clock times in the pictures must not depend on the machine's time zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def picture_engine(repo):
    engine = FakeEngine(repo, "nov23", agent={"name": "claude", "model": "claude-sonnet-5-5"})
    engine.start()
    history(engine, 24)
    engine.set_state(cost_usd=1.37)
    engine.begin(
        24,
        "raise LEARNING_RATE 0.003 -> 0.004",
        "A slightly higher learning rate should converge faster within the fixed budget: the loss "
        "curve of #23 was still falling steeply when time ran out.",
    )
    engine.log(24, *LOG)
    yield engine
    engine.release()


def live_app(engine) -> MonitorApp:
    # One sample only (a long interval), so the sparklines are the same in every run.
    return MonitorApp(engine.run, clock=fixed_clock(), sampler=FixedSampler(), stats_interval=3600)


async def settle(pilot) -> None:
    """Let pending layout and repaints land (a loaded box may lag a frame behind)."""
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.1)
    await pilot.pause()


def loaded(engine, app):
    async def run_before(pilot) -> None:
        await wait_for(pilot, lambda: len(app.view.results) == len(engine.results), "results")
        await wait_for(pilot, lambda: app.screen.query_one(LogPane).log.line_count == len(LOG), "the log")
        await wait_for(pilot, lambda: app.screen.query_one(UtilPane).samples == 1, "a sample")
        await wait_for(pilot, lambda: "LEARNING_RATE" in app.view.diff, "the diff")
        await settle(pilot)

    return run_before


def test_live_screen_wide(picture_engine, snap_compare):
    app = live_app(picture_engine)
    assert snap_compare(app, terminal_size=(120, 40), run_before=loaded(picture_engine, app))


def test_live_screen_compact(picture_engine, snap_compare):
    app = live_app(picture_engine)
    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded(picture_engine, app))


def test_history_screen(picture_engine, snap_compare):
    app = live_app(picture_engine)

    async def run_before(pilot) -> None:
        await loaded(picture_engine, app)(pilot)
        await pilot.press("h", "down", "down")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)


def test_experiment_detail(picture_engine, snap_compare):
    picture_engine.finish(24, "keep", 1.861, "raise LEARNING_RATE 0.003 -> 0.004", wall_seconds=74.0)
    app = live_app(picture_engine)

    async def run_before(pilot) -> None:
        await wait_for(pilot, lambda: len(app.view.results) == len(picture_engine.results), "results")
        await pilot.press("h", "enter")
        await wait_for(pilot, lambda: getattr(app.screen, "loaded", None) is not None, "the experiment's files")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)
