"""One experiment in full: its record (with train.py's summary), eval.json, hypothesis,
diff, log.

Files are read in a thread worker, so a 50 MB log never freezes the screen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Log, Static, TabbedContent, TabPane

from engine.results import Result, experiment_ref
from engine.rundir import RunDir, read_json
from tui import fmt
from tui.diff_pane import diff_renderable
from tui.keybar import KeyBar
from tui.marks import Mark
from tui.rundata import decode_log_lines, read_small
from tui.themes import on_theme_change, theme_style

FULL_LOG_BYTES = 32 * 1024 * 1024  # beyond this only the tail of run.log is shown
LOG_LINES = 200_000


@dataclass
class ExperimentFiles:
    """What experiments/NNNN/ holds for the detail screen (None: the file is missing)."""

    hypothesis: str | None
    diff: str | None
    eval: Any
    log: list[str] | None
    log_cut: int = 0  # bytes at the start of run.log that are not shown


def load_experiment(run: RunDir, n: int) -> ExperimentFiles:
    """Everything the detail screen shows, read from experiments/NNNN/."""
    exp = run.experiment(n)
    files = ExperimentFiles(
        hypothesis=read_small(exp / "hypothesis.md"),
        diff=read_small(exp / "diff.patch", limit=4 * 1024 * 1024),
        eval=read_json(exp / "eval.json"),
        log=None,
    )
    try:
        size = (exp / "run.log").stat().st_size
        with open(exp / "run.log", "rb") as f:
            if size > FULL_LOG_BYTES:
                f.seek(size - FULL_LOG_BYTES)
                raw = f.read()
                raw = raw[raw.find(b"\n") + 1 :]
                files.log_cut = size - len(raw)
            else:
                raw = f.read()
        files.log = decode_log_lines(raw if raw.endswith(b"\n") else raw + b"\n")
    except FileNotFoundError:
        pass
    return files


def metrics_table(record: Result, run: RunDir, style: Callable[[str], Style], marks: tuple[Mark, ...] = (),
                  metric: fmt.Metric | None = None) -> Table:
    """The record as label/value rows. ``metric`` says which way is better (the run's
    [target]; lower by default)."""
    metric = metric or fmt.Metric(record.metric_name)
    t = Table.grid(padding=(0, 2))
    t.add_column(style="dim", no_wrap=True)
    t.add_column()
    label = record.status + (" (forced keep)" if record.forced else "")
    if record.remeasure:
        label = f"{record.status} (a re-measure of the best, to catch drift)"
    t.add_row("status", Text(label, style=style(fmt.STATUS_STYLE.get(record.status, ""))))
    for mark in marks:
        t.add_row(Text(f"{mark.code} {mark.label}", style=style("bold $warning")), Text(mark.why))
    value = Text(fmt.metric(record.metric, 6))
    if len(record.runs) > 1:
        value.append(f"  (mean of {len(record.runs)} runs)")
    if record.self_reported and record.scored:
        value.append(f"  {fmt.SELF_REPORTED}: the run printed it; no trusted evaluation", style=style("$warning"))
    t.add_row(record.metric_name, value)
    if len(record.runs) > 1:
        t.add_row("runs", ", ".join(fmt.metric(x, 6) for x in record.runs))
    if record.holdout is not None:
        t.add_row("holdout", fmt.metric(record.holdout, 6))
    t.add_row("delta vs best before", f"{fmt.delta(record.delta, 6)}  ({metric.better})")
    if record.threshold is not None:
        t.add_row("needed", f"> +{record.threshold:.6f}" if metric.direction == "max" else f"< -{record.threshold:.6f}")
    if record.noise is not None:
        dof = f"  ({record.noise_dof} degrees of freedom)" if record.noise_dof is not None else ""
        t.add_row("noise", fmt.metric(record.noise, 6) + dof)
    if record.tokens_per_sec is not None:
        t.add_row("tokens/s", f"{record.tokens_per_sec:,.0f}")
    if record.num_steps is not None:
        t.add_row("steps", f"{record.num_steps:,}")
    if record.load_avg is not None:
        t.add_row("load average", f"{record.load_avg:.2f} when it started")
    t.add_row("description", fmt.one_line(record.description))
    t.add_row("commit", record.commit or "—")
    t.add_row("parent", record.parent or "—")
    t.add_row("git ref", experiment_ref(run.tag, record.n))
    t.add_row("started", fmt.clock(record.started_at))
    t.add_row("training", fmt.duration(record.train_seconds))
    t.add_row("wall clock", fmt.duration(record.wall_seconds))
    if record.peak_mem_mb is not None:
        t.add_row("peak memory", f"{record.peak_mem_mb:.0f} MB")
    if record.sandbox:
        t.add_row("sandbox", record.sandbox)
    agent = record.agent
    if agent is not None:
        who = str(agent.get("name") or "?") + (f" ({agent['model']})" if agent.get("model") else "")
        t.add_row("agent", who)
        tokens = agent.get("tokens")
        if isinstance(tokens, dict):
            tokens = ", ".join(f"{k} {v}" for k, v in tokens.items())
        elif tokens is None and agent.get("input_tokens") is not None:
            tokens = f"in {agent.get('input_tokens')}, out {agent.get('output_tokens')}"
        if tokens is not None:
            t.add_row("tokens", str(tokens))
        cost = agent.get("cost_usd") if agent.get("cost_usd") is not None else agent.get("cost")
        if isinstance(cost, (int, float)):
            t.add_row("cost", f"${cost:.4f}")
    if record.error and record.status != "keep":
        t.add_row("error", fmt.one_line(record.error))
    for key, value in record.summary.items():  # train.py's "key: value" block, as the engine read it
        t.add_row(key, value)
    return t


class ExperimentScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("1", "tab('summary')", "Summary"),
        Binding("2", "tab('hypothesis')", "Hypothesis"),
        Binding("3", "tab('diff')", "Diff"),
        Binding("4", "tab('log')", "Log"),
    ]
    DEFAULT_CSS = """
    ExperimentScreen #detail-head { height: 1; padding: 0 1; background: $panel; }
    ExperimentScreen TabbedContent { height: 1fr; }
    ExperimentScreen TabPane { padding: 0 1; }
    ExperimentScreen #diff-detail { width: auto; }
    ExperimentScreen #summary-metrics { width: 100%; }
    ExperimentScreen Log { height: 1fr; }
    """

    def __init__(self, run: RunDir, record: Result, marks: tuple[Mark, ...] = (), metric: fmt.Metric | None = None):
        super().__init__()
        self.run = run
        self.record = record
        self.marks = marks
        self.metric = metric or fmt.Metric(record.metric_name)  # the run's: which way is better
        self.loaded: ExperimentFiles | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="detail-head")
        with TabbedContent(initial="summary"):
            with TabPane("Summary", id="summary"):
                with VerticalScroll():
                    yield Static(id="summary-metrics")
                    yield Static(Text("eval.json: loading…", style="dim"), id="eval")
            with TabPane("Hypothesis", id="hypothesis"):
                with VerticalScroll():
                    yield Static(Text(self.record.hypothesis or "loading…"), id="hypothesis-text")
            with TabPane("Diff", id="diff"):
                with VerticalScroll():
                    yield Static(Text("loading…", style="dim"), id="diff-detail")
            with TabPane("Log", id="log"):
                yield Log(max_lines=LOG_LINES, auto_scroll=False, id="log-detail")
        yield KeyBar()

    def on_mount(self) -> None:
        self.sub_title = f"#{self.record.n}"
        self._paint()
        on_theme_change(self, self._paint)
        self.load(self.record.n)

    def _paint(self) -> None:
        """The parts in theme colours: the head line, the metrics, the diff once loaded."""
        style = partial(theme_style, self)
        r = self.record
        head = Text()
        head.append(f"Experiment #{r.n}  ", style="bold")
        head.append("re-measure" if r.remeasure and r.status == "baseline" else r.status,
                    style=style(fmt.STATUS_STYLE.get(r.status, "")))
        if self.marks:
            head.append(f" {''.join(m.code for m in self.marks)}", style=style("bold $warning"))
        head.append(f"  {r.metric_name} {fmt.metric(r.metric)}")
        if r.self_reported and r.scored:
            head.append(f" ({fmt.SELF_REPORTED})", style=style("$warning"))
        head.append(f"  {fmt.one_line(r.description)}")
        self.query_one("#detail-head", Static).update(head)
        self.query_one("#summary-metrics", Static).update(metrics_table(r, self.run, style, self.marks, self.metric))
        if self.loaded is not None:
            diff = self.loaded.diff
            self.query_one("#diff-detail", Static).update(diff_renderable(diff, style) if diff else Text("(no diff.patch)", style="dim"))

    @work(thread=True, exit_on_error=False, group="detail")
    def load(self, n: int) -> None:
        files = load_experiment(self.run, n)
        self.app.call_from_thread(self.show, files)

    def show(self, files: ExperimentFiles) -> None:
        self.loaded = files
        self._paint()
        eval_text = Text()
        eval_text.append("eval.json\n", style="bold")
        eval_text.append(json.dumps(files.eval, indent=2) if files.eval is not None else "(none: the run did not reach evaluation)")
        self.query_one("#eval", Static).update(eval_text)
        hyp = files.hypothesis or self.record.hypothesis or "(no hypothesis recorded)"
        self.query_one("#hypothesis-text", Static).update(Text(hyp))
        widget = self.query_one("#log-detail", Log)
        widget.clear()
        if files.log_cut:
            widget.write_line(f"[... first {files.log_cut // 1024} KiB not shown ...]")
        if files.log is None:
            widget.write_line("(no run.log)")
        else:
            widget.write_lines(files.log, scroll_end=False)

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
