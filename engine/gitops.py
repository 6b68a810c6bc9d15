"""Git plumbing for a run: the worktree, commits, refs, resets, diffs, exports (GitPython).

The user's own checkout is never touched: every change happens in the worktree at
``.autoresearch/<tag>/worktree`` on branch ``autoresearch/<tag>``. Every git command the
engine runs has hooks turned off (``core.hooksPath=/dev/null``) and no fsmonitor, so
nothing an agent or a training run planted in ``.git`` can run with the engine's
environment. ``GitMetadata`` notices (and undoes) changes to the repository's own
configuration, hooks and ignore/attribute files between two points in time.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import git

from .errors import UsageError
from .results import base_ref
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
        repo = safe_repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise UsageError(f"{path} is not a git repository (run `git init` and commit train.py first)") from None
    if repo.bare:
        raise UsageError(f"{path} is a bare repository; autoresearch needs a checkout")
    return repo


def branch_name(tag: str) -> str:
    return f"autoresearch/{tag}"


# Options for every engine git command: nothing planted in .git runs, nothing slow watches.
SAFE_GIT_OPTIONS = ["core.hooksPath=/dev/null", "core.fsmonitor=false", "core.untrackedCache=false"]


def safe_repo(path: Path | str, **kwargs) -> git.Repo:
    repo = git.Repo(path, **kwargs)
    repo.git.set_persistent_git_options(c=SAFE_GIT_OPTIONS)
    return repo


def common_dir(repo: git.Repo) -> Path:
    """The repository's shared .git directory (the same for every worktree)."""
    common = Path(repo.git.rev_parse("--git-common-dir"))
    return common if common.is_absolute() else (Path(repo.working_tree_dir) / common).resolve()


def ensure_excluded(repo: git.Repo) -> None:
    """Add ``/.autoresearch/`` to .git/info/exclude (never to the user's .gitignore)."""
    exclude = common_dir(repo) / "info" / "exclude"
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
        self.repo = safe_repo(self.path)
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

    @classmethod
    def open_or_create_detached(cls, repo: git.Repo, path: Path, tag: str, sha: str) -> "Worktree":
        """A second worktree at ``sha`` on no branch (where pipelined proposals are written)."""
        path = Path(path)
        if not (path / ".git").exists():
            repo.git.worktree("prune")
            repo.git.worktree("add", "--detach", "--force", str(path), sha)
        wt = cls(path, tag)
        wt.reset_to(sha)
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

    def ignored_paths(self) -> list[str]:
        """Files that git ignores: invisible to a diff, so a change may not add any."""
        out = self.repo.git.status("--porcelain=v1", "-z", "--ignored=matching", "--untracked-files=all")
        return [e[3:] for e in out.split("\0") if e.startswith("!! ")]

    def symlinks(self, paths: list[str]) -> list[str]:
        """Which of ``paths`` (relative) are symbolic links in the worktree."""
        return [p for p in paths if (self.path / p).is_symlink()]

    def modes_at(self, sha: str) -> dict[str, str]:
        """Path -> git file mode of every tracked file of a commit (120000: a symlink)."""
        out = self.repo.git.ls_tree("-r", "-z", sha)
        modes = {}
        for entry in out.split("\0"):
            if entry:
                meta, _, path = entry.partition("\t")
                modes[path] = meta.split()[0]
        return modes

    def export(self, sha: str, dest: Path) -> None:
        """Write the tracked files of ``sha`` (and nothing else: no .git, no ignored files) to ``dest``.

        Only regular files are written; links and anything that would land outside
        ``dest`` are skipped (a change that adds a link is rejected before it gets here).
        """
        extract_archive(self.archive(sha), dest)

    def archive(self, sha: str) -> bytes:
        """``git archive`` of ``sha`` (a tar of its tracked files), for ``extract_archive``
        here or on another machine (engine/remote.py ships it to a Ray node)."""
        return self.repo.git.archive("--format=tar", sha, stdout_as_string=False)

    def change(self, binary: bool = False) -> Change:
        """The agent's change: stages everything (so new files show) and diffs it.

        ``binary`` gives a patch that ``apply`` can replay exactly (binary files included).
        """
        paths = self.changed_paths()
        if not paths:
            return Change([], "")
        self.repo.git.add("-A")
        options = ["--cached", "HEAD", "--no-color", "--no-ext-diff", "--full-index"] + (["--binary"] if binary else [])
        diff = self.repo.git.diff(*options)
        return Change(paths, diff + "\n" if diff else "")

    # --- writing ---------------------------------------------------------------

    def commit(self, message: str) -> str:
        """Commit what is staged; returns the new commit's sha."""
        self.repo.git.commit("-q", "--no-verify", "-m", message or "experiment", env=self._env)
        return self.head()

    def apply(self, patch: str, three_way: bool) -> bool:
        """Apply a patch made elsewhere to the files and the index. With ``three_way`` it
        may have been made on another commit (git's three-way merge); False on a conflict,
        and the worktree is left as it was."""
        if not patch.strip():
            return True
        args = ["--index", "--whitespace=nowarn"] + (["--3way"] if three_way else [])
        with tempfile.NamedTemporaryFile("w", suffix=".patch", encoding="utf-8") as f:
            f.write(patch)
            f.flush()
            try:
                self.repo.git.apply(*args, f.name)
            except git.GitCommandError:
                self.reset_to(self.head())
                return False
        if self.repo.git.ls_files("--unmerged"):
            self.reset_to(self.head())
            return False
        return True

    def tree(self, sha: str) -> str:
        """The tree (the files) of commit ``sha``: equal trees, equal code."""
        return self.repo.git.rev_parse(f"{sha}^{{tree}}")

    def diff(self, a: str, b: str) -> str:
        """The change from commit ``a`` to ``b``, as a patch ``apply`` replays exactly."""
        diff = self.repo.git.diff("--no-color", "--no-ext-diff", "--full-index", "--binary", a, b)
        return diff + "\n" if diff else ""

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


def extract_archive(data: bytes, dest: Path) -> None:
    """Write the regular files of a ``git archive`` tar into ``dest``: links and anything
    that would land outside ``dest`` are skipped; modes are 0644 or 0755."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts:
                continue
            target = dest / name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)


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


class GitMetadata:
    """The repository's own configuration, hooks, ignore and attribute files, at one moment.

    Taken before an agent works and compared after: a change there (a hook, a filter
    driver, an ignore rule that hides a new file) is no part of an experiment. ``restore``
    puts the files back as they were.
    """

    WATCHED = ("config", "info/exclude", "info/attributes", "hooks")

    def __init__(self, *repos: git.Repo):
        """``repos``: worktrees of one repository (the workers' own, when there are several)."""
        self.roots = [common_dir(repos[0])]
        for repo in repos:
            private = Path(repo.git.rev_parse("--git-dir"))
            private = private if private.is_absolute() else (Path(repo.working_tree_dir) / private).resolve()
            if private not in self.roots:
                self.roots.append(private)  # a worktree's own config.worktree and info/
        self.files = self._read()

    def _read(self) -> dict[Path, bytes]:
        found: dict[Path, bytes] = {}
        for root in self.roots:
            for name in (*self.WATCHED, "config.worktree"):
                path = root / name
                if path.is_dir() and not path.is_symlink():
                    for child in sorted(path.rglob("*")):
                        if child.is_file() or child.is_symlink():
                            found[child] = _read_bytes(child)
                elif path.exists() or path.is_symlink():
                    found[path] = _read_bytes(path)
        return found

    def changes(self) -> list[str]:
        """Names of the metadata files added, removed or changed since the snapshot."""
        now = self._read()
        changed = [p for p in set(now) | set(self.files) if now.get(p) != self.files.get(p)]
        return sorted(_display(p, self.roots) for p in changed)

    def restore(self) -> None:
        now = self._read()
        for path in set(now) - set(self.files):
            path.unlink(missing_ok=True)
        for path, data in self.files.items():
            if now.get(path) != data:
                if path.is_symlink():
                    path.unlink()
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)


def _read_bytes(path: Path) -> bytes:
    if path.is_symlink():
        return b"symlink -> " + os.readlink(path).encode()
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _display(path: Path, roots: list[Path]) -> str:
    for root in roots:
        try:
            return ".git/" + path.relative_to(root).as_posix()
        except ValueError:
            continue
    return str(path)
