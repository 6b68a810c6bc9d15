"""Git plumbing for a run: the worktree, commits, refs, resets and diffs (GitPython).

The user's own checkout is never touched: every change happens in the worktree at
``.autoresearch/<tag>/worktree`` on branch ``autoresearch/<tag>``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import git

from .errors import UsageError
from .rundir import RUNS_DIRNAME

# A tag becomes a branch and a directory name: keep it to a safe alphabet.
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Used only when the repository has no identity configured (fresh CI boxes, tests).
_FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "autoresearch",
    "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
    "GIT_COMMITTER_NAME": "autoresearch",
    "GIT_COMMITTER_EMAIL": "autoresearch@localhost",
}


def check_tag(tag: str) -> str:
    if not _TAG_RE.match(tag) or tag.endswith(".lock") or ".." in tag:
        raise UsageError(f"bad tag {tag!r}: use letters, digits, '.', '_' or '-' (like nov23)")
    return tag


def open_repo(path: Path | str) -> git.Repo:
    """The repository at ``path`` (its top level), or UsageError."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path} is not a directory")
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise UsageError(f"{path} is not a git repository (run `git init` and commit train.py first)") from None
    if repo.bare:
        raise UsageError(f"{path} is a bare repository; autoresearch needs a checkout")
    return repo


def branch_name(tag: str) -> str:
    return f"autoresearch/{tag}"


def experiment_ref(tag: str, n: int) -> str:
    return f"refs/autoresearch/{tag}/{n:04d}"


def base_ref(tag: str) -> str:
    """Where the run started: the commit the baseline measures."""
    return f"refs/autoresearch/{tag}/base"


def ensure_excluded(repo: git.Repo) -> None:
    """Add ``/.autoresearch/`` to .git/info/exclude (never to the user's .gitignore)."""
    common = Path(repo.git.rev_parse("--git-common-dir"))
    if not common.is_absolute():
        common = Path(repo.working_tree_dir) / common
    exclude = common / "info" / "exclude"
    line = f"/{RUNS_DIRNAME}/"
    try:
        existing = exclude.read_text(encoding="utf-8")
    except FileNotFoundError:
        existing = ""
    if line in existing.splitlines():
        return
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with open(exclude, "a", encoding="utf-8") as f:
        if existing and not existing.endswith("\n"):
            f.write("\n")
        f.write(f"# autoresearch run directories\n{line}\n")


@dataclass
class Change:
    """What the agent changed in the worktree, relative to HEAD."""

    paths: list[str]  # every changed, added, deleted or untracked path
    diff: str  # unified diff against HEAD, untracked files included


class Worktree:
    """The run's worktree. Every method is one or two git calls."""

    def __init__(self, path: Path, tag: str):
        self.path = Path(path)
        self.tag = tag
        self.repo = git.Repo(self.path)
        self._env = None if _has_identity(self.repo) else _FALLBACK_IDENTITY

    # --- creation --------------------------------------------------------------

    @classmethod
    def open_or_create(cls, repo: git.Repo, path: Path, tag: str) -> "Worktree":
        """Open the tag's worktree, creating branch and worktree from HEAD if needed."""
        path = Path(path)
        branch = branch_name(tag)
        if (path / ".git").exists():
            return cls(path, tag)
        repo.git.worktree("prune")
        if branch in [h.name for h in repo.heads]:
            repo.git.worktree("add", "--force", str(path), branch)
        else:
            repo.git.worktree("add", "-b", branch, str(path), "HEAD")
        wt = cls(path, tag)
        if not wt.ref_exists(base_ref(tag)):
            wt.set_ref(base_ref(tag), wt.head())
        return wt

    # --- reading ---------------------------------------------------------------

    def head(self) -> str:
        return self.repo.git.rev_parse("HEAD")

    def ref_exists(self, ref: str) -> bool:
        try:
            self.repo.git.rev_parse("--verify", "--quiet", ref)
            return True
        except git.GitCommandError:
            return False

    def resolve(self, ref: str) -> str | None:
        try:
            return self.repo.git.rev_parse("--verify", "--quiet", ref + "^{commit}")
        except git.GitCommandError:
            return None

    def changed_paths(self) -> list[str]:
        """Paths that differ from HEAD, untracked files included (one per file)."""
        out = self.repo.git.status("--porcelain=v1", "-z", "--untracked-files=all")
        paths: list[str] = []
        entries = out.split("\0")
        i = 0
        while i < len(entries):
            entry = entries[i]
            i += 1
            if len(entry) < 4:
                continue
            code, path = entry[:2], entry[3:]
            paths.append(path)
            if "R" in code or "C" in code:  # a rename also names its source
                if i < len(entries) and entries[i]:
                    paths.append(entries[i])
                i += 1
        return paths

    def dirty_tracked(self) -> list[str]:
        """Tracked files that differ from HEAD (untracked files ignored)."""
        out = self.repo.git.status("--porcelain=v1", "-z", "--untracked-files=no")
        return [e[3:] for e in out.split("\0") if len(e) >= 4]

    def change(self) -> Change:
        """The agent's change: stages everything (so new files show) and diffs it."""
        paths = self.changed_paths()
        if not paths:
            return Change([], "")
        self.repo.git.add("-A")
        diff = self.repo.git.diff("--cached", "HEAD", "--no-color", "--no-ext-diff")
        return Change(paths, diff + "\n" if diff else "")

    # --- writing ---------------------------------------------------------------

    def commit(self, message: str) -> str:
        """Commit what is staged; returns the new commit's sha."""
        self.repo.git.commit("-q", "--no-verify", "-m", message or "experiment", env=self._env)
        return self.head()

    def set_ref(self, ref: str, sha: str) -> None:
        self.repo.git.update_ref(ref, sha)

    def reset_to(self, sha: str) -> None:
        """Make the worktree exactly ``sha``: tracked files restored, anything new removed."""
        self.repo.git.reset("-q", "--hard", sha)
        self.repo.git.clean("-q", "-f", "-f", "-d", "-x")

    def show(self, sha: str, relpath: str) -> str | None:
        try:
            return self.repo.git.show(f"{sha}:{relpath}")
        except git.GitCommandError:
            return None


def _has_identity(repo: git.Repo) -> bool:
    if os.environ.get("GIT_AUTHOR_EMAIL") and os.environ.get("GIT_COMMITTER_EMAIL"):
        return True
    try:
        repo.git.config("user.email")
        repo.git.config("user.name")
        return True
    except git.GitCommandError:
        return False


def is_tracked_at_head(repo: git.Repo, relpath: str) -> bool:
    try:
        repo.git.cat_file("-e", f"HEAD:{relpath}")
        return True
    except git.GitCommandError:
        return False


def has_commits(repo: git.Repo) -> bool:
    try:
        repo.git.rev_parse("--verify", "--quiet", "HEAD")
        return True
    except git.GitCommandError:
        return False
