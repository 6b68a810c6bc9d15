"""A virtual table: renders only the rows on screen, so 10,000 experiments open at once.

Textual's DataTable measures every cell of every row when rows are added (about 1.3 s
for 10,000 rows on a 2-core box, and again after each filter); this table keeps the rows
as the records themselves and formats a row only when it is drawn. Sorting and
filtering are list operations on the records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

from tui.themes import on_theme_change, theme_style

Record = Any  # a row: whatever the columns' functions read (the history's rows are Results)


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int | None  # None: takes the width that is left
    cell: Callable[[Record], tuple[str, str]]  # record -> (text, style spec such as "bold $success")
    sort_key: Callable[[Record], Any]
    right: bool = False
    hide_below: int = 0  # the column is left out of a table narrower than this


def shown(columns: list[Column], total: int) -> list[Column]:
    """The columns that fit a table ``total`` cells wide (the least useful go first)."""
    return [c for c in columns if total >= c.hide_below]


def fit(text: str, width: int, right: bool = False) -> str:
    """Pad or cut to exactly ``width`` cells."""
    if cell_len(text) > width:
        return set_cell_size(text, max(0, width - 1)) + "…" if width > 0 else ""
    pad = " " * (width - cell_len(text))
    return pad + text if right else text + pad


def layout(columns: list[Column], total: int) -> list[int]:
    """Column widths for a table ``total`` cells wide (one space between columns); call
    it with the columns ``shown`` at that width."""
    fixed = sum(c.width for c in columns if c.width is not None) + len(columns) - 1
    flex = [c for c in columns if c.width is None]
    left = max(8, total - fixed)
    return [c.width if c.width is not None else left // max(1, len(flex)) for c in columns]


class TableHeader(Static):
    """The column labels; clicking one asks the table to sort by it."""

    class Clicked(Message):
        def __init__(self, key: str):
            super().__init__()
            self.key = key

    def __init__(self, columns: list[Column], **kwargs: Any):
        super().__init__(**kwargs)
        self.columns = columns
        self.sort_key: str | None = None
        self.reverse = False

    def set_sort(self, key: str | None, reverse: bool) -> None:
        self.sort_key, self.reverse = key, reverse
        self.refresh()

    def render(self) -> Text:
        columns = shown(self.columns, self.size.width)
        widths = layout(columns, self.size.width)
        out = Text(no_wrap=True, overflow="crop")
        for i, (col, w) in enumerate(zip(columns, widths)):
            label = col.label
            if col.key == self.sort_key:
                label += " ▼" if self.reverse else " ▲"
            out.append(fit(label, w, col.right), style="bold")
            if i < len(columns) - 1:
                out.append(" ")
        return out

    def on_click(self, event: events.Click) -> None:
        x = 0
        columns = shown(self.columns, self.size.width)
        for col, w in zip(columns, layout(columns, self.size.width)):
            if x <= event.x < x + w + 1:
                self.post_message(self.Clicked(col.key))
                return
            x += w + 1


class VirtualTable(ScrollView, can_focus=True):
    """Rows are records; only visible lines are formatted."""

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Open", show=True),
    ]
    COMPONENT_CLASSES = {"virtual-table--cursor"}
    DEFAULT_CSS = """
    VirtualTable { height: 1fr; scrollbar-size-vertical: 1; overflow-x: hidden; }
    VirtualTable > .virtual-table--cursor { background: $accent 30%; text-style: bold; }
    VirtualTable:focus > .virtual-table--cursor { background: $accent 60%; }
    """

    cursor: reactive[int] = reactive(0, always_update=True, repaint=False)

    class Highlighted(Message):
        def __init__(self, record: Record | None):
            super().__init__()
            self.record = record

    class Selected(Message):
        def __init__(self, record: Record):
            super().__init__()
            self.record = record

    def __init__(self, columns: list[Column], **kwargs: Any):
        super().__init__(**kwargs)
        self.columns = columns
        self.rows: list[Record] = []
        self.empty_text = "nothing to show"

    def on_mount(self) -> None:
        on_theme_change(self, self.refresh)

    def set_rows(self, rows: list[Record], keep: Record | None = None) -> None:
        """Show these records; keep the cursor on ``keep`` if it is still among them."""
        self.rows = rows
        self.virtual_size = Size(self.size.width, len(rows))
        index = 0
        if keep is not None:
            for i, r in enumerate(rows):
                if r is keep:
                    index = i
                    break
        self.cursor = min(index, max(0, len(rows) - 1))
        self.refresh()

    @property
    def current(self) -> Record | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def watch_cursor(self, old: int, new: int) -> None:
        self._show_cursor()
        self.refresh()
        self.post_message(self.Highlighted(self.current))

    def _show_cursor(self) -> None:
        height = self.scrollable_content_region.height or self.size.height
        if height <= 0:
            return
        top = int(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False)

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.rows))
        self._show_cursor()

    def render_line(self, y: int) -> Strip:
        index = int(self.scroll_y) + y
        width = self.size.width
        base = self.rich_style
        if index >= len(self.rows):
            if index == 0:  # nothing to list: say so rather than show a blank box
                return Strip([Segment(fit(self.empty_text, width), base + Style(dim=True, italic=True))])
            return Strip.blank(width, base)
        record = self.rows[index]
        columns = shown(self.columns, width)
        widths = layout(columns, width)
        cursor = index == self.cursor
        highlight = self.get_component_rich_style("virtual-table--cursor") if cursor else None
        segments = []
        for i, (col, w) in enumerate(zip(columns, widths)):
            text, spec = col.cell(record)
            style = base + theme_style(self, spec)
            if highlight is not None:
                style += highlight
            segments.append(Segment(fit(text, w, col.right), style))
            if i < len(columns) - 1:
                segments.append(Segment(" ", base + highlight if highlight else base))
        return Strip(segments).adjust_cell_length(width, base + highlight if highlight else base)

    # -- actions ----------------------------------------------------------------

    def action_cursor(self, step: int) -> None:
        if self.rows:
            self.cursor = max(0, min(len(self.rows) - 1, self.cursor + step))

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(1, self.scrollable_content_region.height - 1))

    def action_jump(self, index: int) -> None:
        if self.rows:
            self.cursor = index if index >= 0 else len(self.rows) + index

    def action_select(self) -> None:
        if self.current is not None:
            self.post_message(self.Selected(self.current))

    def on_click(self, event: events.Click) -> None:
        index = int(self.scroll_y) + event.y
        if 0 <= index < len(self.rows):
            if index == self.cursor and event.chain >= 2:
                self.action_select()
            self.cursor = index
