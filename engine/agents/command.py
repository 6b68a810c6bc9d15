"""The command agent: any agent CLI, run through the shell in the experiment's worktree.

``[agent] command`` (or ``--agent-command``) is run with ``sh -c`` in the worktree, with
the whole prompt (prompt.command_prompt: rules, program.md, the files, the history, the
last result, notes) on its stdin, in its own process group, and with the environment of
the engine: it is the user's own agent and may need the user's keys. Two variables are
added: ``AUTORESEARCH_EXPERIMENT`` (the experiment number) and ``AUTORESEARCH_MUTABLE``
(the mutable files, space-separated). Its output is streamed to the monitor line by line.

The agent edits the mutable files in place and exits. The engine then checks the scope
(edits outside the mutable files are reverted and the experiment recorded ``rejected``),
commits, trains and decides, exactly as for the other agents.

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
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..config import AgentConfig
from ..errors import UsageError
from ..untrusted import strip_control
from . import prompt
from .base import AgentError, Proposal, ProposalContext

PROPOSAL_JSON = ".autoresearch-proposal.json"
HYPOTHESIS_MD = "HYPOTHESIS.md"
PROPOSAL_FILES = (PROPOSAL_JSON, HYPOTHESIS_MD)
KILL_GRACE_SECONDS = 3.0
MAX_OUTPUT_LINES = 2000  # kept in memory to find the HYPOTHESIS:/DESCRIPTION: lines
MAX_HYPOTHESIS = 4000
MAX_DESCRIPTION = 200
NO_HYPOTHESIS = "(the agent gave no hypothesis)"


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
        self.kill_grace = kill_grace

    def propose(self, context: ProposalContext) -> Proposal:
        worktree = Path(context.worktree)
        for name in PROPOSAL_FILES:  # a stale file from an earlier run must not be reused
            _remove(worktree / name)
        env = dict(os.environ)
        env["AUTORESEARCH_EXPERIMENT"] = str(context.n)
        env["AUTORESEARCH_MUTABLE"] = " ".join(context.mutable)
        output: deque[str] = deque(maxlen=MAX_OUTPUT_LINES)
        try:
            proc = subprocess.Popen(
                self.command,
                shell=True,
                cwd=worktree,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so all of it can be ended
            )
        except OSError as e:
            raise AgentError(f"could not start the agent command: {e}", transient=True) from None

        writer = threading.Thread(target=_feed, args=(proc, prompt.command_prompt(context)), daemon=True)
        reader = threading.Thread(target=_drain, args=(proc, output, context), daemon=True)
        writer.start()
        reader.start()
        try:
            returncode = proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self._end_group(proc)
            raise AgentError(f"the agent command ran past its {self.timeout:g}s limit and was killed", transient=True) from None
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
        if returncode != 0:
            last = next((line.strip() for line in reversed(output) if line.strip()), "")
            detail = f": {prompt.clip(last, 200)}" if last else ""
            raise AgentError(f"the agent command exited with status {returncode}{detail}", transient=True)
        hypothesis, description = read_proposal(worktree, list(output))
        return Proposal(hypothesis=hypothesis, description=description)

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
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass


def _group_alive(pgid: int, proc: subprocess.Popen[bytes]) -> bool:
    proc.poll()  # reap the leader so a zombie does not count as alive
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a reused id owned by someone else
        return False
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _feed(proc: subprocess.Popen[bytes], text: str) -> None:
    """Write the prompt to stdin; an agent that does not read it is fine."""
    try:
        assert proc.stdin is not None
        proc.stdin.write(text.encode("utf-8"))
        proc.stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _drain(proc: subprocess.Popen[bytes], output: deque[str], context: ProposalContext) -> None:
    """Stream the agent's output to the monitor line by line and keep the tail."""
    assert proc.stdout is not None
    try:
        for raw in iter(proc.stdout.readline, b""):
            line = strip_control(raw.decode("utf-8", "replace").rstrip("\n"))
            output.append(line)
            context.emit(line + "\n")
    except (OSError, ValueError):
        pass


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


def read_proposal(worktree: Path, output: list[str]) -> tuple[str, str]:
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
        found = _from_output(output)
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


def _from_output(lines: list[str]) -> tuple[str, str] | None:
    hyp = desc = None
    for line in reversed(lines):
        s = line.strip()
        if hyp is None and s.upper().startswith("HYPOTHESIS:"):
            hyp = s[len("HYPOTHESIS:") :].strip()
        elif desc is None and s.upper().startswith("DESCRIPTION:"):
            desc = s[len("DESCRIPTION:") :].strip()
        if hyp is not None and desc is not None:
            break
    if not hyp and not desc:
        return None
    return (hyp or desc or "", desc or _first_line(hyp or ""))


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
