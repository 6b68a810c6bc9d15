"""The experiment in progress: number, phase, budget bar, description, hypothesis, scores.

One widget that lays its own lines out for its size: the head and description at the
top, the scores at the bottom, and the hypothesis in between, cut to fit (its start
once the proposal is final; its newest words while it still streams in). Above the
scores, one line tells of a pipelined proposal while there is one ("next #0013:
thinking…"). The best is given with the run's metric (its name, and whether higher or
lower is better) and says when the number is self-reported. Repainted only when what
it shows changes.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from rich.console import Group
from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from tui import fmt
from tui.model import RunView
from tui.themes import RedrawnOnThemeChange, theme_style

BAR_WIDTH = 24
# Phases in which nothing moves until a person or the engine acts: their clock is coarse.
IDLE_PHASES = ("paused", "error")
# The pipelined proposal's state, as the experiment pane shows it (tui/model.py says it in words).
NEXT_STYLE = {"thinking": "italic", "ready": "bold", "rebased": "bold", "dropped": "$warning"}


def budget_bar(elapsed: float, budget: float, style: Callable[[str], Style], width: int = BAR_WIDTH) -> Text:
    """A text progress bar: heavy line for done, light line for to go (readable without colour)."""
    frac = 0.0 if budget <= 0 else min(1.0, max(0.0, elapsed / budget))
    done = int(round(frac * width))
    bar = Text()
    bar.append("━" * done, style=style("$success" if elapsed <= budget else "$warning"))
    bar.append("─" * (width - done), style="dim")
    return bar


class HypothesisPane(RedrawnOnThemeChange, Widget):
    DEFAULT_CSS = "HypothesisPane { height: 1fr; }"

    def on_mount(self) -> None:
        self.border_title = "Experiment"
        self.head = Text()
        self.desc = Text()
        self.hyp = ""
        self.streaming = False
        self.runs = Text()  # the measurements of a candidate so far (empty when there are none)
        self.next = Text()  # the pipelined proposal (empty when there is none)
        self.score: tuple[Text, ...] = ()  # the best, against the baseline, the noise, the counts, the agent
        self.redraw_on_theme_change()

    def show(self, view: RunView, now: float) -> None:
        self._shown = (view, now)
        n = view.n
        head = self._head(view, view.exp_phase, now)
        desc = view.description()
        hyp = view.hypothesis()
        streaming = bool(hyp) and n is not None and n not in view.proposals and not view.current().hypothesis
        runs = self._runs(view)
        pending = self._next(view)
        score = self._score(view)
        flight = view.flight  # with several workers, the selected one
        worker = flight.worker if flight is not None else None
        key = (n, worker, head.plain, desc, hyp, streaming, runs.plain, pending.plain, tuple(t.plain for t in score))
        if key == self._key:
            return  # nothing new: no repaint (a slow SSH link pays for every one)
        self._key = key
        self.border_title = f"Experiment #{n:04d}" if n is not None else "Experiment"
        if worker is not None:
            self.border_title += f" · worker {worker}"
        self.head, self.hyp, self.streaming, self.score, self.runs = head, hyp, streaming, score, runs
        self.next = pending
        self.desc = Text(desc, style="bold") if desc else Text("(no description yet)", style="dim")
        self.refresh()

    # -- layout ---------------------------------------------------------------------------

    def render(self) -> Group:
        width = max(1, self.content_region.width or self.size.width)
        height = max(1, self.content_region.height or self.size.height)
        console = self.app.console
        top = [self._fit(self.head, width), self._fit(self.desc, width)]
        if self.runs:
            top.append(self._fit(self.runs, width))
        score_lines = [line for part in self._score_lines(width) for line in part.wrap(console, width)]
        if self.next:
            score_lines.insert(0, self._fit(self.next, width))
        room = height - len(top) - len(score_lines)
        if room < 1:  # tiny: keep the head, the description and what fits of the scores
            return Group(*(top + score_lines)[:height])
        if self.hyp:
            lines = list(Text(self.hyp).wrap(console, width))
        else:
            lines = [Text("waiting for the agent…", style="dim italic")]
        if len(lines) > room:
            if self.streaming:  # newest words in view while the agent is still writing
                lines = [Text("…", style="dim")] + lines[-(room - 1):] if room > 1 else lines[-1:]
            else:
                lines = lines[: room - 1] + [Text("… (h, then Enter, shows it all)", style="dim")] if room > 1 else lines[:1]
        pad = [Text("")] * (room - len(lines))
        return Group(*top, *lines, *pad, *score_lines)

    def _score_lines(self, width: int) -> list[Text]:
        """The best, the noise, the counts and the agent, in that order, as many to a line
        as fit (rather than a line broken in the middle of a name)."""
        gap = "   "
        lines: list[Text] = []
        for part in self.score:
            if lines and lines[-1].cell_len + len(gap) + part.cell_len <= width:
                lines[-1] = Text.assemble(lines[-1], gap, part)
            else:
                lines.append(part)
        return lines

    @staticmethod
    def _fit(text: Text, width: int) -> Text:
        text = text.copy()
        text.no_wrap = True
        text.overflow = "ellipsis"
        text.truncate(width, overflow="ellipsis")
        return text

    # -- content ------------------------------------------------------------------------

    def _head(self, view: RunView, phase: str, now: float) -> Text:
        state = view.state
        style = partial(theme_style, self)
        line = Text()
        line.append(f" {view.phase_label().upper()} ", style="reverse")
        line.append("  ")
        since = view.current().phase_started_at
        budget = state.budget
        if phase in ("running", "confirming") and since is not None and budget is not None:
            elapsed = max(0.0, now - since)
            line.append_text(budget_bar(elapsed, budget, style))
            line.append(f" {fmt.duration(elapsed)} / {fmt.duration(budget)}")
            if elapsed > budget and phase == "running":  # a confirmation run is scored in its own phase
                line.append("  over budget", style=style("$warning"))
        elif since is not None and phase in IDLE_PHASES:
            # Nothing moves: a coarse clock, so an idle screen is not repainted every second.
            line.append(f"for {fmt.coarse_duration(max(0.0, now - since))}, since {fmt.clock(since)[:5]}", style="dim")
        elif since is not None and phase not in ("stopped",):
            line.append(f"for {fmt.duration(max(0.0, now - since))}", style="dim")
        if view.pause_requested and phase != "paused":
            line.append("  pause requested", style=style("$warning"))
        if state.stop_requested and phase != "stopped":
            line.append("  stop requested", style=style("$error"))
        if state.error:
            line.append(f"  error: {fmt.one_line(state.error)}", style=style("$error"))
        return line

    def _runs(self, view: RunView) -> Text:
        """A candidate's measurements so far, against the best: what its confirmation must uphold."""
        runs = view.runs_so_far()
        out = Text()
        if not runs:
            return out
        style = partial(theme_style, self)
        out.append("measured ", style="dim")
        out.append(", ".join(fmt.metric(x) for x in runs), style="bold")
        mean = sum(runs) / len(runs)
        if len(runs) > 1:
            out.append(f" (mean {fmt.metric(mean)})", style="dim")
        best = view.best()
        if best is not None:
            gain = mean - best.metric
            out.append(f"  {fmt.delta(gain)}", style=style("$success" if view.metric().improved(gain) else ""))
            out.append(f" vs best {fmt.metric(best.metric)}", style="dim")
        return out

    def _next(self, view: RunView) -> Text:
        """The pipelined proposal: the agent writes the next change while this one trains."""
        line = view.next_proposal()
        out = Text()
        if line is None:
            return out
        head, sep, word = line.partition(": ")
        out.append(head + sep, style="dim")
        state = (view.state.next_proposal or {}).get("state")
        out.append(word, style=theme_style(self, NEXT_STYLE.get(state, "")))
        return out

    def _score(self, view: RunView) -> tuple[Text, ...]:
        best, base = view.best(), view.baseline()
        metric = view.metric()
        style = partial(theme_style, self)
        out = Text()
        out.append(f"best {metric.name} ", style="dim")
        out.append(fmt.metric(best.metric if best else None), style="bold")
        if best is not None:
            out.append(f" (#{best.n})", style="dim")
            if view.best_self_reported():
                out.append(f" {fmt.SELF_REPORTED}", style=style("$warning"))
        against = Text()  # its own part: it goes to the next line rather than break in two
        if best is not None and base is not None:
            gain = best.metric - base.metric
            pct = (gain / base.metric * 100) if base.metric else 0.0
            against.append(f"{fmt.delta(gain)} ({pct:+.2f}%)", style=style("$success" if metric.improved(gain) else ""))
            against.append(" vs baseline ", style="dim")
            against.append(fmt.metric(base.metric))
        noise = Text(fmt.noise(view.noise()), style="dim")
        counts = view.counts()  # grouped by the engine's rule (engine.results.grouped_counts)
        tally = Text()
        tally.append(f"keep {counts['keep']}", style=style("$success"))
        tally.append(" · ")
        tally.append(f"discard {counts['discard']}")
        tally.append(" · ")
        tally.append(f"failed {counts['failed']}", style=style("$error" if counts["failed"] else ""))
        tally.append(" · ")
        tally.append(f"other {counts['other']}", style="dim")
        name, model = view.agent()
        agent = Text()
        agent.append("agent ", style="dim")
        agent.append(name if not model else f"{name} ({model})")
        agent.append(f"  ${view.cost():.2f}")
        return tuple(part for part in (out, against, noise, tally, agent) if part)
