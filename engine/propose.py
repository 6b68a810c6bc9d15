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

from .agents.base import AgentError, CostCapReached, Proposal, ProposalContext, Usage
from .results import Result
from .session import Session
from .untrusted import bound_tail, strip_control

MAX_HYPOTHESIS = 8000  # bounded: these go into every journal line and future prompts
MAX_DESCRIPTION = 200


@dataclass
class Asked:
    """What came of asking: "ok", "failed" (record a crash), "retry" or "stopped"."""

    outcome: str
    error: str | None = None


def propose(s: Session, draft: Result) -> Asked:
    """Ask the agent for a change; fills the draft's description, hypothesis, notes, agent."""
    n = draft.n
    with s.ctl:
        notes = list(s.notes)
    last = s.results[-1] if s.results else None
    context = ProposalContext(
        n=n,
        worktree=s.rd.worktree,
        program=_read_text(s.rd.worktree / "program.md"),
        mutable=list(s.config.loop.mutable),
        history=list(s.results),
        best=s.standing.best,
        last_result=last,
        last_log_tail=_last_log_tail(s, last),
        notes=notes,
        seed=s.config.loop.seed,
        emit=lambda text: s.journal.event("hypothesis", fsync=False, n=n, text=strip_control(str(text))),
        budget_usd=_budget(s),
        on_process_group=lambda pgid: s.journal.update_state(agent_pgid=pgid),
    )
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["proposal"] = s.agent.propose(context)
        except BaseException as e:  # handed to the loop below
            box["error"] = e

    thread = threading.Thread(target=work, name="agent", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
        s.tick()
        if s.stopping:
            context.cancel.set()  # the agent stops at its next step (a command agent's group is killed)
            thread.join(s.agent_stop_wait)  # then it is abandoned (a daemon thread)
            break
    if s.stopping:
        s.wt.reset_to(s.best_commit())
        return Asked("stopped")

    error = box.get("error")
    usage = error.usage if isinstance(error, AgentError) else (box["proposal"].usage if "proposal" in box else Usage())
    _account(s, draft, usage)
    if isinstance(error, CostCapReached):
        # Stopped before a request that could pass the cap: nothing to record, the loop pauses.
        s.wt.reset_to(s.best_commit())
        s.journal.event("error", message=f"agent: {strip_control(str(error))}", n=n)
        cap = s.config.agent.max_cost or 0.0
        s.pause_with_error(f"cost cap reached: ${s.cost_usd:.2f} of ${cap:.2f}, and the next request could pass it; "
                           "resume to continue past it")
        return Asked("retry", str(error))
    if error is not None:
        transient = isinstance(error, AgentError) and error.transient
        message = strip_control(str(error) if isinstance(error, AgentError) else f"{type(error).__name__}: {error}")
        s.journal.event("error", message=f"agent: {message}", n=n)
        s.wt.reset_to(s.best_commit())
        if transient:
            return _transient_failure(s, message)
        s.failures += 1
        if s.failures >= s.config.agent.max_failures:
            s.pause_with_error(f"agent failed {s.failures} times in a row: {message}; resume to retry")
        draft.description = f"agent error: {_one_line(message)}"
        draft.error = message
        draft.notes = notes
        _consume_notes(s, notes)
        s.say(f"#{n:04d} agent error: {_one_line(message)}")
        return Asked("failed", message)

    s.failures = 0
    proposal: Proposal = box["proposal"]
    # Untrusted text: no escape sequences or bidi overrides may reach a terminal, the journal or git.
    draft.hypothesis = strip_control(str(proposal.hypothesis or "")).strip()[:MAX_HYPOTHESIS]
    draft.description = _one_line(strip_control(str(proposal.description or "")))[:MAX_DESCRIPTION] or "(no description)"
    draft.notes = notes
    _consume_notes(s, notes)
    s.journal.event("proposal", n=n, hypothesis=draft.hypothesis, description=draft.description, agent=draft.agent)
    return Asked("ok")


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
    s.say(f"agent failed ({s.failures} of {limit}): {_one_line(message)}; retrying")
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


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())
