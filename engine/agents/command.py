"""The command agent: any agent CLI, run through the shell in the experiment's worktree.

``[agent] command`` (or ``--agent-command``) is run with ``sh -c`` in the worktree, with
the whole prompt (prompt.command_prompt: rules, program.md, the files, the history, the
last result, notes) on its stdin. Its environment is the engine's whole environment by
default: it is the user's own agent and may need the user's keys. ``[agent] env`` (a list
of names) narrows it to those variables plus PATH, HOME, LANG and TERM. Three variables
are always added: ``AUTORESEARCH_EXPERIMENT`` (the experiment number),
``AUTORESEARCH_MUTABLE`` (the mutable files, space-separated) and
``AUTORESEARCH_WORKTREE`` (its working directory).

Its output is read as it streams: each line (at most MAX_LINE_BYTES of it) goes to the
monitor until MAX_EMIT_CHARS have been shown, ``HYPOTHESIS:``/``DESCRIPTION:`` lines are
picked out as they pass, and only a bounded head and tail of the lines are kept, so an
agent that prints without end costs the engine no memory.

The agent edits the mutable files in place and exits. The engine then checks the scope
(edits outside the mutable files are reverted and the experiment recorded ``rejected``),
commits, trains and decides, exactly as for the other agents.

Process control. The command runs under a leash (leash.py): a small supervisor that
leads a new process group, runs ``sh -c COMMAND`` in it, and SIGKILLs the whole group
if the engine dies (PR_SET_PDEATHSIG), so an agent never outlives the engine to edit a
later run's worktree. The group id goes to ``context.on_process_group`` when it starts
and ``None`` once it is gone, so the engine can record it; a restarted engine passes the
recorded id to ``reap_stale_group``. When the engine sets ``context.cancel`` (it stops
or gives up on the proposal) the group is killed at once and ``ProposalCancelled`` is
raised.

If the command runs past ``command_timeout`` seconds, its whole process group gets
SIGTERM, then SIGKILL after a grace period, and the proposal fails. A non-zero exit
also fails the proposal. Both count toward ``max_failures`` (the loop pauses rather than
spin on an agent that keeps failing). Processes left behind in its group after it exits
are ended too.

Hypothesis convention — the first of these that the agent provides is used:

1. ``.autoresearch-proposal.json`` in the worktree:
   ``{"hypothesis": "why this should lower val_bpb", "description": "one line"}``
2. ``HYPOTHESIS.md`` in the worktree: its first non-empty line (without leading ``#``)
   is the description, the whole text is the hypothesis.
3. The last lines of its output that start with ``HYPOTHESIS:`` and ``DESCRIPTION:``.
4. Otherwise a generic description from the diff ("edited train.py (+3 -1)").

Both files are deleted before the engine's scope check, so writing them is never an
out-of-scope edit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil

from ..config import AgentConfig
from ..errors import UsageError
from ..untrusted import strip_control
from . import prompt
from .base import AgentError, Proposal, ProposalCancelled, ProposalContext

PROPOSAL_JSON = ".autoresearch-proposal.json"
HYPOTHESIS_MD = "HYPOTHESIS.md"
PROPOSAL_FILES = (PROPOSAL_JSON, HYPOTHESIS_MD)
KILL_GRACE_SECONDS = 3.0
MAX_HYPOTHESIS = 4000
MAX_DESCRIPTION = 200
NO_HYPOTHESIS = "(the agent gave no hypothesis)"
# Bounds on what the engine keeps of the agent's output, whatever it prints.
MAX_LINE_BYTES = 8192  # of one line; the rest of a longer line is counted, not kept
HEAD_LINES = 200  # the first lines, kept
TAIL_LINES = 200  # the last lines, kept (the error message quotes the last one)
MAX_EMIT_CHARS = 1_000_000  # streamed to the monitor per proposal; then a notice
READ_CHUNK = 65536
# Always passed through when [agent] env narrows the environment.
BASE_ENV = ("PATH", "HOME", "LANG", "TERM")
LEASH = Path(__file__).with_name("leash.py")
WORKTREE_VAR = "AUTORESEARCH_WORKTREE"


class OutputScan:
    """An agent's output read as it streams, in bounded memory.

    ``feed`` takes raw bytes as they come; complete lines are decoded, stripped of
    control characters, streamed to ``emit`` (until MAX_EMIT_CHARS) and scanned for the
    ``HYPOTHESIS:``/``DESCRIPTION:`` convention (the last of each wins). A line longer
    than MAX_LINE_BYTES keeps its beginning; the rest is counted and dropped.
    """

    def __init__(self, emit: Callable[[str], None] | None = None):
        self.emit = emit
        self.head: list[str] = []
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.lines = 0
        self.bytes = 0
        self.hypothesis: str | None = None
        self.description: str | None = None
        self._line = bytearray()
        self._dropped = 0  # bytes of the current line beyond MAX_LINE_BYTES
        self._emitted = 0
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        with self._lock:
            self.bytes += len(data)
            start = 0
            while start < len(data):
                end = data.find(b"\n", start)
                piece = data[start:] if end < 0 else data[start:end]
                room = MAX_LINE_BYTES - len(self._line)
                if room > 0:
                    self._line += piece[:room]
                self._dropped += max(0, len(piece) - max(room, 0))
                if end < 0:
                    break
                self._finish()
                start = end + 1

    def close(self) -> None:
        with self._lock:
            if self._line or self._dropped:
                self._finish()

    def line(self, text: str) -> None:
        """One already decoded line (for callers that have lines, not bytes)."""
        self.feed(text.encode("utf-8", "replace") + b"\n")

    def _finish(self) -> None:
        text = strip_control(self._line.decode("utf-8", "replace"))
        dropped = self._dropped
        self._line, self._dropped = bytearray(), 0
        self.lines += 1
        stripped = text.strip()
        upper = stripped[:12].upper()
        if upper.startswith("HYPOTHESIS:"):
            self.hypothesis = stripped[len("HYPOTHESIS:"):].strip()
        elif upper.startswith("DESCRIPTION:"):
            self.description = stripped[len("DESCRIPTION:"):].strip()
        if dropped:
            text += f" [... {dropped} more bytes of this line not kept ...]"
        if len(self.head) < HEAD_LINES:
            self.head.append(text)
        else:
            self.tail.append(text)
        self._show(text + "\n")

    def _show(self, text: str) -> None:
        if self.emit is None or self._emitted > MAX_EMIT_CHARS:
            return
        self._emitted += len(text)
        if self._emitted > MAX_EMIT_CHARS:
            text = f"[... the agent's output passed {MAX_EMIT_CHARS} characters: the rest is not shown ...]\n"
        self.emit(text)

    def last_line(self) -> str:
        """The last non-empty line kept."""
        with self._lock:
            kept = list(self.head) + list(self.tail)
        return next((line.strip() for line in reversed(kept) if line.strip()), "")

    def found(self) -> tuple[str, str] | None:
        """(hypothesis, description) from the output lines, or None."""
        with self._lock:
            hyp, desc = self.hypothesis, self.description
        if not hyp and not desc:
            return None
        return (hyp or desc or "", desc or _first_line(hyp or ""))


class CommandAgent:
    name = "command"
    model = None

    def __init__(self, config: AgentConfig, *, kill_grace: float = KILL_GRACE_SECONDS):
        if not config.command or not config.command.strip():
            raise UsageError("the command agent needs a command: pass --agent-command CMD or set [agent] command in autoresearch.toml")
        if config.command_timeout <= 0:
            raise UsageError("[agent] command_timeout must be a positive number of seconds")
        self.command = config.command
        self.timeout = float(config.command_timeout)
        self.env_names = None if config.env is None else list(config.env)
        self.kill_grace = kill_grace
        self.last_output: OutputScan | None = None  # the latest proposal's, for inspection

    def environment(self, context: ProposalContext) -> dict[str, str]:
        """The command's environment: the engine's, or only [agent] env plus BASE_ENV."""
        if self.env_names is None:
            env = dict(os.environ)
        else:
            env = {k: os.environ[k] for k in (*BASE_ENV, *self.env_names) if k in os.environ}
        env["AUTORESEARCH_EXPERIMENT"] = str(context.n)
        env["AUTORESEARCH_MUTABLE"] = " ".join(context.mutable)
        env[WORKTREE_VAR] = str(Path(context.worktree).resolve())
        return env

    def propose(self, context: ProposalContext) -> Proposal:
        worktree = Path(context.worktree)
        for name in PROPOSAL_FILES:  # a stale file from an earlier run must not be reused
            _remove(worktree / name)
        if context.cancel.is_set():
            raise ProposalCancelled("the proposal was cancelled before the agent command started")
        output = self.last_output = OutputScan(context.emit)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(LEASH), str(os.getpid()), self.command],
                cwd=worktree,
                env=self.environment(context),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so all of it can be ended
            )
        except OSError as e:
            raise AgentError(f"could not start the agent command: {e}", transient=True) from None

        context.on_process_group(proc.pid)
        writer = threading.Thread(target=_feed, args=(proc, prompt.command_prompt(context)), daemon=True)
        reader = threading.Thread(target=_drain, args=(proc, output), daemon=True)
        writer.start()
        reader.start()
        try:
            returncode = self._wait(proc, context)
        finally:
            self._end_group(proc)  # anything it left running in its group
            reader.join(timeout=5)
            writer.join(timeout=1)
            for pipe in (proc.stdin, proc.stdout):
                try:
                    if pipe:
                        pipe.close()
                except OSError:
                    pass
            context.on_process_group(None)
        if returncode != 0:
            last = output.last_line()
            detail = f": {prompt.clip(last, 200)}" if last else ""
            raise AgentError(f"the agent command exited with status {returncode}{detail}", transient=True)
        hypothesis, description = read_proposal(worktree, output)
        return Proposal(hypothesis=hypothesis, description=description)

    def _wait(self, proc: subprocess.Popen[bytes], context: ProposalContext) -> int:
        """The command's exit status; kills it on cancel or at its time limit."""
        deadline = time.monotonic() + self.timeout
        while True:
            returncode = proc.poll()
            if returncode is not None:
                return returncode
            if context.cancel.is_set():
                _signal_group(proc.pid, signal.SIGKILL)
                self._end_group(proc)
                raise ProposalCancelled("the proposal was cancelled: the agent command's process group was killed")
            left = deadline - time.monotonic()
            if left <= 0:
                self._end_group(proc)
                raise AgentError(f"the agent command ran past its {self.timeout:g}s limit and was killed", transient=True)
            context.cancel.wait(min(0.05, left))

    def _end_group(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the whole group, SIGKILL to whatever is left after the grace period."""
        pgid = proc.pid
        if not _group_alive(pgid, proc):
            return
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace
        while time.monotonic() < deadline:
            if not _group_alive(pgid, proc):
                return
            time.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _group_alive(pgid, proc) and time.monotonic() < deadline:
            time.sleep(0.05)


def _group_alive(pgid: int, proc: subprocess.Popen[bytes]) -> bool:
    """Whether any process of the group still runs (zombies waiting to be reaped do not)."""
    proc.poll()  # reap the leader so a zombie does not count as alive
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a reused id owned by someone else
        return False
    # Members of a killed group are reparented to PID 1, which in a container may never
    # reap them: look at their state rather than wait for zombies to disappear.
    return _live_member(pgid)


def _live_member(pgid: int) -> bool:
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                return True
        except (psutil.Error, OSError):
            continue
    return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def reap_stale_group(pgid: int | None, worktree: Path | str) -> bool:
    """At start-up: SIGKILL what is left of an agent's process group that a previous
    (killed) engine recorded. The group is touched only if one of its processes is
    provably this run's agent: it carries an AUTORESEARCH_WORKTREE inside ``worktree`` (a
    run's directory holds both its worktrees) in its environment, or works inside it. A process group id is not reused while any
    member lives, so one such process is proof for the whole group."""
    if not pgid or pgid <= 1:
        return False
    root = Path(worktree).resolve()
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) != pgid:
                continue
            marked = p.environ().get(WORKTREE_VAR)
            if (marked and Path(marked).is_relative_to(root)) or Path(p.cwd()).resolve().is_relative_to(root):
                _signal_group(pgid, signal.SIGKILL)
                return True
        except (psutil.Error, OSError):
            continue
    return False


def _feed(proc: subprocess.Popen[bytes], text: str) -> None:
    """Write the prompt to stdin; an agent that does not read it is fine."""
    try:
        assert proc.stdin is not None
        proc.stdin.write(text.encode("utf-8"))
        proc.stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _drain(proc: subprocess.Popen[bytes], output: OutputScan) -> None:
    """Read the agent's output in chunks as it comes, never a whole line at once."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    try:
        while True:
            data = os.read(fd, READ_CHUNK)
            if not data:
                break
            output.feed(data)
    except (OSError, ValueError):
        pass
    finally:
        output.close()


def _remove(path: Path) -> None:
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
    except OSError:
        pass


def _read_small(path: Path) -> str | None:
    """A regular file's text (never through a symlink), or None."""
    try:
        if path.is_symlink() or not path.is_file():
            return None
        return path.read_text(encoding="utf-8", errors="replace")[:100_000]
    except OSError:
        return None


def read_proposal(worktree: Path, output: OutputScan | Iterable[str]) -> tuple[str, str]:
    """(hypothesis, description) by the convention in the module docstring; deletes the files."""
    found: tuple[str, str] | None = None
    raw = _read_small(worktree / PROPOSAL_JSON)
    if raw is not None:
        found = _from_json(raw)
    if found is None:
        raw = _read_small(worktree / HYPOTHESIS_MD)
        if raw is not None:
            found = _from_markdown(raw)
    for name in PROPOSAL_FILES:
        _remove(worktree / name)
    if found is None:
        found = output.found() if isinstance(output, OutputScan) else _from_output(output)
    if found is None:
        found = (NO_HYPOTHESIS, describe_diff(worktree))
    hypothesis, description = found
    return hypothesis.strip()[:MAX_HYPOTHESIS], prompt.clip(description, MAX_DESCRIPTION)


def _from_json(raw: str) -> tuple[str, str] | None:
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    hyp = data.get("hypothesis") if isinstance(data.get("hypothesis"), str) else ""
    desc = data.get("description") if isinstance(data.get("description"), str) else ""
    if not hyp.strip() and not desc.strip():
        return None
    return (hyp.strip() or desc.strip(), desc.strip() or _first_line(hyp))


def _from_markdown(raw: str) -> tuple[str, str] | None:
    if not raw.strip():
        return None
    return raw.strip(), _first_line(raw)


def _from_output(lines: Iterable[str]) -> tuple[str, str] | None:
    scan = OutputScan()
    for line in lines:
        scan.line(line)
    return scan.found()


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line
    return ""


def describe_diff(worktree: Path) -> str:
    """A one-line summary of the uncommitted change, like "edited train.py (+3 -1)"."""
    try:
        result = subprocess.run(
            ["git", "diff", "--numstat", "HEAD"], cwd=worktree, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return "the agent's change (no description given)"
    parts = []
    for line in result.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 3:
            added, removed, path = fields
            parts.append(f"{path} (+{added} -{removed})" if added != "-" else path)
    if result.returncode != 0 or not parts:
        return "the agent's change (no description given)"
    return "edited " + ", ".join(parts)
