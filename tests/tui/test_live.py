"""Pilot tests of the live screen against a fake engine's run directory and socket."""

from __future__ import annotations

import time

import pytest
from textual.widgets import Input, Static

from tests.tui.conftest import FixedSampler, rendered, wait_for
from tests.tui.fake_engine import history
from tui.app import MonitorApp
from tui.chart_pane import ChartPane
from tui.diff_pane import DiffPane
from tui.dialogs import ConfirmModal, HelpScreen, NoteModal, QuitModal
from tui.hypothesis_pane import HypothesisPane
from tui.live import UNSANDBOXED_STYLE, LiveScreen
from tui.log_pane import LogPane
from tui.util_pane import UtilPane

pytestmark = pytest.mark.anyio


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def hyp_text(app) -> str:
    return rendered(app.screen.query_one(HypothesisPane))


def log_lines(app) -> list[str]:
    return list(app.screen.query_one(LogPane).log.lines)


def make_app(engine, **kw) -> MonitorApp:
    kw.setdefault("sampler", FixedSampler())
    return MonitorApp(engine.run, **kw)


async def test_panes_show_what_the_files_say(engine):
    history(engine, 6)
    engine.begin(6, "raise LR to 0.004", "A higher LR converges faster in 60 s.")
    engine.log(6, "step 1 | loss 3.2", "step 2 | loss 3.1")
    app = make_app(engine)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: len(app.view.results) == 6 and len(log_lines(app)) == 2, "results and log")
        await wait_for(pilot, lambda: app.screen.query_one(UtilPane).samples > 0, "a utilization sample")
        text = hyp_text(app)
        assert "#0006" in text and "RUNNING" in text
        assert "raise LR to 0.004" in text
        assert "A higher LR converges faster" in text
        best = engine.state.best
        assert f"best val_bpb {best.metric:.4f} (#{best.n})" in text and "baseline 1.9000" in text
        counts = engine.standing.grouped_counts()
        assert f"keep {counts['keep']} · discard {counts['discard']} · failed {counts['failed']}" in text
        assert log_lines(app) == ["step 1 | loss 3.2", "step 2 | loss 3.1"]
        diff = app.screen.query_one(DiffPane)
        assert "LEARNING_RATE = 0.004" in diff.text and "train.py +1 -1" in str(diff.border_title)
        spark = rendered(app.screen.query_one("#spark"))
        assert "last" in spark and "best" in spark
        assert "engine running" in text_of(app, "#topbar")
        assert "training cpu" in str(app.screen.query_one(UtilPane).render())


async def test_new_log_lines_results_and_experiments_appear(engine):
    engine.finish(0, "baseline", 1.9, "baseline")
    engine.begin(1, "first change", "h1")
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.n == 1 and len(app.view.results) == 1, "the first state")
        chart = app.screen.query_one(ChartPane)
        redraws = chart.redraws
        engine.log(1, *[f"step {i}" for i in range(30)])
        await wait_for(pilot, lambda: len(log_lines(app)) == 30, "30 log lines")
        assert chart.redraws == redraws  # log lines alone never redraw the chart
        engine.finish(1, "keep", 1.85, "first change")
        await wait_for(pilot, lambda: len(app.view.results) == 2, "the new result")
        await wait_for(pilot, lambda: chart.redraws == redraws + 1, "one chart redraw")
        await wait_for(pilot, lambda: "best val_bpb 1.8500" in hyp_text(app), "the new best")
        engine.begin(2, "second change", "h2", diff="--- a/train.py\n+++ b/train.py\n+X = 1\n")
        engine.log(2, "fresh start")
        await wait_for(pilot, lambda: log_lines(app) == ["fresh start"], "the new experiment's log alone")
        assert app.screen.query_one(LogPane).border_title == "Training log #0002"
        await wait_for(pilot, lambda: "X = 1" in app.screen.query_one(DiffPane).text, "the new diff")


async def test_hypothesis_streams_in(engine):
    engine.set_state(experiment=3, phase="proposing", phase_started_at=engine.t0)
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.n == 3, "experiment 3")
        assert "waiting for the agent" in hyp_text(app)
        engine.event("hypothesis", n=3, text="Deeper models ")
        await wait_for(pilot, lambda: "Deeper models" in hyp_text(app), "the first chunk")
        engine.event("hypothesis", n=3, text="learn more per step.")
        await wait_for(pilot, lambda: "Deeper models learn more per step." in hyp_text(app), "both chunks")
        assert "PROPOSING" in hyp_text(app)


async def test_log_follows_tail_until_scrolled_up(engine):
    engine.begin(1, "d", "h")
    engine.log(1, *[f"line {i}" for i in range(200)])
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.screen.query_one(LogPane)
        await wait_for(pilot, lambda: len(log_lines(app)) == 200, "200 lines")
        await wait_for(pilot, lambda: pane.log.at_end and pane.log.max_scroll_y > 0, "the view at the tail")
        await pilot.press("l")
        assert app.focused is pane.log
        await pilot.press("pageup")
        await wait_for(pilot, lambda: not pane.log.following, "scrolled up")
        top = pane.log.scroll_y
        engine.log(1, *[f"more {i}" for i in range(7)])
        await wait_for(pilot, lambda: len(log_lines(app)) == 207, "7 more lines")
        assert pane.log.scroll_y == top  # stayed where the user put it
        assert "7 new lines" in text_of(app, "#log-status")
        await pilot.press("end")
        await wait_for(pilot, lambda: pane.waiting == 0, "following again")
        assert "new lines" not in text_of(app, "#log-status")
        engine.log(1, "after")
        await wait_for(pilot, lambda: log_lines(app)[-1] == "after", "the next line")
        await wait_for(pilot, lambda: pane.log.at_end, "the tail followed")


async def test_the_next_experiments_log_follows_its_tail(engine):
    """A new run.log replaces a long one: its lines follow the tail from the start (Textual's
    clear() kept the old scroll offset, and Log follows only from exactly the end)."""
    engine.begin(1, "d", "h")
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.screen.query_one(LogPane)
        await wait_for(pilot, lambda: pane.n == 1 and pane.log.size.height > 0, "the first experiment")
        first = pane.log.size.height + 5  # scrolled a little: less than the next log will be
        engine.log(1, *[f"one {i}" for i in range(first)])
        await wait_for(pilot, lambda: len(log_lines(app)) == first and pane.log.at_end, "the first log at its tail")
        assert 0 < pane.log.scroll_y < 10
        engine.log(2, *[f"two {i}" for i in range(200)])  # there before the monitor hears of #2: one batch
        engine.begin(2, "d2", "h2")
        await wait_for(pilot, lambda: pane.n == 2 and len(log_lines(app)) == 200, "the second log")
        await wait_for(pilot, lambda: pane.log.max_scroll_y > 0 and pane.log.at_end, "its tail in view")
        engine.log(2, "two more")
        await wait_for(pilot, lambda: log_lines(app)[-1] == "two more" and pane.log.at_end, "the tail followed")


async def test_log_handles_ansi_carriage_returns_and_stays_bounded(engine):
    engine.begin(1, "d", "h")
    engine.log(1, raw=b"\x1b[32mgreen\x1b[0m text\n10%\r50%\r100% done\nbell\x07 here\n")
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: len(log_lines(app)) == 3, "three lines")
        assert log_lines(app) == ["green text", "100% done", "bell here"]
        engine.log(1, raw=b"epoch 1 [=====>   ]\r")  # an unfinished progress line
        await wait_for(pilot, lambda: "epoch 1" in text_of(app, "#log-status"), "the partial line")
        engine.log(1, *[f"x{i}" for i in range(6000)])
        await wait_for(pilot, lambda: log_lines(app)[-1] == "x5999", "6000 more lines")
        assert len(log_lines(app)) <= 5000


async def test_pause_sends_command_and_shows_acknowledgement(engine):
    engine.begin(1, "d", "h")
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.n == 1, "the state")
        keys = {b.binding.action for b in app.active_bindings.values()}
        assert "pause" in keys and "resume" not in keys
        await pilot.press("p")
        await wait_for(pilot, lambda: app.last_ack is not None, "the acknowledgement")
        assert engine.sent() == ["pause"]
        assert app.last_ack.result == "accepted" and app.last_ack.message == "pause noted"
        await wait_for(pilot, lambda: "pause: accepted" in text_of(app, "#topbar"), "the ack on screen")
        # The engine now says a pause is pending: p means resume.
        await wait_for(pilot, lambda: app.view.pause_requested, "pause_requested in state.json")
        await wait_for(pilot, lambda: "pause requested" in hyp_text(app), "the pending pause shown")
        keys = {b.binding.action for b in app.active_bindings.values()}
        assert "resume" in keys and "pause" not in keys
        await pilot.press("p")
        await wait_for(pilot, lambda: len(app.acks) == 2, "the second ack")
        assert engine.sent() == ["pause", "resume"]


async def test_skip_is_confirmed_once_and_not_repeated(engine):
    engine.begin(1, "d", "h")
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        # The key works once the footer offers it: an experiment runs and the engine is alive.
        await wait_for(pilot, lambda: app.view.in_flight and app.can_run("skip"), "a running experiment")
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirmation")
        await pilot.press("s", "s")  # repeated presses do not stack modals
        assert sum(isinstance(s, ConfirmModal) for s in app.screen_stack) == 1
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, LiveScreen), "the live screen again")
        await pilot.pause(0.1)
        assert engine.sent() == []  # cancelled: nothing sent
        await pilot.press("s", "enter")  # the confirm button has focus
        await wait_for(pilot, lambda: app.last_ack is not None, "the skip ack")
        assert engine.sent() == ["skip"]
        await pilot.press("s", "y")  # again at once: debounced, not resent
        await pilot.pause(0.2)
        assert engine.sent() == ["skip"]


async def test_refused_keep_shows_the_reason(engine):
    engine.begin(1, "d", "h")
    engine.refuse["keep"] = "the run crashed: nothing to keep"
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.in_flight and app.can_run("keep"), "a running experiment")
        await pilot.press("k")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.last_ack is not None, "the ack")
        assert engine.sent() == ["keep"]
        assert app.last_ack.result == "refused"
        assert "the run crashed" in text_of(app, "#topbar")


async def test_note_is_sent_with_its_text(engine):
    engine.begin(1, "d", "h")
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.n == 1, "the state")
        await pilot.press("n")
        assert isinstance(app.screen, NoteModal)
        app.screen.query_one(Input).value = "try warmup"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.last_ack is not None, "the ack")
        assert engine.commands[-1] == {"cmd": "note", "text": "try warmup"}


async def test_unreachable_engine_is_reported(engine):
    engine.begin(1, "d", "h")
    engine.close()  # the process lives (lock pid is ours) but nothing answers
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.n == 1, "the state")
        await pilot.press("p")
        await wait_for(pilot, lambda: app.last_ack is not None, "the error")
        assert app.last_ack.result == "error"
        assert "not running" in app.last_ack.message or "does not exist" in app.last_ack.message


async def test_engine_gone_says_so_and_offers_restart(engine):
    engine.begin(4, "d", "h")
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.alive, "a live engine")
        assert "restart" not in {b.binding.action for b in app.active_bindings.values()}
        engine.die()
        await wait_for(pilot, lambda: app.view.alive is False, "the engine gone")
        await wait_for(pilot, lambda: "not running" in text_of(app, "#banner"), "the banner")
        banner = text_of(app, "#banner")
        assert "#0004 running" in banner and "last seen" in banner and "Press r" in banner
        assert "engine gone" in text_of(app, "#topbar")
        actions = {b.binding.action for b in app.active_bindings.values()}
        assert "restart" in actions and not actions & {"pause", "skip", "keep", "note"}
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert "Restart the engine" in titles and "Pause" not in titles


async def test_palette_offers_what_applies(engine):
    engine.begin(1, "d", "h")
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.in_flight, "a running experiment")
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Pause", "Skip this run", "Force-keep this experiment", "Note for the agent", "History", "Help", "Quit"} <= titles
        assert "Resume" not in titles and "Restart the engine" not in titles
        engine.set_state(phase="proposing")
        await wait_for(pilot, lambda: not app.view.in_flight, "proposing")
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert "Skip this run" not in titles


async def test_quit_leaves_the_loop_running_by_default(engine):
    engine.begin(1, "d", "h")
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.alive, "a live engine")
        await pilot.press("q")
        assert isinstance(app.screen, QuitModal)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.return_value is not None, "the exit")
    assert app.return_value == "leave"
    assert engine.sent() == []


@pytest.mark.parametrize("keys", [("s",), ("right", "enter")], ids=["s", "arrow-then-enter"])
async def test_quit_can_stop_the_loop(engine, keys):
    engine.begin(1, "d", "h")
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.alive, "a live engine")
        await pilot.press("q", *keys)  # "s", or Right from "Leave it running" to "Stop the loop"
        await wait_for(pilot, lambda: app.return_value is not None, "the exit")
    assert app.return_value == "stop"
    assert engine.sent() == ["stop"]


async def test_compact_layout_switches_tabs(engine):
    engine.begin(1, "d", "h")
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.n == 1, "the state")
        live = app.screen
        assert live.compact
        assert live.query_one(LogPane).display and not live.query_one(ChartPane).display
        await pilot.press("2")
        assert live.query_one(ChartPane).display and not live.query_one(LogPane).display
        await pilot.press("l")
        assert live.query_one(LogPane).display and app.focused is live.query_one(LogPane).log
        await pilot.resize_terminal(160, 50)
        await wait_for(pilot, lambda: not live.compact, "the wide layout")
        assert all(p.display for p in (live.query_one(ChartPane), live.query_one(LogPane), live.query_one(UtilPane)))


async def test_help_and_full_diff(engine):
    engine.begin(1, "d", "h")
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "LEARNING_RATE" in app.view.diff, "the diff")
        await pilot.press("d")
        assert type(app.screen).__name__ == "DiffScreen"
        await pilot.press("escape")
        await pilot.press("question_mark")
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("escape")
        assert isinstance(app.screen, LiveScreen)


async def test_commands_sent_elsewhere_are_shown(engine):
    engine.begin(1, "d", "h")
    engine.event("command", cmd="note", text="old", result="accepted", reason="", ts=1.0)  # before we attached
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.n == 1, "the state")
        assert app.acks == []
        engine.event("command", cmd="pause", text=None, result="accepted", reason="", ts=time.time())
        await wait_for(pilot, lambda: app.acks, "the other client's command")
        assert (app.acks[-1].cmd, app.acks[-1].result, app.acks[-1].message) == ("pause", "accepted", "sent elsewhere")
        await pilot.press("n")
        app.screen.query_one(Input).value = "mine"
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.acks) == 2, "our own ack")
        await pilot.pause(0.3)  # the engine's event for our note must not show a second time
        assert len(app.acks) == 2


UNSANDBOXED_REASON = "bubblewrap not found (no bwrap on PATH)"


def toasts(app) -> list[str]:
    """The notifications on screen now."""
    return [str(toast.render()) for toast in app.screen.query("Toast")]


@pytest.mark.parametrize("no_color", [False, True], ids=["colour", "NO_COLOR"])
async def test_unsandboxed_training_is_badged_and_explained(engine, monkeypatch, no_color):
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    engine.set_state(sandbox=f"off: {UNSANDBOXED_REASON}")
    engine.begin(1, "d", "h")
    app = make_app(engine)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        topbar = app.screen.query_one("#topbar", Static)
        await wait_for(pilot, lambda: "UNSANDBOXED" in text_of(app, "#topbar"), "the badge")
        assert app.view.unsandboxed() == UNSANDBOXED_REASON
        assert UNSANDBOXED_REASON in str(topbar.tooltip)  # the reason, on hovering the badge
        await wait_for(pilot, lambda: any(UNSANDBOXED_REASON in toast for toast in toasts(app)), "the notice")  # said on start...
        for segment in topbar.render_line(0):
            if "UNSANDBOXED" in segment.text:
                badge = segment.style
        # ...and a block of the theme's error colour: a word in bold on its own background,
        # which NO_COLOR turns grey but keeps (test_snapshots has the picture).
        assert badge.bgcolor == app.stylesheet.parse_style(UNSANDBOXED_STYLE).rich_style.bgcolor
        assert badge.bgcolor != topbar.rich_style.bgcolor and badge.bold
        await pilot.press("question_mark")  # and in the help
        assert isinstance(app.screen, HelpScreen)
        assert UNSANDBOXED_REASON in str(app.screen.query_one("#help-note", Static).render())
        await pilot.press("escape")
        engine.set_state(sandbox="bwrap 0.8.0")  # a restart that found bubblewrap: the badge goes
        await wait_for(pilot, lambda: "UNSANDBOXED" not in text_of(app, "#topbar"), "the badge gone")
        assert topbar.tooltip is None
        assert sum(UNSANDBOXED_REASON in toast for toast in toasts(app)) <= 1  # never repeated


async def test_the_utilization_pane_grows_to_a_sample_that_comes_after_the_first_frame(engine):
    """The pane is as tall as its text: "measuring…" first, then a sample's lines."""
    import threading

    class LateSampler(FixedSampler):
        def __init__(self) -> None:
            super().__init__()
            self.go = threading.Event()

        def sample(self, engine_pid):
            self.go.wait(10)
            return super().sample(engine_pid)

    engine.begin(1, "d", "h")
    sampler = LateSampler()
    app = make_app(engine, sampler=sampler, stats_interval=3600)
    async with app.run_test(size=(160, 50)) as pilot:
        util = app.screen.query_one(UtilPane)
        await wait_for(pilot, lambda: "measuring" in str(util.render()), "the first frame")
        await pilot.pause(0.2)
        sampler.go.set()
        await wait_for(pilot, lambda: util.samples == 1, "the sample")
        await pilot.pause(0.2)
        lines = str(util.render()).count("\n") + 1
        assert lines >= 4 and util.content_region.height >= lines  # every line of the sample is on screen
