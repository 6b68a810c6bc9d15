"""`autoresearch serve`: textual-serve on 127.0.0.1 by default, a warning for anything else."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil

from tests.tui.fake_engine import FakeEngine


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


def serve(repo, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoresearch", "--repo", str(repo), "serve", "--tag", "test", "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 20
    while not listening(proc.pid, port):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "serve did not start listening"
        time.sleep(0.05)
    return proc, port


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_serve_binds_loopback_and_serves_the_page(repo):
    engine = FakeEngine(repo, "test").start()
    proc, port = serve(repo)
    try:
        assert listening(proc.pid, port) == ["127.0.0.1"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.status == 200 and "autoresearch test" in page.read().decode()
    finally:
        err = stop(proc)
        engine.release()
    assert "warning" not in err


def test_serve_warns_when_exposed(repo):
    engine = FakeEngine(repo, "test").start()
    proc, port = serve(repo, "--host", "0.0.0.0")
    try:
        assert listening(proc.pid, port) == ["0.0.0.0"]
    finally:
        err = stop(proc)
        engine.release()
    assert "warning: serving on 0.0.0.0 exposes the monitor" in err
