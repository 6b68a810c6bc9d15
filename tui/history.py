"""Every experiment of the run: sortable, filterable by status, searchable.

A list with a preview pane (the highlighted experiment's description and hypothesis);
Enter opens the experiment in full.
"""

from __future__ import annotations

from functools import partial
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Input, Static

from engine.results import STATUSES, Result
from engine.rundir import RunDir
from tui import fmt
from tui.keybar import KeyBar
from tui.table import Column, TableHeader, VirtualTable
from tui.themes import on_theme_change, theme_style


def _num(value: float | None, missing: float = float("inf")) -> float:
    return value if value is not None else missing


def _status_cell(r: Result) -> tuple[str, str]:
    return r.status + (" (forced)" if r.forced else ""), fmt.STATUS_STYLE.get(r.status, "")


def _delta_cell(r: Result) -> tuple[str, str]:
    d = r.delta
    return fmt.delta(d), "$success" if d is not None and d < 0 and r.status == "keep" else ""


COLUMNS = [
    Column("n", "#", 5, lambda r: (str(r.n), "dim"), lambda r: r.n, right=True),
    Column("status", "status", 11, _status_cell, lambda r: r.status),
    Column("metric", "val_bpb", 9, lambda r: (fmt.metric(r.metric), ""), lambda r: _num(r.metric), right=True),
    Column("delta", "delta", 8, _delta_cell, lambda r: _num(r.delta), right=True),
    Column("description", "description", None, lambda r: (fmt.one_line(r.description), ""), lambda r: r.description.lower()),
    Column("duration", "time", 7, lambda r: (fmt.duration(r.wall_seconds), "dim"), lambda r: _num(r.wall_seconds), right=True),
    Column("commit", "commit", 8, lambda r: (fmt.short_commit(r.commit), "dim"), lambda r: r.commit or ""),
]
SORT_ORDER = [c.key for c in COLUMNS]


def matches(record: Result, needle: str) -> bool:
    if not needle:
        return True
    for value in (record.description, record.hypothesis, record.commit, record.status):
        if value and needle in value.lower():
            return True
    return needle.lstrip("#") == str(record.n)


def select_rows(records: list[Result], status: str, needle: str, sort_key: str, reverse: bool) -> list[Result]:
    """The records to show, in order. Pure, so it is tested without a screen."""
    needle = needle.strip().lower()
    rows = [r for r in records if (status == "all" or r.status == status) and matches(r, needle)]
    col = next(c for c in COLUMNS if c.key == sort_key)
    # Stable sort with n as the tie-breaker, so equal values keep a sensible order.
    rows.sort(key=lambda r: r.n, reverse=reverse)
    rows.sort(key=col.sort_key, reverse=reverse)
    return rows


class Preview(VerticalScroll):
    DEFAULT_CSS = "Preview { scrollbar-size-vertical: 1; }"

    def compose(self) -> ComposeResult:
        yield Static(id="preview-text")

    def on_mount(self) -> None:
        self.record: Result | None = None
        on_theme_change(self, lambda: self.show(self.record))

    def show(self, r: Result | None) -> None:
        self.record = r
        style = partial(theme_style, self)
        out = Text()
        if r is None:
            out.append("no experiment selected", style="dim")
        else:
            out.append(f"#{r.n}  ", style="bold")
            out.append(r.status, style=style(fmt.STATUS_STYLE.get(r.status, "")))
            out.append(f"  {r.metric_name} {fmt.metric(r.metric)}  Δ {fmt.delta(r.delta)}\n\n")
            out.append(fmt.one_line(r.description) + "\n\n", style="bold")
            out.append(r.hypothesis or "(no hypothesis recorded)")
            out.append("\n\nEnter opens the diff, log and metrics.", style="dim")
        self.query_one("#preview-text", Static).update(out)


class HistoryScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("slash", "search", "Search"),
        Binding("f", "filter", "Filter"),
        Binding("o", "sort", "Sort"),
        Binding("i", "invert", "Invert"),
    ]
    DEFAULT_CSS = """
    HistoryScreen #bar { height: 1; margin: 0 1; }
    HistoryScreen #search { width: 1fr; height: 1; border: none; padding: 0 1; }
    HistoryScreen #filter { width: auto; height: 1; padding: 0 1; }
    HistoryScreen #count { width: auto; height: 1; color: $text-muted; padding: 0 1; }
    HistoryScreen #list { width: 3fr; border: round $primary 50%; }
    HistoryScreen #list:focus-within { border: round $primary; }
    HistoryScreen TableHeader { height: 1; color: $text-muted; }
    HistoryScreen Preview { width: 2fr; border: round $primary 50%; padding: 0 1; }
    HistoryScreen.-narrow Preview { display: none; }
    """
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]

    def __init__(self, run: RunDir, records: list[Result]):
        super().__init__()
        self.run = run
        self.records = records
        self.status = "all"
        self.sort_key = "n"
        self.reverse = True  # newest first
        self.needle = ""

    def compose(self) -> ComposeResult:
        with Horizontal(id="bar"):
            yield Input(placeholder="/ search descriptions, hypotheses, commits", id="search")
            yield Static(id="filter")
            yield Static(id="count")
        with Horizontal():
            with Vertical(id="list"):
                yield TableHeader(COLUMNS, id="header")
                yield VirtualTable(COLUMNS, id="table")
            yield Preview(id="preview")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#list").border_title = f"History · {self.run.tag}"
        self.query_one(Preview).border_title = "Preview"
        self.refilter()
        self.query_one(VirtualTable).focus()

    @property
    def table(self) -> VirtualTable:
        return self.query_one(VirtualTable)

    def statuses(self) -> list[str]:
        present = {r.status for r in self.records}
        # The engine's order; a status this version does not know yet still gets a filter.
        return ["all"] + [s for s in STATUSES if s in present] + sorted(present - set(STATUSES))

    def refilter(self) -> None:
        table = self.table
        keep = table.current
        rows = select_rows(self.records, self.status, self.needle, self.sort_key, self.reverse)
        table.empty_text = "no experiments match" if self.records else "no experiments finished yet"
        table.set_rows(rows, keep=keep)
        self.query_one(TableHeader).set_sort(self.sort_key, self.reverse)
        self.query_one("#filter", Static).update(Text(f"status: {self.status} (f)"))
        self.query_one("#count", Static).update(Text(f"{len(rows):,} of {len(self.records):,}"))
        self.query_one(Preview).show(table.current)

    def add_records(self, new: list[Result]) -> None:
        """New results arrived while the screen is open."""
        self.records.extend(new)
        self.refilter()

    # -- events & actions -----------------------------------------------------------

    def on_virtual_table_highlighted(self, event: VirtualTable.Highlighted) -> None:
        self.query_one(Preview).show(event.record)

    def on_virtual_table_selected(self, event: VirtualTable.Selected) -> None:
        from tui.detail import ExperimentScreen

        self.app.push_screen(ExperimentScreen(self.run, event.record))

    def on_table_header_clicked(self, event: TableHeader.Clicked) -> None:
        if event.key == self.sort_key:
            self.reverse = not self.reverse
        else:
            self.sort_key, self.reverse = event.key, False
        self.refilter()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.needle = event.value
        self.refilter()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.table.focus()

    def action_back(self) -> None:
        if self.focused is self.query_one("#search"):
            self.table.focus()
            return
        self.app.pop_screen()

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_filter(self) -> None:
        options = self.statuses()
        i = options.index(self.status) if self.status in options else 0
        self.status = options[(i + 1) % len(options)]
        self.refilter()

    def action_sort(self) -> None:
        i = SORT_ORDER.index(self.sort_key)
        self.sort_key = SORT_ORDER[(i + 1) % len(SORT_ORDER)]
        self.reverse = False
        self.refilter()

    def action_invert(self) -> None:
        self.reverse = not self.reverse
        self.refilter()
