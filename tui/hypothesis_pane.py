"""The experiment in progress: number, phase, budget bar, description, hypothesis, scores."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from tui import fmt
from tui.model import RunView

BAR_WIDTH = 24


def budget_bar(elapsed: float, budget: float, width: int = BAR_WIDTH) -> Text:
    """A text progress bar: heavy line for done, light line for to go (readable without colour)."""
    frac = 0.0 if budget <= 0 else min(1.0, max(0.0, elapsed / budget))
    done = int(round(frac * width))
    bar = Text()
    bar.append("━" * done, style="green" if elapsed <= budget else "yellow")
    bar.append("─" * (width - done), style="dim")
    return bar


class HypothesisPane(Vertical):
    """Redrawn on state/hypothesis changes and once a second for the elapsed time."""

    DEFAULT_CSS = """
    HypothesisPane #hyp-head { height: 1; }
    HypothesisPane #hyp-desc { height: auto; max-height: 2; text-style: bold; }
    HypothesisPane #hyp-scroll { height: 1fr; min-height: 1; scrollbar-size-vertical: 1; }
    HypothesisPane #hyp-text { color: $text-muted; }
    HypothesisPane #hyp-score { height: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="hyp-head")
        yield Static(id="hyp-desc")
        with VerticalScroll(id="hyp-scroll"):
            yield Static(id="hyp-text")
        yield Static(id="hyp-score")

    def on_mount(self) -> None:
        self.border_title = "Experiment"
        self._last: dict[str, object] = {}

    def _set(self, widget_id: str, content: object) -> None:
        """Update a line only when its content changed: no needless repaint over SSH."""
        key = content.plain + str(content.spans) if isinstance(content, Text) else str(content)
        if self._last.get(widget_id) == key:
            return
        self._last[widget_id] = key
        self.query_one(f"#{widget_id}", Static).update(content)  # type: ignore[arg-type]

    def show(self, view: RunView, now: float) -> None:
        n = view.n
        phase = view.phase
        self.border_title = f"Experiment #{n:04d}" if n is not None else "Experiment"
        self._set("hyp-head", self._head(view, phase, now))
        desc = view.description()
        self._set("hyp-desc", Text(desc, style="bold") if desc else Text("(no description yet)", style="dim"))
        hyp = view.hypothesis()
        scroll = self.query_one("#hyp-scroll", VerticalScroll)
        following = scroll.scroll_y >= scroll.max_scroll_y
        self._set("hyp-text", Text(hyp) if hyp else Text("waiting for the agent…", style="dim italic"))
        if following:  # streaming text: keep the newest words in view
            scroll.scroll_end(animate=False)
        self._set("hyp-score", self._score(view))

    def _head(self, view: RunView, phase: str, now: float) -> Text:
        state = view.state
        line = Text()
        line.append(f" {phase.upper()} ", style="reverse")
        line.append("  ")
        since = state.get("phase_started_at")
        budget = state.get("budget")
        if phase == "running" and isinstance(since, (int, float)) and isinstance(budget, (int, float)):
            elapsed = max(0.0, now - since)
            line.append_text(budget_bar(elapsed, float(budget)))
            line.append(f" {fmt.duration(elapsed)} / {fmt.duration(budget)}")
            if elapsed > budget:
                line.append("  over budget", style="yellow")
        elif isinstance(since, (int, float)) and phase not in ("stopped",):
            line.append(f"for {fmt.duration(max(0.0, now - since))}", style="dim")
        if view.pause_requested and phase != "paused":
            line.append("  pause requested: holds after this experiment", style="yellow")
        if state.get("stop_requested") and phase != "stopped":
            line.append("  stop requested", style="red")
        return line

    def _score(self, view: RunView) -> Text:
        best, best_n = view.best()
        base, noise = view.baseline()
        out = Text()
        out.append("best ", style="dim")
        out.append(fmt.metric(best), style="bold")
        if best_n is not None:
            out.append(f" (#{best_n})", style="dim")
        if best is not None and base is not None:
            gain = best - base
            pct = (gain / base * 100) if base else 0.0
            out.append(f"  {fmt.delta(gain)} ({pct:+.2f}%)", style="green" if gain < 0 else "")
            out.append(" vs baseline ", style="dim")
            out.append(fmt.metric(base))
            if noise is not None:
                out.append(f" ±{noise:.4f}", style="dim")
        counts = view.counts()
        out.append("\n")
        out.append(f"keep {counts['keep']}", style="green")
        out.append("  ·  ")
        out.append(f"discard {counts['discard']}")
        out.append("  ·  ")
        out.append(f"crash {counts['crash']}", style="red" if counts["crash"] else "")
        name, model = view.agent()
        cost = view.cost()
        out.append("   agent ", style="dim")
        out.append(name if not model else f"{name} ({model})")
        if cost is not None:
            out.append(f"  ${cost:.2f}")
        return out
