"""The run directory: the single source of truth shared by the engine and the monitor.

Layout of ``<repo>/.autoresearch/<tag>/``:

    results.jsonl     one JSON object per finished experiment, appended and fsync'd
                      (fields: engine/results.py, ``Result``)
    results.tsv       commit, val_bpb, memory_gb, status, description (Karpathy's columns)
    events.jsonl      one JSON object per event, each with "ts" (unix seconds) and "type"
    state.json        the engine's current snapshot, replaced atomically (``State``)
    engine.lock       the engine's pid, under an flock (engine/lock.py)
    control.sock      Unix socket for control commands (engine/control.py)
    run.json          written once when the tag starts: base commit, budget, fingerprints
    trusted/          prepare.py as the run started: the scorer runs from here
    worktree/         git worktree on branch autoresearch/<tag>
    next/             a second worktree (detached) where the next proposal is written
    experiments/NNNN/ run.log, diff.patch, hypothesis.md, eval.json

Event types written to events.jsonl (every event also has "ts"; most have "n"):

    engine      {"event": "start"|"resume"|"exit", "pid": int}
    phase       {"n": int|None, "phase": str}
    hypothesis  {"n": int, "text": str}    a chunk of agent text as it streams
    proposal    {"n": int, "hypothesis": str, "description": str, "agent": {...}}
    result      {"n": int, "status": str, "metric": float|None, ...}  (Result.short())
    command     {"cmd": str, "text": str|None, "result": "accepted"|"refused", "reason": str}
    usage       {"n": int, "agent": {...}}   tokens and cost of one proposal
    error       {"message": str, "n": int|None}
    measurement {"n": int, "run": int, "metric": float}  a run of a candidate, before its confirmation
    proposal_dropped {"n": int, "description": str, "reason": str}  a pipelined proposal that no longer applied
    notify      {"message": str}             a notification that could not be delivered
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .results import Result, State, parse_results

RUNS_DIRNAME = ".autoresearch"




@dataclass(frozen=True)
class RunDir:
    """Paths of one run (one tag). Creating the object touches nothing on disk."""

    root: Path  # <repo>/.autoresearch/<tag>

    @classmethod
    def for_tag(cls, repo: Path | str, tag: str) -> "RunDir":
        return cls(Path(repo).resolve() / RUNS_DIRNAME / tag)

    @property
    def tag(self) -> str:
        return self.root.name

    @property
    def results_jsonl(self) -> Path:
        return self.root / "results.jsonl"

    @property
    def results_tsv(self) -> Path:
        return self.root / "results.tsv"

    @property
    def events_jsonl(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def state_json(self) -> Path:
        return self.root / "state.json"

    @property
    def lock(self) -> Path:
        return self.root / "engine.lock"

    @property
    def socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def run_info(self) -> Path:
        return self.root / "run.json"

    @property
    def scorer(self) -> Path:
        """The trusted copy of prepare.py that scores every experiment (from the base commit)."""
        return self.root / "trusted" / "prepare.py"

    @property
    def worktree(self) -> Path:
        return self.root / "worktree"

    @property
    def next_worktree(self) -> Path:
        """Where a pipelined proposal is written while an experiment trains."""
        return self.root / "next"

    def lane_worktree(self, index: int) -> Path:
        """Where worker ``index`` proposes and commits its changes (with several workers)."""
        return self.root / "lanes" / str(index)

    @property
    def experiments(self) -> Path:
        return self.root / "experiments"

    def experiment(self, n: int) -> Path:
        return self.experiments / f"{n:04d}"

    def read_state(self) -> State:
        return State.from_dict(read_json(self.state_json))

    def read_results(self) -> list[Result]:
        return parse_results(read_jsonl(self.results_jsonl))


def list_tags(repo: Path | str) -> list[str]:
    """Tags that have a run directory, oldest first by directory mtime."""
    runs = Path(repo) / RUNS_DIRNAME
    if not runs.is_dir():
        return []
    dirs = [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    dirs.sort(key=lambda p: (p.stat().st_mtime, p.name))
    return [p.name for p in dirs]


# --- writing -----------------------------------------------------------------


def append_jsonl(path: Path, record: dict[str, Any], fsync: bool = True) -> None:
    """Append one record as a single line; fsync so a power cut loses at most this line.

    If the file ends in a partial line (a previous crash mid-write), that fragment is
    cut off first so the new record starts on a line of its own.
    """
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_jsonl(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory, fsync, then rename over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# --- reading -----------------------------------------------------------------


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def parse_jsonl_lines(data: bytes) -> Iterator[dict[str, Any]]:
    """Parse complete lines of JSONL; skip blank or malformed ones."""
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(obj, dict):
            yield obj


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record in the file. A truncated last line is skipped (read-only)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    end = data.rfind(b"\n") + 1  # bytes after the last newline are an unfinished write
    yield from parse_jsonl_lines(data[:end])


def repair_jsonl(path: Path) -> bool:
    """Cut a truncated final line (no trailing newline). Returns True if it cut anything.

    Only the writer (the engine) calls this; readers just skip the fragment.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        # Walk back to the last newline; reading the tail in blocks keeps this cheap.
        pos = size
        block = 4096
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                f.truncate(start + idx + 1)
                return True
            pos = start
        f.truncate(0)
        return True
