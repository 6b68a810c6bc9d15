"""The state of one running tag, shared by the phases of the loop.

Every phase module (startup, propose, commit, trial, finish, steering) takes a Session
and changes it; none of them holds state of its own. Other threads touch a Session only
through the journal (which has its own lock) or the flags guarded by ``ctl``: the agent's
worker thread streams text and records its process group; the control socket's threads
(one per connection) flip flags and queue notes; the notifier's thread writes ``notify``
events. The phase lives in one place: ``state.phase``.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
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
    baseline: bool
    started_at: float
    skip: bool = False
    keep: bool = False


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
        self.lock = EngineLock(self.rd.lock, self.tag)
        self.budget = config.loop.effective_budget()
        self.timeout = config.loop.effective_timeout()
        self.notifier = Notifier([], self.tag)  # replaced by a real one once the tag's lock is held
        self.stop_reason: str | None = None  # why the loop ended, for the last notification
        self.warm_slot = None  # engine/warm.py: the next training process, started ahead
        self.sandbox = sandbox.detect(config.loop.sandbox)  # SandboxError (one line) before anything is written
        _check_agent_may_run(config, self.sandbox)

        # Rebuilt from results.jsonl when the tag opens (engine/startup.py).
        self.wt: gitops.Worktree | None = None
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
        self.flight: Flight | None = None
        self.pause_requested = False
        self.paused = False
        self.error: str | None = None
        self.notes: list[str] = []
        self.failures = 0  # consecutive failed proposals
        self.streak_from = 0  # failed experiments before this index were looked at (a resume)
        self.data_stamp: dict | None = None  # the data cache's files when the run (re)started
        self.cost_cap_lifted = False

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
        self.journal.update_state(phase=phase, phase_started_at=round(time.time(), 3), paused=self.paused,
                                  error=self.error)
        self.journal.event("phase", n=n, phase=phase)
        label = f"#{n:04d} " if n else ""
        desc = f"  {self.journal.state.description}" if phase == "running" and self.journal.state.description else ""
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
