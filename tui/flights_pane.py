"""The experiments in progress, one compact row each, when several workers run.

    ▸ #0012  w1  running     ━━━━━━━━━────────  37s/1m00s  raise LEARNING_RATE 0.003 -> 0.004

One row per entry of state.json's ``flights``: the number, the worker (and with --ray its
node's host, "w1@gpu-box-2"), the phase, the
budget bar while it trains (else how long it has been in its phase), and one line of
its description (or, while its agent writes, the newest line of its hypothesis). The
selected row (``[`` and ``]``, or a click) is the one the other panes follow and that
``s`` and ``k`` act on. With one worker the pane is hidden and the screen is as it was.
Repainted only when what it shows changes.
"""

from __future__ import annotations

from functools import partial

from rich.console import Group
from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.widget import Widget

from tui import fmt
from tui.hypothesis_pane import budget_bar
from tui.model import Flight, RunView
from tui.themes import RedrawnOnThemeChange, theme_style

PHASE_WIDTH = 10  # "confirming", "evaluating"
TIME_WIDTH = 11  # "4m59s/5m00s"
NARROW = 100  # below this many columns the bar is shorter
TRAINING = ("running", "confirming")  # phases with a budget bar
MARK = "▸ "


class FlightsPane(RedrawnOnThemeChange, Widget):
    """The running experiments (several workers). Not focusable: the screen's keys move
    the selection, so the log keeps its arrow keys."""

    DEFAULT_CSS = """
    FlightsPane { height: auto; display: none; }
    FlightsPane.-show { display: block; }
    """

    def on_mount(self) -> None:
        self.border_title = "Running"
        self.rows: list[tuple[Flight, str, bool]] = []  # each row's flight, its line of text, whether it is a hypothesis
        self.selected: int | None = None
        self.now = 0.0
        self.budget: float | None = None
        self.label_width = 2  # the widest worker label ("w1", "w1@gpu-box-2"): the rows' columns align
        self.redraw_on_theme_change()

    def show(self, view: RunView, now: float) -> None:
        self._shown = (view, now)
        self.set_class(view.several, "-show")
        if not view.several:
            return
        rows = [(f, *view.flight_text(f)) for f in view.flights]
        budget = view.state.budget
        clock = tuple(self._clock(f, now) for f, _, _ in rows)
        key = (tuple(rows), view.selected, clock, budget, view.workers)
        if key == self._key:
            return  # nothing new: no repaint
        grew = len(rows) != len(self.rows) or self._key is None
        self._key = key
        self.rows, self.selected, self.now, self.budget = rows, view.selected, now, budget
        self.label_width = max((len(f.label) for f, _, _ in rows), default=2)
        workers = view.workers
        self.border_title = f"Running · {len(rows)} of {workers} workers" if workers > 1 else "Running"
        self.border_subtitle = "[ ] select · s k act on ▸" if len(rows) > 1 else ""
        self.refresh(layout=grew)

    @staticmethod
    def _clock(flight: Flight, now: float) -> int | None:
        """What of the clock a row shows, in whole seconds (rows repaint when it moves)."""
        since = flight.phase_started_at
        return int(max(0.0, now - since)) if since is not None else None

    # -- layout ---------------------------------------------------------------------------

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return max(1, len(getattr(self, "rows", [])))

    def render(self) -> Group:
        width = max(1, self.content_region.width or self.size.width)
        if not self.rows:
            return Group(Text("no experiment in progress", style="dim italic"))
        return Group(*(self._row(flight, text, guess, width) for flight, text, guess in self.rows))

    def _row(self, flight: Flight, text: str, guess: bool, width: int) -> Text:
        style = partial(theme_style, self)
        chosen = flight.n == self.selected
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(MARK if chosen else " " * len(MARK), style=style("bold $accent"))
        line.append(f"#{flight.n:04d}", style="bold" if chosen else "")
        line.append(f"  {flight.label:<{self.label_width}}", style="dim")
        line.append("  ")
        line.append(f"{flight.phase:<{PHASE_WIDTH}}", style="reverse" if chosen else "bold")
        line.append("  ")
        bar_width = 12 if width < NARROW else 20
        since, budget = flight.phase_started_at, self.budget
        elapsed = max(0.0, self.now - since) if since is not None else None
        if flight.phase in TRAINING and elapsed is not None and budget is not None:
            line.append_text(budget_bar(elapsed, budget, style, width=bar_width))
            line.append(f"  {fmt.duration(elapsed) + '/' + fmt.duration(budget):<{TIME_WIDTH}}")
        else:
            clock = f"for {fmt.duration(elapsed)}" if elapsed is not None else ""
            line.append(f"{clock:<{bar_width}}  {'':<{TIME_WIDTH}}", style="dim")
        line.append("  ")
        if text:
            line.append(fmt.one_line(text), style="dim italic" if guess else "")
        else:
            line.append("(no description yet)", style="dim")
        line.truncate(width, overflow="ellipsis")
        return line

    # -- the mouse ---------------------------------------------------------------------

    def on_click(self, event: events.Click) -> None:
        """A click on a row selects it."""
        row = event.y - (self.content_region.y - self.region.y)
        if 0 <= row < len(self.rows):
            n = self.rows[row][0].n
            if n is not None:
                event.stop()
                self.app.select_flight(n)  # type: ignore[attr-defined]
