"""Fixtures for agent tests: a small git worktree, a fake Messages API, a context."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from engine.agents.base import ProposalContext
from engine.results import Best, Result, parse_results
from tests.gitrepo import committed_repo

from .fake_messages_api import FakeMessagesAPI

TRAIN_PY = '''"""A stand-in genome."""
LR = 0.01
BATCH_SIZE = 8
WARMUP = 10


def main():
    print("training with", LR, BATCH_SIZE)


if __name__ == "__main__":
    main()
'''

PREPARE_PY = '''"""A stand-in evaluator."""
TIME_BUDGET = 60
'''

PROGRAM_MD = "# Research program\nLower val_bpb by editing train.py only.\n"


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    """A git repository with a committed train.py, prepare.py and program.md."""
    return committed_repo(tmp_path / "worktree", {"train.py": TRAIN_PY, "prepare.py": PREPARE_PY, "program.md": PROGRAM_MD})


@pytest.fixture
def api(monkeypatch) -> FakeMessagesAPI:
    """A running fake API; the real SDK finds it through the environment."""
    with FakeMessagesAPI() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-fake")
        yield server


@pytest.fixture
def make_context(worktree: Path) -> Callable[..., ProposalContext]:
    def make(**overrides: Any) -> ProposalContext:
        emitted: list[str] = []
        values: dict[str, Any] = dict(
            n=3,
            worktree=worktree,
            program=PROGRAM_MD,
            mutable=["train.py"],
            history=[],
            best=None,
            last_result=None,
            last_log_tail="",
            notes=[],
            emit=emitted.append,
        )
        values.update(overrides)
        # Tests write records as plain dicts, the way results.jsonl holds them.
        if values["history"] and isinstance(values["history"][0], dict):
            values["history"] = parse_results(values["history"])
        if isinstance(values["last_result"], dict):
            values["last_result"] = Result.from_dict(values["last_result"])
        if isinstance(values["best"], dict):
            values["best"] = Best.from_dict(values["best"])
        ctx = ProposalContext(**values)
        ctx.emitted = emitted  # type: ignore[attr-defined]
        return ctx

    return make
