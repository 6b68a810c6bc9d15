"""Asking the agent for the next change.

The agent runs in a worker thread so that stop and skip stay responsive while it thinks;
its streamed text goes to events.jsonl as it comes. A transient failure (network, rate
limit) is retried after a pause and recorded nowhere; any other failure is recorded as a
``crash``. ``max_failures`` failed proposals in a row pause the loop until a person
resumes it, so an agent that fails every time cannot fill the journal.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from .agents.base import AgentError, CostCapReached, Goal, ProposalContext, Usage
from .results import Result
from .session import Session
from .untrusted import bound_tail, one_line, strip_control

MAX_HYPOTHESIS = 8000  # bounded: these go into every journal line and future prompts
MAX_DESCRIPTION = 200


@dataclass
class Asked:
    """What came of asking: "ok", "failed" (record a crash), "retry" or "stopped"."""

    outcome: str
    error: str | None = None


def propose(s: Session, draft: Result) -> Asked:
    """Ask the agent for a change in this worker's worktree and wait for it. With several
    workers it is told what the others are measuring (the latest with its diff)."""
    running = others_running(s)
    latest = max(running, key=lambda r: r.started_at or 0) if running else None
    diff = s.wt.diff(latest.parent, latest.commit) if latest is not None and latest.parent else ""
    return Asking(s, draft, s.wt, draft.parent or s.best_commit(), in_flight=latest, in_flight_diff=diff,
                  running=running).wait()


def others_running(s: Session) -> list[Result]:
    """The changes other workers have committed and are measuring now."""
    return [Result(n=f["experiment"], status="running", description=f.get("description") or "",
                   hypothesis=f.get("hypothesis") or "", commit=f["commit"], parent=f.get("parent"),
                   started_at=f.get("started_at"))
            for f in (lane.fields for lane in s.lanes if lane is not s.lane)
            if f.get("commit") and not f.get("baseline_run")]


class Asking:
    """One proposal, written by the agent in a worker thread (so that stop and skip stay
    responsive, and so that the next proposal can be written while an experiment trains).

    ``wait`` ends it: it fills the draft's description, hypothesis, notes and agent usage,
    or says why there is no change. The agent works in ``wt`` (the run's worktree, or the
    second worktree of a pipelined proposal), which is reset to ``base`` on failure.
    """

    def __init__(self, s: Session, draft: Result, wt, base: str, *, in_flight: Result | None = None,
                 in_flight_diff: str = "", running: list[Result] = ()):
        self.s, self.draft, self.wt, self.base = s, draft, wt, base
        n = draft.n
        with s.ctl:
            self.notes = list(s.notes)
        last = s.results[-1] if s.results else None
        self.context = ProposalContext(
            n=n,
            worktree=wt.path,
            program=_read_text(wt.path / "program.md"),
            mutable=list(s.config.loop.mutable),
            history=list(s.results),
            best=s.standing.best,
            last_result=last,
            last_log_tail=_last_log_tail(s, last),
            notes=self.notes,
            seed=s.config.loop.seed,
            emit=lambda text: s.journal.event("hypothesis", fsync=False, n=n, text=strip_control(str(text))),
            budget_usd=_budget(s),
            on_process_group=lambda pgid: (s.update_flight if s.several else s.journal.update_state)(agent_pgid=pgid),
            in_flight=in_flight,
            in_flight_diff=in_flight_diff,
            running=list(running),
            goal=goal_of(s.config),
        )
        self._box: dict[str, Any] = {}
        self.started = time.monotonic()
        self._lane = s.lane
        self._thread = threading.Thread(target=self._work, name="agent", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        self.s.bind_lane(self._lane)  # its events and process group belong to this worker
        try:
            self._box["proposal"] = self.s.agent.propose(self.context)
        except BaseException as e:  # handed to wait()
            self._box["error"] = e

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def cancel(self) -> None:
        """Abandon it: the agent stops at its next step (a command agent's group is killed)."""
        self.context.cancel.set()
        self._thread.join(self.s.agent_stop_wait)  # then it is abandoned (a daemon thread)

    def wait(self) -> Asked:
        s, draft, n = self.s, self.draft, self.draft.n
        timed_out = False
        while self._thread.is_alive():
            self._thread.join(0.1)
            s.tick()
            if s.stopping:
                self.cancel()
                break
            if time.monotonic() - self.started > s.config.loop.agent_timeout:
                timed_out = True
                self.cancel()
                break
        if s.stopping:
            self.wt.reset_to(self.base)
            return Asked("stopped")

        error = self._box.get("error")
        if timed_out:
            error = AgentError(f"the agent took longer than agent_timeout ({s.config.loop.agent_timeout:g} s) "
                               "and was stopped")
        proposal = self._box.get("proposal")
        usage = error.usage if isinstance(error, AgentError) else (proposal.usage if proposal else Usage())
        _account(s, draft, usage)
        if isinstance(error, CostCapReached):
            # Stopped before a request that could pass the cap: nothing to record, the loop pauses.
            self.wt.reset_to(self.base)
            s.journal.event("error", message=f"agent: {strip_control(str(error))}", n=n)
            cap = s.config.agent.max_cost or 0.0
            s.pause_with_error(f"cost cap reached: ${s.cost_usd:.2f} of ${cap:.2f}, and the next request could "
                               "pass it; resume to continue past it")
            return Asked("retry", str(error))
        if error is not None:
            transient = isinstance(error, AgentError) and error.transient
            message = strip_control(str(error) if isinstance(error, AgentError) else f"{type(error).__name__}: {error}")
            s.journal.event("error", message=f"agent: {message}", n=n)
            self.wt.reset_to(self.base)
            if transient:
                return _transient_failure(s, message)
            s.failures += 1
            if s.failures >= s.config.agent.max_failures:
                s.pause_with_error(f"agent failed {s.failures} times in a row: {message}; resume to retry")
            draft.description = f"agent error: {one_line(message)}"
            draft.error = message
            draft.notes = self.notes
            _consume_notes(s, self.notes)
            s.say(f"#{n:04d} agent error: {one_line(message)}")
            return Asked("failed", message)

        s.failures = 0
        # Untrusted text: no escape sequences or bidi overrides may reach a terminal, the journal or git.
        draft.hypothesis = strip_control(str(proposal.hypothesis or "")).strip()[:MAX_HYPOTHESIS]
        draft.description = (one_line(strip_control(str(proposal.description or "")))[:MAX_DESCRIPTION]
                             or "(no description)")
        draft.notes = self.notes
        _consume_notes(s, self.notes)
        s.journal.event("proposal", n=n, hypothesis=draft.hypothesis, description=draft.description,
                        agent=draft.agent)
        return Asked("ok")


def goal_of(config) -> Goal:
    """What the agent is told it is optimising: the target in force."""
    t = config.target
    if t is None:
        return Goal()
    measured_by = f"the trusted command `{t.evaluate}`" if t.evaluate else "what the run prints (self-reported)"
    return Goal(metric=t.metric, direction=t.direction, measured_by=measured_by, guard=t.guard)


def _budget(s: Session) -> float | None:
    """Dollars the agent may still spend (None: no cap, or a person lifted it)."""
    cap = s.config.agent.max_cost
    if cap is None or s.cost_cap_lifted:
        return None
    return max(0.0, cap - s.cost_usd)


def _transient_failure(s: Session, message: str) -> Asked:
    s.failures += 1
    limit = s.config.agent.max_failures
    if s.failures >= limit:
        s.pause_with_error(f"agent failed {s.failures} times in a row: {message}; resume to retry")
        return Asked("retry", message)
    s.say(f"agent failed ({s.failures} of {limit}): {one_line(message)}; retrying")
    deadline = time.monotonic() + s.agent_retry_seconds * s.failures
    while time.monotonic() < deadline and not s.stopping:
        time.sleep(0.1)
        s.tick()
    return Asked("retry", message)


def _account(s: Session, draft: Result, usage: Usage) -> None:
    info = {"name": getattr(s.agent, "name", "?"), "model": getattr(s.agent, "model", None), **usage.to_dict()}
    draft.agent = info
    s.cost_usd = round(s.cost_usd + usage.cost_usd, 6)
    s.journal.event("usage", n=draft.n, agent=info)
    s.journal.update_state(cost_usd=s.cost_usd)


def _consume_notes(s: Session, used: list[str]) -> None:
    with s.ctl:
        s.notes = s.notes[len(used):]
        s.journal.update_state(notes_pending=list(s.notes))


def _last_log_tail(s: Session, last: Result | None) -> str:
    if last is None:
        return ""
    path = s.rd.experiment(last.n) / "run.log"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return bound_tail(strip_control(text))


def _read_text(path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
