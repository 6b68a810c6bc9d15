"""Agents that propose one change to the mutable files per experiment."""

from __future__ import annotations

from .base import Agent, AgentError, CostCapReached, Proposal, ProposalCancelled, ProposalContext, Usage

__all__ = [
    "Agent",
    "AgentError",
    "CostCapReached",
    "Proposal",
    "ProposalCancelled",
    "ProposalContext",
    "Usage",
    "make_agent",
]


def make_agent(config) -> Agent:
    """The agent named by ``config.agent.effective_name()``, built from its config."""
    name = config.agent.effective_name()
    if name == "heuristic":
        from .heuristic import HeuristicAgent

        return HeuristicAgent(seed=config.loop.seed)
    if name == "claude":
        from .claude import ClaudeAgent

        return ClaudeAgent(config.agent)
    if name == "command":
        from .command import CommandAgent

        return CommandAgent(config.agent)
    raise ValueError(f"unknown agent {name!r}")
