"""The control socket under hostile or careless clients: a real ControlServer, real sockets.

Whatever a client sends, or however many clients come at once, each gets a one-line
reply or is cut off, and the server goes on answering everyone else.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from pathlib import Path

import pytest

from engine import control
from engine.control import ControlServer, accepted, send_command

WAIT_S = 30.0  # a generous deadline for waits on two shared cores, never a timing assertion


@pytest.fixture
def server(tmp_path: Path):
    seen: list[dict] = []
    threads_seen: list[int] = []

    def handler(request: dict) -> dict:
        seen.append(request)
        threads_seen.append(threading.active_count())
        return accepted(request["cmd"])

    srv = ControlServer(tmp_path / "control.sock", handler)
    srv.seen = seen  # type: ignore[attr-defined]
    srv.threads_seen = threads_seen  # type: ignore[attr-defined]
    srv.start()
    yield srv
    srv.close()


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)  # a timeout makes connect() fail at once when the kernel's queue is full
    sock.connect(str(path))
    return sock


def read_reply(sock: socket.socket) -> dict:
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


def ask(path: Path, payload: bytes) -> dict:
    with connect(path) as sock:
        sock.sendall(payload)
        return read_reply(sock)


def test_deeply_nested_json_gets_a_refusal(server):
    depth = 30_000  # far past the recursion limit, still under the request size bound
    deep = b'{"cmd": "note", "text": "x", "extra": ' + b"[" * depth + b"]" * depth + b"}\n"
    assert len(deep) < control.MAX_REQUEST_BYTES
    reply = ask(server.path, deep)
    assert reply["result"] == "refused" and "deep" in reply["reason"]
    unterminated = b"[" * (control.MAX_REQUEST_BYTES - 1) + b"\n"
    assert ask(server.path, unterminated)["result"] == "refused"
    assert send_command(server.path, "ping")["ok"]
    assert server.seen == [{"cmd": "ping"}]


def test_unparseable_and_oversized_requests_get_a_refusal(server):
    for payload in (b"\xff\xfe{\n", b"not json\n", b"[1, 2]\n", b'{"cmd": "ping", "text": 3}\n',
                    b'"' + b"a" * (control.MAX_REQUEST_BYTES + 10) + b'"\n', b"1e999999999\n"):
        reply = ask(server.path, payload)
        assert reply["ok"] is False and reply["result"] == "refused", payload[:20]
    assert send_command(server.path, "ping")["ok"]


def test_five_hundred_simultaneous_clients_all_get_replies(server):
    base_threads = threading.active_count()
    socks = []
    try:
        # Every client connects before any sends a byte: all 500 are open at once.
        for _ in range(500):
            socks.append(connect(server.path))  # BlockingIOError here means the kernel refused it
        for i, sock in enumerate(socks):
            sock.sendall(json.dumps({"cmd": "note", "text": str(i)}).encode() + b"\n")
        replies = [read_reply(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert len(replies) == 500
    busy = [r for r in replies if not r["ok"]]
    assert all("busy" in r["reason"] for r in busy)
    assert len(server.seen) == 500 - len(busy) and len(busy) < 500
    # Handler threads are bounded: never one per waiting client.
    assert max(server.threads_seen) <= base_threads + control.MAX_HANDLERS
    assert send_command(server.path, "ping")["ok"]


def test_a_slow_client_is_cut_off_while_others_are_served(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "REQUEST_DEADLINE_S", 2.0, raising=False)
    srv = ControlServer(tmp_path / "control.sock", lambda request: accepted(request["cmd"]))
    srv.start()
    try:
        slow = connect(srv.path)
        cut_off = False
        reply = None
        served = None
        started = time.monotonic()
        # One byte a second, never a newline: each recv() on the server returns quickly,
        # so only a deadline on the whole request ends it.
        for byte in (b'{"cmd": "ping"' + b" " * 1000):
            ready, _, _ = select.select([slow], [], [], 1.0)
            if ready:
                data = slow.recv(4096)
                if data:
                    reply = json.loads(data.split(b"\n", 1)[0])
                cut_off = True
                break
            try:
                slow.sendall(bytes([byte]))
            except OSError:  # the server closed its end
                cut_off = True
                break
            if served is None:
                served = send_command(srv.path, "ping")  # another client meanwhile
            if time.monotonic() - started > WAIT_S:
                break
        slow.close()
        assert served is not None and served["ok"]
        assert cut_off, "the server kept a one-byte-a-second client open"
        assert reply is None or (reply["result"] == "refused" and "within" in reply["reason"])
        assert send_command(srv.path, "ping")["ok"]
    finally:
        srv.close()
