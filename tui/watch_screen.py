"""Watch mode's screens: a loop that another program drives (Karpathy's autoresearch run by
Claude Code or Codex), shown with the monitor's own panes.

The live layout is the monitor's: the loop pane (the training process, the best against
the baseline, the counts, the branch's recent commits) where the experiment pane is, then
the chart of results.tsv's metric, the streaming run.log, GPU/CPU and the uncommitted
diff. The keys that steer our engine are shown but unavailable, and say why; ``K`` ends
a hung training run.
Keys are bound here; the work behind them lives in tui/watch_app.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from rich.console import Group
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from engine.results import Result, Standing
from engine.watch import GitView, TrainingProcess
from tui import fmt
from tui.dialogs import HelpScreen
from tui.history import HistoryScreen
from tui.keybar import KeyBar
from tui.panes_screen import TAB_BINDINGS, PanesScreen
from tui.themes import on_theme_change, theme_style

DRIVEN_ELSEWHERE = "this loop is driven by another program"
# Keys of the monitor that steer our engine: shown, unavailable, and saying why when pressed.
STEERING = {"p": "Pause", "s": "Skip", "k": "Keep", "n": "Note"}


@dataclass
class LoopInfo:
    """What the loop pane shows; the app keeps it and hands it over whole."""

    repo: Path
    results: list[Result] = field(default_factory=list)
    standing: Standing = field(default_factory=Standing)
    baseline: float | None = None
    skipped: list[int] = field(default_factory=list)
    results_file: bool = True
    training: TrainingProcess | None = None
    git: GitView | None = None


def shorten_path(path: str, room: int) -> str:
    """``path`` with the home directory as ~, cut from the left to ``room`` cells (the
    repository's own name is kept whole: it is the part that tells loops apart)."""
    home = str(Path.home())
    if home != "/" and (path == home or path.startswith(home + "/")):
        path = "~" + path[len(home):]
    if len(path) <= room:
        return path
    name = Path(path).name
    return "…/" + name if len(name) + 2 >= room else "…" + path[-(room - 1):]


def status_by_commit(results: list[Result]) -> dict[str, Result]:
    """The latest result of each commit named in results.tsv (short hashes)."""
    return {r.commit: r for r in results if r.commit}


def result_for(commit_sha: str, by_commit: dict[str, Result]) -> Result | None:
    for short, r in by_commit.items():
        if len(short) >= 4 and commit_sha.startswith(short.lower()):
            return r
    return None


class LoopPane(Widget):
    """The loop at a glance: training process, best vs baseline, counts, recent commits."""

    DEFAULT_CSS = "LoopPane { height: 1fr; }"

    def on_mount(self) -> None:
        self.border_title = "Loop"
        self.info: LoopInfo | None = None
        self.now = time.time()
        on_theme_change(self, self.refresh)

    def show(self, info: LoopInfo, now: float) -> None:
        self.info, self.now = info, now
        git = info.git
        branch = (git.branch or "detached HEAD") if git is not None and git.error is None else None
        self.border_title = f"Loop · {branch}" if branch else "Loop"
        self.refresh()

    def lines(self) -> list[Text]:
        """Every line, most important first (render() cuts the commits to fit)."""
        info = self.info
        if info is None:
            return [Text("reading…", style="dim")]
        style = partial(theme_style, self)
        out = [self._training_line(info, style)]
        best = info.standing.best
        line = Text()
        line.append("best ", style="dim")
        line.append(fmt.metric(best.metric if best else None), style="bold")
        if best is not None:
            line.append(f" (#{best.n} {fmt.short_commit(best.commit)})", style="dim")
        if best is not None and info.baseline is not None:
            gain = best.metric - info.baseline
            pct = gain / info.baseline * 100 if info.baseline else 0.0
            line.append(f"  {fmt.delta(gain)} ({pct:+.2f}%)", style=style("$success" if gain < 0 else ""))
            line.append(" vs baseline ", style="dim")
            line.append(fmt.metric(info.baseline))
        out.append(line)
        counts = info.standing.grouped_counts()
        tally = Text()
        tally.append(f"keep {counts['keep']}", style=style("$success"))
        tally.append(f" · discard {counts['discard']} · ")
        tally.append(f"crash {counts['failed']}", style=style("$error" if counts["failed"] else ""))
        if counts["other"]:
            tally.append(f" · other {counts['other']}", style="dim")
        tally.append(f"   {len(info.results)} rows in results.tsv" if info.results_file else "   no results.tsv yet",
                     style="dim")
        if info.skipped:
            n = len(info.skipped)
            tally.append(f"  ({n} malformed line{'s' if n != 1 else ''} skipped)", style=style("$warning"))
        out.append(tally)
        out.extend(self._commit_lines(info, style))
        return out

    def _training_line(self, info: LoopInfo, style) -> Text:  # type: ignore[no-untyped-def]
        t = info.training
        line = Text()
        if t is None:
            line.append("○ no train.py running", style="dim")
            return line
        line.append("● training ", style=style("bold $success"))
        line.append(f"pid {t.pid} · {fmt.duration(max(0.0, self.now - t.create_time))} · ")
        line.append(fmt.one_line(t.command), style="dim")
        return line

    def _commit_lines(self, info: LoopInfo, style) -> list[Text]:  # type: ignore[no-untyped-def]
        git = info.git
        if git is None:
            return [Text("reading git…", style="dim")]
        if git.error:
            return [Text(f"git: {git.error}", style=style("$warning"))]
        by_commit = status_by_commit(info.results)
        out = []
        for i, c in enumerate(git.commits):
            line = Text()
            line.append("▶ " if i == 0 else "  ", style="bold")
            line.append(f"{c.short[:7]} ", style="dim")
            line.append(f"{fmt.duration(max(0.0, self.now - c.time)):>6} ", style="dim")
            r = result_for(c.sha, by_commit)
            if r is not None:
                line.append(f"{r.status:<7} ", style=style(fmt.STATUS_STYLE.get(r.status, "")))
                line.append(f"{fmt.metric(r.metric)} ", style="dim" if r.status != "keep" else "")
            elif i == 0:
                label = "running" if info.training is not None else "no result"
                line.append(f"{label:<7} {'':>6} ", style=style("$warning") if info.training is not None else "dim")
            else:
                line.append(f"{'':<7} {'':>6} ")
            line.append(fmt.one_line(c.subject))
            out.append(line)
        return out or [Text("no commits", style="dim")]

    def render(self) -> Group:
        width = max(1, self.content_region.width or self.size.width)
        height = max(1, self.content_region.height or self.size.height)
        out = []
        for line in self.lines()[:height]:
            line = line.copy()
            line.no_wrap = True
            line.overflow = "ellipsis"
            line.truncate(width, overflow="ellipsis")
            out.append(line)
        return Group(*out)


class WatchScreen(PanesScreen):
    BINDINGS = [
        *(Binding(key, f"steer('{label.lower()}')", label) for key, label in STEERING.items()),
        Binding("h", "history", "History"),
        Binding("d", "diff", "Diff"),
        Binding("l", "focus_log", "Log"),
        Binding("K", "kill_training", "Kill training"),
        *TAB_BINDINGS,
    ]

    DEFAULT_CSS = "WatchScreen.-compact #loop { height: 9; }"

    def compose(self) -> ComposeResult:
        yield Static(id="topbar")
        with Container(id="body"):
            yield LoopPane(id="loop", classes="pane")
            yield from self.tabbed_panes(root_label="train.py")
        yield KeyBar()  # redrawn when K turns available or dimmed with the same words

    def on_mount(self) -> None:
        self._top: tuple[str, TrainingProcess | None] | None = None
        on_theme_change(self, self._restyle)
        self.app.watch_ready()  # type: ignore[attr-defined]

    def on_resize(self, event: events.Resize) -> None:
        # PanesScreen.on_resize, run as well, turns the layout compact or back
        if self._top is not None:
            self.show_top(*self._top)  # the path is cut to the width

    # -- what the screen shows ---------------------------------------------------------

    def _restyle(self) -> None:
        if self._top is not None:
            self.show_top(*self._top)

    def show_top(self, repo: str, training: TrainingProcess | None) -> None:
        self._top = (repo, training)
        style = partial(theme_style, self)
        mark = (f"● training (pid {training.pid})", style("$success")) if training is not None \
            else ("○ no training process", style("dim"))
        fixed = len("autoresearch · watching  (driven by another program) · ") + len(mark[0])
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append("autoresearch", style="bold")
        out.append(" · watching ")
        out.append(shorten_path(repo, self.size.width - 2 - fixed), style="bold")
        out.append(" (driven by another program) · ")
        out.append(*mark)
        self.query_one("#topbar", Static).update(out)

    # -- keys: the app does the work ------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "steer":
            return None  # shown, dimmed: pressing the key explains (on_key)
        if action == "kill_training":
            return True if self.app.training is not None else None  # type: ignore[attr-defined]
        return True

    def on_key(self, event: events.Key) -> None:
        # A disabled binding does not run its action, so the keys that cannot work here
        # are answered before the bindings are looked at.
        if event.key in STEERING:
            event.stop()
            self.app.explain_unavailable(STEERING[event.key])  # type: ignore[attr-defined]
        elif event.key == "K" and self.app.training is None:  # type: ignore[attr-defined]
            event.stop()
            self.app.ask_kill()  # type: ignore[attr-defined]

    def action_steer(self, name: str) -> None:
        self.app.explain_unavailable(name.capitalize())  # type: ignore[attr-defined]

    def action_kill_training(self) -> None:
        self.app.ask_kill()  # type: ignore[attr-defined]


class WatchHistoryScreen(HistoryScreen):
    """results.tsv as the history; Enter shows the row's commit (``git show``)."""

    PREVIEW_HINT = "Enter shows the commit."

    def on_virtual_table_selected(self, event) -> None:  # type: ignore[no-untyped-def, override]
        event.stop()
        event.prevent_default()  # not the base class's handler: there is no experiments/NNNN here
        self.app.open_commit(event.record)  # type: ignore[attr-defined]


WATCH_HELP = """\
Watching a loop that another program drives (Karpathy's autoresearch run by
Claude Code, Codex, ...). Nothing in its repository is written.

  h        history: results.tsv (sort o, filter f, search /, Enter: git show)
  d        the uncommitted change (git diff HEAD) full screen
  l        focus the training log (run.log; End follows the tail again)
  K        kill the running train.py (asks first): SIGTERM, SIGKILL after a
           grace period; the driving agent sees a crash and moves on
  p s k n  pause, skip, keep, note: unavailable, the loop is not ours
  tab      move between panes; at 80x24, 1-4 switch tabs
  ctrl+p   command palette
  q        quit (the loop is not affected)
"""


class WatchHelpScreen(HelpScreen):
    def compose(self) -> ComposeResult:
        with VerticalScroll() as box:
            box.border_title = "Keys"
            box.border_subtitle = "Esc closes"
            yield Static(Text(WATCH_HELP))
