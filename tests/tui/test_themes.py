"""Theme files, the user's own themes, the choice of theme, NO_COLOR."""

from __future__ import annotations

import importlib
import sys
import tomllib

import pytest

from tests.tui.conftest import FixedSampler, wait_for
from tui.app import MonitorApp
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
