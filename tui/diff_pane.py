"""The pending change (experiments/NNNN/diff.patch), syntax-highlighted."""

from __future__ import annotations

from functools import partial
from typing import Callable

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from tui.keybar import KeyBar
from tui.themes import on_theme_change, theme_style

# Unified-diff line kinds and their styles ($names are theme colours). A diff's own syntax
# is its line prefixes, so colouring by prefix is the whole highlighter (and spares
# start-up a pygments import).
DIFF_STYLES = (
    ("diff --git", "bold"),
    ("index ", "dim"),
    ("--- ", "bold $error"),
    ("+++ ", "bold $success"),
    ("@@", "$secondary"),
    ("+", "$success"),
    ("-", "$error"),
)


def diff_renderable(diff: str, style: Callable[[str], Style]) -> Text:
    """The diff as styled text; ``style`` turns a spec into a Rich style (the theme's)."""
    if not diff.strip():
        return Text("no change (yet)", style="dim")
    out = Text(no_wrap=True, overflow="crop")
    for line in diff.splitlines():
        spec = next((st for prefix, st in DIFF_STYLES if line.startswith(prefix)), "")
        out.append(line + "\n", style=style(spec))
    out.rstrip()
    return out


def diff_summary(diff: str) -> str:
    """"train.py +3 -1" style summary for the pane title."""
    files: list[str] = []
    added = removed = 0
    for line in diff.splitlines():
        if line.startswith("+++ "):
            name = line[4:].strip()
            files.append(name[2:] if name.startswith("b/") else name)
        elif line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    if not files:
        return ""
    return f"{', '.join(files)} +{added} -{removed}"


class DiffPane(VerticalScroll):
    DEFAULT_CSS = """
    DiffPane { scrollbar-size-vertical: 1; }
    DiffPane #diff { width: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Static(Text("no change (yet)", style="dim"), id="diff")

    def on_mount(self) -> None:
        self.border_title = "Pending change"
        self.text = ""
        on_theme_change(self, self._paint)

    def show(self, diff: str, n: int | None) -> None:
        self.text = diff
        summary = diff_summary(diff)
        title = f"Pending change #{n:04d}" if n is not None else "Pending change"
        self.border_title = f"{title}  {summary}" if summary else title
        self._paint()

    def _paint(self) -> None:
        self.query_one("#diff", Static).update(diff_renderable(self.text, partial(theme_style, self)))


class DiffScreen(Screen):
    """A diff full screen (``d`` on the live screen)."""

    BINDINGS = [Binding("escape,d,q", "app.pop_screen", "Back")]
    DEFAULT_CSS = """
    DiffScreen VerticalScroll { height: 1fr; }
    DiffScreen #diff-full { width: auto; }
    """

    def __init__(self, diff: str, title: str):
        super().__init__()
        self.diff = diff
        self.title_text = title

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="diff-scroll") as scroll:
            scroll.border_title = self.title_text
            yield Static(id="diff-full")
        yield KeyBar()

    def on_mount(self) -> None:
        self._paint()
        on_theme_change(self, self._paint)

    def _paint(self) -> None:
        self.query_one("#diff-full", Static).update(diff_renderable(self.diff, partial(theme_style, self)))
