"""Every experiment of the run: sortable, filterable by status, searchable.

A list with a preview pane (the highlighted experiment's description and hypothesis);
Enter opens the experiment in full. The metric's column is named after the run's metric
(val_bpb, or a [target]'s); the marks column (``!``) carries the letters of tui/marks.py
(H, T on keeps; S self-reported; R a re-measure that revoked a best, X the keep it revoked).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Input, Static

from engine.results import STATUSES, Result, Standing
from engine.rundir import RunDir
from tui import fmt
from tui.keybar import KeyBar
from tui.marks import Mark, Marks
from tui.table import Column, TableHeader, VirtualTable
from tui.themes import on_theme_change, theme_style


def _num(value: float | None, missing: float = float("inf")) -> float:
    return value if value is not None else missing


Marked = Callable[[int], "tuple[Mark, ...]"]  # an experiment's number -> its marks (tui/marks.py)


def status_text(r: Result) -> str:
    """A re-measure of the best is a baseline run; it says what it is (one that failed,
    as a revoking one does, keeps its status)."""
    if r.remeasure and r.status == "baseline":
        return "re-measure"
    return r.status + (" (forced)" if r.forced else "")


def metric_text(r: Result) -> str:
    """The metric, and how many runs it is the mean of when more than one ("1.8612 ×2")."""
    runs = len(r.runs)
    return fmt.metric(r.metric) + (f" ×{runs}" if runs > 1 and r.scored else "")


def _status_cell(r: Result) -> tuple[str, str]:
    remeasured = r.remeasure and r.status == "baseline"
    return status_text(r), "italic" if remeasured else fmt.STATUS_STYLE.get(r.status, "")


def columns(marked: Marked, metric: fmt.Metric | None = None) -> list[Column]:
    """The history's columns; ``marked`` gives the marks column its letters, ``metric``
    names the metric's column and says which deltas are gains."""
    metric = metric or fmt.Metric()

    def delta_cell(r: Result) -> tuple[str, str]:
        d = r.delta
        return fmt.delta(d), "$success" if r.status == "keep" and metric.improved(d) else ""

    def holdout_cell(r: Result) -> tuple[str, str]:
        if r.holdout is None:
            return "—", "dim"
        worse = any(m.code == "H" for m in marked(r.n))
        return fmt.metric(r.holdout), "$warning" if worse else ""

    def marks_cell(r: Result) -> tuple[str, str]:
        codes = "".join(m.code for m in marked(r.n))
        return codes, "dim" if codes == "S" else "bold $warning"  # self-reported alone: every row of such a run

    return [
        Column("n", "#", 5, lambda r: (str(r.n), "dim"), lambda r: r.n, right=True),
        Column("status", "status", 11, _status_cell, lambda r: r.status),
        Column("metric", metric.name, max(9, min(len(metric.name), 16)), lambda r: (metric_text(r), ""),
               lambda r: _num(r.metric), right=True),
        Column("holdout", "holdout", 7, holdout_cell, lambda r: _num(r.holdout), right=True),
        Column("delta", "delta", 8, delta_cell, lambda r: _num(r.delta), right=True),
        Column("marks", "!", 3, marks_cell, lambda r: (-len(marked(r.n)), r.n)),
        Column("description", "description", None, lambda r: (fmt.one_line(r.description), ""), lambda r: r.description.lower()),
        Column("duration", "time", 7, lambda r: (fmt.duration(r.wall_seconds), "dim"), lambda r: _num(r.wall_seconds),
               right=True, hide_below=90),
        Column("commit", "commit", 8, lambda r: (fmt.short_commit(r.commit), "dim"), lambda r: r.commit or "",
               hide_below=100),
    ]


COLUMNS = columns(lambda n: ())
SORT_ORDER = [c.key for c in COLUMNS if c.key != "marks"]


def matches(record: Result, needle: str) -> bool:
    if not needle:
        return True
    for value in (record.description, record.hypothesis, record.commit, record.status):
        if value and needle in value.lower():
            return True
    return needle.lstrip("#") == str(record.n)


def select_rows(records: list[Result], status: str, needle: str, sort_key: str, reverse: bool,
                cols: list[Column] | None = None) -> list[Result]:
    """The records to show, in order. Pure, so it is tested without a screen."""
    needle = needle.strip().lower()
    rows = [r for r in records if (status == "all" or r.status == status) and matches(r, needle)]
    col = next(c for c in cols or COLUMNS if c.key == sort_key)
    # Stable sort with n as the tie-breaker, so equal values keep a sensible order.
    rows.sort(key=lambda r: r.n, reverse=reverse)
    rows.sort(key=col.sort_key, reverse=reverse)
    return rows


def measured_lines(r: Result) -> list[str]:
    """What the runs measured, for the preview and the detail screen: every run, the
    holdout, the throughput."""
    lines = []
    if len(r.runs) > 1:
        lines.append(f"mean of {len(r.runs)} runs: " + ", ".join(fmt.metric(x) for x in r.runs))
    extra = []
    if r.holdout is not None:
        extra.append(f"holdout {fmt.metric(r.holdout)}")
    if r.tokens_per_sec is not None:
        extra.append(f"{r.tokens_per_sec:,.0f} tokens/s")
    if extra:
        lines.append("  ·  ".join(extra))
    return lines


class Preview(VerticalScroll):
    DEFAULT_CSS = "Preview { scrollbar-size-vertical: 1; }"

    def __init__(self, hint: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hint = hint  # what Enter does, under the hypothesis

    def compose(self) -> ComposeResult:
        yield Static(id="preview-text")

    def on_mount(self) -> None:
        self.record: Result | None = None
        self.marks: tuple[Mark, ...] = ()
        on_theme_change(self, lambda: self.show(self.record, self.marks))

    def show(self, r: Result | None, marks: tuple[Mark, ...] = ()) -> None:
        self.record, self.marks = r, marks
        style = partial(theme_style, self)
        out = Text()
        if r is None:
            out.append("no experiment selected", style="dim")
        else:
            out.append(f"#{r.n}  ", style="bold")
            out.append(status_text(r), style=style(fmt.STATUS_STYLE.get(r.status, "")))
            out.append(f"  {r.metric_name} {fmt.metric(r.metric)}")
            if r.self_reported and r.scored:
                out.append(f" ({fmt.SELF_REPORTED})", style=style("$warning"))
            out.append(f"  Δ {fmt.delta(r.delta)}\n")
            for line in measured_lines(r):
                out.append(line + "\n", style="dim")
            for mark in marks:
                out.append("\n")
                out.append(f"{mark.code} {mark.label}", style=style("bold $warning"))
                out.append(f": {mark.why}.\n")
            out.append("\n")
            out.append(fmt.one_line(r.description) + "\n\n", style="bold")
            out.append(r.hypothesis or "(no hypothesis recorded)")
            if self.hint:
                out.append(f"\n\n{self.hint}", style="dim")
        self.query_one("#preview-text", Static).update(out)


class HistoryScreen(Screen):
    PREVIEW_HINT = "Enter opens the diff, log and metrics."  # what Enter does here (watch mode: the commit)
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
    HistoryScreen #mark-line { height: auto; max-height: 3; display: none; padding: 0 1; }
    HistoryScreen.-narrow #mark-line.-shown { display: block; }
    """
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]

    def __init__(self, run: RunDir, records: list[Result], marks: Marks | None = None,
                 metric: fmt.Metric | None = None):
        super().__init__()
        self.run = run
        self.records = records
        self.metric = metric or fmt.Metric.of(records)  # the run's (name and direction); else the records' name
        self.columns: list[Column] = []
        self._use_marks(records, marks)
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
                yield TableHeader(self.columns, id="header")
                yield VirtualTable(self.columns, id="table")
                yield Static(id="mark-line")  # without the preview (narrow): what the row's marks mean
            yield Preview(self.PREVIEW_HINT, id="preview")
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
        rows = select_rows(self.records, self.status, self.needle, self.sort_key, self.reverse, self.columns)
        table.empty_text = "no experiments match" if self.records else "no experiments finished yet"
        table.set_rows(rows, keep=keep)
        self.query_one(TableHeader).set_sort(self.sort_key, self.reverse)
        self.query_one("#filter", Static).update(Text(f"status: {self.status} (f)"))
        self.query_one("#count", Static).update(Text(f"{len(rows):,} of {len(self.records):,}"))
        self.show_preview(table.current)

    def show_preview(self, record: Result | None) -> None:
        marks = self.marks.get(record.n) if record is not None else ()
        self.query_one(Preview).show(record, marks)
        line = self.query_one("#mark-line", Static)
        if marks:
            style = partial(theme_style, self)
            text = Text(no_wrap=True, overflow="ellipsis")
            for i, mark in enumerate(marks):
                text.append("\n" if i else "")
                text.append(f"{mark.code} {mark.label}", style=style("bold $warning"))
                text.append(f": {mark.why}")
            line.update(text)
        line.set_class(bool(marks), "-shown")

    def add_records(self, new: list[Result]) -> None:
        """New results arrived while the screen is open."""
        self.records.extend(new)
        if self._standing is not None:
            for r in new:
                self.marks.add(r, self._standing)
        self.refilter()

    def reset_records(self, records: list[Result], marks: Marks | None = None) -> None:
        """results.jsonl was replaced: show these instead."""
        self.records = records
        self._use_marks(records, marks)
        self.refilter()

    def _use_marks(self, records: list[Result], marks: Marks | None) -> None:
        """The app's marks follow new results by themselves; without them, the records
        are marked here, and so are the ones that arrive later."""
        self._standing: Standing | None = None
        if marks is None:
            self._standing, marks = Standing(), Marks()
            for r in records:
                marks.add(r, self._standing)
        self.marks = marks
        self.columns[:] = columns(marks.get, self.metric)  # in place: the table and its header hold this list

    # -- events & actions -----------------------------------------------------------

    def on_virtual_table_highlighted(self, event: VirtualTable.Highlighted) -> None:
        self.show_preview(event.record)

    def on_virtual_table_selected(self, event: VirtualTable.Selected) -> None:
        from tui.detail import ExperimentScreen

        self.app.push_screen(ExperimentScreen(self.run, event.record, self.marks.get(event.record.n), self.metric))

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
