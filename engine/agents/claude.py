"""The Claude agent: the Anthropic Messages API with tool use over the mutable files only.

One proposal is one conversation. The model sees the static prefix (rules and
program.md, cached with ``cache_control``) and the per-experiment context from
prompt.py, then works through five tools:

    read_file(path)             read a mutable file
    replace(path, old, new)     replace a snippet that occurs exactly once
    write_file(path, content)   overwrite a mutable file
    read_history(limit)         the run's experiments so far
    submit(hypothesis, description)   finish the proposal

There is no shell and no network tool. Paths are checked before anything is touched:
only the configured mutable files, never absolute paths, ``..`` or symlinks. A refused
or malformed call comes back to the model as an ``is_error`` tool result so it can
correct itself; ``max_turns`` bounds the conversation.

Model text (and thinking, where the model returns its reasoning that way) is streamed
to ``context.emit`` as it arrives. The SDK's own retries are off (``max_retries=0``):
this module retries 429, 5xx, 529 overloaded, timeouts and dropped connections itself,
with exponential backoff and jitter, so every attempt is counted and testable. When
the retries are spent it raises ``AgentError(transient=True)`` and the loop counts it
toward pausing.

Credentials and endpoint come from the environment like any SDK user's:
``ANTHROPIC_API_KEY`` and, optionally, ``ANTHROPIC_BASE_URL``.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import anthropic

from ..config import AgentConfig
from ..errors import UsageError
from . import prompt
from .base import AgentError, Proposal, ProposalContext, Usage

try:  # the SDK's HTTP layer; errors raised while reading a stream come from it unwrapped
    import httpx2 as _http
except ImportError:  # pragma: no cover - older SDKs use httpx
    import httpx as _http  # type: ignore[no-redef]

MAX_READ_CHARS = 200_000
MAX_WRITE_CHARS = 1_000_000
MAX_DESCRIPTION = 200
MAX_HYPOTHESIS = 4_000

TOOLS: list[dict[str, Any]] = [
    {
        "name": "read_file",
        "description": "Read one of the mutable files (a path relative to the worktree, e.g. train.py).",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "a mutable file, e.g. train.py"}},
            "required": ["path"],
        },
    },
    {
        "name": "replace",
        "description": "Replace the exact text `old` with `new` in a mutable file. `old` must occur "
        "exactly once: include enough surrounding lines to make it unique.",
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "old": {"type": "string", "description": "exact text to replace, occurring once"},
                "new": {"type": "string", "description": "the replacement text"},
            },
            "required": ["path", "old", "new"],
        },
    },
    {
        "name": "write_file",
        "description": "Overwrite a mutable file with new content (prefer replace for small changes).",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
    {
        "name": "read_history",
        "description": "The run's experiments so far: a summary, then the most recent `limit` in detail.",
        "input_schema": {
            "type": "object",
            "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 500}},
        },
    },
    {
        "name": "submit",
        "description": "Finish this experiment once your change is made. Call exactly once.",
        "input_schema": {
            "type": "object",
            "properties": {
                "hypothesis": {"type": "string", "description": "why the change should lower val_bpb"},
                "description": {"type": "string", "description": "one line, at most 80 characters"},
            },
            "required": ["hypothesis", "description"],
        },
    },
]

NUDGE = (
    "You have not called submit yet. Make your one change with replace or write_file, "
    "then call submit(hypothesis, description)."
)


class ToolError(Exception):
    """A refused or malformed tool call; its message goes back to the model as is_error."""


# --- pricing -----------------------------------------------------------------


def price_for(model: str, prices: dict[str, list[float]]) -> list[float] | None:
    """The price row for a model; a dated name ("claude-x-20261101") uses its base row."""
    if model in prices:
        return prices[model]
    matches = [name for name in prices if model.startswith(name + "-")]
    return prices[max(matches, key=len)] if matches else None


def cost_usd(usage: Usage, row: list[float] | None) -> float:
    """USD for the tokens in ``usage``; row is [input, output, cache_write, cache_read] per million."""
    if row is None:
        return 0.0
    inp, out, cache_write, cache_read = row
    return (
        usage.input_tokens * inp
        + usage.output_tokens * out
        + usage.cache_write_tokens * cache_write
        + usage.cache_read_tokens * cache_read
    ) / 1_000_000


def add_usage(total: Usage, message_usage: Any) -> None:
    total.input_tokens += getattr(message_usage, "input_tokens", 0) or 0
    total.output_tokens += getattr(message_usage, "output_tokens", 0) or 0
    total.cache_read_tokens += getattr(message_usage, "cache_read_input_tokens", 0) or 0
    total.cache_write_tokens += getattr(message_usage, "cache_creation_input_tokens", 0) or 0


# --- the file tools ------------------------------------------------------------


class WorktreeFiles:
    """The only access the model has to the disk: the mutable files of one worktree."""

    def __init__(self, worktree: Path, mutable: list[str]):
        self.root = Path(worktree).resolve()
        self.mutable = [PurePosixPath(m).as_posix() for m in mutable]
        self.original = {rel: self._read_or_none(rel) for rel in self.mutable}

    def resolve(self, path: Any) -> Path:
        """The file a tool may touch, or ToolError saying why not."""
        if not isinstance(path, str) or not path.strip():
            raise ToolError("`path` must be a non-empty string naming a mutable file")
        if "\x00" in path or "\\" in path:
            raise ToolError(f"invalid path {path!r}")
        p = PurePosixPath(path.strip())
        if p.is_absolute():
            raise ToolError(f"absolute paths are refused: use a path relative to the worktree ({self._allowed()})")
        if ".." in p.parts:
            raise ToolError(f"'..' is refused in paths: use one of {self._allowed()}")
        rel = p.as_posix()
        if rel not in self.mutable:
            if rel == "prepare.py":
                raise ToolError("prepare.py is the immutable evaluator: it cannot be changed; " f"you may only use {self._allowed()}")
            raise ToolError(f"{rel} is not a mutable file: you may only use {self._allowed()}")
        current = self.root
        for part in p.parts:
            current = current / part
            if current.is_symlink():
                raise ToolError(f"{rel} goes through a symlink ({current.relative_to(self.root)}): symlinks are refused")
        target = self.root / rel
        if not target.resolve().is_relative_to(self.root):
            raise ToolError(f"{rel} resolves outside the worktree: refused")
        return target

    def _allowed(self) -> str:
        return ", ".join(self.mutable)

    def _read_or_none(self, rel: str) -> str | None:
        try:
            return self._read(self.root / rel)
        except (OSError, UnicodeDecodeError):
            return None

    @staticmethod
    def _read(target: Path) -> str:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "r", encoding="utf-8") as f:
            return f.read()

    @staticmethod
    def _write(target: Path, content: str) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)

    def read_file(self, path: Any) -> str:
        target = self.resolve(path)
        try:
            text = self._read(target)
        except FileNotFoundError:
            raise ToolError(f"{path} does not exist yet (write_file creates it)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ToolError(f"cannot read {path}: {e.__class__.__name__}") from None
        if len(text) > MAX_READ_CHARS:
            return text[:MAX_READ_CHARS] + f"\n[... cut at {MAX_READ_CHARS} characters ...]"
        return text

    def replace(self, path: Any, old: Any, new: Any) -> str:
        if not isinstance(old, str) or not isinstance(new, str):
            raise ToolError("replace needs string fields `path`, `old` and `new`")
        if not old:
            raise ToolError("`old` must not be empty")
        target = self.resolve(path)
        try:
            text = self._read(target)
        except (OSError, UnicodeDecodeError) as e:
            raise ToolError(f"cannot read {path}: {e.__class__.__name__}") from None
        count = text.count(old)
        if count == 0:
            raise ToolError(f"`old` was not found in {path}: it must match exactly, including whitespace")
        if count > 1:
            raise ToolError(f"`old` occurs {count} times in {path}: include more surrounding lines so it occurs once")
        updated = text.replace(old, new, 1)
        self._write(target, updated)
        return f"replaced 1 occurrence in {path} ({len(updated.splitlines())} lines now)"

    def write_file(self, path: Any, content: Any) -> str:
        if not isinstance(content, str):
            raise ToolError("write_file needs string fields `path` and `content`")
        if len(content) > MAX_WRITE_CHARS:
            raise ToolError(f"content is too large ({len(content)} characters, limit {MAX_WRITE_CHARS})")
        target = self.resolve(path)
        self._write(target, content)
        return f"wrote {path} ({len(content.splitlines())} lines)"

    def changed(self) -> bool:
        return any(self._read_or_none(rel) != before for rel, before in self.original.items())


# --- retries ---------------------------------------------------------------------

RETRYABLE_TYPES = ("overloaded_error", "rate_limit_error", "api_error", "timeout_error")
# Problems every later request would hit too (bad key, no access, unknown model): the
# loop should pause and show them rather than move on, so they count as transient.
CONFIG_STATUSES = (401, 403, 404)


def _error_type(error: anthropic.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("type", ""))
    return ""


def _error_text(error: anthropic.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))[:200]
    return str(error)[:200]


def classify(error: BaseException) -> tuple[bool, str]:
    """(worth retrying, one line for the user)."""
    if isinstance(error, (anthropic.APITimeoutError, _http.TimeoutException)):
        return True, "the API request timed out"
    if isinstance(error, (anthropic.APIConnectionError, _http.TransportError)):
        return True, f"could not reach the API: {error.__class__.__name__}"
    if isinstance(error, anthropic.APIStatusError):
        status, kind = error.status_code, _error_type(error)
        # An error event inside a 200 stream carries only its type.
        label = kind if status == 200 and kind else f"{status} {kind}".strip()
        if status in (408, 409, 429) or status >= 500 or kind in RETRYABLE_TYPES:
            return True, f"API error {label}: {_error_text(error)}"
        return False, f"API refused the request ({label}): {_error_text(error)}"
    if isinstance(error, ValueError):  # the SDK could not parse streamed tool input
        return True, f"malformed API response: {str(error)[:160]}"
    return False, f"{error.__class__.__name__}: {str(error)[:200]}"


def _retry_after(error: BaseException) -> float | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        return float(headers.get("retry-after", ""))
    except ValueError:
        return None


# --- the agent ---------------------------------------------------------------------


def _block_param(block: Any) -> dict[str, Any] | None:
    """An assistant content block as request input for the next turn."""
    kind = getattr(block, "type", None)
    if kind == "text":
        return {"type": "text", "text": block.text} if block.text else None
    if kind == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input if isinstance(block.input, dict) else {}}
    if kind == "thinking":
        return {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
    if kind == "redacted_thinking":
        return {"type": "redacted_thinking", "data": block.data}
    return None


def _with_cache_marker(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy whose last block carries cache_control, so each turn reuses the previous one's cache."""
    if not messages:
        return messages
    last = dict(messages[-1])
    content = last["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    content = [dict(b) for b in content]
    content[-1]["cache_control"] = {"type": "ephemeral"}
    last["content"] = content
    return messages[:-1] + [last]


class ClaudeAgent:
    name = "claude"

    def __init__(
        self,
        config: AgentConfig,
        *,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
            raise UsageError("the claude agent needs an API key: set ANTHROPIC_API_KEY or use --agent heuristic")
        self.config = config
        self.model = config.model
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.sleep = sleep
        self.price = price_for(config.model, config.prices)
        self._price_warned = False
        self.attempts = 0  # API calls made, retries included (for tests and benchmarks)
        # The SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL from the environment.
        self.client = anthropic.Anthropic(max_retries=0, timeout=config.request_timeout)

    # One proposal -------------------------------------------------------------

    def propose(self, context: ProposalContext) -> Proposal:
        usage = Usage()
        if self.price is None and not self._price_warned:
            self._price_warned = True
            context.emit(f"[no price known for model {self.model}: its cost is counted as $0; add it to [agent] prices]\n")
        files = WorktreeFiles(context.worktree, context.mutable)
        system = [
            {
                "type": "text",
                "text": prompt.system_prompt(context.program, context.mutable),
                "cache_control": {"type": "ephemeral"},
            }
        ]
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt.user_prompt(context)}]
        for _turn in range(self.config.max_turns):
            message = self._call(system, messages, usage, context)
            blocks = [b for b in (_block_param(b) for b in message.content) if b is not None]
            if not blocks:
                blocks = [{"type": "text", "text": "(no output)"}]
            messages.append({"role": "assistant", "content": blocks})
            if message.stop_reason == "refusal":
                raise AgentError("the model declined to make a proposal", usage=self._priced(usage))

            tool_uses = [b for b in message.content if getattr(b, "type", None) == "tool_use"]
            if not tool_uses:
                messages.append({"role": "user", "content": NUDGE})
                continue
            results = []
            for call in tool_uses:
                outcome = self._run_tool(call, files, context)
                if isinstance(outcome, Proposal):
                    outcome.usage = self._priced(usage)
                    return outcome
                text, is_error = outcome
                result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call.id, "content": text}
                if is_error:
                    result["is_error"] = True
                results.append(result)
            messages.append({"role": "user", "content": results})
        raise AgentError(
            f"the model did not submit a proposal within {self.config.max_turns} turns",
            usage=self._priced(usage),
        )

    def _priced(self, usage: Usage) -> Usage:
        usage.cost_usd = cost_usd(usage, self.price)
        return usage

    # Tools ----------------------------------------------------------------------

    def _run_tool(self, call: Any, files: WorktreeFiles, context: ProposalContext) -> Proposal | tuple[str, bool]:
        args = call.input if isinstance(call.input, dict) else {}
        path = args.get("path")
        context.emit(f"\n[{call.name} {path}]\n" if isinstance(path, str) else f"\n[{call.name}]\n")
        try:
            if call.name == "read_file":
                return files.read_file(args.get("path")), False
            if call.name == "replace":
                return files.replace(args.get("path"), args.get("old"), args.get("new")), False
            if call.name == "write_file":
                return files.write_file(args.get("path"), args.get("content")), False
            if call.name == "read_history":
                return self._history(context, args.get("limit", 30)), False
            if call.name == "submit":
                return self._submit(args, files)
            raise ToolError(f"unknown tool {call.name!r}: use read_file, replace, write_file, read_history or submit")
        except ToolError as e:
            context.emit(f"[refused: {e}]\n")
            return str(e), True

    @staticmethod
    def _history(context: ProposalContext, limit: Any) -> str:
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise ToolError("`limit` must be a whole number")
        limit = max(1, min(500, int(limit)))
        return (
            prompt.running_summary(context.history)
            + "\n\nExperiments (oldest first):\n"
            + prompt.format_history(context.history, limit=limit)
        )

    @staticmethod
    def _submit(args: dict[str, Any], files: WorktreeFiles) -> Proposal:
        hypothesis, description = args.get("hypothesis"), args.get("description")
        if not isinstance(hypothesis, str) or not hypothesis.strip():
            raise ToolError("submit needs a non-empty string `hypothesis`")
        if not isinstance(description, str) or not description.strip():
            raise ToolError("submit needs a non-empty string `description`")
        if not files.changed():
            raise ToolError("no mutable file has changed yet: make your change first, then submit")
        return Proposal(
            hypothesis=hypothesis.strip()[:MAX_HYPOTHESIS],
            description=prompt.clip(description.strip().splitlines()[0], MAX_DESCRIPTION),
        )

    # API calls with retries -------------------------------------------------------

    def _call(self, system: list[dict[str, Any]], messages: list[dict[str, Any]], usage: Usage, context: ProposalContext) -> Any:
        request = {
            "model": self.model,
            "max_tokens": self.config.max_tokens,
            "system": system,
            "tools": TOOLS,
            "tool_choice": {"type": "auto"},  # current models reject forced tool use
            "messages": _with_cache_marker(messages),
        }
        retries = max(0, self.config.max_retries)
        for attempt in range(retries + 1):
            try:
                message = self._stream_once(request, context)
            except (anthropic.APIError, _http.HTTPError, ValueError) as error:
                retryable, text = classify(error)
                if not retryable:
                    status = getattr(error, "status_code", None)
                    raise AgentError(text, transient=status in CONFIG_STATUSES, usage=self._priced(usage)) from error
                if attempt == retries:
                    raise AgentError(
                        f"{text} (gave up after {attempt + 1} attempts)", transient=True, usage=self._priced(usage)
                    ) from error
                delay = self._backoff(attempt, error)
                context.emit(f"\n[{text}; retry {attempt + 1} of {retries} in {delay:.1f}s]\n")
                self.sleep(delay)
                continue
            add_usage(usage, message.usage)
            return message
        raise AssertionError("unreachable")  # pragma: no cover

    def _stream_once(self, request: dict[str, Any], context: ProposalContext) -> Any:
        self.attempts += 1
        with self.client.messages.stream(**request) as stream:
            for event in stream:
                if event.type == "text":
                    context.emit(event.text)
                elif event.type == "thinking":
                    context.emit(event.thinking)
                elif event.type == "content_block_stop" and event.content_block.type in ("text", "thinking"):
                    context.emit("\n")  # keep separate blocks on separate lines
            return stream.get_final_message()

    def _backoff(self, attempt: int, error: BaseException) -> float:
        """Exponential backoff with jitter; a server's retry-after is honoured up to the cap."""
        delay = min(self.backoff_max, self.backoff_base * (2**attempt)) * random.uniform(0.5, 1.0)
        hint = _retry_after(error)
        if hint is not None and hint > 0:
            delay = max(delay, min(hint, self.backoff_max))
        return delay
