"""The bell and the OSC 9 notification (AUTORESEARCH_BELL): what the monitor writes to its
terminal when the run needs a person, captured at the terminal driver."""

from __future__ import annotations

import pytest
from textual.drivers.headless_driver import HeadlessDriver

from tests.tui.conftest import FixedSampler, wait_for
from tests.tui.fake_engine import history
from tui import alerts
from tui.app import MonitorApp

pytestmark = pytest.mark.anyio


@pytest.fixture
def written(monkeypatch):
    """Everything the app writes to its terminal. Headless, Textual writes no frames, so
    this is what the monitor sends besides them (less the mouse pointer's shape, OSC 22,
    which Textual itself resets at exit)."""
    out: list[str] = []

    def write(self, data: str) -> None:
        if not data.startswith("\x1b]22;"):
            out.append(data)

    monkeypatch.setattr(HeadlessDriver, "write", write)
    monkeypatch.setattr(alerts, "MIN_GAP_S", 0.0)  # no waiting between alerts in a test
    return out


def test_the_setting_and_the_sequences():
    assert alerts.mode_from_env({}) is None
    for off in ("", "0", "off", "no", "beep-please"):
        assert alerts.mode_from_env({"AUTORESEARCH_BELL": off}) is None
    assert alerts.mode_from_env({"AUTORESEARCH_BELL": "1"}) == "bel"
    assert alerts.mode_from_env({"AUTORESEARCH_BELL": "OSC9"}) == "osc9"
    assert alerts.sequence("bel", "anything") == "\a"
    assert alerts.sequence("osc9", "new best") == "\x1b]9;new best\x07"
    # Inside tmux: its passthrough, every ESC of the inner sequence doubled.
    assert alerts.sequence("osc9", "new best", tmux=True) == "\x1bPtmux;\x1b\x1b]9;new best\x07\x1b\\"


def test_an_agent_s_text_cannot_end_the_sequence_or_start_another():
    seq = alerts.sequence("osc9", "raise LR\x07\x1b]52;c;ZXZpbA==\x07 \x1b[2J" + "x" * 500)
    inner = seq[len("\x1b]9;"):-1]
    assert "\x1b" not in inner and "\x07" not in inner and len(inner) <= alerts.MAX_TEXT
    assert seq.startswith("\x1b]9;raise LR") and seq.endswith("\x07")


async def run_until(pilot, written, count: int, what: str) -> None:
    await wait_for(pilot, lambda: len(written) >= count, what)
    await pilot.pause(0.2)


async def test_off_by_default(engine, written, monkeypatch):
    monkeypatch.delenv("AUTORESEARCH_BELL", raising=False)
    history(engine, 4)
    app = MonitorApp(engine.run, sampler=FixedSampler(), stats_interval=3600)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: len(app.view.results) == 4, "the history")
        engine.finish(4, "keep", 1.5, "a new best")
        engine.finish(5, "hang", None, "stuck")
        await wait_for(pilot, lambda: len(app.view.results) == 6, "the new results")
        await pilot.pause(0.3)
    assert written == []


async def test_bel_rings_for_news_only_and_not_for_the_history(engine, written, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_BELL", "1")
    history(engine, 12)  # keeps, a timeout and a crash already: read at start, not news
    engine.begin(12, "raise LR", "h")
    app = MonitorApp(engine.run, sampler=FixedSampler(), stats_interval=3600)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: len(app.view.results) == 12, "the history")
        await pilot.pause(0.3)
        assert written == []
        engine.finish(12, "discard", 1.99, "worse")  # not news
        engine.finish(13, "keep", 1.5, "a new best")
        await run_until(pilot, written, 1, "the bell for a new best")
        engine.finish(14, "timeout", None, "too slow", error="killed after 210 s")
        await run_until(pilot, written, 2, "the bell for a timeout")
        engine.set_state(phase="paused", paused=True, error="the agent failed 3 times in a row")
        await run_until(pilot, written, 3, "the bell for a pause on an error")
        engine.set_state(heartbeat_at=engine.t0 + 5)  # the same pause again: no news
        await pilot.pause(0.5)
        assert len(written) == 3
        engine.set_state(phase="running", paused=False, error=None)
        engine.die()
        await run_until(pilot, written, 4, "the bell for the engine gone")
    assert written == ["\a"] * 4


async def test_osc9_says_what_happened(engine, written, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_BELL", "osc9")
    monkeypatch.setenv("NO_COLOR", "1")  # asked for by name: NO_COLOR does not silence it
    monkeypatch.delenv("TMUX", raising=False)
    history(engine, 3)
    app = MonitorApp(engine.run, sampler=FixedSampler(), stats_interval=3600)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: len(app.view.results) == 3, "the history")
        best = engine.standing.best.metric
        engine.finish(3, "keep", 1.5, "deeper \x1b[31mmodel")
        await run_until(pilot, written, 1, "the notification")
        monkeypatch.setattr(alerts, "MIN_GAP_S", 1.5)  # what comes within the gap goes out as one
        engine.finish(4, "hang", None, "stuck")
        engine.finish(5, "keep", 1.4, "wider")
        await run_until(pilot, written, 2, "one notification for two events")
    assert written[0] == f"\x1b]9;autoresearch test: new best #0003 val_bpb 1.5000 ({1.5 - best:+.4f}): deeper model\x07"
    assert written[1].startswith("\x1b]9;autoresearch test: 2 events: #0004 killed as hang: stuck; new best #0005")
