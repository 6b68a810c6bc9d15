"""Checking a proposal and committing it, or saying why it is rejected.

A change may run only when it is exactly a commit of the mutable files: nothing outside
them, not prepare.py, not empty, no symbolic links, no files git ignores (they would not
be in the commit, and so not in what trains), no edits to the repository's own git
configuration, hooks or ignore rules. The added-lines patterns of engine/integrity.py
are an early, friendly refusal; the sandbox and the scorer are what make it safe.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from .gitops import GitMetadata
from .integrity import Fingerprint, off_limits_additions
from .results import Result, experiment_ref
from .session import Session


def is_mutable(path: str, mutable: list[str]) -> bool:
    """A path the agent may change: named, under a named folder/, or matching a glob."""
    return any(path == m or (m.endswith("/") and path.startswith(m)) or fnmatch.fnmatchcase(path, m) for m in mutable)


def scope_problems(paths: list[str], mutable: list[str], evaluator: str | None = "prepare.py") -> list[str]:
    """Why a change may not run: empty, touches the evaluator, or leaves the mutable files."""
    if not paths:
        return ["the change is empty (nothing differs from the best commit)"]
    problems = []
    if evaluator and evaluator in paths:
        problems.append(f"changed {evaluator} (the evaluator is immutable)")
    outside = sorted(p for p in set(paths) if p != evaluator and not is_mutable(p, mutable))
    if outside:
        problems.append(f"changed files outside its scope ({', '.join(mutable)}): {', '.join(outside[:10])}")
    return problems


def commit_baseline(s: Session, draft: Result, exp_dir: Path) -> str | None:
    """A baseline run measures the best commit as it is."""
    parent = draft.parent or s.best_commit()
    draft.parent = parent
    (exp_dir / "diff.patch").write_text("")
    problems = s.fingerprint.problems(Fingerprint.of(s.rd.worktree))
    if problems:
        s.pause_with_error("; ".join(problems))
        return "; ".join(problems)
    draft.commit = parent
    s.wt.set_ref(experiment_ref(s.tag, draft.n), parent)
    s.update_flight(commit=parent)
    return None


def check_and_commit(s: Session, draft: Result, exp_dir: Path, metadata: GitMetadata,
                     known_problems: list[str] = ()) -> str | None:
    """Commit the agent's change, or return why it is rejected (the worktree is then reset)."""
    parent = draft.parent or s.best_commit()  # the best the agent worked on
    draft.parent = parent
    with s.decide_lock:  # workers share the repository's metadata
        git_changes = metadata.changes()
        if git_changes:
            metadata.restore()  # a planted hook or filter must not outlive the proposal
        s.git_metadata_checked()
    ignored = s.wt.ignored_paths()
    change = s.wt.change()
    (exp_dir / "diff.patch").write_text(change.diff, encoding="utf-8")
    builtin = s.config.target is None
    problems = scope_problems(change.paths, s.config.loop.mutable, "prepare.py" if builtin else None)
    if builtin:  # the line patterns know this workspace's evaluator
        problems += off_limits_additions(change.diff)
    problems += list(known_problems)
    if git_changes:
        problems.append(f"changed the repository's git metadata: {', '.join(git_changes[:10])}")
    if ignored:
        problems.append(f"added files that git ignores (they would not be part of the commit): {', '.join(ignored[:10])}")
    links = s.wt.symlinks(change.paths)
    if links:
        problems.append(f"made symbolic links (only regular files may change): {', '.join(links[:10])}")
    for problem in s.fingerprint.problems(Fingerprint.of(s.wt.path)):
        if "manifest" in problem:
            # The data cache changed (no agent edit does that): hold the loop for a human.
            s.pause_with_error(problem)
            problems.append(problem)
        elif "prepare.py" not in change.paths:
            problems.append(problem)
    if problems:
        s.wt.reset_to(parent)
        return "; ".join(problems)
    message = f"autoresearch #{draft.n:04d}: {draft.description}\n\n{draft.hypothesis}".strip()
    commit = s.wt.commit(message)
    draft.commit = commit
    s.wt.set_ref(experiment_ref(s.tag, draft.n), commit)
    s.update_flight(commit=commit)
    return None
