"""Checks before each experiment: is there a reason to pause instead of starting one?

Each returns the reason as one line for the user, or None. The loop pauses with it; a
person fixes the cause and resumes (`autoresearch ctl resume` or `p` in the monitor).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import rundir
from .integrity import cache_dir, sha256_file
from .results import FAILED
from .session import Session

GB = 1e9


def preflight_problem(s: Session) -> str | None:
    return (_unwritable(s) or _low_disk(s) or _data_changed(s) or _failure_streak(s))


def _unwritable(s: Session) -> str | None:
    if s.journal.write_error:
        return f"the run directory cannot be written ({s.journal.write_error}): free space, then resume"
    return None


def _low_disk(s: Session) -> str | None:
    limit = s.config.loop.min_free_gb
    if limit <= 0:
        return None
    try:
        free = shutil.disk_usage(s.rd.root).free
    except OSError:
        return None
    if free < limit * GB:
        return (f"only {free / GB:.2f} GB free on the disk of {s.rd.root} (min_free_gb = {limit:g}): "
                "free some space, then resume")
    return None


def data_stamp() -> dict[str, tuple[int, int, int]]:
    """(size, mtime, inode) of each file of the data cache: cheap to compare before every run."""
    stamp = {}
    root = cache_dir()
    for path in sorted(root.glob("*")):
        if path.is_file():
            st = path.stat()
            stamp[path.name] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return stamp


def _data_changed(s: Session) -> str | None:
    """A data file that changed under a running loop (a flipped byte, a rebuild) would
    make every later run fail or mean nothing: checked by its stamp, then by its hash."""
    now = data_stamp()
    if s.data_stamp is None or now == s.data_stamp:
        return None
    manifest = rundir.read_json(cache_dir() / "manifest.json")
    artifacts = manifest.get("artifacts") if isinstance(manifest, dict) else None
    if not isinstance(artifacts, dict):
        return f"the data cache at {cache_dir()} lost its manifest: rebuild it with `autoresearch prepare --force`"
    for name, meta in sorted(artifacts.items()):
        expected = meta.get("sha256") if isinstance(meta, dict) else None
        if sha256_file(Path(cache_dir()) / name) != expected:
            return (f"the data cache changed under the run: {name} no longer matches its manifest; "
                    "rebuild it with `autoresearch prepare --force` and start a new tag")
    s.data_stamp = now  # touched, not changed
    return None


def _failure_streak(s: Session) -> str | None:
    limit = s.config.loop.max_failures_in_a_row
    recent = [r for r in s.results[s.streak_from:] if r.status not in ("skipped", "interrupted")][-limit:]
    if len(recent) == limit and all(r.status in FAILED for r in recent):
        last = recent[-1]
        why = f": {' '.join((last.error or '').split())[:200]}" if last.error else ""
        return (f"{limit} experiments in a row failed (the last, #{last.n:04d}, {last.status}{why}); "
                "look at its log, then resume")
    return None
