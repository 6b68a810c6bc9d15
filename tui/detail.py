"""One experiment in full: summary metrics and eval.json, hypothesis, diff, log.

Files are read in a thread worker, so a 50 MB log never freezes the screen.
"""

from __future__ import annotations

import json
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

from engine.rundir import RunDir, read_json
from tui import fmt
from tui.diff_pane import diff_renderable
from tui.keybar import KeyBar
from tui.rundata import decode_log_lines, read_small
from tui.themes import on_theme_change, theme_style

FULL_LOG_BYTES = 32 * 1024 * 1024  # beyond this only the tail of run.log is shown
LOG_LINES = 200_000


def summary_block(log_lines: list[str]) -> dict[str, str]:
    """The ``key: value`` lines after the last ``---`` line of a train.py log."""
    out: dict[str, str] = {}
    for i in range(len(log_lines) - 1, -1, -1):
        if log_lines[i].strip() == "---":
            for line in log_lines[i + 1 :]:
                key, sep, value = line.partition(":")
                if sep and key.strip() and " " not in key.strip():
                    out[key.strip()] = value.strip()
            break
    return out


def load_experiment(run: RunDir, n: int) -> dict[str, Any]:
    """Everything the detail screen shows, read from experiments/NNNN/."""
    exp = run.experiment(n)
    data: dict[str, Any] = {
        "hypothesis": read_small(exp / "hypothesis.md"),
        "diff": read_small(exp / "diff.patch", limit=4 * 1024 * 1024),
        "eval": read_json(exp / "eval.json"),
    }
    try:
        size = (exp / "run.log").stat().st_size
        with open(exp / "run.log", "rb") as f:
            if size > FULL_LOG_BYTES:
                f.seek(size - FULL_LOG_BYTES)
                raw = f.read()
                raw = raw[raw.find(b"\n") + 1 :]
                data["log_cut"] = size - len(raw)
            else:
                raw = f.read()
        data["log"] = decode_log_lines(raw if raw.endswith(b"\n") else raw + b"\n")
    except FileNotFoundError:
        data["log"] = None
    return data


def metrics_table(record: dict[str, Any], summary: dict[str, str], run: RunDir, style: Callable[[str], Style]) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="dim", no_wrap=True)
    t.add_column()
    status = str(record.get("status", "?"))
    label = status + (" (forced keep)" if record.get("forced") else "")
    t.add_row("status", Text(label, style=style(fmt.STATUS_STYLE.get(status, ""))))
    t.add_row(str(record.get("metric_name") or "val_bpb"), fmt.metric(record.get("metric"), 6))
    t.add_row("delta vs best before", fmt.delta(record.get("delta"), 6))
    if record.get("noise") is not None:
        t.add_row("noise", fmt.metric(record.get("noise"), 6))
    t.add_row("description", fmt.one_line(record.get("description")))
    t.add_row("commit", str(record.get("commit") or "—"))
    t.add_row("parent", str(record.get("parent") or "—"))
    if isinstance(record.get("n"), int):
        t.add_row("git ref", f"refs/autoresearch/{run.tag}/{record['n']:04d}")
    t.add_row("started", fmt.clock(record.get("started_at")) if isinstance(record.get("started_at"), (int, float)) else "—")
    t.add_row("training", fmt.duration(record.get("train_seconds")))
    t.add_row("wall clock", fmt.duration(record.get("wall_seconds")))
    if record.get("peak_mem_mb") is not None:
        t.add_row("peak memory", f"{record['peak_mem_mb']:.0f} MB" if isinstance(record["peak_mem_mb"], (int, float)) else str(record["peak_mem_mb"]))
    agent = record.get("agent")
    if isinstance(agent, dict):
        who = str(agent.get("name") or "?") + (f" ({agent['model']})" if agent.get("model") else "")
        t.add_row("agent", who)
        tokens = agent.get("tokens")
        if isinstance(tokens, dict):
            tokens = ", ".join(f"{k} {v}" for k, v in tokens.items())
        elif tokens is None and agent.get("input_tokens") is not None:
            tokens = f"in {agent.get('input_tokens')}, out {agent.get('output_tokens')}"
        if tokens is not None:
            t.add_row("tokens", str(tokens))
        cost = agent.get("cost") if agent.get("cost") is not None else agent.get("cost_usd")
        if isinstance(cost, (int, float)):
            t.add_row("cost", f"${cost:.4f}")
    for key, value in summary.items():
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
    ExperimentScreen #diff-detail, ExperimentScreen #summary-metrics { width: auto; }
    ExperimentScreen Log { height: 1fr; }
    """

    def __init__(self, run: RunDir, record: dict[str, Any]):
        super().__init__()
        self.run = run
        self.record = record
        self.loaded: dict[str, Any] | None = None
        self.summary: dict[str, str] = {}  # the summary block at the end of run.log

    def compose(self) -> ComposeResult:
        yield Static(id="detail-head")
        with TabbedContent(initial="summary"):
            with TabPane("Summary", id="summary"):
                with VerticalScroll():
                    yield Static(id="summary-metrics")
                    yield Static(Text("eval.json: loading…", style="dim"), id="eval")
            with TabPane("Hypothesis", id="hypothesis"):
                with VerticalScroll():
                    yield Static(Text(str(self.record.get("hypothesis") or "loading…")), id="hypothesis-text")
            with TabPane("Diff", id="diff"):
                with VerticalScroll():
                    yield Static(Text("loading…", style="dim"), id="diff-detail")
            with TabPane("Log", id="log"):
                yield Log(max_lines=LOG_LINES, auto_scroll=False, id="log-detail")
        yield KeyBar()

    def on_mount(self) -> None:
        n = self.record.get("n")
        self.sub_title = f"#{n}"
        self._paint()
        on_theme_change(self, self._paint)
        if isinstance(n, int):
            self.load(n)

    def _paint(self) -> None:
        """The parts in theme colours: the head line, the metrics, the diff once loaded."""
        style = partial(theme_style, self)
        r = self.record
        head = Text()
        head.append(f"Experiment #{r.get('n')}  ", style="bold")
        status = str(r.get("status", "?"))
        head.append(status, style=style(fmt.STATUS_STYLE.get(status, "")))
        head.append(f"  val_bpb {fmt.metric(r.get('metric'))}  {fmt.one_line(r.get('description'))}")
        self.query_one("#detail-head", Static).update(head)
        self.query_one("#summary-metrics", Static).update(metrics_table(r, self.summary, self.run, style))
        if self.loaded is not None:
            diff = self.loaded.get("diff")
            self.query_one("#diff-detail", Static).update(diff_renderable(diff, style) if diff else Text("(no diff.patch)", style="dim"))

    @work(thread=True, exit_on_error=False, group="detail")
    def load(self, n: int) -> None:
        data = load_experiment(self.run, n)
        self.app.call_from_thread(self.show, data)

    def show(self, data: dict[str, Any]) -> None:
        self.loaded = data
        log = data.get("log")
        self.summary = summary_block(log) if log else {}
        self._paint()
        ev = data.get("eval")
        eval_text = Text()
        eval_text.append("eval.json\n", style="bold")
        eval_text.append(json.dumps(ev, indent=2) if ev is not None else "(none: the run did not reach evaluation)")
        self.query_one("#eval", Static).update(eval_text)
        hyp = data.get("hypothesis") or self.record.get("hypothesis") or "(no hypothesis recorded)"
        self.query_one("#hypothesis-text", Static).update(Text(str(hyp)))
        widget = self.query_one("#log-detail", Log)
        widget.clear()
        if data.get("log_cut"):
            widget.write_line(f"[... first {data['log_cut'] // 1024} KiB not shown ...]")
        if log is None:
            widget.write_line("(no run.log)")
        else:
            widget.write_lines(log, scroll_end=False)

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
