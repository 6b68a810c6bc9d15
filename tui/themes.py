"""Theme files: ``themes/*.toml`` shipped with the project, plus the user's own.

A theme file holds the fields of ``textual.theme.Theme`` (name, primary, secondary,
accent, foreground, background, surface, panel, boost, warning, error, success, dark,
ansi) and an optional ``[variables]`` table. Users drop files into
``$XDG_CONFIG_HOME/autoresearch/themes/`` (default ``~/.config/autoresearch/themes``).
The theme in use comes from ``$AUTORESEARCH_THEME``, else ``theme = "..."`` in
``$XDG_CONFIG_HOME/autoresearch/monitor.toml``, else ``autoresearch-night``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rich.style import Style
from textual.theme import Theme

if TYPE_CHECKING:
    from textual.dom import DOMNode

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

DEFAULT_THEME = "autoresearch-night"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "themes"
_THEME_FIELDS = {f.name for f in fields(Theme)}


def user_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "autoresearch"


def theme_dirs() -> list[Path]:
    return [BUILTIN_DIR, user_config_dir() / "themes"]


def parse_theme(path: Path) -> Theme:
    """One theme file -> Theme. Raises ValueError with a one-line reason."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path.name}: cannot read: {e}") from None
    unknown = set(data) - _THEME_FIELDS
    if unknown:
        raise ValueError(f"{path.name}: unknown keys {', '.join(sorted(unknown))}")
    if not isinstance(data.get("name"), str) or not isinstance(data.get("primary"), str):
        raise ValueError(f"{path.name}: needs at least name and primary")
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise ValueError(f"{path.name}: [variables] must map names to strings")
    try:
        theme = Theme(**data)
        theme.to_color_system()  # parses every colour now, not at the first repaint
    except Exception as e:
        raise ValueError(f"{path.name}: {e}") from None
    return theme


def load_themes() -> tuple[list[Theme], list[str]]:
    """Every theme file found, and a one-line problem for each file that was skipped."""
    themes: dict[str, Theme] = {}
    problems: list[str] = []
    for directory in theme_dirs():
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            try:
                theme = parse_theme(path)
            except ValueError as e:
                problems.append(f"theme skipped: {e}")
                continue
            themes[theme.name] = theme  # a user's file may replace one of ours
    return list(themes.values()), problems


def install_themes(app) -> list[str]:  # type: ignore[no-untyped-def]
    """Register the theme files with ``app`` and select the chosen theme, before the first
    styling pass (a theme set later restyles every widget once more). Returns a line for
    each problem found, for the app to show."""
    themes, problems = load_themes()
    for theme in themes:
        app.register_theme(theme)
    wanted = chosen_theme()
    fallback = DEFAULT_THEME if DEFAULT_THEME in app.available_themes else "textual-dark"
    if wanted not in app.available_themes:
        if wanted != DEFAULT_THEME:  # our own files missing (an install without themes/) is no news
            problems.append(f"unknown theme {wanted!r}; using {fallback}")
        wanted = fallback
    app.theme = wanted
    return problems


def chosen_theme() -> str:
    name = os.environ.get("AUTORESEARCH_THEME")
    if name:
        return name
    path = user_config_dir() / "monitor.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        if isinstance(data.get("theme"), str):
            return data["theme"]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        pass
    return DEFAULT_THEME


# -- colours for Rich text built in Python -----------------------------------------------
#
# CSS names theme colours as variables ($success, $error, ...). Rich Text cannot, so text
# built in Python writes the same specs ("bold $success") and resolves them here, against
# the app's current theme. A widget that keeps such text rebuilds it when the theme changes
# (``on_theme_change``). "dim" stands for muted text: Textual blends it toward the
# background. Under NO_COLOR the app's filters take every colour out again.


def theme_style(node: DOMNode, spec: str) -> Style:
    """A Rich style for a Textual style spec such as ``"bold $success"``, in ``node``'s
    app's current theme (a terminal theme's ANSI colours stay ANSI colours)."""
    if not spec:
        return Style.null()
    return node.app.stylesheet.parse_style(spec).rich_style


def on_theme_change(node: DOMNode, callback: Callable[[], object]) -> None:
    """Call ``callback`` after every change of theme, for as long as ``node`` is mounted."""
    node.app.theme_changed_signal.subscribe(node, lambda _theme: callback())


class RedrawnOnThemeChange:
    """For a pane whose ``show(view, now)`` builds text in the theme's colours and skips the
    repaint when its key (``_key``) is unchanged: a new theme forgets the key and shows the
    last view again. Call ``redraw_on_theme_change()`` from ``on_mount``."""

    _key: tuple | None
    _shown: tuple | None

    def redraw_on_theme_change(self) -> None:
        self._key, self._shown = None, None
        on_theme_change(self, self._restyle)  # type: ignore[arg-type]

    def _restyle(self) -> None:
        self._key = None
        if self._shown is not None:
            self.show(*self._shown)  # type: ignore[attr-defined]

