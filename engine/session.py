"""The state of one running tag, shared by the phases of the loop.

Every phase module (startup, propose, commit, trial, finish, steering) takes a Session
and changes it; none of them holds state of its own. Other threads touch a Session only
through the journal (which has its own lock) or the flags guarded by ``ctl``: the agent's
worker thread streams text and records its process group; the control socket's threads
(one per connection) flip flags and queue notes; the notifier's thread writes ``notify``
events. The phase lives in one place: ``state.phase``.

With ``workers`` > 1 the loop runs one thread per worker (a ``Lane``: its own worktree,
experiment and warm process); ``s.flight``, ``s.wt`` and ``s.warm_slot`` are the calling
thread's lane's, and ``update_flight`` keeps each lane's experiment in ``state.flights``.
Deciding and journaling happen one at a time (``decide_lock``).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import gitops, sandbox
from .agents.base import Agent
from .config import Config
from .integrity import Fingerprint
from .journal import Journal
from .lock import EngineLock
from .notify import Notifier
from .results import Result, Standing
from .rundir import RunDir
from .runner import KILL_GRACE_SECONDS
from .untrusted import strip_control


@dataclass
class Flight:
    """The experiment in progress and what people asked of it."""

    n: int
    baseline: bool  # a run of the best commit unchanged (a baseline run or a re-measure)
    started_at: float
    remeasure: bool = False
    phase: str = "proposing"
    skip: bool = False
    keep: bool = False


@dataclass
class Lane:
    """One worker: the experiment it runs, the worktree its agent edits, its warm process."""

    index: int
    wt: gitops.Worktree | None = None
    flight: Flight | None = None
    warm_slot: object = None  # engine/warm.py's Slot, started ahead for this lane's next run
    env: dict[str, str] = field(default_factory=dict)  # its share of the machine (GPU, threads)
    fields: dict = field(default_factory=dict)  # its experiment's entry in state.flights
    remote: object = None  # engine/remote.py's RemoteRunner: its runs train and score on a Ray node
    tree: str | None = None  # the code its change experiment measures (git tree), to catch twins
    turn: object = None  # with [loop] overlap: the lock its device's lanes take turns on to train


def _check_agent_may_run(config: Config, sb: sandbox.Sandbox) -> None:
    """An LLM agent writes arbitrary code: without a sandbox it runs only by the user's choice.

    The heuristic agent only edits numeric constants, so it may run unsandboxed (with a
    warning); ``sandbox = "off"`` is the user's explicit acceptance for the others.
    """
    name = config.agent.effective_name()
    if sb.enabled or config.loop.sandbox == "off" or name == "heuristic":
        return
    raise sandbox.SandboxError(
        f"the {name} agent runs only inside a sandbox, and {sb.reason}: install bubblewrap "
        '(package `bubblewrap` on Debian, Ubuntu and Fedora) or set sandbox = "off" under [loop] '
        "in autoresearch.toml to run its code unconfined"
    )


class Session:
    def __init__(
        self,
        repo: Path | str,
        tag: str,
        config: Config,
        agent: Agent,
        *,
        out: Callable[[str], None] | None = None,
        python: str = sys.executable,
        kill_grace: float = KILL_GRACE_SECONDS,
        agent_retry_seconds: float = 5.0,
        agent_stop_wait: float = 2.0,
    ):
        self.repo_path = Path(repo).resolve()
        self.tag = gitops.check_tag(tag)
        self.config = config
        self.agent = agent
        self.python = python
        self.kill_grace = kill_grace
        self.agent_retry_seconds = agent_retry_seconds
        self.agent_stop_wait = agent_stop_wait  # on stop, how long a thinking agent may finish
        self._out = out
        self.rd = RunDir.for_tag(self.repo_path, self.tag)
        self.journal = Journal(self.rd, config.metric)
        self._here = threading.local()  # which lane the calling thread works for
        self.journal.context = self._event_context
        self.lock = EngineLock(self.rd.lock, self.tag)
        self.budget = config.loop.effective_budget()
        self.timeout = config.loop.effective_timeout()
        self.notifier = Notifier([], self.tag)  # replaced by a real one once the tag's lock is held
        self.stop_reason: str | None = None  # why the loop ended, for the last notification
        self.sandbox = sandbox.detect(config.loop.sandbox)  # SandboxError (one line) before anything is written
        _check_agent_may_run(config, self.sandbox)

        # One lane per worker (engine/lanes.py adds more); alone, lane 0 works in the run's worktree.
        self.lanes = [Lane(0)]
        self.main_wt: gitops.Worktree | None = None  # the run's worktree, on the branch: always the best
        self.decide_lock = threading.RLock()  # deciding, numbering and the best: one lane at a time
        self._flights_lock = threading.Lock()
        self._git_trusted: gitops.GitMetadata | None = None
        self._agents_at_work: set[int] = set()  # lanes whose agent may have touched git metadata unchecked

        # Rebuilt from results.jsonl when the tag opens (engine/startup.py).
        self.results: list[Result] = []
        self.standing = Standing()
        self.next_n = 1
        self.cost_usd = 0.0
        self.fingerprint: Fingerprint | None = None
        self.base_commit = ""
        self.exit_code = 0

        # Shared with the control socket's thread; guarded by ``ctl``.
        self.ctl = threading.Lock()
        self.stop_event = threading.Event()
        self.stop_signal: int | None = None  # the signal that stopped the engine, if one did
        self.pause_requested = False
        self.paused = False
        self.error: str | None = None
        self.notes: list[str] = []
        self.failures = 0  # consecutive failed proposals
        self.streak_from = 0  # failed experiments before this index were looked at (a resume)
        self.data_stamp: dict | None = None  # the data cache's files when the run (re)started
        self.cost_cap_lifted = False

    # --- the calling thread's lane ---------------------------------------------------------

    @property
    def lane(self) -> Lane:
        """The calling thread's lane; a thread bound to none (the control socket's) sees lane 0."""
        return getattr(self._here, "lane", self.lanes[0])

    def bind_lane(self, lane: Lane) -> None:
        """The calling thread works for ``lane`` from now on (its events name the worker)."""
        self._here.lane = lane

    @property
    def several(self) -> bool:
        return len(self.lanes) > 1

    def _event_context(self) -> dict:
        lane = getattr(self._here, "lane", None)
        return {"worker": lane.index} if lane is not None and self.several else {}

    @property
    def flight(self) -> Flight | None:
        return self.lane.flight

    @flight.setter
    def flight(self, value: Flight | None) -> None:
        self.lane.flight = value

    @property
    def wt(self) -> gitops.Worktree | None:
        return self.lane.wt

    @wt.setter
    def wt(self, value: gitops.Worktree | None) -> None:
        self.lane.wt = value

    @property
    def warm_slot(self):
        return self.lane.warm_slot

    @warm_slot.setter
    def warm_slot(self, value) -> None:
        self.lane.warm_slot = value

    def flights(self) -> list[Flight]:
        return [lane.flight for lane in self.lanes if lane.flight is not None]

    def update_flight(self, **fields) -> None:
        """Fields of the calling lane's experiment: in state.flights (one entry per running
        experiment) and, as before workers existed, at the top level of state.json."""
        with self._flights_lock:
            self.lane.fields.update(fields)
            self.journal.update_state(**fields, flights=self._flight_entries())

    def end_flight(self) -> None:
        with self._flights_lock:
            self.lane.fields, self.lane.tree = {}, None
            self.journal.update_state(flights=self._flight_entries(), train_pgid=None, runs=[], node=None,
                                      node_util=None)

    def watch_git_metadata(self) -> gitops.GitMetadata:
        """A snapshot of the repository's git metadata to check this lane's proposal against.

        Workers share one repository: while any agent is at work (proposing, until its
        change is checked) the snapshot taken before the first of them stays the trusted
        one, so that one agent's planted hook never becomes another's baseline."""
        with self.decide_lock:
            if not self._agents_at_work or self._git_trusted is None:
                repos = [lane.wt.repo for lane in self.lanes if lane.wt is not None]
                self._git_trusted = gitops.GitMetadata(*repos)
            self._agents_at_work.add(id(self.lane))
            return self._git_trusted

    def git_metadata_checked(self) -> None:
        with self.decide_lock:
            self._agents_at_work.discard(id(self.lane))

    def _flight_entries(self) -> list[dict]:
        return [dict(lane.fields, worker=lane.index) for lane in self.lanes if lane.fields]

    # --- facts every phase asks for -----------------------------------------------------

    @property
    def phase(self) -> str:
        return self.journal.state.phase or "starting"

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def best_commit(self) -> str:
        return self.standing.best_commit or self.base_commit

    def agent_label(self) -> str:
        model = getattr(self.agent, "model", None)
        return f"{getattr(self.agent, 'name', '?')}" + (f" ({model})" if model else "")

    def should_kill(self) -> bool:
        """A run in progress must end now: the engine stops, or a person skipped it."""
        f = self.flight
        return self.stopping or (f is not None and f.skip)

    def killed_status(self) -> str:
        return "interrupted" if self.stopping else "skipped"

    def killed_reason(self) -> str:
        return "the engine was stopped during this experiment" if self.stopping else "skipped by a human"

    # --- the hooks phases report through ------------------------------------------------

    def say(self, line: str) -> None:
        if self._out is None:
            return
        try:
            self._out(time.strftime("%H:%M:%S ") + strip_control(line))  # never an escape sequence to a terminal
        except OSError:  # the terminal went away (SSH dropped): keep running
            pass

    def tick(self) -> None:
        """Called often while waiting on a child or the agent: keeps the heartbeat fresh."""
        self.journal.heartbeat()

    def set_phase(self, phase: str) -> None:
        f = self.flight
        n = f.n if f else None
        now = round(time.time(), 3)
        if f is not None:
            f.phase = phase
            self.update_flight(phase=phase, phase_started_at=now)
        self.journal.update_state(phase=phase, phase_started_at=now, paused=self.paused, error=self.error)
        self.journal.event("phase", n=n, phase=phase)
        label = f"#{n:04d} " if n else ""
        description = self.lane.fields.get("description")
        desc = f"  {description}" if phase == "running" and description else ""
        self.say(f"{label}{phase}{desc}")

    def pause_with_error(self, message: str) -> None:
        self.notifier.paused(message)
        with self.ctl:
            self.error = message
            self.paused = True
        self.journal.event("error", message=message, n=self.flight.n if self.flight else None)
        self.journal.update_state(error=message, paused=True)
        self.say(f"paused: {message}")

    def fatal(self, message: str) -> None:
        self.error = message
        self.journal.event("error", message=message, n=None)
        self.set_phase("error")
        self.say(f"error: {message}")

    def record(self, result: Result) -> None:
        """Append a finished experiment to the journal and fold it into the standing."""
        self.journal.append_result(result)
        self.results.append(result)
        best_before = self.standing.best
        self.standing.add(result)
        self.notifier.result(result, best_before)
        self.journal.event("result", **result.short())
        self.journal.update_state(best=self.standing.best, baseline=self.standing.baseline,
                                  counts=dict(self.standing.counts))
