"""The one interface every agent implements.

The engine builds a ProposalContext, calls ``agent.propose(context)``; the agent edits
files in ``context.worktree`` (only the mutable ones, which the engine checks anyway)
and returns a Proposal. The engine, not the agent, commits, runs, measures and reverts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ..results import Best, Result


@dataclass(frozen=True)
class Goal:
    """What the experiments are scored on: the agent is told this, not assumed to know it."""

    metric: str = "val_bpb"
    direction: str = "min"  # "min": lower is better; "max": higher is better
    measured_by: str = "the immutable evaluator in prepare.py"
    guard: str | None = None  # a command that must pass before a change can be kept

    @property
    def better(self) -> str:
        return "lower" if self.direction == "min" else "higher"

    @property
    def improve(self) -> str:
        return "lower" if self.direction == "min" else "raise"


@dataclass
class ProposalContext:
    n: int  # the experiment number this proposal becomes
    worktree: Path  # the agent's working directory (git worktree at the best commit)
    program: str  # program.md text: the human's research instructions
    mutable: list[str]  # paths (relative to worktree) the agent may change
    history: list[Result]  # results so far, oldest first
    best: Best | None  # the current best, if any
    last_result: Result | None  # the previous experiment's record
    last_log_tail: str  # UNTRUSTED: tail of the previous run.log; fence it, never obey it
    notes: list[str]  # human notes sent since the last proposal
    seed: int = 0
    # Pipelined proposals: the experiment training right now (its record so far) and its
    # diff, so the agent does not propose the same thing again. None when nothing trains.
    in_flight: Result | None = None
    in_flight_diff: str = ""
    # With several workers: every change the other workers are measuring (in_flight is the latest).
    running: list[Result] = field(default_factory=list)
    goal: Goal = field(default_factory=Goal)
    # Stream agent text as it arrives (the engine writes it to events.jsonl).
    emit: Callable[[str], None] = field(default=lambda text: None)
    # US dollars this proposal may still spend: the run's max_cost minus what the run
    # has spent so far; None when there is no cap (or a person resumed past it). An agent
    # that pays per request stops before a request that could pass it (CostCapReached).
    budget_usd: float | None = None
    # Set by the engine when it abandons the proposal (stop, shutdown). The agent then
    # stops promptly and touches nothing more: the command agent kills its process group,
    # the Claude agent makes no further request and runs no further tool.
    cancel: threading.Event = field(default_factory=threading.Event)
    # Called with the process group id of a running agent process when it starts, and
    # with None once that group is gone, so the engine can record it and a restarted
    # engine can reap what a killed one left behind (command.reap_stale_group).
    on_process_group: Callable[[int | None], None] = field(default=lambda pgid: None)

    def read(self, relpath: str) -> str:
        return (self.worktree / relpath).read_text(encoding="utf-8")


@dataclass
class Usage:
    """What one proposal cost. Token counts are summed over every API call it made."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


@dataclass
class Proposal:
    hypothesis: str  # why this change should lower val_bpb
    description: str  # one line, for results.tsv and lists
    usage: Usage = field(default_factory=Usage)


class AgentError(Exception):
    """A proposal failed. ``transient`` failures (network, rate limits) count toward
    ``max_failures``, after which the loop pauses; others are recorded and the loop
    moves on."""

    def __init__(self, message: str, transient: bool = False, usage: Usage | None = None):
        super().__init__(message)
        self.transient = transient
        self.usage = usage or Usage()


class CostCapReached(AgentError):
    """The proposal stopped because its next API request could pass the cost cap
    (``ProposalContext.budget_usd``). Not transient: the engine pauses at its cost cap
    instead of retrying; ``usage`` holds what the proposal spent before it stopped."""


class ProposalCancelled(AgentError):
    """The engine cancelled the proposal (``ProposalContext.cancel``); nothing more runs."""


class Agent(Protocol):
    name: str  # "heuristic", "claude", "command"
    model: str | None  # e.g. "claude-sonnet-5-5"; None for agents without one

    def propose(self, context: ProposalContext) -> Proposal: ...
