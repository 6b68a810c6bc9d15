"""The runs of a repository, to open one: what `autoresearch tui` shows when no engine
is running and there are several tags (with one, it opens that run directly).

Each run's line: its tag, its state (running, paused, stopped, error, or gone: the
engine died without stopping), its best (under the run's metric: val_bpb, or a
[target]'s; each value is named when the runs measure different things), how many
experiments it recorded and when it was last active. The newest activity comes first; Enter opens the highlighted
run's monitor, q or Esc leaves. The run directories are read in a thread worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Static

from engine.lock import is_locked
from engine.results import METRIC
from engine.rundir import RunDir
from tui import fmt
from tui.keybar import KeyBar
from tui.table import Column, TableHeader, VirtualTable

STATE_STYLE = {"running": "bold $success", "paused": "$warning", "stopped": "", "error": "bold $error",
               "gone": "$error"}


@dataclass(frozen=True)
class RunSummary:
    tag: str
    state: str  # running, paused, stopped, error, gone
    best: float | None
    best_n: int | None
    experiments: int
    last_active: float | None  # unix time of the last sign of life
    error: str | None = None
    metric: str = METRIC  # what its best measures (a [target]'s metric, from state.json's configuration)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _count_lines(path: Path) -> int:
    """Finished experiments: complete lines of results.jsonl, counted without parsing."""
    count = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                count += chunk.count(b"\n")
    except OSError:
        return 0
    return count


def summarize(repo: Path, tag: str, alive: Callable[[Path], bool] = is_locked) -> RunSummary:
    """Where one run stands, from its run directory (state.json and results.jsonl)."""
    rd = RunDir.for_tag(repo, tag)
    state = rd.read_state()
    running = alive(rd.lock)
    if running:
        word = "paused" if state.paused else "running"
    elif state.phase == "error":
        word = "error"
    elif state.phase in (None, "stopped"):
        word = "stopped"
    else:  # the engine died in the middle of something
        word = "gone"
    times = [t for t in (state.heartbeat_at, state.updated_at, _mtime(rd.results_jsonl), _mtime(rd.events_jsonl))
             if t is not None]
    best = state.best
    return RunSummary(tag=tag, state=word, best=best.metric if best else None, best_n=best.n if best else None,
                      experiments=_count_lines(rd.results_jsonl), last_active=max(times) if times else None,
                      error=state.error, metric=fmt.Metric.of((), state.config).name)


def summarize_all(repo: Path, tags: list[str], alive: Callable[[Path], bool] = is_locked) -> list[RunSummary]:
    """Every run, the most recently active first."""
    runs = [summarize(repo, tag, alive) for tag in tags]
    return sorted(runs, key=lambda r: (r.last_active or 0.0, r.tag), reverse=True)


def run_columns(now: Callable[[], float], metric: str = METRIC) -> list[Column]:
    """The list's columns; ``metric`` heads the best's column: the metric every run
    measures, or "best" when they differ (each value then says its own)."""

    def best(r: RunSummary) -> tuple[str, str]:
        if r.best is None:
            return "—", "dim"
        value = f"{fmt.metric(r.best)} (#{r.best_n})"
        return (value if r.metric == metric else f"{r.metric} {value}"), ""

    def active(r: RunSummary) -> tuple[str, str]:
        if r.last_active is None:
            return "—", "dim"
        day = time.strftime("%b %d %H:%M", time.localtime(r.last_active))
        return f"{day}  {fmt.ago(r.last_active, now())}", ""

    return [
        Column("tag", "tag", 14, lambda r: (r.tag, "bold"), lambda r: r.tag),
        Column("state", "state", 8, lambda r: (r.state, STATE_STYLE.get(r.state, "")), lambda r: r.state),
        Column("best", metric, 24 if metric == "best" else max(14, min(len(metric), 20)), best,
               lambda r: r.best if r.best is not None else float("inf"), right=True),
        Column("experiments", "experiments", 11, lambda r: (f"{r.experiments:,}", ""), lambda r: r.experiments,
               right=True),
        Column("active", "last activity", None, active, lambda r: r.last_active or 0.0),
    ]


class RunsScreen(Screen[str]):
    """The repository's runs; Enter dismisses the screen with the highlighted tag."""

    BINDINGS = [Binding("escape,q", "leave", "Quit")]
    DEFAULT_CSS = """
    RunsScreen #runs-head { height: auto; padding: 0 1; }
    RunsScreen #runs { border: round $primary; height: 1fr; }
    RunsScreen TableHeader { height: 1; color: $text-muted; }
    RunsScreen #runs-note { height: auto; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, repo: Path, tags: list[str], *, clock: Callable[[], float] = time.time,
                 alive: Callable[[Path], bool] = is_locked):
        super().__init__()
        self.repo, self.tags, self.clock, self.alive = repo, tags, clock, alive
        self.columns = run_columns(clock)
        self.runs: list[RunSummary] | None = None  # None until they are read

    def compose(self) -> ComposeResult:
        yield Static(Text.assemble(("No engine is running", "bold"), " in ", (self.repo.name, "bold"),
                                   ". Which run do you want to see?"), id="runs-head")
        with Vertical(id="runs"):
            yield TableHeader(self.columns)
            yield VirtualTable(self.columns, id="runs-table")
        yield Static(id="runs-note")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#runs").border_title = f"Runs · {len(self.tags)}"
        table = self.query_one(VirtualTable)
        table.empty_text = "reading the runs…"
        table.focus()
        self.read_runs()

    @work(thread=True, exit_on_error=False, group="runs")
    def read_runs(self) -> None:
        runs = summarize_all(self.repo, self.tags, self.alive)
        self.app.call_from_thread(self.show_runs, runs)

    def show_runs(self, runs: list[RunSummary]) -> None:
        self.runs = runs
        metrics = {r.metric for r in runs}
        if metrics != {METRIC}:  # in place: the table and its header hold this list
            self.columns[:] = run_columns(self.clock, metrics.pop() if len(metrics) == 1 else "best")
            self.query_one(TableHeader).refresh()
        self.query_one(VirtualTable).set_rows(runs)

    def on_virtual_table_highlighted(self, event: VirtualTable.Highlighted) -> None:
        run = event.record
        note = self.query_one("#runs-note", Static)
        if run is not None and run.error and run.state in ("error", "paused", "gone"):
            note.update(Text(f"{run.tag}: {fmt.one_line(run.error)}", no_wrap=True, overflow="ellipsis"))
        else:
            note.update("")

    def on_virtual_table_selected(self, event: VirtualTable.Selected) -> None:
        self.dismiss(event.record.tag)

    def action_leave(self) -> None:
        self.dismiss(None)

    def on_worker_state_changed(self, event) -> None:  # type: ignore[no-untyped-def]
        if event.worker.group == "runs" and event.worker.error is not None:
            self.query_one(VirtualTable).empty_text = f"could not read the runs: {event.worker.error}"
            self.query_one(VirtualTable).refresh()


class RunsApp(App[str | None]):
    """Just the list of runs: returns the tag to open, or None."""

    TITLE = "autoresearch"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, repo: Path, tags: list[str], *, clock: Callable[[], float] = time.time,
                 alive: Callable[[Path], bool] = is_locked):
        super().__init__()
        from tui.themes import install_themes

        self.screen_args = (repo, tags, clock, alive)
        self.theme_problems = install_themes(self)

    def on_mount(self) -> None:
        repo, tags, clock, alive = self.screen_args
        self.push_screen(RunsScreen(repo, tags, clock=clock, alive=alive), self.exit)
        for problem in self.theme_problems:
            self.notify(problem, severity="warning")
