"""Watching a loop that another program drives: Karpathy's autoresearch as Claude Code
or Codex runs it from program.md. No Textual here; tui/watch_app.py shows what this reads.

That loop lives in a plain git repository: the agent commits each experiment on branch
``autoresearch/<tag>``, runs ``uv run train.py > run.log 2>&1``, appends a row to
``results.tsv`` (``commit val_bpb memory_gb status description``, tab-separated,
status keep/discard/crash) and ``git reset``s what it discards.

Everything here only reads. Nothing is written to the watched repository: git runs
with ``--no-optional-locks`` and only read commands, and the pending change comes from
``git diff-index -p HEAD``, which is ``git diff HEAD`` without the index refresh that
``git diff`` writes back (even under --no-optional-locks) when a file's mtime moved.

- ``parse_results_tsv`` / ``TsvResults``: rows as ``engine.results.Result`` records,
  so the running best, the counts and the chart follow the engine's one rule.
- ``Tail``: the new bytes of a growing file (results.tsv, run.log), noticing a file
  that was truncated, replaced or rewritten.
- ``find_training`` / ``kill_training``: the ``train.py`` process running in the repository.
- ``read_git``: the branch, its recent commits and the uncommitted diff.
- ``WatchReader`` folds those into ``WatchBatch``es, as tui/rundata.py's RunReader does
  for our own runs; ``RepoWatcher`` is the one thread that calls it.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UsageError
from .results import METRIC, STATUSES, Result, Standing
from .untrusted import strip_control

RESULTS_TSV = "results.tsv"
RUN_LOG = "run.log"
TRAIN_SCRIPT = "train.py"
TSV_COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")
TSV_HEADER = "\t".join(TSV_COLUMNS)
MAX_TSV_BYTES = 64 * 1024 * 1024  # `history --from` refuses a bigger "results.tsv"
LOG_BACKLOG_BYTES = 256 * 1024  # a run.log that grew more than this unseen is read from its tail
MAX_DIFF_BYTES = 1024 * 1024
COMMITS = 30  # recent commits of the branch that are read
GIT_TIMEOUT_S = 10.0
GIT_INTERVAL_S = 3.0  # git runs at most this often
PROC_INTERVAL_S = 2.0  # the training process is looked for at most this often
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
MARK_BYTES = 64  # the bytes just before a tail's offset, to notice a rewritten file
# Programs that run a training script: `uv run train.py`, `python -u train.py`, `torchrun ...`.
LAUNCHERS = re.compile(r"(python[0-9.]*|pypy[0-9.]*|uv|uvx|torchrun|accelerate|deepspeed)(\.exe)?")
_COMMIT = re.compile(r"[0-9A-Za-z._/-]{1,64}")


# --- results.tsv ----------------------------------------------------------------------------


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def is_header(fields: list[str]) -> bool:
    return len(fields) >= 2 and fields[0].strip().lower() == "commit" and _number(fields[1].strip() or "x") is None


class TsvResults:
    """Karpathy's results.tsv, fed line by line, as ``Result`` records.

    - ``n`` counts the valid rows from 1 (his loop does not number experiments);
    - ``metric`` is val_bpb (None for a crash, whose 0.000000 is a placeholder, and for a
      value that is not positive); ``metric_name`` is the header's second column;
    - ``peak_mem_mb`` comes from memory_gb; ``delta`` is the metric minus the best before
      it, by ``Standing``'s rule (the latest keep is the best);
    - the first row, when it has a value, is the baseline (program.md: "your very first
      run should always be to establish the baseline"): ``baseline=True``, its status
      as written.

    A line that is not a row (too few columns, an unknown status, a val_bpb that is not a
    number) is skipped; ``skipped`` holds the line numbers.
    """

    def __init__(self) -> None:
        self.n = 0
        self.line_no = 0
        self.metric_name = METRIC
        self.header_seen = False
        self.skipped: list[int] = []
        self.standing = Standing()
        self.baseline: float | None = None

    def feed(self, text: str) -> list[Result]:
        """Complete lines (without their newline characters) -> the new records."""
        out = []
        for line in text.split("\n"):
            self.line_no += 1
            r = self.row(line.rstrip("\r"))
            if r is not None:
                out.append(r)
        return out

    def row(self, line: str) -> Result | None:
        if not line.strip():
            return None
        fields = line.split("\t")
        if is_header(fields):
            self.header_seen = True
            self.metric_name = fields[1].strip() or METRIC
            return None
        parsed = parse_row(fields)
        if parsed is None:
            self.skipped.append(self.line_no)
            return None
        commit, value, memory_gb, status, description = parsed
        self.n += 1
        metric = value if status != "crash" and value is not None and value > 0 else None
        best = self.standing.best
        r = Result(
            n=self.n,
            status=status,
            metric=metric,
            metric_name=self.metric_name,
            delta=metric - best.metric if metric is not None and best is not None else None,
            commit=commit,
            description=description,
            peak_mem_mb=memory_gb * 1024 if memory_gb is not None and memory_gb > 0 else None,
            baseline=self.n == 1 and metric is not None,
        )
        if r.baseline:
            self.baseline = metric
        self.standing.add(r)
        return r


def parse_row(fields: list[str]) -> tuple[str | None, float | None, float | None, str, str] | None:
    """(commit, val_bpb, memory_gb, status, description) of one row, or None if it is not one."""
    if len(fields) < 4:
        return None
    commit, value, memory, status = (f.strip() for f in fields[:4])
    description = " ".join(strip_control("\t".join(fields[4:])).split())  # a tab in it reads as a space
    status = status.lower()
    if status not in STATUSES:
        return None
    metric = _number(value) if value else None
    if metric is None and status != "crash":
        return None  # a keep or discard without a number is not a row we can trust
    if commit.lower() in ("", "-", "none", "n/a"):
        commit_or_none = None
    elif _COMMIT.fullmatch(commit):
        commit_or_none = commit
    else:
        return None
    return commit_or_none, metric, _number(memory) if memory else None, status, description


def parse_results_tsv(text: str) -> tuple[list[Result], list[int]]:
    """Every row of a results.tsv -> (records, line numbers of the malformed lines)."""
    parser = TsvResults()
    results = parser.feed(text[:-1] if text.endswith("\n") else text)
    return results, parser.skipped


def read_results_tsv(path: Path | str) -> tuple[list[Result], list[int]]:
    """A results.tsv file, for `autoresearch history --from`. UsageError (one line) if the
    file is missing, unreadable or not in Karpathy's format at all."""
    path = Path(path).expanduser()
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise UsageError(f"{path} is a directory, not a results.tsv")
        if size > MAX_TSV_BYTES:
            raise UsageError(f"{path} is {size // 2**20} MiB: too large for a results.tsv")
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    if b"\0" in data:
        raise UsageError(f"{path} is a binary file, not a results.tsv ({TSV_HEADER.replace(chr(9), ', ')})")
    text = data.decode("utf-8", errors="replace")
    parser = TsvResults()
    results = parser.feed(text[:-1] if text.endswith("\n") else text)
    if not results and not parser.header_seen and text.strip():
        raise UsageError(f"{path} is not a results.tsv: no line has the columns "
                         f"{', '.join(TSV_COLUMNS)} (tab-separated)")
    return results, parser.skipped


# --- tailing files --------------------------------------------------------------------------


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Tail:
    """The bytes of a growing file that were not consumed yet.

    ``read()`` returns everything from the offset to the end of the file (at most
    ``backlog_bytes``: beyond that, from the first line start within the last
    ``backlog_bytes``); the caller says how much of it it used with ``consume(k)`` and
    sees the rest again next time. A file that went away, was truncated, replaced (new
    inode) or rewritten (the bytes just before the offset changed: an editor saving the
    whole file) starts over from the beginning and sets ``reset``.
    """

    def __init__(self, path: Path, backlog_bytes: int | None = None):
        self.path = path
        self.backlog_bytes = backlog_bytes
        self.offset = 0
        self.inode: int | None = None
        self.mark = b""  # the last bytes before offset
        self.reset = False  # set by read()
        self.skipped = 0  # set by read(): bytes jumped over to honour backlog_bytes
        self.exists = False
        self._base = 0  # file offset of the first byte read() returned
        self._data = b""

    def read(self) -> bytes:
        self.reset = False
        self.skipped = 0
        try:
            f = open(self.path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
            self.exists = False
            if self.inode is not None:
                self.reset = True
            self.inode, self.offset, self.mark = None, 0, b""
            self._base, self._data = 0, b""
            return b""
        with f:
            self.exists = True
            st = os.fstat(f.fileno())
            if self.inode is not None and (st.st_ino != self.inode or st.st_size < self.offset or not self._same_mark(f)):
                self.reset = True
                self.offset, self.mark = 0, b""
            self.inode = st.st_ino
            start = self.offset
            if self.backlog_bytes is not None and st.st_size - start > self.backlog_bytes:
                f.seek(st.st_size - self.backlog_bytes)
                data = f.read(self.backlog_bytes)
                cut = min((i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0), default=-1) + 1
                data = data[cut:]
                start = st.st_size - self.backlog_bytes + cut
                self.skipped = start - self.offset
                self.mark = b""
            else:
                f.seek(start)
                data = f.read(max(0, st.st_size - start))
        self._base, self._data = start, data
        return data

    def _same_mark(self, f: Any) -> bool:
        if not self.mark:
            return True
        f.seek(self.offset - len(self.mark))
        return f.read(len(self.mark)) == self.mark

    def consume(self, k: int) -> None:
        """``k`` bytes of what read() returned were used."""
        if k <= 0:
            return
        self.mark = (self.mark + self._data[:k])[-MARK_BYTES:]
        self.offset = self._base + k
        self._data = self._data[k:]
        self._base = self.offset


def decode(data: bytes) -> str:
    return strip_control(data.decode("utf-8", errors="replace"))


class LogTail:
    """run.log as a terminal would show it: complete lines, and the line in progress.

    Karpathy's train.py rewrites one progress line with ``\\r`` until training ends, so
    the bytes after the last ``\\r`` of the last line are the current progress: they are
    ``partial`` (what the log pane shows under the log); earlier rewrites are dropped
    unread, so a long run costs no more than its newest line.
    """

    def __init__(self, path: Path, backlog_bytes: int = LOG_BACKLOG_BYTES):
        self.tail = Tail(path, backlog_bytes)
        self.partial = ""

    def read(self) -> tuple[bool, list[str], str | None, int]:
        """(reset, new complete lines, the line in progress if it changed, bytes skipped)."""
        data = self.tail.read()
        reset = self.tail.reset
        if reset:
            self.partial = ""
        end = data.rfind(b"\n") + 1
        lines = decode(data[: end - 1]).split("\n") if end else []
        rest = data[end:]
        cr = rest.rfind(b"\r")
        if cr >= 0:
            pending = rest[cr + 1 :]
            earlier = [p for p in rest[:cr].split(b"\r") if p.strip()]
            shown = pending if pending.strip() else (earlier[-1] if earlier else b"")
            self.tail.consume(end + cr + 1)
        else:
            shown = rest
            self.tail.consume(end)
        partial = decode(shown).rstrip() if shown else ""
        changed = partial != self.partial
        self.partial = partial
        return reset, lines, partial if changed else None, self.tail.skipped


# --- the training process --------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingProcess:
    """A ``train.py`` run in the watched repository: the top process of its tree (with
    ``uv run train.py``, uv; python is its child)."""

    pid: int
    create_time: float
    cmdline: tuple[str, ...]
    pgid: int | None

    @property
    def command(self) -> str:
        return " ".join(self.cmdline)


def is_training_command(cmdline: list[str] | tuple[str, ...], script: str = TRAIN_SCRIPT) -> str | None:
    """The script argument when ``cmdline`` runs ``script`` (python, uv, torchrun, ...)."""
    if not cmdline:
        return None
    program = os.path.basename(cmdline[0])
    if program == script:
        return cmdline[0]
    if not LAUNCHERS.fullmatch(program):
        return None  # an editor or a pager with train.py open is not training
    for arg in cmdline[1:]:
        if not arg.startswith("-") and os.path.basename(arg) == script:
            return arg
    return None


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def find_training(repo: Path | str, script: str = TRAIN_SCRIPT) -> TrainingProcess | None:
    """The running ``script`` whose working directory is the repository (or whose script
    path lies in it); the newest such tree if there are several. Zombies do not count."""
    import psutil

    root = Path(repo).resolve()
    found: dict[int, Any] = {}
    for p in psutil.process_iter(["cmdline"], ad_value=None):
        try:
            cmdline = p.info.get("cmdline")
            arg = is_training_command(cmdline or [], script)
            if arg is None:
                continue
            cwd = Path(p.cwd()).resolve()
            if not (_within(cwd, root) or (cwd / arg).resolve().parent == root):
                continue
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            found[p.pid] = p
        except (psutil.Error, OSError):
            continue
    tops = []
    for pid, p in found.items():
        try:
            if p.ppid() not in found:
                tops.append((p.create_time(), pid, p))
        except psutil.Error:
            continue
    if not tops:
        return None
    created, pid, p = max(tops)
    try:
        pgid: int | None = os.getpgid(pid)
    except OSError:
        pgid = None
    return TrainingProcess(pid=pid, create_time=created, cmdline=tuple(p.info.get("cmdline") or ()), pgid=pgid)


def still_running(proc: TrainingProcess) -> bool:
    """The same process (not a recycled pid), alive and not a zombie."""
    import psutil

    try:
        p = psutil.Process(proc.pid)
        return p.create_time() == proc.create_time and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass(frozen=True)
class KillOutcome:
    ended: bool  # nothing of the training tree is left running
    message: str


def kill_training(proc: TrainingProcess, grace: float = KILL_GRACE_S) -> KillOutcome:
    """End a (hung) training run so that the program driving the loop sees it crash.

    SIGTERM to its process group, SIGKILL to what is left after ``grace`` seconds. The
    group is signalled only when every live member belongs to the training tree: a
    command an agent runs without job control shares the agent's own group, and killing
    that would kill the agent too. Then each process of the tree is signalled instead.
    """
    import psutil

    name = TRAIN_SCRIPT
    try:
        root = psutil.Process(proc.pid)
        if root.create_time() != proc.create_time or root.status() == psutil.STATUS_ZOMBIE:
            return KillOutcome(True, f"{TRAIN_SCRIPT} (pid {proc.pid}) had already ended")
        tree = [root] + root.children(recursive=True)
    except psutil.Error:
        return KillOutcome(True, f"{TRAIN_SCRIPT} (pid {proc.pid}) had already ended")
    pgid = _pgid(proc.pid)
    tree_pids = {p.pid for p in tree}
    own_group = pgid is not None and pgid == os.getpgrp()
    use_group = pgid is not None and not own_group and _group_members(pgid) <= tree_pids
    how = f"its process group {pgid}" if use_group else f"its {len(tree)} process{'es' if len(tree) != 1 else ''}"

    def send(sig: int, procs: list[Any]) -> str | None:
        if use_group:
            try:
                os.killpg(pgid, sig)  # type: ignore[arg-type]
            except ProcessLookupError:
                pass
            except PermissionError:
                return f"not allowed to signal process group {pgid}"
            return None
        for p in procs:
            try:
                p.send_signal(sig)  # psutil checks it is still the same process (not a reused pid)
            except psutil.NoSuchProcess:
                pass
            except psutil.AccessDenied:
                return f"not allowed to signal pid {p.pid} (another user's process?)"
        return None

    error = send(signal.SIGTERM, tree)
    if error:
        return KillOutcome(False, f"{name} (pid {proc.pid}): {error}")
    alive = _wait_gone(tree, grace)
    if not alive:
        return KillOutcome(True, f"{name} (pid {proc.pid}) ended on SIGTERM to {how}")
    try:
        alive = list({p.pid: p for p in alive + root.children(recursive=True)}.values())
    except psutil.Error:
        pass
    error = send(signal.SIGKILL, alive)
    left = _wait_gone(alive, 2.0)
    if error or left:
        return KillOutcome(False, f"{name} (pid {proc.pid}): {error or f'{len(left)} process(es) survived SIGKILL'}")
    return KillOutcome(True, f"{name} (pid {proc.pid}) ignored SIGTERM for {grace:g} s; killed (SIGKILL to {how})")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _group_members(pgid: int) -> set[int]:
    """Live (non-zombie) processes of a process group."""
    import psutil

    members = set()
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                members.add(p.pid)
        except (psutil.Error, OSError):
            continue
    return members


def _wait_gone(procs: list[Any], timeout: float) -> list[Any]:
    """Wait until every process has ended (a zombie counts as ended); what is left."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                continue
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


# --- git (read-only) -------------------------------------------------------------------------


class GitError(Exception):
    pass


def git_read(repo: Path | str, *args: str, timeout: float = GIT_TIMEOUT_S, limit: int | None = None) -> str:
    """Run a read-only git command; its output. Never takes the index lock, never runs
    an external diff or textconv filter, an fsmonitor hook or a pager."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "LC_ALL": "C"}
    cmd = ["git", "--no-optional-locks", "-c", "core.fsmonitor=false", "-C", str(repo), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise GitError("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} took more than {timeout:g} s") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", errors="replace").strip().splitlines()
        raise GitError(f"git {args[0]}: {msg[-1] if msg else f'exit status {proc.returncode}'}")
    out = proc.stdout
    if limit is not None and len(out) > limit:
        return out[:limit].decode("utf-8", errors="replace") + f"\n[... cut at {limit // 1024} KiB ...]\n"
    return out.decode("utf-8", errors="replace")


def repo_root(path: Path | str) -> Path:
    """The top level of the git repository at ``path``; UsageError if it is none."""
    start = Path(path).expanduser()
    if not start.exists():
        raise UsageError(f"{start}: no such directory")
    if not start.is_dir():
        raise UsageError(f"{start} is not a directory")
    try:
        top = git_read(start, "rev-parse", "--show-toplevel").strip()
    except GitError as e:
        if "not a git repository" in str(e).lower():
            raise UsageError(f"{start.resolve()} is not a git repository") from None
        raise UsageError(str(e)) from None
    return Path(top).resolve()


@dataclass(frozen=True)
class Commit:
    sha: str
    short: str
    time: float  # committer time, unix seconds
    subject: str


@dataclass(frozen=True)
class GitView:
    """The branch and its recent commits, newest first; ``error`` when git failed."""

    branch: str | None = None  # None: detached HEAD
    head: str | None = None
    commits: tuple[Commit, ...] = ()
    error: str | None = None


def read_git(repo: Path | str, count: int = COMMITS) -> GitView:
    try:
        branch = git_read(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
    except GitError as e:
        return GitView(error=str(e))
    try:
        log = git_read(repo, "log", f"-n{count}", "--no-color", "--format=%H%x1f%h%x1f%ct%x1f%s", "HEAD", "--")
    except GitError as e:
        return GitView(branch=None if branch == "HEAD" else branch, error=str(e))
    commits = []
    for line in log.splitlines():
        parts = line.split("\x1f")
        if len(parts) == 4:
            sha, short, ct, subject = parts
            commits.append(Commit(sha, short, float(ct) if ct.isdigit() else 0.0, strip_control(subject)))
    return GitView(branch=None if branch == "HEAD" else branch, head=commits[0].sha if commits else None,
                   commits=tuple(commits))


def pending_diff(repo: Path | str) -> str:
    """What ``git diff HEAD`` shows (tracked files changed since the last commit), read
    without refreshing the index."""
    return git_read(repo, "diff-index", "-p", "-M", "--no-color", "--no-ext-diff", "--no-textconv", "HEAD", "--",
                    limit=MAX_DIFF_BYTES)


def commit_text(repo: Path | str, commit: str) -> str:
    """One commit: its message and its diff against its parent (``git show``)."""
    if not _COMMIT.fullmatch(commit) or commit.startswith("-"):
        raise GitError(f"not a commit name: {commit!r}")
    return git_read(repo, "show", "--no-color", "--no-ext-diff", "--no-textconv", "--format=commit %H%nDate:   %cd%n%n%B",
                    commit, "--", limit=4 * MAX_DIFF_BYTES)


# --- batches ---------------------------------------------------------------------------------


@dataclass
class WatchBatch:
    """What changed since the previous batch. Empty fields mean "no change"."""

    results: list[Result] = field(default_factory=list)
    results_reset: bool = False  # results.tsv was replaced or rewritten: ``results`` is the whole list
    skipped: list[int] | None = None  # line numbers of malformed rows, when that changed
    log_reset: bool = False  # run.log started over (a new experiment): clear the pane first
    log_lines: list[str] = field(default_factory=list)
    log_partial: str | None = None  # the line in progress (a \r progress line), when it changed
    log_skipped_bytes: int = 0
    diff: str | None = None  # the uncommitted change, when it changed
    git: GitView | None = None  # branch and commits, when they changed
    training: TrainingProcess | None = None
    training_changed: bool = False  # ``training`` is news (None: none is running now)

    def is_empty(self) -> bool:
        return not (self.results or self.results_reset or self.skipped is not None or self.log_reset
                    or self.log_lines or self.log_partial is not None or self.diff is not None
                    or self.git is not None or self.training_changed)


class WatchReader:
    """What has been read of a watched repository so far. Single-threaded: the watcher
    thread calls ``collect()`` in a loop; tests call it directly.

    Files are read on every call (only their new bytes); git and the process table at
    most every ``git_interval`` / ``proc_interval`` seconds.
    """

    def __init__(self, repo: Path | str, *, git_interval: float = GIT_INTERVAL_S,
                 proc_interval: float = PROC_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 find: Callable[[Path], TrainingProcess | None] = find_training):
        self.repo = Path(repo)
        self.git_interval = git_interval
        self.proc_interval = proc_interval
        self.clock = clock
        self._find = find
        self._results = Tail(self.repo / RESULTS_TSV)
        self.tsv = TsvResults()
        self._rest: bytes | None = None  # an unterminated last row, as last seen
        self._open_row = False  # the last row consumed had no newline yet
        self.log = LogTail(self.repo / RUN_LOG)
        self._git_at = -math.inf
        self._proc_at = -math.inf
        self.git: GitView | None = None
        self.diff: str | None = None
        self.training: TrainingProcess | None = None
        self._proc_known = False
        self.git_calls = 0  # counted for tests: git must not run on every poll

    @property
    def results_exist(self) -> bool:
        return self._results.exists

    def refresh_soon(self) -> None:
        """Look at git and the processes again on the next collect (after a kill, say)."""
        self._git_at = self._proc_at = -math.inf

    def collect(self) -> WatchBatch:
        batch = WatchBatch()
        self._collect_results(batch)
        reset, lines, partial, skipped = self.log.read()
        batch.log_reset, batch.log_lines, batch.log_partial, batch.log_skipped_bytes = reset, lines, partial, skipped
        now = self.clock()
        if now - self._git_at >= self.git_interval:
            self._git_at = now
            self._collect_git(batch)
        if now - self._proc_at >= self.proc_interval:
            self._proc_at = now
            current = self.training
            if current is None or not still_running(current):
                current = self._find(self.repo)
            if current != self.training or not self._proc_known:
                self._proc_known = True
                self.training = current
                batch.training, batch.training_changed = current, True
        return batch

    def _collect_results(self, batch: WatchBatch) -> None:
        tail = self._results
        data = tail.read()
        if tail.reset:
            self.tsv = TsvResults()
            self._rest, self._open_row = None, False
            batch.results_reset = True
            batch.skipped = []
        end = data.rfind(b"\n") + 1
        rest = data[end:]
        take = end
        if rest.strip() and rest == self._rest:
            take = len(data)  # a last row without a newline that stayed put for a poll: it is done
        self._rest = rest if take == end else None
        chunk = data[:take]
        if self._open_row and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the newline that ends the row already read
        if chunk:
            before = len(self.tsv.skipped)
            text = chunk.decode("utf-8", errors="replace")
            batch.results = self.tsv.feed(text[:-1] if text.endswith("\n") else text)
            if len(self.tsv.skipped) != before:
                batch.skipped = list(self.tsv.skipped)
        if take:
            self._open_row = take > end
        tail.consume(take)

    def _collect_git(self, batch: WatchBatch) -> None:
        self.git_calls += 1
        view = read_git(self.repo)
        if view != self.git:
            self.git = view
            batch.git = view
        try:
            diff = pending_diff(self.repo) if view.head else ""
        except GitError as e:
            diff = f"(cannot read the uncommitted change: {e})"
        if diff != self.diff:
            self.diff = diff
            batch.diff = diff


class RepoWatcher:
    """The one thread that reads a watched repository: collect, hand over, wait for ack.

    Back-pressure as in tui/rundata.py: no new batch until the consumer has acked the
    last one; meanwhile the files keep growing and the next read takes it all at once.
    A failing read is handed to ``on_error`` and retried on the next poll; the thread
    never dies of it.
    """

    def __init__(self, reader: WatchReader, on_batch: Callable[[WatchBatch], None], *,
                 on_error: Callable[[BaseException], None] | None = None, poll_interval: float = 0.25):
        self.reader = reader
        self.on_batch = on_batch
        self.on_error = on_error
        self.poll_interval = poll_interval
        self._wake = threading.Event()
        self._acked = threading.Event()
        self._acked.set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="repo-watcher", daemon=True)
        self._thread.start()

    def ack(self) -> None:
        self._acked.set()

    def poke(self, refresh: bool = False) -> None:
        """Read now; with ``refresh``, git and the processes too."""
        if refresh:
            self.reader.refresh_soon()  # a plain assignment of two floats: safe across threads
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._acked.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            while not self._acked.wait(0.5):
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                batch = self.reader.collect()
            except Exception as e:  # a bug or an odd file must not end the watching
                if self.on_error is not None:
                    self.on_error(e)
                self._stop.wait(2.0)
                continue
            if not batch.is_empty():
                self._acked.clear()
                self.on_batch(batch)
                continue
            self._wake.wait(self.poll_interval)
