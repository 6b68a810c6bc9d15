"""The grid of panes the live screen and watch mode's screen share, so that the two look and switch alike."""

from __future__ import annotations

from typing import Any

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Tab, Tabs

from tui.chart_pane import ChartPane
from tui.diff_pane import DiffPane
from tui.log_pane import LogPane
from tui.util_pane import UtilPane

COMPACT_WIDTH = 100
COMPACT_HEIGHT = 30
# Tab id -> pane id, in the order of the 1-4 keys.
TABS = {"tab-log": "log-pane", "tab-chart": "chart", "tab-util": "util", "tab-diff": "diff"}
# The 1-4 keys, last in each screen's BINDINGS (inherited ones would come first in the
# list of keys Textual's key panel shows).
TAB_BINDINGS = [
    Binding("1", "tab(0)", "Log", show=False),
    Binding("2", "tab(1)", "Chart", show=False),
    Binding("3", "tab(2)", "Util", show=False),
    Binding("4", "tab(3)", "Diff", show=False),
]


class PanesScreen(Screen):
    """The monitor's panes in a grid, or as tabs when the terminal is small."""

    # Scoped to PanesScreen, which matches the subclasses too. Their own rules (the top
    # pane's height when compact, anything above #body) are in their DEFAULT_CSS.
    DEFAULT_CSS = """
    PanesScreen { layout: vertical; }
    PanesScreen #topbar { height: 1; background: $panel; color: $foreground; padding: 0 1; }
    PanesScreen #body {
        height: 1fr;
        layout: grid;
        grid-size: 2 3;
        grid-columns: 3fr 2fr;
        grid-rows: 13 11 1fr;
    }
    PanesScreen .pane { border: round $primary 50%; border-title-color: $text; padding: 0 1; }
    PanesScreen .pane:focus-within { border: round $primary; }
    PanesScreen #log-pane { row-span: 2; padding: 0; }
    PanesScreen #tabs { display: none; }
    PanesScreen.-compact #body { layout: vertical; }
    PanesScreen.-compact #tabs { display: block; height: 2; }
    PanesScreen.-compact .switchable { display: none; }
    PanesScreen.-compact .switchable.-active { display: block; height: 1fr; }
    """

    def tabbed_panes(self, **util_options: Any) -> ComposeResult:
        """The tabs and the four panes they switch between, after the top pane in #body."""
        yield Tabs(
            Tab("1 Log", id="tab-log"),
            Tab("2 val_bpb", id="tab-chart"),
            Tab("3 GPU/CPU", id="tab-util"),
            Tab("4 Diff", id="tab-diff"),
            id="tabs",
        )
        yield ChartPane(id="chart", classes="pane switchable")
        yield LogPane(id="log-pane", classes="pane switchable -active")
        yield UtilPane(id="util", classes="pane switchable", **util_options)
        yield DiffPane(id="diff", classes="pane switchable")

    def on_resize(self, event: events.Resize) -> None:
        # A subclass's own on_resize runs as well (Textual calls the handler of each class).
        compact = event.size.width < COMPACT_WIDTH or event.size.height < COMPACT_HEIGHT
        self.set_class(compact, "-compact")

    @property
    def compact(self) -> bool:
        return self.has_class("-compact")

    # -- tabs (compact layout) -------------------------------------------------------

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        if event.tab is None or event.tab.id not in TABS:
            return
        for pane_id in TABS.values():
            self.query_one(f"#{pane_id}").set_class(pane_id == TABS[event.tab.id], "-active")

    def action_tab(self, index: int) -> None:
        tab_id = list(TABS)[index]
        self.query_one(Tabs).active = tab_id
        pane = self.query_one(f"#{TABS[tab_id]}")
        focusable = [w for w in pane.query("*") if w.focusable] or ([pane] if pane.focusable else [])
        if focusable:
            focusable[0].focus()

    # -- keys both screens have: the app does the work --------------------------------

    def action_history(self) -> None:
        self.app.open_history()  # type: ignore[attr-defined]

    def action_diff(self) -> None:
        self.app.open_diff()  # type: ignore[attr-defined]

    def action_focus_log(self) -> None:
        if self.compact:
            self.action_tab(0)
        self.query_one(LogPane).log.focus()
