"""A fake Anthropic Messages API on 127.0.0.1 that plays scripted conversations.

The real ``anthropic`` client is pointed at it (ANTHROPIC_BASE_URL), so tests exercise
the SDK's HTTP, SSE parsing and error mapping exactly as in production. Each POST to
/v1/messages consumes the next step of the script:

    message(text("..."), tool("replace", path=..., old=..., new=...), usage={...})
        a streamed reply (message_start, content blocks with deltas, message_delta, stop)
    error(429, "rate_limit_error")      an HTTP error with the API's JSON error body
    stream_error("overloaded_error")    HTTP 200, then an SSE error event mid-stream
    {"sleep": 2.0, ...}                 wait before answering (to provoke a client timeout)
    {"gate": threading.Event(), ...}    after the first text chunk, wait until the test sets
                                        the event (proves text is streamed as it arrives)

``on_request(body)``, if set, is called first (a test can hold a reply back there).
When the script runs out, ``responder(body)`` (if given) decides; otherwise the server
answers 400 so a test that makes too many calls fails loudly. Every request body and
its headers are kept in ``requests`` / ``headers`` for assertions.
"""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

_ids = itertools.count(1)


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def thinking(value: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": value, "signature": "sig-fake"}


def tool(name: str, **inputs: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": inputs}


def raw_tool(name: str, raw_json: str) -> dict[str, Any]:
    """A tool call whose streamed JSON input is exactly ``raw_json`` (may be invalid)."""
    return {"type": "tool_use", "name": name, "raw_json": raw_json}


def message(*blocks: dict[str, Any], usage: dict[str, int] | None = None, stop_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    step = {"content": list(blocks), "stop_reason": stop_reason, "usage": usage or {"input_tokens": 100, "output_tokens": 20}}
    step.update(extra)
    return step


def error(status: int, kind: str, msg: str = "scripted error", headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {"status": status, "error": kind, "message": msg, "headers": headers or {}}


def stream_error(kind: str = "overloaded_error", msg: str = "Overloaded") -> dict[str, Any]:
    return {"stream_error": kind, "message": msg}


class FakeMessagesAPI:
    def __init__(self, script: list[dict[str, Any]] | None = None, responder: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None):
        self.script = list(script or [])
        self.responder = responder
        # Called with each request body before it is answered (a test can hold a reply back).
        self.on_request: Callable[[dict[str, Any]], None] | None = None
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.gate_released_by_client: list[bool] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-messages-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeMessagesAPI":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def add(self, *steps: dict[str, Any]) -> None:
        with self._lock:
            self.script.extend(steps)

    def _next_step(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.requests.append(body)
        if self.on_request is not None:
            self.on_request(body)
        with self._lock:
            if self.script:
                return self.script.pop(0)
        if self.responder is not None:
            step = self.responder(body)
            if step is not None:
                return step
        return error(400, "invalid_request_error", "fake server: the script has no more steps")

    # --- HTTP -----------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                with api._lock:
                    api.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path.split("?")[0] != "/v1/messages":
                    self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
                    return
                step = api._next_step(body)
                try:
                    api._play(self, step, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

            def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _play(self, handler: BaseHTTPRequestHandler, step: dict[str, Any], body: dict[str, Any]) -> None:
        if step.get("sleep") and self._stopping.wait(step["sleep"]):
            return
        if "status" in step:
            payload = {"type": "error", "error": {"type": step["error"], "message": step["message"]}}
            handler._json(step["status"], payload, step.get("headers"))  # type: ignore[attr-defined]
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()

        def send(event: str, data: dict[str, Any]) -> None:
            handler.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            handler.wfile.flush()

        usage = dict(step.get("usage") or {})
        start_usage = {
            "input_tokens": usage.get("input_tokens", 0),
            "output_tokens": 1,
            "cache_creation_input_tokens": usage.get("cache_creation_input_tokens", 0),
            "cache_read_input_tokens": usage.get("cache_read_input_tokens", 0),
        }
        send(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"msg_fake_{next(_ids)}",
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", "unknown"),
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        )
        if "stream_error" in step:
            send("error", {"type": "error", "error": {"type": step["stream_error"], "message": step["message"]}})
            return
        gate: threading.Event | None = step.get("gate")
        for index, block in enumerate(step.get("content", [])):
            self._send_block(send, index, block, gate)
            gate = None if block["type"] == "text" else gate
        send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": step.get("stop_reason", "end_turn"), "stop_sequence": None},
                "usage": {"output_tokens": usage.get("output_tokens", 0)},
            },
        )
        send("message_stop", {"type": "message_stop"})

    def _send_block(self, send: Callable[[str, dict[str, Any]], None], index: int, block: dict[str, Any], gate: threading.Event | None) -> None:
        kind = block["type"]
        if kind == "text":
            send("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
            words = block["text"].split(" ")
            chunks = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
            for i, chunk in enumerate(chunks):
                send("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": chunk}})
                if i == 0 and gate is not None:
                    # Hold the rest back until the client shows it saw the first chunk.
                    self.gate_released_by_client.append(gate.wait(timeout=5))
        elif kind == "thinking":
            send("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
            send("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": block["thinking"]}})
            send("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "signature_delta", "signature": block["signature"]}})
        elif kind == "tool_use":
            tool_id = block.get("id") or f"toolu_fake_{next(_ids)}"
            send(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": tool_id, "name": block["name"], "input": {}}},
            )
            raw = block["raw_json"] if "raw_json" in block else json.dumps(block["input"])
            half = len(raw) // 2
            for piece in (raw[:half], raw[half:]):
                if piece:
                    send("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}})
        else:
            raise ValueError(f"unknown block type {kind!r}")
        send("content_block_stop", {"type": "content_block_stop", "index": index})


# --- reading what the client sent ------------------------------------------------


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of the last user message of a request body."""
    last = body["messages"][-1]
    content = last["content"]
    if isinstance(content, str):
        return []
    return [b for b in content if b.get("type") == "tool_result"]


def request_text(body: dict[str, Any]) -> str:
    """Every text the client sent in one request (system and messages), joined."""
    parts: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        parts.append(system)
    elif isinstance(system, list):
        parts.extend(b.get("text", "") for b in system)
    for m in body.get("messages", []):
        content = m["content"]
        if isinstance(content, str):
            parts.append(content)
            continue
        for b in content:
            if b.get("type") == "text":
                parts.append(b["text"])
            elif b.get("type") == "tool_result":
                c = b.get("content")
                parts.append(c if isinstance(c, str) else json.dumps(c))
    return "\n".join(parts)
