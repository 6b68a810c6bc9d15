"""What people can ask of a running engine: pause, resume, skip, keep, stop, note.

Each command arrives on the control socket's thread. A handler only flips flags (under
``s.ctl``) or queues a note; the loop acts on them between and during steps. Every
command, accepted or refused, is acknowledged in events.jsonl.
"""

from __future__ import annotations

import os
from typing import Any

from .control import accepted, refused
from .session import Flight, Session
from .untrusted import strip_control

MAX_NOTE = 4000  # characters: a note is read by the agent in every prompt until used


def on_command(s: Session, request: dict[str, Any]) -> dict[str, Any]:
    cmd, text = request["cmd"], request.get("text")
    if cmd == "ping":
        running = ", ".join(f"#{f.n:04d}" for f in s.flights())
        return accepted(f"engine pid {os.getpid()}, phase {s.phase}" + (f", experiment {running}" if running else ""))
    with s.ctl:
        reply = _HANDLERS[cmd](s, text)
    acknowledge(s, cmd, text, reply)
    return reply


def acknowledge(s: Session, cmd: str, text: str | None, reply: dict[str, Any]) -> None:
    s.journal.event("command", cmd=cmd, text=text, result=reply["result"],
                    reason=reply.get("reason") or reply.get("message") or "")


def _pause(s: Session, text: str | None) -> dict[str, Any]:
    if s.paused:
        return refused("already paused")
    if s.pause_requested:
        return refused("a pause is already requested")
    s.pause_requested = True
    s.journal.update_state(pause_requested=True)
    running = ", ".join(f"#{f.n:04d}" for f in s.flights())
    return accepted(f"will pause after experiment {running} finishes" if running else "pausing")


def _resume(s: Session, text: str | None) -> dict[str, Any]:
    if not s.paused and not s.pause_requested:
        return refused("not paused")
    was_cost = bool(s.error and s.error.startswith("cost cap"))
    s.paused = s.pause_requested = False
    s.error = None
    s.failures = 0
    s.streak_from = len(s.results)  # a person looked: count a new streak of failed runs
    if was_cost:
        s.cost_cap_lifted = True
    s.journal.update_state(paused=False, pause_requested=False, error=None)
    return accepted("resumed past the cost cap for this session" if was_cost else "resumed")


def _chosen(s: Session, text: str | None) -> Flight | str:
    """The experiment a skip or keep is for: the one running, or with several workers the
    one whose number the text gives ("12" or "#12"). Else why there is none."""
    running = [f for f in s.flights() if f.phase != "deciding"]
    wanted = (text or "").strip().lstrip("#")
    if wanted:
        if not wanted.isdigit():
            return f"not an experiment number: {wanted[:20]!r}"
        match = [f for f in running if f.n == int(wanted)]
        return match[0] if match else f"experiment #{int(wanted):04d} is not in progress"
    if len(running) > 1:
        return f"{len(running)} experiments are running ({', '.join(f'#{f.n:04d}' for f in running)}): say which"
    return running[0] if running else "no experiment is in progress"


def _skip(s: Session, text: str | None) -> dict[str, Any]:
    f = _chosen(s, text)
    if isinstance(f, str):
        return refused(f)
    f.skip = True
    return accepted(f"skipping experiment #{f.n:04d}")


def _keep(s: Session, text: str | None) -> dict[str, Any]:
    f = _chosen(s, text)
    if isinstance(f, str):
        return refused(f)
    if f.baseline:
        return refused(f"experiment #{f.n:04d} is a baseline run: there is no change to keep")
    f.keep = True
    return accepted(f"will keep experiment #{f.n:04d} if it finishes with a {s.config.metric}")


def _stop(s: Session, text: str | None) -> dict[str, Any]:
    s.stop_reason = s.stop_reason or "stopped by a person"
    s.stop_event.set()
    s.journal.update_state(stop_requested=True)
    running = [f for f in s.flights() if f.phase != "proposing" or s.several]
    if running:
        numbers = ", ".join(f"#{f.n:04d}" for f in running)
        return accepted(f"stopping (experiment {numbers} will be recorded as interrupted)")
    return accepted("stopping")


def _note(s: Session, text: str | None) -> dict[str, Any]:
    text = strip_control(text or "").strip()[:MAX_NOTE]
    if not text:
        return refused("a note needs text")
    s.notes.append(text)
    s.journal.update_state(notes_pending=list(s.notes))
    return accepted(f"note queued for the next proposal ({len(s.notes)} pending)")


_HANDLERS = {"pause": _pause, "resume": _resume, "skip": _skip, "keep": _keep, "stop": _stop, "note": _note}
