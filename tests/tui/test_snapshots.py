"""Pictures of each screen (pytest-textual-snapshot), from a fixed run and a fixed clock.

Update after an intended change with: pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import time

import pytest
from textual.widgets import Input, Static

from tests.tui.conftest import FixedSampler, fixed_clock, wait_for
from tests.tui.fake_engine import TARGET_LOG, T0, FakeEngine, decisions, history, revoked_run, target_run
from tests.tui.test_runs_screen import make_runs
from tui.app import MonitorApp
from tui.diff_pane import DiffScreen
from tui.dialogs import ConfirmModal, HelpScreen, NoteModal, QuitModal
from tui.history import HistoryScreen
from tui.log_pane import LogPane
from tui.runs_screen import RunsApp
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
    # The theme comes from $AUTORESEARCH_THEME (the conftest clears it: the default, night).
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


# -- the live screen ---------------------------------------------------------------------


@pytest.mark.parametrize("theme", ["night", "paper", "terminal"])
def test_live_screen_wide(picture_engine, snap_compare, monkeypatch, theme):
    monkeypatch.setenv("AUTORESEARCH_THEME", f"autoresearch-{theme}")
    app = live_app(picture_engine)
    assert app.theme == f"autoresearch-{theme}"
    assert snap_compare(app, terminal_size=(120, 40), run_before=loaded(picture_engine, app))


def test_live_screen_compact(picture_engine, snap_compare):
    app = live_app(picture_engine)
    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded(picture_engine, app))


def test_live_screen_no_color(picture_engine, snap_compare, monkeypatch):
    """NO_COLOR: shades of grey only; every state is still written in words."""
    monkeypatch.setenv("NO_COLOR", "1")
    app = live_app(picture_engine)
    assert app.no_color
    assert snap_compare(app, terminal_size=(120, 40), run_before=loaded(picture_engine, app))


def test_diff_screen(picture_engine, snap_compare):
    app = live_app(picture_engine)

    async def run_before(pilot) -> None:
        await loaded(picture_engine, app)(pilot)
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, DiffScreen), "the full-screen diff")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)


# -- the live screen's banners and notices -------------------------------------------------


def banner(engine, app, state: str, says: str):
    """Loaded, the app takes the engine to be ``state``, and the banner ``says`` so."""

    async def run_before(pilot) -> None:
        await loaded(engine, app)(pilot)
        await wait_for(pilot, lambda: app.engine_state() == state, f"the engine {state}")
        await wait_for(pilot, lambda: says in str(app.screen.query_one("#banner", Static).render()), "the banner")
        await settle(pilot)

    return run_before


def test_engine_gone_banner(picture_engine, snap_compare):
    """Killed mid-run: red banner, 'engine gone', and r to restart in the footer."""
    picture_engine.die()
    app = live_app(picture_engine)
    says = "The engine is not running. Last state: #0024 running"
    assert snap_compare(app, terminal_size=(120, 40), run_before=banner(picture_engine, app, "gone", says))


def test_engine_failed_banner(picture_engine, snap_compare):
    """A fatal error: the engine wrote phase "error" and its reason, then exited."""
    picture_engine.set_state(phase="error", phase_started_at=T0 + 20, error="GitError: could not commit: index.lock exists")
    picture_engine.die()
    app = live_app(picture_engine)
    says = "Last error: GitError: could not commit: index.lock exists. Press r"
    assert snap_compare(app, terminal_size=(120, 40), run_before=banner(picture_engine, app, "gone", says))


def test_engine_silent_banner(picture_engine, snap_compare):
    """Alive (it holds the lock) but no heartbeat for over a minute: a warning, not an error."""
    picture_engine.set_state(heartbeat_at=T0 - 120, updated_at=T0 - 120)
    app = live_app(picture_engine)
    says = "no heartbeat since 07:58:00 (2m37s ago)"
    assert snap_compare(app, terminal_size=(120, 40), run_before=banner(picture_engine, app, "stale", says))


def test_run_stopped_banner(picture_engine, snap_compare):
    picture_engine.set_state(phase="stopped", phase_started_at=T0 + 30)
    picture_engine.release()
    app = live_app(picture_engine)
    says = "The run has stopped."
    assert snap_compare(app, terminal_size=(120, 40), run_before=banner(picture_engine, app, "stopped", says))


def test_paused_on_an_error(picture_engine, snap_compare):
    """The engine paused itself: PAUSED in the top bar, the whole reason in the banner, p resumes."""
    picture_engine.set_state(phase="paused", paused=True, phase_started_at=T0 + 20,
                             error="the agent failed 3 times in a row: HTTP 529 overloaded (retry later)")
    app = live_app(picture_engine)
    says = "Paused on an error: the agent failed 3 times in a row: HTTP 529 overloaded (retry later). Press p"
    assert snap_compare(app, terminal_size=(120, 40), run_before=banner(picture_engine, app, "running", says))


def test_pause_requested(picture_engine, snap_compare):
    """p was pressed: the loop holds after this experiment, and p now resumes."""
    picture_engine.set_state(pause_requested=True)
    app = live_app(picture_engine)

    async def run_before(pilot) -> None:
        await loaded(picture_engine, app)(pilot)
        topbar = app.screen.query_one("#topbar", Static)
        await wait_for(pilot, lambda: "engine running · pausing" in str(topbar.render()), "the top bar")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)


def test_refused_command_notice(picture_engine, snap_compare):
    """The engine's answer shows twice: in the top bar, and as a notification."""
    picture_engine.refuse["keep"] = "experiment #0024 ended as crash: nothing to keep"
    app = live_app(picture_engine)

    async def run_before(pilot) -> None:
        await loaded(picture_engine, app)(pilot)
        await pilot.press("k", "y")
        await wait_for(pilot, lambda: app.last_ack is not None, "the engine's answer")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)


UNSANDBOXED = "off: bubblewrap not found (no bwrap on PATH)"


@pytest.mark.parametrize("no_color,size", [(False, (120, 40)), (True, (80, 24))], ids=["colour", "no_color_compact"])
def test_unsandboxed_badge(picture_engine, snap_compare, monkeypatch, no_color, size):
    """Training runs without a sandbox: a badge in the top bar (in words, so NO_COLOR
    keeps it), and on start a notice with the reason."""
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    picture_engine.set_state(sandbox=UNSANDBOXED)
    app = live_app(picture_engine)

    async def run_before(pilot) -> None:
        await loaded(picture_engine, app)(pilot)
        await wait_for(pilot, lambda: "UNSANDBOXED" in str(app.screen.query_one("#topbar", Static).render()), "the badge")
        await wait_for(pilot, lambda: app.screen.query("Toast"), "the notice")
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


# -- dialogs -------------------------------------------------------------------------------


def dialog(engine, app, keys: tuple[str, ...], kind: type):
    async def run_before(pilot) -> None:
        await loaded(engine, app)(pilot)
        await pilot.press(*keys)
        await wait_for(pilot, lambda: isinstance(app.screen, kind), kind.__name__)
        await settle(pilot)

    return run_before


@pytest.mark.parametrize("key", ["s", "k"], ids=["skip", "keep"])
def test_confirm_dialog(picture_engine, snap_compare, key):
    app = live_app(picture_engine)
    assert snap_compare(app, terminal_size=(120, 40), run_before=dialog(picture_engine, app, (key,), ConfirmModal))


def test_note_dialog(picture_engine, snap_compare):
    app = live_app(picture_engine)

    async def run_before(pilot) -> None:
        await dialog(picture_engine, app, ("n",), NoteModal)(pilot)
        note = app.screen.query_one(Input)
        note.cursor_blink = False  # a blinking cursor would make two pictures
        await pilot.press(*"try a shorter warmup")
        await wait_for(pilot, lambda: note.value == "try a shorter warmup", "the typed note")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)


def test_quit_dialog(picture_engine, snap_compare):
    app = live_app(picture_engine)
    assert snap_compare(app, terminal_size=(120, 40), run_before=dialog(picture_engine, app, ("q",), QuitModal))


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["wide", "compact"])
def test_help_screen(picture_engine, snap_compare, size):
    """At 80x24 the keys scroll, and no line wraps."""
    app = live_app(picture_engine)
    assert snap_compare(app, terminal_size=size, run_before=dialog(picture_engine, app, ("question_mark",), HelpScreen))


def test_help_screen_unsandboxed(picture_engine, snap_compare):
    """The help says first that training runs without a sandbox, and why."""
    picture_engine.set_state(sandbox=UNSANDBOXED)
    app = live_app(picture_engine)
    assert snap_compare(app, terminal_size=(80, 24), run_before=dialog(picture_engine, app, ("question_mark",), HelpScreen))


# -- history and one experiment ------------------------------------------------------------


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


# -- decisions: confirmation runs, noise, re-measures, holdout, marks ------------------------


@pytest.fixture
def decided_engine(repo):
    engine = FakeEngine(repo, "nov25", agent={"name": "claude", "model": "claude-sonnet-5-5"})
    engine.start()
    decisions(engine)
    engine.log(10, *LOG)
    yield engine
    engine.release()


def decided(engine, app):
    async def run_before(pilot) -> None:
        await wait_for(pilot, lambda: len(app.view.results) == len(engine.results), "results")
        await wait_for(pilot, lambda: app.screen.query_one(LogPane).log.line_count == len(LOG), "the log")
        await wait_for(pilot, lambda: app.screen.query_one(UtilPane).samples == 1, "a sample")
        await wait_for(pilot, lambda: app.screen.query_one("#chart").plot is not None, "the plot")
        await settle(pilot)

    return run_before


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["wide", "compact"])
def test_live_screen_confirming(decided_engine, snap_compare, size):
    """#0010 beat the best once and runs again; the header gives the pooled noise."""
    app = live_app(decided_engine)
    assert snap_compare(app, terminal_size=size, run_before=decided(decided_engine, app))


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["wide", "compact"])
def test_history_with_marks(decided_engine, snap_compare, size):
    """Means of two runs, holdouts, re-measures; #4 marked H (its explanation in the preview,
    or under the table when there is no room for the preview), #7 marked T."""
    app = live_app(decided_engine)

    async def run_before(pilot) -> None:
        await decided(decided_engine, app)(pilot)
        await pilot.press("h")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), "the history")
        await pilot.press(*["down"] * 5)
        await wait_for(pilot, lambda: app.screen.table.current.n == 4, "#4")
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


# -- a [target]'s metric, a revoked best ---------------------------------------------------------


@pytest.fixture
def target_engine(repo):
    engine = FakeEngine(repo, "nov26", agent={"name": "claude", "model": "claude-sonnet-5-5"})
    engine.start()
    target_run(engine)
    engine.log(6, *TARGET_LOG)
    yield engine
    engine.release()


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["wide", "compact"])
def test_live_screen_target(target_engine, snap_compare, size):
    """Another repository's "score", higher is better, self-reported: the chart, its tab and
    the best say so; the agent writes #0007 while #0006 runs (the next proposal's line)."""
    app = live_app(target_engine)

    async def run_before(pilot) -> None:
        await wait_for(pilot, lambda: len(app.view.results) == len(target_engine.results), "results")
        await wait_for(pilot, lambda: app.screen.query_one(LogPane).log.line_count == len(TARGET_LOG), "the log")
        await wait_for(pilot, lambda: app.screen.query_one(UtilPane).samples == 1, "a sample")
        await wait_for(pilot, lambda: app.screen.query_one("#chart").plot is not None, "the plot")
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_history_revoked_best(repo, snap_compare):
    """#0005, a re-measure, caught the best #0003 reading ahead: R on it (the preview says
    which it revoked), X on #0003, and the header's best is #0002 again."""
    engine = FakeEngine(repo, "nov27").start()
    revoked_run(engine)
    app = live_app(engine)

    async def run_before(pilot) -> None:
        await wait_for(pilot, lambda: len(app.view.results) == len(engine.results), "results")
        await pilot.press("h")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), "the history")
        await wait_for(pilot, lambda: app.screen.table.current.n == 5, "#5")
        await settle(pilot)

    try:
        assert snap_compare(app, terminal_size=(120, 30), run_before=run_before)
    finally:
        engine.release()


# -- the runs of a repository ------------------------------------------------------------


def test_runs_screen(repo, snap_compare):
    """`autoresearch tui` with no engine running and several runs: which one to open."""
    make_runs(repo)
    app = RunsApp(repo, ["nov21", "nov22", "nov23"], clock=lambda: T0)

    async def run_before(pilot) -> None:
        await wait_for(pilot, lambda: app.screen.runs is not None, "the runs")
        await pilot.press("down")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
