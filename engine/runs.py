"""Finding runs: the research repository, the tag a command means, where a run stands.

One rule for tags, used by every command and the monitor: a tag that is named must
exist; with none named, the running one (the most recent if several run), else the
most recent run. A new run's tag is today's date the way Karpathy tags runs (nov23).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .errors import UsageError
from .lock import holder_pid, is_locked
from .rundir import RunDir, list_tags

REQUIRED_FILES = ("train.py", "prepare.py", "program.md")
TARGET_REQUIRED_FILES = ("program.md",)  # a [target] brings its own run command and metric


def resolve_repo(path: str | Path, require_files: bool = True, target: bool = False) -> Path:
    """The repository's top level, after checking it can host a run (of this workspace,
    or of a [target], which needs only program.md)."""
    from . import gitops  # GitPython costs a monitor's start-up 0.15 s: only commands that need it load it

    repo = gitops.open_repo(Path(path).expanduser())
    root = Path(repo.working_tree_dir).resolve()
    if not require_files:
        return root
    required = TARGET_REQUIRED_FILES if target else REQUIRED_FILES
    missing = [f for f in required if not (root / f).is_file()]
    if missing:
        raise UsageError(f"{root} has no {', '.join(missing)}: an autoresearch repository needs "
                         f"{', '.join(required)}")
    if not gitops.has_commits(repo):
        raise UsageError(f"{root} has no commits yet: commit {', '.join(required)} first")
    uncommitted = [f for f in required if not gitops.is_tracked_at_head(repo, f)]
    if uncommitted:
        raise UsageError(f"{', '.join(uncommitted)} not committed: a run starts from HEAD, so commit first")
    return root


def find_repo_root(path: str | Path) -> Path:
    """The nearest directory up with a .git: a file-system walk, cheap enough for the
    monitor to call before its first frame (the engine does the thorough checks)."""
    start = Path(path).expanduser()
    if not start.is_dir():
        raise UsageError(f"{start} is not a directory")
    start = start.resolve()
    for candidate in (start, *start.parents):
        if (candidate / ".git").exists():
            return candidate
    raise UsageError(f"{start} is not a git repository")


def default_tag(now: float | None = None) -> str:
    """Today's date like "nov23"."""
    t = time.localtime(now)
    return time.strftime("%b", t).lower() + str(t.tm_mday)


def running_tag(repo: Path) -> str | None:
    """The most recent tag whose engine is alive, if any."""
    running = [t for t in list_tags(repo) if is_locked(RunDir.for_tag(repo, t).lock)]
    return running[-1] if running else None


def resolve_tag(repo: Path, tag: str | None) -> str:
    """The tag a command means (see the module docstring)."""
    tags = list_tags(repo)
    if tag is not None:
        if tag not in tags:
            known = f" (runs here: {', '.join(tags[-5:])})" if tags else ""
            raise UsageError(f"unknown tag {tag!r} in {repo}{known}")
        return tag
    if not tags:
        raise UsageError(f"no runs in {repo} yet: start one with `autoresearch`")
    return running_tag(repo) or tags[-1]


def status_data(repo: Path, tag: str) -> dict[str, Any]:
    """Where a run stands, for `autoresearch status` (and its --json)."""
    rd = RunDir.for_tag(repo, tag)
    state = rd.read_state()
    results = rd.read_results()
    alive = is_locked(rd.lock)
    config = state.config
    if not config:
        from .config import load_config  # only here: tomllib and the config schema cost the monitor's start

        try:
            config = load_config(repo).to_dict()
        except UsageError:
            config = None
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {
        "tag": tag,
        "run_dir": str(rd.root),
        "engine_alive": alive,
        "pid": holder_pid(rd.lock) if alive else None,
        "phase": state.phase if alive else "stopped",
        "last_phase": state.phase,
        "experiment": state.experiment if alive else None,
        "phase_started_at": state.phase_started_at,
        "paused": state.paused if alive else False,
        "pause_requested": state.pause_requested if alive else False,
        "hypothesis": state.hypothesis if alive else None,
        "description": state.description if alive else None,
        "flights": state.flights if alive else [],  # one per running experiment (several workers)
        "best": state.best.to_dict() if state.best else None,
        "baseline": state.baseline.to_dict() if state.baseline else None,
        "experiments": len(results),
        "counts": counts,
        "agent": state.agent,
        "sandbox": state.sandbox,
        "cost_usd": state.cost_usd,
        "error": state.error,
        "heartbeat_at": state.heartbeat_at,
        "budget": state.budget,
        "config": config,
        "last_result": results[-1].to_dict() if results else None,
    }
