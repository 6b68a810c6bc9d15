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

Everything the model sends is bounded before it costs anything:

- a mutable file may not grow past MAX_FILE_BYTES (one that started larger may grow by
  a quarter of that), and no argument may be larger than that;
- errors and events quote at most QUOTE_CHARS characters of any argument;
- at most MAX_CALLS_PER_RESPONSE tool calls of one response run; the rest are dropped
  from the conversation and the model is told so; after MAX_CALLS_PER_PROPOSAL calls
  only ``submit`` runs; the tool results of one response are capped at MAX_RESULT_CHARS;
- a response longer than max_tokens could produce is refused mid-stream;
- the history re-sent each turn is trimmed: the inputs of write_file/replace calls and
  the results of read_file/read_history from turns older than the last KEEP_TURNS are
  replaced by a short placeholder, and a request is never larger than
  MAX_REQUEST_BYTES (older turns are trimmed harder first, then the proposal fails).

The cost cap holds inside a proposal: ``context.budget_usd`` is what the run may still
spend. Before each request its cost is projected (input tokens estimated from the
request's size, calibrated by the last response's usage and priced at the dearer of the
input and cache-write rates, plus max_tokens of output); a request that could pass the
budget is not sent and ``CostCapReached`` is raised with the usage so far. A response
that leaves nothing of the budget ends the proposal too, unless it submits.

``context.cancel`` stops the proposal at the next streamed event, tool call or retry
wait (``ProposalCancelled``): an abandoned proposal never edits a later run's files.

Model text (and thinking, where the model returns its reasoning that way) is streamed
to ``context.emit`` as it arrives, without control, bidi or invisible characters. The SDK's own retries are off (``max_retries=0``):
this module retries 429, 5xx, 529 overloaded, timeouts and dropped connections itself,
with exponential backoff and jitter, so every attempt is counted and testable. When
the retries are spent it raises ``AgentError(transient=True)`` and the loop counts it
toward pausing.

Credentials and endpoint come from the environment like any SDK user's:
``ANTHROPIC_API_KEY`` and, optionally, ``ANTHROPIC_BASE_URL``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import anthropic

from ..config import AgentConfig
from ..errors import UsageError
from . import prompt
from ..untrusted import strip_control
from .base import AgentError, CostCapReached, Proposal, ProposalCancelled, ProposalContext, Usage

try:  # the SDK's HTTP layer; errors raised while reading a stream come from it unwrapped
    import httpx2 as _http
except ImportError:  # pragma: no cover - older SDKs use httpx
    import httpx as _http  # type: ignore[no-redef]

MAX_READ_CHARS = 200_000  # of a file, returned by read_file
MAX_FILE_BYTES = 256 * 1024  # a mutable file after an edit (or its starting size, if larger)
MAX_PATH_CHARS = 1024
QUOTE_CHARS = 200  # of any model-supplied argument, in errors and events
MAX_CALLS_PER_RESPONSE = 20
MAX_CALLS_PER_PROPOSAL = 100  # then only submit runs
MAX_RESULT_CHARS = 600_000  # tool results answering one response, together
KEEP_TURNS = 2  # the latest turns re-sent whole; older edits and reads become placeholders
TRIM_MIN_CHARS = 1000  # smaller tool inputs and results are re-sent as they are
MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Input tokens per byte of request JSON assumed before any response (about 4 bytes a token
# for English and code; 3 leaves room). A response's usage replaces it when higher.
TOKENS_PER_BYTE = 1 / 3
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


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """A model-supplied value as one safe line of at most ``limit`` characters (plus a
    note of its full length), for error messages and events."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > 4 * limit:  # never clean megabytes just to show two hundred characters
        text = text[: 4 * limit]
    shown = " ".join(strip_control(text).split())
    full = len(value) if isinstance(value, str) else len(text)
    if len(shown) > limit or full > len(text):
        return shown[:limit] + f"… ({full} characters)"
    return shown


def _utf8_size(text: str, what: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ToolError(f"{what} is not valid text (it holds a lone surrogate)") from None


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
        # A file may not grow past MAX_FILE_BYTES; one that started larger, by a quarter of that.
        self.limit = {
            rel: max(MAX_FILE_BYTES, len(text.encode("utf-8")) + MAX_FILE_BYTES // 4 if text is not None else 0)
            for rel, text in self.original.items()
        }

    def resolve(self, path: Any) -> Path:
        """The file a tool may touch, or ToolError saying why not."""
        if not isinstance(path, str) or not path.strip():
            raise ToolError("`path` must be a non-empty string naming a mutable file")
        if len(path) > MAX_PATH_CHARS:
            raise ToolError(f"`path` is {len(path)} characters long: use one of {self._allowed()}")
        if "\x00" in path or "\\" in path:
            raise ToolError(f"invalid path {quote(path)!r}")
        p = PurePosixPath(path.strip())
        if p.is_absolute():
            raise ToolError(f"absolute paths are refused: use a path relative to the worktree ({self._allowed()})")
        if ".." in p.parts:
            raise ToolError(f"'..' is refused in paths: use one of {self._allowed()}")
        rel = p.as_posix()
        if rel not in self.mutable:
            if rel == "prepare.py":
                raise ToolError("prepare.py is the immutable evaluator: it cannot be changed; " f"you may only use {self._allowed()}")
            raise ToolError(f"{quote(rel)} is not a mutable file: you may only use {self._allowed()}")
        current = self.root
        for part in p.parts:
            current = current / part
            if current.is_symlink():
                raise ToolError(f"{rel} goes through a symlink ({current.relative_to(self.root)}): symlinks are refused")
        target = self.root / rel
        if not target.resolve().is_relative_to(self.root):
            raise ToolError(f"{rel} resolves outside the worktree: refused")
        return target

    def _rel(self, target: Path) -> str:
        return target.relative_to(self.root).as_posix()

    def _check_size(self, rel: str, text: str, what: str) -> None:
        size, limit = _utf8_size(text, what), self.limit[rel]
        if size > limit:
            raise ToolError(
                f"refused: {rel} would be {size} bytes, over the {limit // 1024} KiB limit for a mutable "
                "file; make a smaller change"
            )

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
        rel = self._rel(target)
        try:
            text = self._read(target)
        except FileNotFoundError:
            raise ToolError(f"{rel} does not exist yet (write_file creates it)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ToolError(f"cannot read {rel}: {e.__class__.__name__}") from None
        if len(text) > MAX_READ_CHARS:
            return text[:MAX_READ_CHARS] + f"\n[... cut at {MAX_READ_CHARS} characters ...]"
        return text

    def replace(self, path: Any, old: Any, new: Any) -> str:
        if not isinstance(old, str) or not isinstance(new, str):
            raise ToolError("replace needs string fields `path`, `old` and `new`")
        if not old:
            raise ToolError("`old` must not be empty")
        target = self.resolve(path)
        rel = self._rel(target)
        for name, value in (("old", old), ("new", new)):
            if len(value) > self.limit[rel]:
                raise ToolError(
                    f"refused: `{name}` is {len(value)} characters, more than a mutable file may hold "
                    f"({self.limit[rel] // 1024} KiB)"
                )
        try:
            text = self._read(target)
        except (OSError, UnicodeDecodeError) as e:
            raise ToolError(f"cannot read {rel}: {e.__class__.__name__}") from None
        count = text.count(old)
        if count == 0:
            raise ToolError(f"`old` was not found in {rel}: it must match exactly, including whitespace")
        if count > 1:
            raise ToolError(f"`old` occurs {count} times in {rel}: include more surrounding lines so it occurs once")
        updated = text.replace(old, new, 1)
        self._check_size(rel, updated, "`new`")
        self._write(target, updated)
        return f"replaced 1 occurrence in {rel} ({len(updated.splitlines())} lines now)"

    def write_file(self, path: Any, content: Any) -> str:
        if not isinstance(content, str):
            raise ToolError("write_file needs string fields `path` and `content`")
        target = self.resolve(path)
        rel = self._rel(target)
        if len(content) > self.limit[rel]:  # cheap first check, before encoding megabytes
            raise ToolError(
                f"refused: `content` is {len(content)} characters, over the {self.limit[rel] // 1024} KiB "
                "limit for a mutable file"
            )
        self._check_size(rel, content, "`content`")
        self._write(target, content)
        return f"wrote {rel} ({len(content.splitlines())} lines)"

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


EDIT_TOOLS = ("write_file", "replace")
READ_TOOLS = ("read_file", "read_history")
TRIMMED_EDIT = "(left out of the history to keep requests small: this edit was made; read_file shows the file as it is now)"
TRIMMED_READ = "(left out of the history to keep requests small: call read_file again for the file as it is now)"


def _text_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_size(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_size(v) for v in value)
    return 0


def trim_history(messages: list[dict[str, Any]], tool_names: dict[str, str], keep: int = KEEP_TURNS) -> list[dict[str, Any]]:
    """A copy of the conversation that re-sends less: in assistant turns older than the
    last ``keep``, the inputs of write_file/replace calls, and in the tool results that
    answered them, the output of read_file/read_history, are replaced by a short
    placeholder when larger than TRIM_MIN_CHARS. The last message is never trimmed (it
    holds the results the model has not seen yet). ``messages`` is not changed."""
    assistant_at = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    old = set(assistant_at[: max(0, len(assistant_at) - keep)])
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        content = m["content"]
        if i in old and isinstance(content, list):
            blocks = []
            for b in content:
                if b.get("type") == "tool_use" and b.get("name") in EDIT_TOOLS and _text_size(b.get("input")) > TRIM_MIN_CHARS:
                    path = b["input"].get("path") if isinstance(b.get("input"), dict) else None
                    b = {**b, "input": {"path": quote(path), "note": TRIMMED_EDIT}}
                blocks.append(b)
            m = {**m, "content": blocks}
        elif i - 1 in old and i < len(messages) - 1 and isinstance(content, list):
            blocks = []
            for b in content:
                if (
                    b.get("type") == "tool_result"
                    and tool_names.get(b.get("tool_use_id", "")) in READ_TOOLS
                    and _text_size(b.get("content")) > TRIM_MIN_CHARS
                ):
                    b = {**b, "content": TRIMMED_READ}
                blocks.append(b)
            m = {**m, "content": blocks}
        out.append(m)
    return out


class ClaudeAgent:
    name = "claude"

    def __init__(
        self,
        config: AgentConfig,
        *,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        sleep: Callable[[float], None] | None = None,
    ):
        if not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
            raise UsageError("the claude agent needs an API key: set ANTHROPIC_API_KEY or use --agent heuristic")
        self.config = config
        self.model = config.model
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.sleep = sleep  # None: wait on context.cancel, so a stop cuts a backoff short
        self.price = price_for(config.model, config.prices)
        self._price_warned = False
        self.attempts = 0  # API calls made, retries included (for tests and benchmarks)
        self.request_bytes: list[int] = []  # size of each request sent (for tests and benchmarks)
        self.tokens_per_byte = TOKENS_PER_BYTE  # for cost projections; see _projected_cost
        # A reply longer than max_tokens could be is not a model's: refuse it mid-stream.
        self.max_response_chars = max(1_000_000, 64 * config.max_tokens)
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
                "text": prompt.system_prompt(context.program, context.mutable, goal=context.goal),
                "cache_control": {"type": "ephemeral"},
            }
        ]
        # The first user message (files, history) is the same all proposal long: cached too.
        first = {"type": "text", "text": prompt.user_prompt(context), "cache_control": {"type": "ephemeral"}}
        messages: list[dict[str, Any]] = [{"role": "user", "content": [first]}]
        tool_names: dict[str, str] = {}  # tool_use id -> tool name, for trimming the history
        calls = 0  # tool calls run in this proposal
        for turn in range(1, self.config.max_turns + 1):
            self._check_cancel(context, usage)
            request, size = self._request(system, messages, tool_names, usage)
            self._check_budget(turn, size, usage, context)
            message = self._call(request, size, usage, context)
            tool_uses = [b for b in message.content if getattr(b, "type", None) == "tool_use"]
            run, dropped = tool_uses[:MAX_CALLS_PER_RESPONSE], tool_uses[MAX_CALLS_PER_RESPONSE:]
            self._check_spent(usage, context, submits=any(c.name == "submit" for c in run))
            skip = {id(b) for b in dropped}
            blocks = [b for b in (_block_param(b) for b in message.content if id(b) not in skip) if b is not None]
            if not blocks:
                blocks = [{"type": "text", "text": "(no output)"}]
            messages.append({"role": "assistant", "content": blocks})
            if message.stop_reason == "refusal":
                raise AgentError("the model declined to make a proposal", usage=self._priced(usage))

            if not tool_uses:
                messages.append({"role": "user", "content": NUDGE})
                continue
            results: list[dict[str, Any]] = []
            result_chars = 0
            for call in run:
                self._check_cancel(context, usage)
                tool_names[call.id] = call.name
                if calls >= MAX_CALLS_PER_PROPOSAL and call.name != "submit":
                    outcome: Proposal | tuple[str, bool] = (
                        f"refused: this proposal has used its {MAX_CALLS_PER_PROPOSAL} tool calls; call submit now",
                        True,
                    )
                    context.emit(f"\n[{quote(call.name, 40)} refused: {MAX_CALLS_PER_PROPOSAL} tool calls used]\n")
                else:
                    calls += 1
                    outcome = self._run_tool(call, files, context)
                if isinstance(outcome, Proposal):
                    outcome.usage = self._priced(usage)
                    return outcome
                text, is_error = outcome
                if result_chars + len(text) > MAX_RESULT_CHARS:
                    text, is_error = (
                        f"not returned: the results answering one response may hold {MAX_RESULT_CHARS} characters "
                        "together; ask for less at a time",
                        True,
                    )
                result_chars += len(text)
                result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call.id, "content": text}
                if is_error:
                    result["is_error"] = True
                results.append(result)
            if dropped:
                note = (
                    f"Your last response made {len(tool_uses)} tool calls; only the first {MAX_CALLS_PER_RESPONSE} "
                    f"ran. The other {len(dropped)} were refused and left out of the conversation: "
                    f"make at most {MAX_CALLS_PER_RESPONSE} calls per response and repeat any you still need."
                )
                context.emit(f"\n[refused {len(dropped)} tool calls beyond {MAX_CALLS_PER_RESPONSE} in one response]\n")
                results.append({"type": "text", "text": note})
            messages.append({"role": "user", "content": results})
        raise AgentError(
            f"the model did not submit a proposal within {self.config.max_turns} turns",
            usage=self._priced(usage),
        )

    def _priced(self, usage: Usage) -> Usage:
        usage.cost_usd = cost_usd(usage, self.price)
        return usage

    def _check_cancel(self, context: ProposalContext, usage: Usage) -> None:
        if context.cancel.is_set():
            raise ProposalCancelled("the proposal was cancelled", usage=self._priced(usage))

    # The request and what it may cost -------------------------------------------------

    def _request(
        self, system: list[dict[str, Any]], messages: list[dict[str, Any]], tool_names: dict[str, str], usage: Usage
    ) -> tuple[dict[str, Any], int]:
        """The next request, its history trimmed; and its size in bytes, at most MAX_REQUEST_BYTES."""
        size = 0
        for keep in (KEEP_TURNS, 0):
            request = {
                "model": self.model,
                "max_tokens": self.config.max_tokens,
                "system": system,
                "tools": TOOLS,
                "tool_choice": {"type": "auto"},  # current models reject forced tool use
                "messages": _with_cache_marker(trim_history(messages, tool_names, keep)),
            }
            size = len(json.dumps(request, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            if size <= MAX_REQUEST_BYTES:
                return request, size
        raise AgentError(
            f"the conversation grew to {size} bytes, over the {MAX_REQUEST_BYTES} bytes a request may have",
            usage=self._priced(usage),
        )

    def _projected_cost(self, request_bytes: int) -> float:
        """The most one request of this size could cost: its input at the dearer of the
        input and cache-write rates, and max_tokens of output."""
        if self.price is None:
            return 0.0
        inp, out, cache_write, _cache_read = self.price
        input_tokens = request_bytes * self.tokens_per_byte
        return (input_tokens * max(inp, cache_write) + self.config.max_tokens * out) / 1_000_000

    def _check_budget(self, turn: int, request_bytes: int, usage: Usage, context: ProposalContext) -> None:
        """Before a request: CostCapReached when it could pass what is left of the budget."""
        if context.budget_usd is None:
            return
        spent = cost_usd(usage, self.price)
        left = context.budget_usd - spent
        projected = self._projected_cost(request_bytes)
        if projected > left:
            context.emit(f"\n[cost cap: request {turn} could cost up to ${projected:.4f}; ${max(left, 0):.4f} is left]\n")
            raise CostCapReached(
                f"cost cap: stopped before API request {turn} of this proposal: it could cost up to "
                f"${projected:.4f} (up to {self.config.max_tokens} output tokens) and ${max(left, 0):.4f} "
                f"of the cost cap is left (${spent:.4f} spent in this proposal)",
                usage=self._priced(usage),
            )

    def _check_spent(self, usage: Usage, context: ProposalContext, submits: bool) -> None:
        """After a response: CostCapReached when it used up the budget, unless it submits."""
        if context.budget_usd is None or self.price is None or submits:
            return
        spent = cost_usd(usage, self.price)
        if spent >= context.budget_usd:
            raise CostCapReached(
                f"cost cap: the proposal has spent ${spent:.4f}, all of the ${context.budget_usd:.4f} "
                "left under the cost cap, without submitting",
                usage=self._priced(usage),
            )

    # Tools ----------------------------------------------------------------------

    def _run_tool(self, call: Any, files: WorktreeFiles, context: ProposalContext) -> Proposal | tuple[str, bool]:
        args = call.input if isinstance(call.input, dict) else {}
        path = args.get("path")
        name = quote(call.name, 40)
        context.emit(f"\n[{name} {quote(path)}]\n" if isinstance(path, str) else f"\n[{name}]\n")
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
            raise ToolError(f"unknown tool {name!r}: use read_file, replace, write_file, read_history or submit")
        except ToolError as e:
            context.emit(f"[refused: {quote(str(e), 2 * QUOTE_CHARS)}]\n")
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
            hypothesis=hypothesis[: 2 * MAX_HYPOTHESIS].strip()[:MAX_HYPOTHESIS],
            description=prompt.clip(description[: 4 * MAX_DESCRIPTION].strip().splitlines()[0], MAX_DESCRIPTION),
        )

    # API calls with retries -------------------------------------------------------

    def _call(self, request: dict[str, Any], size: int, usage: Usage, context: ProposalContext) -> Any:
        retries = max(0, self.config.max_retries)
        for attempt in range(retries + 1):
            self._check_cancel(context, usage)
            try:
                message = self._stream_once(request, size, context, usage)
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
                if self.sleep is not None:
                    self.sleep(delay)
                else:
                    context.cancel.wait(delay)
                continue
            add_usage(usage, message.usage)
            self._calibrate(message.usage, size)
            return message
        raise AssertionError("unreachable")  # pragma: no cover

    def _calibrate(self, message_usage: Any, request_bytes: int) -> None:
        """Tokens per byte for the next projection: what this response's usage showed, or
        the default when that was lower."""
        tokens = sum(
            getattr(message_usage, k, 0) or 0
            for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        )
        if request_bytes > 0 and tokens > 0:
            self.tokens_per_byte = max(TOKENS_PER_BYTE, tokens / request_bytes)

    def _stream_once(self, request: dict[str, Any], size: int, context: ProposalContext, usage: Usage) -> Any:
        self.attempts += 1
        self.request_bytes.append(size)
        received = 0
        with self.client.messages.stream(**request) as stream:
            for event in stream:
                if context.cancel.is_set():
                    raise ProposalCancelled("the proposal was cancelled", usage=self._priced(usage))
                if event.type == "content_block_delta":
                    delta = event.delta
                    received += len(
                        getattr(delta, "text", None) or getattr(delta, "partial_json", None) or getattr(delta, "thinking", None) or ""
                    )
                    if received > self.max_response_chars:
                        raise AgentError(
                            f"refused the API response: it passed {self.max_response_chars} characters, more than "
                            f"{self.config.max_tokens} output tokens can hold",
                            usage=self._priced(usage),
                        )
                elif event.type == "text":
                    context.emit(strip_control(event.text))
                elif event.type == "thinking":
                    context.emit(strip_control(event.thinking))
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
