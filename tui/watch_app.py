"""`autoresearch watch`: the monitor on a loop that another program drives.

Threads and workers, and where their results go:
- the RepoWatcher thread (engine/watch.py) tails results.tsv and run.log, runs git at
  most every few seconds and looks for the training process; it posts ``WatchBatchMessage``s,
  which ``apply`` folds in and then acks (back-pressure, as in the monitor);
- the "stats" worker samples GPU/CPU (tui/sysstats.py) for the training process tree,
  re-armed with a timer when it finishes so two samples never overlap;
- "kill" (``K``) and "commit" (``git show`` for the history) run in thread workers.
Every worker is exit_on_error=False; failures all reach ``report_error``. Nothing here
writes to the watched repository.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from engine.results import Result, Standing
from engine.rundir import RUNS_DIRNAME, RunDir
from engine.watch import (
    KILL_GRACE_S,
    GitError,
    KillOutcome,
    RepoWatcher,
    TrainingProcess,
    WatchBatch,
    WatchReader,
    commit_text,
    kill_training,
)
from tui import fmt
from tui.chart_pane import ChartPane, show_metric
from tui.dialogs import ConfirmModal
from tui.diff_pane import DiffPane, DiffScreen
from tui.log_pane import LogPane
from tui.sysstats import Sample, Sampler
from tui.util_pane import UtilPane
from tui.watch_screen import DRIVEN_ELSEWHERE, LoopInfo, LoopPane, WatchHelpScreen, WatchHistoryScreen, WatchScreen

STATS_INTERVAL = 2.0
DEBOUNCE_S = 2.0  # K again within this of a kill is "already sent"


class WatchBatchMessage(Message):
    def __init__(self, batch: WatchBatch):
        super().__init__()
        self.batch = batch


class WatchFailed(Message):
    def __init__(self, error: BaseException):
        super().__init__()
        self.error = error


def branch_tag(branch: str | None, repo: Path) -> str:
    """"nov25" for autoresearch/nov25; else the branch, or the repository's name."""
    if branch and branch.startswith("autoresearch/"):
        return branch.split("/", 1)[1]
    return branch or repo.name


class WatchApp(App[None]):
    TITLE = "autoresearch watch"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
    ]

    def __init__(
        self,
        repo: Path | str,
        *,
        reader: WatchReader | None = None,
        sampler: Any = None,
        stats_interval: float = STATS_INTERVAL,
        kill_grace: float = KILL_GRACE_S,
        poll_interval: float = 0.25,
        clock: Any = time.time,
    ):
        super().__init__()
        self.repo = Path(repo)
        self.reader = reader if reader is not None else WatchReader(self.repo)
        self.watcher = RepoWatcher(self.reader, self._from_watcher, on_error=self._watch_failed,
                                   poll_interval=poll_interval)
        self.sampler = sampler if sampler is not None else Sampler()
        self.stats_interval = stats_interval
        self.kill_grace = kill_grace
        self.clock = clock
        self.info = LoopInfo(repo=self.repo)
        self.diff = ""
        self.training: TrainingProcess | None = None
        self.kills: list[KillOutcome] = []  # every outcome of K this session, oldest first
        self._modal_open = False
        self._kill_in_flight = False
        self._last_kill = -1e9
        self._watching = False
        self._errors_shown: set[str] = set()
        self.theme_problems: list[str] = []
        self._load_themes()

    def _load_themes(self) -> None:
        from tui.themes import DEFAULT_THEME, chosen_theme, load_themes

        themes, self.theme_problems = load_themes()
        for theme in themes:
            self.register_theme(theme)
        wanted = chosen_theme()
        fallback = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
        if wanted not in self.available_themes:
            if wanted != DEFAULT_THEME:
                self.theme_problems.append(f"unknown theme {wanted!r}; using {fallback}")
            wanted = fallback
        self.theme = wanted

    def get_default_screen(self) -> Screen:
        return WatchScreen()

    def on_mount(self) -> None:
        for problem in self.theme_problems:
            self.notify(problem, severity="warning")

    def watch_ready(self) -> None:
        """The watch screen's panes exist: start reading."""
        if self._watching:
            return
        self._watching = True
        self._show_top()
        self.watcher.start()
        self.collect_stats()
        self.set_interval(1.0, self._tick)

    def on_unmount(self) -> None:
        self.watcher.stop()

    @property
    def screen_live(self) -> WatchScreen | None:
        if self._exit or not self._watching:
            return None
        for screen in self.screen_stack:
            if isinstance(screen, WatchScreen) and screen.query("#topbar"):
                return screen
        return None

    # -- data from the watcher -----------------------------------------------------------

    def _from_watcher(self, batch: WatchBatch) -> None:
        """On the watcher thread: hand over and return at once."""
        self.post_message(WatchBatchMessage(batch))

    def _watch_failed(self, error: BaseException) -> None:
        self.post_message(WatchFailed(error))

    def on_watch_failed(self, message: WatchFailed) -> None:
        self.report_error("reading the repository", message.error, once=True)

    def on_watch_batch_message(self, message: WatchBatchMessage) -> None:
        try:
            self.apply(message.batch)
        except Exception as e:
            self.report_error("showing new data", e)
        finally:
            self.watcher.ack()

    def apply(self, batch: WatchBatch) -> None:
        info = self.info
        results_changed = batch.results_reset or bool(batch.results)
        if batch.results_reset:
            info.results, info.standing = [], Standing()
        for r in batch.results:
            info.results.append(r)
            info.standing.add(r)
        if results_changed:
            info.baseline = next((r.metric for r in info.results if r.baseline), None)
        if batch.skipped is not None:
            info.skipped = batch.skipped
        info.results_file = self.reader.results_exist  # the watcher waits for our ack: no race
        if batch.git is not None:
            info.git = batch.git
        if batch.diff is not None:
            self.diff = batch.diff
        if batch.training_changed:
            self.training = batch.training
            info.training = batch.training
        screen = self.screen_live
        if screen is None:
            return
        if batch.training_changed:
            screen.refresh_bindings()  # K: available or dimmed (the watch screen's, under any dialog)
        if batch.log_reset or batch.log_lines or batch.log_partial is not None:
            pane = screen.query_one(LogPane)
            if batch.log_reset:
                pane.reset(None)
            pane.append(batch.log_lines, batch.log_partial, batch.log_skipped_bytes)
        if results_changed:
            metric = fmt.Metric.of(info.results)  # results.tsv's header names it
            screen.query_one(ChartPane).show(info.results, info.baseline, metric)
            show_metric(screen, metric)
            self._history_add(batch)
        if batch.diff is not None:
            pane = screen.query_one(DiffPane)
            pane.show(self.diff, None)
            pane.border_title = str(pane.border_title).replace("Pending change", "Uncommitted change", 1)
        if batch.training_changed:
            self._show_top()
        if results_changed or batch.git is not None or batch.training_changed or batch.skipped is not None:
            screen.query_one(LoopPane).show(info, self.clock())

    def _history_add(self, batch: WatchBatch) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, WatchHistoryScreen):
                if batch.results_reset:
                    screen.records = list(self.info.results)
                    screen.refilter()
                else:
                    screen.add_records(batch.results)

    def _show_top(self) -> None:
        screen = self.screen_live
        if screen is not None:
            screen.show_top(str(self.repo), self.training)

    def _tick(self) -> None:
        """Once a second: the training's elapsed time and the commits' ages."""
        screen = self.screen_live
        if screen is not None and self.info.git is not None:
            screen.query_one(LoopPane).show(self.info, self.clock())

    # -- utilization ------------------------------------------------------------------

    def collect_stats(self) -> None:
        pid = self.training.pid if self.training is not None else None
        self.run_worker(lambda: self._sample(pid), name="stats", group="stats", thread=True, exit_on_error=False)

    def _sample(self, pid: int | None) -> Sample:
        sample = self.sampler.sample(pid)
        if pid is None:
            sample.proc_note = "no train.py running"
        elif sample.proc is None:
            sample.proc_note = f"train.py (pid {pid}) has ended"
        return sample

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        if worker.group == "stats":
            if event.state == WorkerState.SUCCESS and isinstance(worker.result, Sample):
                screen = self.screen_live
                if screen is not None:
                    screen.query_one(UtilPane).show(worker.result)
            elif event.state == WorkerState.ERROR:
                self.report_error("reading GPU/CPU utilization", worker.error, once=True)
            self.set_timer(self.stats_interval, self.collect_stats)  # re-armed only now: never overlapping
        elif worker.group == "kill":
            self._kill_in_flight = False
            self._last_kill = time.monotonic()
            if event.state == WorkerState.SUCCESS and isinstance(worker.result, KillOutcome):
                outcome = worker.result
                self.kills.append(outcome)
                self.notify(outcome.message, title="Training killed" if outcome.ended else "Kill failed",
                            severity="information" if outcome.ended else "error", timeout=8, markup=False)
            else:
                self.report_error("killing the training process", worker.error)
            self.watcher.poke(refresh=True)
        elif worker.group == "commit":
            if event.state == WorkerState.SUCCESS:
                title, text = worker.result
                self.push_screen(DiffScreen(text, title))
            elif isinstance(worker.error, GitError):
                self.notify(str(worker.error), title="Cannot show that commit", severity="warning", markup=False)
            else:
                self.report_error("reading a commit", worker.error)
        elif event.state == WorkerState.ERROR:
            self.report_error(worker.name or "background work", worker.error)

    # -- keys -----------------------------------------------------------------------------

    def explain_unavailable(self, name: str) -> None:
        self.notify(f"{DRIVEN_ELSEWHERE}: its agent decides. K ends a hung training run.",
                    title=f"{name}: unavailable", severity="warning", timeout=4)

    def ask_kill(self) -> None:
        if self._modal_open:
            return  # repeated presses do not stack dialogs
        training = self.training
        if training is None:
            self.notify(f"no train.py process is running in {self.repo}", title="Kill training: refused",
                        severity="warning", markup=False)
            return
        if self._kill_in_flight or time.monotonic() - self._last_kill < DEBOUNCE_S:
            self.notify("already sent; waiting for train.py to end", title="Kill training", timeout=2)
            return
        self._modal_open = True
        ran = fmt.duration(max(0.0, time.time() - training.create_time))

        def answered(ok: bool | None) -> None:
            self._modal_open = False
            if ok:
                self.kill(training)

        self.push_screen(ConfirmModal(
            "Kill the training run?",
            f"End train.py (pid {training.pid}, running for {ran}: {fmt.one_line(training.command, 60)})? "
            f"SIGTERM now, SIGKILL after {self.kill_grace:g} s. The program driving the loop sees a crash "
            "and moves on.",
            "Kill it",
        ), answered)

    def kill(self, training: TrainingProcess) -> None:
        if self._kill_in_flight:
            return
        self._kill_in_flight = True
        self._last_kill = time.monotonic()
        grace = self.kill_grace
        self.notify(f"SIGTERM to train.py (pid {training.pid})…", title="Kill training", timeout=3)
        self.run_worker(lambda: kill_training(training, grace), name="kill", group="kill", thread=True,
                        exit_on_error=False)

    def report_error(self, doing: str, error: BaseException | None, once: bool = False) -> None:
        """The one place where background failures reach the user."""
        text = f"Error while {doing}: {type(error).__name__}: {error}" if error else f"Error while {doing}"
        if once:
            if text in self._errors_shown:
                return
            self._errors_shown.add(text)
        self.notify(text, severity="error", timeout=8, markup=False)

    # -- screens ---------------------------------------------------------------------------

    def open_history(self) -> None:
        git = self.info.git
        tag = branch_tag(git.branch if git is not None else None, self.repo)
        # A label for the history's title only: RunDir touches nothing on disk, and the
        # watch history never opens experiments/NNNN (Enter shows the commit instead).
        label = RunDir(self.repo / RUNS_DIRNAME / tag)
        self.push_screen(WatchHistoryScreen(label, list(self.info.results)))

    def open_diff(self) -> None:
        self.push_screen(DiffScreen(self.diff, "Uncommitted change (git diff HEAD)"))

    def open_commit(self, record: Result) -> None:
        if not record.commit:
            self.notify(f"row {record.n} of results.tsv names no commit", severity="warning")
            return
        repo = self.repo
        title = f"#{record.n} {record.commit} {record.status} {fmt.metric(record.metric)}  {fmt.one_line(record.description)}"

        def read() -> tuple[str, str]:
            try:
                return title, commit_text(repo, record.commit or "")
            except GitError as e:
                raise GitError(f"{record.commit}: {e} (a discarded commit may have been garbage-collected)") from None

        self.run_worker(read, name="commit", group="commit", thread=True, exit_on_error=False)

    def action_help(self) -> None:
        if not isinstance(self.screen, WatchHelpScreen):
            self.push_screen(WatchHelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        if isinstance(screen, WatchScreen):
            yield SystemCommand("History", "results.tsv, row by row", self.open_history)
            yield SystemCommand("Uncommitted change", "git diff HEAD, full screen", self.open_diff)
            yield SystemCommand("Focus the log", "Scroll run.log", screen.action_focus_log)
            if self.training is not None:
                yield SystemCommand("Kill training", "End the running train.py (asks first)", self.ask_kill)
        yield SystemCommand("Help", "Every key", self.action_help)
        yield from super().get_system_commands(screen)


def run_watch(repo: Path) -> int:
    WatchApp(repo).run()
    return 0
