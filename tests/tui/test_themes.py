"""Theme files, the user's own themes, the choice of theme, colours from the theme, NO_COLOR."""

from __future__ import annotations

import importlib
import re
import sys
import tomllib

import pytest
from rich.color import Color as RichColor

from tests.tui.conftest import FixedSampler, wait_for
from tests.tui.fake_engine import history
from tui.app import MonitorApp
from tui.chart_pane import ChartPane, SparkLine
from tui.detail import ExperimentScreen
from tui.history import HistoryScreen
from tui.hypothesis_pane import HypothesisPane
from tui.table import VirtualTable
from tui.util_pane import UtilPane
from tui.themes import DEFAULT_THEME, load_themes, parse_theme

pytestmark = pytest.mark.anyio


def test_shipped_themes_parse():
    themes, problems = load_themes()
    names = {t.name for t in themes}
    assert {"autoresearch-night", "autoresearch-paper", "autoresearch-terminal"} <= names
    assert problems == []
    terminal = next(t for t in themes if t.name == "autoresearch-terminal")
    assert terminal.ansi  # follows the terminal's own palette


def test_themes_load_on_python_3_10_without_tomllib(monkeypatch):
    """3.10 has no tomllib: the theme loader must use tomli there, as engine/config.py does."""
    import tui.themes

    monkeypatch.setattr(sys, "version_info", (3, 10, 14, "final", 0))
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` fails, as on 3.10
    monkeypatch.setitem(sys.modules, "tomli", tomllib)  # tomli is what tomllib was before 3.11
    try:
        themes = importlib.reload(tui.themes)
        loaded, problems = themes.load_themes()
        assert problems == [] and DEFAULT_THEME in {t.name for t in loaded}
    finally:
        monkeypatch.undo()
        importlib.reload(tui.themes)


def test_bad_theme_files_are_skipped_with_a_reason(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nprimary = "not a colour"\n')
    with pytest.raises(ValueError, match="bad.toml"):
        parse_theme(bad)
    bad.write_text('name = "x"\nprimary = "#fff"\nshiny = true\n')
    with pytest.raises(ValueError, match="unknown keys shiny"):
        parse_theme(bad)


async def test_user_themes_load_and_the_choice_is_honoured(engine, tmp_path, monkeypatch):
    user_dir = tmp_path / "config" / "autoresearch" / "themes"
    user_dir.mkdir(parents=True)
    (user_dir / "mine.toml").write_text('name = "mine"\nprimary = "#ff8800"\ndark = true\n')
    (user_dir / "broken.toml").write_text("name = ")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("AUTORESEARCH_THEME", "mine")
    app = MonitorApp(engine.run, sampler=FixedSampler())
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.theme == "mine", "the user's theme")
        assert "textual-dark" in app.available_themes  # built-ins stay available
        assert any("broken.toml" in p for p in app.theme_problems)


async def test_unknown_theme_falls_back_and_no_color_is_respected(engine, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_THEME", "no-such-theme")
    monkeypatch.setenv("NO_COLOR", "1")
    app = MonitorApp(engine.run, sampler=FixedSampler())
    assert app.no_color
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.theme == DEFAULT_THEME, "the default theme")
        assert any("no-such-theme" in p for p in app.theme_problems)


# -- colours on screen ---------------------------------------------------------------------

THEME_SUCCESS = {"autoresearch-night": "#76c893", "autoresearch-paper": "#2e7d32"}
THEME_ERROR = {"autoresearch-night": "#e4572e", "autoresearch-paper": "#b00020"}


def colour_of(widget, needle: str) -> RichColor | None:
    """The colour ``widget`` draws ``needle`` in, as it reaches the screen (after the app's
    filters), or None where the text is not drawn."""
    for y in range(widget.size.height):
        for segment in widget.render_line(y):
            if needle in segment.text and segment.style is not None:
                return segment.style.color
    return None


def near(colour: RichColor | None, hex_: str) -> bool:
    """Textual may round a channel by one on the way to the screen."""
    if colour is None or colour.triplet is None:
        return False
    want = RichColor.parse(hex_).triplet
    return all(abs(a - b) <= 1 for a, b in zip(colour.triplet, want))


@pytest.fixture
def busy_engine(engine):
    history(engine, 12)  # #6 is kept, #11 crashed
    engine.begin(12, "raise LR", "h")
    return engine


async def test_colours_come_from_the_theme_and_follow_a_change_of_theme(busy_engine):
    app = MonitorApp(busy_engine.run, sampler=FixedSampler(), stats_interval=3600)
    async with app.run_test(size=(160, 50)) as pilot:
        screen = app.screen
        topbar, diff = screen.query_one("#topbar"), screen.query_one("DiffPane Static")
        util = screen.query_one(UtilPane)
        await wait_for(pilot, lambda: colour_of(diff, "+LEARNING_RATE") is not None, "the diff")
        await wait_for(pilot, lambda: util.samples == 1 and colour_of(topbar, "engine running") is not None, "the panes")
        for name in ("autoresearch-night", "autoresearch-paper"):
            app.theme = name
            success, error = THEME_SUCCESS[name], THEME_ERROR[name]
            await wait_for(pilot, lambda: near(colour_of(diff, "+LEARNING_RATE"), success), f"{name}: added lines")
            assert near(colour_of(diff, "-LEARNING_RATE"), error)
            await wait_for(pilot, lambda: near(colour_of(topbar, "engine running"), success), f"{name}: the top bar")
            assert near(colour_of(screen.query_one(HypothesisPane), "keep "), success)
            primary = app.current_theme.primary  # sparklines: green is for kept experiments
            await wait_for(pilot, lambda: near(colour_of(util, "█"), primary), f"{name}: the sparklines")
        # A terminal theme hands the terminal its own palette's colours (ANSI numbers).
        app.theme = "autoresearch-terminal"
        await wait_for(pilot, lambda: getattr(colour_of(diff, "+LEARNING_RATE"), "number", None) == 2, "ANSI green")
        assert colour_of(diff, "-LEARNING_RATE").number == 1  # ANSI red
        assert colour_of(topbar, "engine running").number == 2


async def test_history_and_an_experiment_follow_a_change_of_theme(busy_engine):
    app = MonitorApp(busy_engine.run, sampler=FixedSampler(), stats_interval=3600)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: len(app.view.results) == len(busy_engine.results), "the results")
        await pilot.press("h")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), "the history")
        table, preview = app.screen.query_one(VirtualTable), app.screen.query_one("#preview-text")
        await wait_for(pilot, lambda: colour_of(table, "keep") is not None, "the rows")
        for name in ("autoresearch-paper", "autoresearch-night"):  # the cursor is on #11, which crashed
            app.theme = name
            await wait_for(pilot, lambda: near(colour_of(table, "keep"), THEME_SUCCESS[name]), f"{name}: the rows")
            await wait_for(pilot, lambda: near(colour_of(preview, "crash"), THEME_ERROR[name]), f"{name}: the preview")
        table.cursor = next(i for i, r in enumerate(table.rows) if r.status == "keep")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ExperimentScreen) and app.screen.loaded is not None, "the experiment")
        head = app.screen.query_one("#detail-head")
        await wait_for(pilot, lambda: near(colour_of(head, "keep"), THEME_SUCCESS["autoresearch-night"]), "the head line")
        app.theme = "autoresearch-paper"
        await wait_for(pilot, lambda: near(colour_of(head, "keep"), THEME_SUCCESS["autoresearch-paper"]), "the head, repainted")


def colours_in(widget) -> tuple[set, dict[str, RichColor | None]]:
    """The background colours a widget draws, and the colour of each of a few words."""
    backgrounds, words = set(), {}
    for y in range(widget.size.height):
        for segment in widget.render_line(y):
            if segment.style is None:
                continue
            backgrounds.add(segment.style.bgcolor)
            for word in ("experiment", "●", "best"):
                if word in segment.text:
                    words[word] = segment.style.color
    return backgrounds, words


async def test_the_chart_takes_its_colours_from_the_theme(busy_engine):
    app = MonitorApp(busy_engine.run, sampler=FixedSampler(), stats_interval=3600)
    async with app.run_test(size=(160, 50)) as pilot:
        chart = app.screen.query_one(ChartPane)
        await wait_for(pilot, lambda: chart.plot is not None and chart.data[0]["x"], "the plot")
        spark = chart.query_one(SparkLine)
        for name in ("autoresearch-night", "autoresearch-paper"):
            app.theme = name
            success = THEME_SUCCESS[name]
            await wait_for(pilot, lambda: near(colour_of(chart.plot, "●"), success), f"{name}: kept points")
            await wait_for(pilot, lambda: near(colour_of(spark, "best"), success), f"{name}: the best")
            assert near(colour_of(spark, "▁"), app.current_theme.primary)
        # A terminal theme: the terminal's own green, and the plot on the pane's own
        # background with its labels in the text colour (not black on black).
        app.theme = "autoresearch-terminal"
        await wait_for(pilot, lambda: getattr(colour_of(chart.plot, "●"), "number", None) == 2, "ANSI green")
        backgrounds, words = colours_in(chart.plot)
        assert all(bg is None or bg.is_default for bg in backgrounds)
        assert words["experiment"] is None or words["experiment"].is_default


EXPORT_DEFAULT = "#c5c8c6"  # what a screenshot writes for text that has no colour of its own


def screen_colours(app) -> set[tuple[int, int, int]]:
    """Every text and background colour in a screenshot of the app (not the window frame)."""
    svg = app.export_screenshot()
    text = re.findall(r"\.terminal-[\w-]*r\d+ \{ fill: (#[0-9a-f]{6})", svg)
    cells = re.findall(r'<rect fill="(#[0-9a-f]{6})"[^>]*shape-rendering="crispEdges"', svg)
    return {RichColor.parse(h).triplet for h in text + cells if h != EXPORT_DEFAULT}


@pytest.mark.parametrize("no_color", [False, True])
async def test_no_color_leaves_nothing_but_greys(busy_engine, monkeypatch, no_color):
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    app = MonitorApp(busy_engine.run, sampler=FixedSampler(), stats_interval=3600)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: colour_of(app.screen.query_one("DiffPane Static"), "+LEARNING_RATE") is not None, "the diff")
        await pilot.press("h")  # the history's status column too
        await wait_for(pilot, lambda: "History" in type(app.screen).__name__, "the history")
        await pilot.pause()
        colours = screen_colours(app)
        greys = {c for c in colours if c.red == c.green == c.blue}
        if no_color:
            assert colours and colours == greys
        else:
            assert colours != greys  # the check above can fail: colours are there without NO_COLOR
