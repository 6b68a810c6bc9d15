"""The live screen: what the loop is doing right now, and the keys that steer it.

At 160x50 (and down to about 100x30) every pane is visible in a grid. Smaller, the
screen turns compact: the experiment pane stays on top and the other four become tabs
(1-4 switch). With several workers, a row per running experiment sits above the panes
(``[`` and ``]`` select one; the panes follow it). The grid, the tabs and the keys it
shares with watch mode are tui/panes_screen.py's. Keys are bound here; the work behind
them lives in the app.
"""

from __future__ import annotations

from functools import partial

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container
from textual.widgets import Static

from tui import fmt
from tui.chart_pane import show_metric
from tui.flights_pane import FlightsPane
from tui.hypothesis_pane import HypothesisPane
from tui.keybar import KeyBar
from tui.model import Ack, RunView
from tui.panes_screen import TAB_BINDINGS, PanesScreen
from tui.themes import on_theme_change, theme_style

# The badge in the top bar while training runs without a sandbox: a block of the theme's
# error colour, and a word that still reads as a badge under NO_COLOR.
UNSANDBOXED_STYLE = "bold $background on $error"


def unsandboxed_note(reason: str) -> str:
    """What the badge means, for its tooltip, the help and the notice on start."""
    return (f"UNSANDBOXED: {reason}. train.py runs with your user's rights, outside any sandbox; "
            "install bubblewrap (bwrap) to confine it.")


class LiveScreen(PanesScreen):
    BINDINGS = [
        Binding("p", "pause", "Pause"),
        Binding("p", "resume", "Resume"),
        Binding("s", "skip", "Skip"),
        Binding("k", "keep", "Keep"),
        Binding("right_square_bracket", "select(1)", "Select", key_display="[ ]"),  # shown with several workers
        Binding("left_square_bracket", "select(-1)", "Previous", show=False),
        Binding("n", "note", "Note"),
        Binding("h", "history", "History"),
        Binding("d", "diff", "Diff"),
        Binding("l", "focus_log", "Log"),
        Binding("r", "restart", "Restart engine"),
        *TAB_BINDINGS,
    ]

    DEFAULT_CSS = """
    LiveScreen #banner { height: auto; display: none; padding: 0 1; background: $error 25%; color: $text; }
    LiveScreen #banner.-warning { background: $warning 25%; }
    LiveScreen #banner.-show { display: block; }
    LiveScreen #flights { border-subtitle-color: $text-muted; }
    LiveScreen.-compact #flights { border: none; }
    LiveScreen.-compact #hypothesis { height: 9; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="topbar")
        yield Static(id="banner")
        yield FlightsPane(id="flights", classes="pane")
        with Container(id="body"):
            yield HypothesisPane(id="hypothesis", classes="pane")
            yield from self.tabbed_panes()
        yield KeyBar()

    def on_mount(self) -> None:
        self._top: tuple | None = None  # what show_top and show_banner were last given,
        self._banner: tuple | None = None  # to draw it again in a new theme's colours
        self._unsandboxed: str | None = None
        self._top_text: Text | None = None  # what the top bar and the banner show now
        self._banner_text: tuple[Text, bool] | None = None
        on_theme_change(self, self._restyle)
        self.app.live_ready()  # type: ignore[attr-defined]

    # -- what the screen shows ---------------------------------------------------------

    def _restyle(self) -> None:
        self._top_text = self._banner_text = None  # the same words in new colours: draw them again
        if self._top is not None:
            self.show_top(*self._top)
        if self._banner is not None:
            self.show_banner(*self._banner)

    def show_metric(self, metric: fmt.Metric) -> None:
        """The run's metric names the chart and its tab."""
        show_metric(self, metric)

    def show_top(self, view: RunView, engine: str, ack: Ack | None, polling: bool) -> None:
        self._top = (view, engine, ack, polling)
        style = partial(theme_style, self)
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append("autoresearch", style="bold")
        out.append(f" · {view.tag} · ")
        unsandboxed = view.unsandboxed()
        if unsandboxed is not None:  # first, so that no width of terminal cuts it off
            out.append(" UNSANDBOXED ", style=style(UNSANDBOXED_STYLE))
            out.append(" ")
        topbar = self.query_one("#topbar", Static)
        if unsandboxed != self._unsandboxed:  # the reason, on hovering the top bar
            self._unsandboxed = unsandboxed
            topbar.tooltip = Text(unsandboxed_note(unsandboxed)) if unsandboxed is not None else None
        mark = {"running": ("● engine running", "$success"), "stale": ("● engine silent", "$warning"),
                "stopped": ("■ engine stopped", "$warning"), "gone": ("✖ engine gone", "bold $error"),
                "unknown": ("… checking engine", "dim")}[engine]
        out.append(mark[0], style=style(mark[1]))
        if view.paused:
            out.append(" · PAUSED", style=style("bold $warning"))
        elif view.pause_requested and engine in ("running", "stale"):
            out.append(" · pausing", style=style("$warning"))  # after this experiment
        if polling:
            out.append(" · polling", style="dim")
        if ack is not None:
            ack_style = {"accepted": "$success", "refused": "$warning", "error": "$error"}[ack.result]
            out.append("   ")
            out.append(f"{ack.cmd}: {ack.result}" + (f" ({ack.message})" if ack.message else ""), style=style(ack_style))
        if out != self._top_text:  # the same line again (a heartbeat, a tick): no repaint
            self._top_text = out
            topbar.update(out, layout=False)  # one line, always: no layout pass

    def show_banner(self, view: RunView, engine: str, now: float) -> None:
        """A line above the panes when something needs the user: the engine gone, stopped or
        silent, or an error it reported (the experiment pane has room for its start only)."""
        self._banner = (view, engine, now)
        banner = self.query_one("#banner", Static)
        error = fmt.one_line(view.state.error).rstrip(".")
        if engine not in ("gone", "stale", "stopped") and not (engine == "running" and error):
            banner.set_class(False, "-show")
            self._banner_text = None
            return
        seen = view.last_seen()
        where = view.where()
        last_error = f"Last error: {error}. " if error else ""
        text = Text()
        if engine == "gone":
            text.append("The engine is not running. ", style="bold")
            text.append(f"Last state: {where}; last seen {fmt.clock(seen)} ({fmt.ago(seen, now)}). {last_error}")
            text.append("Press r to restart it (it resumes this run).")
        elif engine == "stopped":
            text.append("The run has stopped. ", style="bold")
            text.append(f"Last seen {fmt.clock(seen)} ({fmt.ago(seen, now)}). {last_error}")
            text.append("Press r to start it again, h for the history.")
        elif engine == "stale":
            text.append("The engine is alive but silent: ", style="bold")
            text.append(f"no heartbeat since {fmt.clock(seen)} ({fmt.ago(seen, now)}). Last state: {where}. {last_error}")
        elif view.paused:
            text.append("Paused on an error: ", style="bold")
            text.append(f"{error}. Press p to resume once it is dealt with, n to tell the agent.")
        else:
            text.append("The engine reports an error: ", style="bold")
            text.append(f"{error}.")
        text.rstrip()
        warning = engine in ("stale", "stopped") and not error  # not (yet) a failure
        if (text, warning) == self._banner_text:
            return  # unchanged: no repaint
        self._banner_text = (text, warning)
        banner.update(text)  # with a layout pass: the banner's height follows its text
        banner.set_class(warning, "-warning")
        banner.set_class(True, "-show")

    # -- actions: the app does the work ---------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.app.can_run(action)  # type: ignore[attr-defined]

    def action_pause(self) -> None:
        self.app.confirm_and_send("pause")  # type: ignore[attr-defined]

    def action_resume(self) -> None:
        self.app.confirm_and_send("resume")  # type: ignore[attr-defined]

    def action_skip(self) -> None:
        self.app.confirm_and_send("skip")  # type: ignore[attr-defined]

    def action_keep(self) -> None:
        self.app.confirm_and_send("keep")  # type: ignore[attr-defined]

    def action_select(self, step: int) -> None:
        self.app.select_step(step)  # type: ignore[attr-defined]

    def action_note(self) -> None:
        self.app.ask_note()  # type: ignore[attr-defined]

    def action_restart(self) -> None:
        self.app.restart_engine()  # type: ignore[attr-defined]
