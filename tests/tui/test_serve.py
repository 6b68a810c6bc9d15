"""`autoresearch serve`: textual-serve behind a per-launch token and a same-origin check,
on loopback unless --allow-remote says otherwise. A real process on a real port."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import psutil
import pytest

from tests.tui.fake_engine import FakeEngine

WAIT_S = 20.0  # a deadline for the server to come up on two shared cores, never a timing assertion
URL_RE = re.compile(r"(http://\S+/\?token=([A-Za-z0-9_-]+))")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(pid: int, port: int) -> list[str]:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return []
    return [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


class Served:
    """`autoresearch serve` in a process of its own, with its stderr read as it comes."""

    def __init__(self, repo, *extra: str):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autoresearch", "--repo", str(repo), "serve", "--tag", "test",
             "--port", str(self.port), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def wait_listening(self) -> tuple[str, str]:
        """The printed URL and its token, once the port is open."""
        deadline = time.monotonic() + WAIT_S
        while not (listening(self.proc.pid, self.port) and URL_RE.search(self.err)):
            assert self.proc.poll() is None, f"serve exited: {self.err}"
            assert time.monotonic() < deadline, f"serve did not start listening: {self.err}"
            time.sleep(0.05)
        url, token = URL_RE.search(self.err).groups()
        return url, token

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return self.err


@pytest.fixture
def served(repo):
    engine = FakeEngine(repo, "test").start()
    started: list[Served] = []

    def start(*extra: str) -> Served:
        started.append(Served(repo, *extra))
        return started[-1]

    yield start
    for s in started:
        s.stop()
    engine.release()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as page:
            return page.status, page.read().decode(), dict(page.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def ws_url(page: str) -> str:
    return re.search(r'data-session-websocket-url="([^"]+)"', page).group(1)


def test_every_page_needs_the_printed_token(served):
    s = served()
    url, token = s.wait_listening()
    base = f"http://127.0.0.1:{s.port}"
    assert url == f"{base}/?token={token}"
    assert listening(s.proc.pid, s.port) == ["127.0.0.1"]
    for path in ("/", "/?token=wrong", f"/?token={token[:-1]}", "/static/js/textual.js", "/ws", "/download/x"):
        status, _, _ = get(base + path)
        assert status == 403, path
    status, page, headers = get(url)
    assert status == 200 and "autoresearch test" in page
    assert ws_url(page) == f"ws://127.0.0.1:{s.port}/ws"
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    assert token in cookie and "HttpOnly" in headers["Set-Cookie"]
    # A reload carries the cookie instead of the query.
    assert get(base + "/", {"Cookie": cookie})[0] == 200
    assert get(base + "/static/js/textual.js", {"Cookie": cookie})[0] == 200
    assert get(base + "/", {"Cookie": cookie.replace(token, "x" * len(token))})[0] == 403
    # The page's own URLs follow the Host the browser used, not the bind address.
    status, page, _ = get(url, {"Host": f"localhost:{s.port}"})
    assert status == 200 and ws_url(page) == f"ws://localhost:{s.port}/ws"
    assert "warning" not in s.err


async def ws_status(url: str, **kwargs) -> int:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, **kwargs) as ws:
                await ws.close()
                return 101
        except aiohttp.WSServerHandshakeError as e:
            return e.status


def test_websocket_needs_the_token_and_its_own_origin(served):
    s = served()
    _, token = s.wait_listening()
    ws = f"ws://127.0.0.1:{s.port}/ws"
    own = {"Origin": f"http://127.0.0.1:{s.port}"}
    cookie = {"Cookie": f"autoresearch-monitor-{s.port}={token}"}

    async def attempts() -> dict[str, int]:
        return {
            "foreign origin": await ws_status(f"{ws}?token={token}", headers={"Origin": "http://evil.example"}),
            "foreign port": await ws_status(f"{ws}?token={token}", headers={"Origin": "http://127.0.0.1:1"}),
            "foreign origin, cookie": await ws_status(ws, headers={"Origin": "http://evil.example", **cookie}),
            "no origin": await ws_status(f"{ws}?token={token}"),
            "no token": await ws_status(ws, headers=own),
            "wrong token": await ws_status(f"{ws}?token=nope", headers=own),
            "token and origin": await ws_status(f"{ws}?token={token}", headers=own),
            "cookie and origin": await ws_status(ws, headers={**own, **cookie}),
        }

    results = asyncio.run(attempts())
    assert results == {
        "foreign origin": 403, "foreign port": 403, "foreign origin, cookie": 403, "no origin": 403,
        "no token": 403, "wrong token": 403, "token and origin": 101, "cookie and origin": 101,
    }


def test_a_remote_address_needs_allow_remote(repo):
    engine = FakeEngine(repo, "test").start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "autoresearch", "--repo", str(repo), "serve", "--tag", "test",
             "--host", "0.0.0.0", "--port", str(free_port())],
            capture_output=True, text=True, timeout=WAIT_S, check=False,
        )
    finally:
        engine.release()
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--allow-remote" in proc.stderr


def test_allow_remote_warns_and_names_the_machine(served):
    s = served("--host", "0.0.0.0", "--allow-remote")
    url, token = s.wait_listening()
    assert listening(s.proc.pid, s.port) == ["0.0.0.0"]
    assert "warning" in s.err and "0.0.0.0" in s.err
    assert url == f"http://{socket.gethostname()}:{s.port}/?token={token}"
    status, page, _ = get(f"http://127.0.0.1:{s.port}/?token={token}")
    assert status == 200 and ws_url(page) == f"ws://127.0.0.1:{s.port}/ws"  # never ws://0.0.0.0
    assert get(f"http://127.0.0.1:{s.port}/")[0] == 403


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_addresses_are_bracketed(served):
    s = served("--host", "::1")
    url, token = s.wait_listening()
    assert url == f"http://[::1]:{s.port}/?token={token}"
    status, page, _ = get(url)
    assert status == 200 and ws_url(page) == f"ws://[::1]:{s.port}/ws"
    assert "warning" not in s.err
