"""A throwaway git repository for tests: the stand-in genomes of every test area live in one."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd``; its output, stripped. Fails the test on a non-zero exit."""
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def committed_repo(path: Path, files: dict[str, str]) -> Path:
    """A new repository at ``path`` on branch main whose first commit holds ``files``."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "test@example.com")
    git(path, "config", "user.name", "Test")
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", *files)
    git(path, "commit", "-q", "-m", "genome")
    return path
