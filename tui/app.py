"""The monitor app: wires the watcher, the sampler and the control socket to the screens.

Threads and workers, and where their results go:
- the RunWatcher thread posts ``RunBatch`` messages; ``on_run_batch`` folds each into
  the RunView, redraws the panes that changed, then acks (back-pressure);
- the "stats" worker samples GPU/CPU; when it finishes it is re-armed with a timer, so
  two samples never overlap;
- a tick redraws what depends on the clock (elapsed time, "last seen");
- while the engine is idle (paused, stopped, gone) the tick and the sampler slow down,
  and they speed up again as soon as a batch says it moves;
- each control command runs in a "command" worker (the socket never blocks the UI).
Every worker is exit_on_error=False; failures all reach ``report_error``.

With several workers one running experiment is selected (``RunView.selected``): the
watcher is told to read its run.log and diff.patch (``RunWatcher.follow``), the panes
show it, and skip and keep carry its number.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any, Callable, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from engine.control import ControlError, send_command
from engine.rundir import RunDir
from tui import alerts, fmt
from tui.chart_pane import ChartPane
from tui.dialogs import ConfirmModal, HelpScreen, NoteModal, QuitModal
from tui.diff_pane import DiffPane, DiffScreen
from tui.flights_pane import FlightsPane
from tui.hypothesis_pane import IDLE_PHASES, HypothesisPane
from tui.live import LiveScreen
from tui.log_pane import LogPane
from tui.model import Ack, RunView
from tui.rundata import Batch, RunWatcher
from tui.sysstats import Sample, Sampler
from tui.util_pane import UtilPane

STATS_INTERVAL = 2.0  # seconds between GPU/CPU samples
TICK_S = 1.0  # the clock on screen (budget bar, elapsed time) while the engine works
IDLE_TICK_S = 5.0  # ...and while it is paused, stopped or gone: nothing there moves by the second
IDLE_SLOWDOWN = 5  # samples this many times less often while the engine is idle
DEBOUNCE_S = 2.0  # the same command again within this is "already sent", not resent
# A batch with at least this many results (a long run read at start, or results.jsonl
# replaced) is frozen out of the cyclic garbage collector: the records live as long as
# the monitor, and 10,000 of them double the length of every full collection (a pause
# of ~0.1 s on two cores). They hold no cycles, so a reset still frees them.
FREEZE_RESULTS = 1000

CONFIRM = {
    "skip": ("Skip this run?", "Stop the current run now and record it as skipped? Its change is reverted.", "Skip it"),
    "keep": ("Force-keep?", "Keep the current experiment when it finishes with a metric, even if it does not beat the best?", "Keep it"),
}
# With several workers: the selected experiment's (its number, and its description).
CONFIRM_ONE = {
    "skip": ("Skip #{n:04d}?", "Stop experiment #{n:04d}{what} now and record it as skipped? Its change is reverted.",
             "Skip it"),
    "keep": ("Force-keep #{n:04d}?", "Keep experiment #{n:04d}{what} when it finishes with a metric, even if it does "
             "not beat the best?", "Keep it"),
}
FOOTER_ACTIONS = ("pause", "resume", "skip", "keep", "select", "note", "restart", "diff")


class RunBatch(Message):
    """New data from the watcher thread."""

    def __init__(self, batch: Batch):
        super().__init__()
        self.batch = batch


class MonitorApp(App[str | None]):
    TITLE = "autoresearch"
    BINDINGS = [
        Binding("q", "quit_monitor", "Quit"),
        Binding("question_mark", "help", "Help"),
    ]

    def __init__(
        self,
        run: RunDir,
        *,
        clock: Callable[[], float] = time.time,
        sampler: Any = None,
        stats_interval: float = STATS_INTERVAL,
    ):
        super().__init__()
        self.run_dir = run
        self.view = RunView(tag=run.tag)
        self.clock = clock
        self.sampler = sampler if sampler is not None else Sampler()
        self.stats_interval = stats_interval
        self.watcher = RunWatcher(run, self._from_watcher)
        self.last_ack: Ack | None = None
        self.acks: list[Ack] = []  # every acknowledgement this session, oldest first
        self.lock_pid: int | None = None
        self._in_flight: set[str] = set()
        self._last_sent: dict[str, float] = {}
        self._modal_open = False
        self._stop_then_exit = False
        self._stats_error_shown = False
        self._early_lock = threading.Lock()
        self._early: Batch | None = None  # the first batch, if it beats the live screen
        self._panes_ready = False
        self._last_sample: Sample | None = None
        self._footer_key: tuple[bool, ...] | None = None
        self._sent_at: dict[str, float] = {}
        self._opened_at = time.time()
        self._polling_noted = False
        self._sandbox_noted: str | None = None
        self._froze = False  # gc.freeze() was called: undone when the app ends
        self._tick_timer: Any = None
        self._tick_idle = False  # the tick and the sampler were last armed for an idle engine
        self._stats_timer: Any = None
        self._stats_idle = False
        self.bell = alerts.mode_from_env()  # None (off), "bel" or "osc9": AUTORESEARCH_BELL
        self.news = alerts.News()
        self._alerts: list[str] = []
        self._alert_timer: Any = None
        self._last_alert = -1e9
        self.theme_problems: list[str] = []
        self._load_themes()

    # -- start-up and shutdown ---------------------------------------------------------

    def _load_themes(self) -> None:
        """Register the theme files and pick one, before the first styling pass."""
        from tui.themes import install_themes

        self.theme_problems = install_themes(self)

    def on_mount(self) -> None:
        for problem in self.theme_problems:
            self.notify(problem, severity="warning")

    def on_load(self) -> None:
        # Start reading at once, in parallel with building the screen, so the first
        # frame already shows the run rather than an empty layout followed by a second.
        # The first GPU/CPU sample (NVML and psutil load: ~0.1 s of CPU that would take
        # the GIL from the first frame) waits until just after that frame.
        self.watcher.start()

    def live_ready(self) -> None:
        """Called once the live screen's panes exist: show what arrived meanwhile."""
        with self._early_lock:
            if self._panes_ready:
                return
            self._panes_ready = True
            early, self._early = self._early, None
        if early is not None:
            self.on_run_batch(RunBatch(early))
        live = self.live
        if self._last_sample is not None and live is not None:
            live.query_one(UtilPane).show(self._last_sample)
        self._arm_tick()
        self.call_after_refresh(lambda: self.set_timer(0.05, self.collect_stats, name="first sample"))

    def get_default_screen(self) -> Screen:
        return LiveScreen()

    def on_unmount(self) -> None:
        self.watcher.stop()
        if self._froze:  # what this app left behind (its widgets hold cycles) may be collected again
            gc.unfreeze()

    @property
    def live(self) -> LiveScreen | None:
        """The live screen, while its panes exist (not during start-up or shutdown)."""
        if self._exit or not self._panes_ready:
            return None
        for screen in self.screen_stack:
            if isinstance(screen, LiveScreen) and screen.query("#topbar"):
                return screen
        return None

    # -- data from the watcher -----------------------------------------------------------

    def _from_watcher(self, batch: Batch) -> None:
        """Runs on the watcher thread: hand over and return at once."""
        with self._early_lock:
            if not self._panes_ready:  # the panes do not exist yet: live_ready() takes it
                self._early = batch
                return
        self.post_message(RunBatch(batch))

    def on_run_batch(self, message: RunBatch) -> None:
        try:
            self.apply_batch(message.batch)
        except Exception as e:
            self.report_error("showing new data", e)
        finally:
            self.watcher.ack()

    def apply_batch(self, batch: Batch) -> None:
        if self.watcher.watchdog_error and not self._polling_noted:
            self._polling_noted = True
            self.notify(f"File events unavailable ({self.watcher.watchdog_error}); polling instead.", severity="warning")
        changed = self.view.apply(batch)
        self._look_for_news(batch, changed)
        if len(batch.results) >= FREEZE_RESULTS:
            gc.freeze()
            self._froze = True
        if batch.lock_pid is not None or batch.alive is not None:
            self.lock_pid = batch.lock_pid
        live = self.live
        if live is None:
            return
        now = self.clock()
        if "selection" in changed:
            self.watcher.follow(self.view.selected)
        if changed & {"state", "hypothesis", "selection"}:
            live.query_one(FlightsPane).show(self.view, now)
        if "flights" in changed:
            live.query_one(UtilPane).show_nodes(self.view.flights)  # --ray: the nodes' readings
        if "log" in changed:
            pane = live.query_one(LogPane)
            if batch.log_reset:
                pane.reset(batch.log_n)
            pane.append(batch.log_lines, batch.log_partial, batch.log_skipped_bytes)
        if changed & {"state", "hypothesis", "results", "alive", "selection"}:
            live.query_one(HypothesisPane).show(self.view, now)
        if "results" in changed:
            baseline = self.view.baseline()
            live.query_one(ChartPane).show(self.view.results, baseline.metric if baseline else None, self.view.metric())
            self._history_add(batch)
        if changed & {"state", "results"}:
            live.show_metric(self.view.metric())  # the chart's title and tab (a [target]'s metric)
        if "diff" in changed:
            live.query_one(DiffPane).show(self.view.diff, self.view.log_n)
        if changed & {"state", "alive"}:
            self._show_engine(live, now)
            self._refresh_footer()
            self._wake_up()
        if "state" in changed:
            self._note_sandbox()
        if "command" in changed:
            self._commands_from_elsewhere(batch)

    def _note_sandbox(self) -> None:
        """Say once, on start (or when it changes), that training runs unsandboxed and why;
        the top bar keeps the badge, its tooltip and the help keep the reason."""
        reason = self.view.unsandboxed()
        if reason is not None and reason != self._sandbox_noted:
            from tui.live import unsandboxed_note

            self.notify(unsandboxed_note(reason), title="No sandbox", severity="error", timeout=10, markup=False)
        self._sandbox_noted = reason

    def _refresh_footer(self) -> None:
        """Rebuild the footer only when what applies changed (it recomposes every key)."""
        key = tuple(self.can_run(a) for a in FOOTER_ACTIONS)
        if key != self._footer_key:
            self._footer_key = key
            self.refresh_bindings()

    def _commands_from_elsewhere(self, batch: Batch) -> None:
        """Commands another client sent (`autoresearch ctl`, a second monitor) show too."""
        for ev in batch.events:
            if ev.get("type") != "command" or not isinstance(ev.get("ts"), (int, float)):
                continue
            cmd = str(ev.get("cmd"))
            ours = self._sent_at.get(cmd)
            if ev["ts"] < self._opened_at or (ours is not None and abs(ev["ts"] - ours) < 30):
                continue  # from before we attached, or our own (already acknowledged)
            result = "accepted" if ev.get("result") == "accepted" else "refused"
            reason = str(ev.get("reason") or "")
            number = str(ev.get("text") or "").strip().lstrip("#")
            if cmd in CONFIRM and number.isdigit():  # `autoresearch ctl skip 12`: say which
                cmd = f"{cmd} #{int(number):04d}"
            self._show_ack(Ack(cmd, result, f"sent elsewhere{': ' + reason if reason else ''}"))

    def _history_add(self, batch: Batch) -> None:
        from tui.history import HistoryScreen

        for screen in self.screen_stack:
            if isinstance(screen, HistoryScreen):
                if batch.results_reset:
                    screen.reset_records(list(self.view.results), self.view.marks)
                else:
                    screen.add_records(batch.results)

    def engine_state(self) -> str:
        return self.view.engine_state(self.clock())

    # -- several workers: the selected experiment ------------------------------------------

    def select_flight(self, n: int) -> None:
        """Select running experiment n (a click on its row)."""
        if self.view.select(n):
            self._selection_changed()

    def select_step(self, step: int) -> None:
        """The next (1) or previous (-1) running experiment (the ] and [ keys)."""
        if self.view.select_step(step):
            self._selection_changed()

    def _selection_changed(self) -> None:
        """The panes follow the new selection: its row, its experiment at once; its log and
        diff once the watcher has read them (it is told to, and woken)."""
        self.watcher.follow(self.view.selected)
        live = self.live
        if live is not None:
            now = self.clock()
            live.query_one(FlightsPane).show(self.view, now)
            live.query_one(HypothesisPane).show(self.view, now)
        self._refresh_footer()  # skip and keep apply to the selected experiment's phase

    def _show_engine(self, live: LiveScreen, now: float) -> None:
        engine = self.view.engine_state(now)
        live.show_top(self.view, engine, self.last_ack, self.watcher.polling)
        live.show_banner(self.view, engine, now)

    def _tick(self) -> None:
        """Elapsed time, 'last seen', and the engine's liveness label: once a second while
        the engine works, every few seconds while it is idle. What did not change is not
        repainted."""
        self._tick_timer = None
        live = self.live
        if live is not None:
            now = self.clock()
            live.query_one(FlightsPane).show(self.view, now)
            live.query_one(HypothesisPane).show(self.view, now)
            self._show_engine(live, now)
        if not self._exit:
            self._arm_tick()

    def idle(self) -> bool:
        """Nothing moves until someone acts: the engine is paused, stopped or gone."""
        return (self.engine_state() in ("stopped", "gone") or self.view.paused
                or self.view.phase in IDLE_PHASES)

    def _arm_tick(self) -> None:
        self._tick_idle = self.idle()
        self._tick_timer = self.set_timer(IDLE_TICK_S if self._tick_idle else TICK_S, self._tick, name="tick")

    def _wake_up(self) -> None:
        """The engine moves again (resumed, restarted): the slowed timers come back now."""
        if self.idle():
            return
        if self._tick_idle and self._tick_timer is not None:
            self._tick_timer.stop()
            self._arm_tick()
        if self._stats_idle and self._stats_timer is not None:  # a sample is due, not running
            self._stats_timer.stop()
            self._stats_timer = None
            self.collect_stats()

    # -- alerts -------------------------------------------------------------------------

    def _look_for_news(self, batch: Batch, changed: set[str]) -> None:
        """A new best, a hang or a timeout, a pause on an error, the engine gone: ring
        (AUTORESEARCH_BELL, tui/alerts.py). The first batch only sets what is known."""
        news, view = self.news, self.view
        found = [] if batch.results_reset else news.results(batch.results)
        if "state" in changed:
            found += news.paused(view.paused, view.state.error)
        if batch.alive is not None:
            found += news.alive(batch.alive, view.phase, view.where())
        news.primed = True
        if found and self.bell:
            self._alerts += found
            if self._alert_timer is None:  # alerts that come together go out as one
                wait = max(0.0, self._last_alert + alerts.MIN_GAP_S - time.monotonic())
                self._alert_timer = self.set_timer(max(wait, 0.01), self._ring, name="alert")  # 0 is not a timer

    def _ring(self) -> None:
        self._alert_timer = None
        texts, self._alerts = self._alerts, []
        if not texts or not self.bell:
            return
        self._last_alert = time.monotonic()
        text = texts[0] if len(texts) == 1 else f"{len(texts)} events: " + "; ".join(texts)
        self.write_to_terminal(alerts.sequence(self.bell, f"autoresearch {self.run_dir.tag}: {text}",
                                               tmux=bool(os.environ.get("TMUX"))))

    def write_to_terminal(self, data: str) -> None:
        """Bytes for the terminal itself, between two frames (a bell, a notification)."""
        driver = self._driver
        if driver is not None:
            driver.write(data)
            driver.flush()

    # -- utilization ------------------------------------------------------------------

    def _sample_due(self) -> None:
        self._stats_timer = None
        self.collect_stats()

    def collect_stats(self) -> None:
        pid = self.lock_pid if self.view.alive else None
        trees = self.training_trees() if pid else {}
        self.run_worker(
            (lambda: self.sampler.sample(pid, trees)) if trees else (lambda: self.sampler.sample(pid)),
            name="stats",
            group="stats",
            thread=True,
            exit_on_error=False,
        )

    def training_trees(self) -> dict[str, int]:
        """With several workers, each running experiment's training process (its group's
        leader, state.json's ``train_pgid``), by its label ("w1 #0012")."""
        if not self.view.several:
            return {}
        return {f"w{f.worker if f.worker is not None else '?'} #{f.n:04d}": f.train_pgid
                for f in self.view.flights if f.train_pgid}

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group == "stats" and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            if event.state == WorkerState.SUCCESS and isinstance(worker.result, Sample):
                self._last_sample = worker.result
                live = self.live
                if live is not None:
                    live.query_one(UtilPane).show(worker.result)
            elif event.state == WorkerState.ERROR and not self._stats_error_shown:
                self._stats_error_shown = True
                self.report_error("reading GPU/CPU utilization", worker.error)
            # Re-arm only now: a slow sample delays the next instead of piling up. While
            # the engine is idle there is little to see: sample less often.
            self._stats_idle = self.idle()
            delay = self.stats_interval * (IDLE_SLOWDOWN if self._stats_idle else 1)
            self._stats_timer = self.set_timer(delay, self._sample_due, name="stats")
        elif worker.group == "command" and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            cmd = worker.name
            self._in_flight.discard(cmd)
            if event.state == WorkerState.SUCCESS:
                self._acknowledge(cmd, worker.result)
            else:
                err = worker.error
                reason = str(err) if isinstance(err, ControlError) else f"{type(err).__name__}: {err}"
                self._show_ack(Ack(cmd, "error", reason))
                self._stop_then_exit = False
            self.watcher.poke()
        elif worker.group == "restart" and event.state == WorkerState.SUCCESS:
            self.notify(f"Engine started again (pid {worker.result}); it resumes tag {self.run_dir.tag}.")
            self.watcher.poke()
        elif event.state == WorkerState.ERROR:
            self.report_error(worker.name or "background work", worker.error)

    # -- commands -----------------------------------------------------------------------

    def can_run(self, action: str) -> bool:
        """What the footer and palette offer right now (and what the keys do)."""
        engine = self.engine_state()
        alive = engine in ("running", "stale")
        view = self.view
        if action == "pause":
            return alive and not view.paused and not view.pause_requested and not view.finished
        if action == "resume":
            return alive and (view.paused or view.pause_requested)
        if action in ("skip", "keep"):
            return alive and view.in_flight
        if action == "select":
            return view.several and len(view.flights) > 1
        if action == "note":
            return alive
        if action == "restart":
            return engine in ("gone", "stopped")
        if action == "diff":
            return bool(view.diff.strip())
        return True

    def confirm_and_send(self, cmd: str) -> None:
        if self._modal_open:
            return  # repeated presses do not stack modals
        if cmd in CONFIRM:
            # With several workers, the experiment selected now (not when the answer comes:
            # the selection may move meanwhile), by its number.
            n = self.view.selected if self.view.several else None
            if n is not None:
                flight = self.view.flight
                about = [f"worker {flight.worker}"] if flight is not None and flight.worker is not None else []
                about += [fmt.one_line(self.view.description(), 60)]
                what = " (" + ": ".join(a for a in about if a) + ")" if any(about) else ""
                title, question, yes = (part.format(n=n, what=what) for part in CONFIRM_ONE[cmd])
            else:
                title, question, yes = CONFIRM[cmd]
            self._modal_open = True

            def answered(ok: bool | None) -> None:
                self._modal_open = False
                if ok:
                    self.send(cmd, n=n)

            self.push_screen(ConfirmModal(title, question, yes), answered)
        else:
            self.send(cmd)

    def ask_note(self) -> None:
        if self._modal_open:
            return
        self._modal_open = True

        def answered(text: str | None) -> None:
            self._modal_open = False
            if text:
                self.send("note", text)

        self.push_screen(NoteModal(), answered)

    def send(self, cmd: str, text: str | None = None, *, n: int | None = None) -> bool:
        """Send one command from a worker thread. False if it was a repeat and not sent.
        ``n``: the experiment it is for (skip or keep with several workers), sent as text."""
        now = self.clock()
        key = cmd  # what a repeat is, and what the acknowledgement is called
        if n is not None:
            text, key = str(n), f"{cmd} #{n:04d}"
        if key in self._in_flight or (cmd != "note" and now - self._last_sent.get(key, -1e9) < DEBOUNCE_S):
            self.notify(f"{key}: already sent, waiting for the engine", severity="information", timeout=2)
            return False
        self._in_flight.add(key)
        self._last_sent[key] = now
        self._sent_at[cmd] = time.time()  # wall clock, to recognise our own command events
        sock = self.run_dir.socket
        self.run_worker(
            lambda: send_command(sock, cmd, text),
            name=key,
            group="command",
            thread=True,
            exit_on_error=False,
        )
        return True

    def _acknowledge(self, cmd: str, reply: Any) -> None:
        if not isinstance(reply, dict):
            self._show_ack(Ack(cmd, "error", "unreadable reply"))
            return
        if reply.get("ok"):
            ack = Ack(cmd, "accepted", str(reply.get("message") or ""))
        else:
            ack = Ack(cmd, "refused", str(reply.get("reason") or "no reason given"))
        self._show_ack(ack)
        if cmd == "stop" and self._stop_then_exit:
            self.exit("stop" if ack.result == "accepted" else "leave", message=None)

    def _show_ack(self, ack: Ack) -> None:
        self.last_ack = ack
        self.acks.append(ack)
        text = f"{ack.cmd}: {ack.result}" + (f": {ack.message}" if ack.message else "")
        severity = {"accepted": "information", "refused": "warning", "error": "error"}[ack.result]
        self.notify(text, title="Engine" if ack.result != "error" else "Could not reach the engine", severity=severity)
        live = self.live
        if live is not None:
            self._show_engine(live, self.clock())

    def report_error(self, doing: str, error: BaseException | None) -> None:
        """The one place where background failures reach the user."""
        text = f"Error while {doing}: {type(error).__name__}: {error}" if error else f"Error while {doing}"
        self.notify(text, severity="error", timeout=8)

    # -- screens -------------------------------------------------------------------------

    def open_history(self) -> None:
        from tui.history import HistoryScreen

        self.push_screen(HistoryScreen(self.run_dir, list(self.view.results), self.view.marks, self.view.metric()))

    def open_diff(self) -> None:
        n = self.view.log_n
        title = f"Pending change #{n:04d}" if n is not None else "Pending change"
        self.push_screen(DiffScreen(self.view.diff, title))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            from tui.live import unsandboxed_note

            reason = self.view.unsandboxed()
            self.push_screen(HelpScreen(note=unsandboxed_note(reason) if reason is not None else None,
                                        several=self.view.several))

    def action_quit_monitor(self) -> None:
        if self._modal_open:
            return
        if self.engine_state() not in ("running", "stale"):
            self.exit("leave")
            return
        self._modal_open = True

        def answered(choice: str | None) -> None:
            self._modal_open = False
            if choice == "leave":
                self.exit("leave")
            elif choice == "stop":
                self._stop_then_exit = True
                if not self.send("stop"):
                    self._stop_then_exit = False

        self.push_screen(QuitModal(), answered)

    def restart_engine(self) -> None:
        from engine.launcher import restart

        repo = self.run_dir.root.parent.parent
        self.notify(f"Starting the engine for tag {self.run_dir.tag}…")
        self.run_worker(
            lambda: restart(repo, self.run_dir.tag),
            name="restarting the engine",
            group="restart",
            thread=True,
            exit_on_error=False,
        )

    # -- command palette -------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        if isinstance(screen, LiveScreen):
            n = self.view.selected if self.view.several else None
            which = f" #{n:04d}" if n is not None else ""
            entries = [
                ("pause", "Pause", "Hold the loop after the current experiment", lambda: self.confirm_and_send("pause")),
                ("resume", "Resume", "Let the loop go on", lambda: self.confirm_and_send("resume")),
                ("skip", f"Skip this run{which}", "Stop the current run now (asks first)", lambda: self.confirm_and_send("skip")),
                ("keep", f"Force-keep this experiment{which}", "Keep it if it ends with a metric (asks first)", lambda: self.confirm_and_send("keep")),
                ("select", "Next running experiment", "Select it: the panes follow it, s and k act on it (])",
                 lambda: self.select_step(1)),
                ("select", "Previous running experiment", "Select it: the panes follow it, s and k act on it ([)",
                 lambda: self.select_step(-1)),
                ("note", "Note for the agent", "Text the agent reads in its next proposal", self.ask_note),
                ("history", "History", "Every experiment of this run", self.open_history),
                ("diff", "Pending change", "The current diff, full screen", self.open_diff),
                ("focus_log", "Focus the log", "Scroll the training log", screen.action_focus_log),
                ("restart", "Restart the engine", "Start the engine again on this tag", self.restart_engine),
            ]
            for action, title, help_text, callback in entries:
                if self.can_run(action):
                    yield SystemCommand(title, help_text, callback)
        yield SystemCommand("Help", "Every key", self.action_help)
        yield SystemCommand("Quit", "Close the monitor (asks whether to stop the loop)", self.action_quit_monitor)
        yield from (c for c in super().get_system_commands(screen) if c.title not in ("Quit",))
