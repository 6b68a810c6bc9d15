"""The options of a run: one table builds the parser's flags and the configuration overrides.

Overrides then pass the same type and range checks as autoresearch.toml (engine/config.py).
"""

from __future__ import annotations

import argparse
from typing import Any

# flag, config key, type, metavar, help. --agent is added separately (it has choices); a bool
# option is a --flag / --no-flag pair.
RUN_OPTIONS: list[tuple[str, str, type, str, str]] = [
    ("--budget", "loop.budget_seconds", float, "S", "training seconds per experiment"),
    ("--max-experiments", "loop.max_experiments", int, "N", "stop after N experiments"),
    ("--max-cost", "agent.max_cost", float, "USD", "pause the loop when the agent has cost this much"),
    ("--model", "agent.model", str, "NAME", "the Claude model (for --agent claude)"),
    ("--agent-command", "agent.command", str, "CMD", "the agent CLI (for --agent command), prompt on stdin"),
    ("--workers", "loop.workers", int, "N", "experiments at once (default: one per GPU; 1 on a CPU)"),
    ("--overlap", "loop.overlap", bool, "", "two experiments per device, taking turns to train: one trains while "
     "the other is scored (--no-overlap: off)"),
    ("--seed", "loop.seed", int, "N", "seed for the heuristic agent"),
    ("--ray", "loop.ray", str, "ADDRESS", 'train and score each experiment on a Ray cluster ("auto" or HEAD:PORT)'),
]


def dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Configuration overrides from the run options the user gave."""
    overrides = {"agent.name": getattr(args, "agent", None)}
    for flag, key, *_ in RUN_OPTIONS:
        overrides[key] = getattr(args, dest(flag), None)
    return {k: v for k, v in overrides.items() if v is not None}
