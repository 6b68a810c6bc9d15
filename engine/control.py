"""The control socket: newline-delimited JSON over a Unix socket (mode 0600).

Request, one line:   {"cmd": "pause"|"resume"|"skip"|"keep"|"stop"|"note"|"ping", "text": str?}
Reply, one line:     {"ok": true,  "result": "accepted", "message": str}
                 or  {"ok": false, "result": "refused",  "reason": str}

The server runs in a daemon thread and hands each request to a callback; the engine
owns the meaning of each command. ``send_command`` is the client used by
``autoresearch ctl`` and by the monitor (from a worker thread, never the UI thread).

Every connection gets a reply or is cut off: a request that is not JSON, is nested too
deeply or is too large is refused; one not complete within REQUEST_DEADLINE_S of being
accepted is refused and closed; at most MAX_HANDLERS connections are served at once and
the rest wait in the kernel's listen queue.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

COMMANDS = ("pause", "resume", "skip", "keep", "stop", "note", "ping")
MAX_REQUEST_BYTES = 64 * 1024
REQUEST_DEADLINE_S = 5.0  # the whole request, from accept() to its newline: no slow trickle holds a handler
MAX_HANDLERS = 16  # connections served at once; more wait, unaccepted, in the listen queue
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
# sun_path holds 108 bytes on Linux; longer paths are reached through /proc/self/fd.
_SUN_PATH_MAX = 100


class ControlError(Exception):
    """The engine could not be reached or answered nonsense."""


@contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A path to the socket short enough for bind()/connect()."""
    text = str(path)
    if len(text.encode()) <= _SUN_PATH_MAX:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_PATH", 0) | getattr(os, "O_DIRECTORY", 0))
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def refused(reason: str) -> dict[str, Any]:
    return {"ok": False, "result": "refused", "reason": reason}


def accepted(message: str = "") -> dict[str, Any]:
    return {"ok": True, "result": "accepted", "message": message}


class ControlServer:
    """Accepts connections on ``path`` and answers each request with ``handler(request)``."""

    def __init__(self, path: Path, handler: Callable[[dict[str, Any]], dict[str, Any]]):
        self.path = Path(path)
        self.handler = handler
        self.deadline = REQUEST_DEADLINE_S
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_HANDLERS)

    def start(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600: no window where others could connect
        try:
            with _short_path(self.path) as p:
                sock.bind(p)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, stat.S_IRUSR | stat.S_IWUSR)
        # A deep queue: a burst of clients waits here instead of being refused by the kernel.
        sock.listen(max(LISTEN_BACKLOG, socket.SOMAXCONN))
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control-socket", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._closing.is_set():
            # Accept only when a handler is free; until then clients wait in the listen queue.
            if not self._slots.acquire(timeout=0.5):
                continue
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                self._slots.release()
                continue
            except OSError:
                self._slots.release()
                break
            try:
                threading.Thread(target=self._handle_conn, args=(conn,), name="control-conn", daemon=True).start()
            except RuntimeError:  # no thread to be had: this one client is dropped, the server goes on
                self._slots.release()
                conn.close()

    def _handle_conn(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + self.deadline
        try:
            with conn:
                try:
                    reply = self._answer(self._read_request(conn, deadline))
                except TimeoutError:
                    reply = refused(f"request not complete within {self.deadline:g} s")
                try:
                    data = json.dumps(reply).encode() + b"\n"
                except (TypeError, ValueError) as e:
                    data = json.dumps(refused(f"engine error: unserializable reply ({e})")).encode() + b"\n"
                conn.settimeout(max(deadline - time.monotonic(), 1.0))
                conn.sendall(data)
        except Exception:  # the client went away, or worse: drop this connection, keep serving
            pass
        finally:
            self._slots.release()

    @staticmethod
    def _read_request(conn: socket.socket, deadline: float) -> bytes:
        """The request line, or up to MAX_REQUEST_BYTES + 1 bytes of it. TimeoutError past ``deadline``."""
        buf = bytearray()
        while len(buf) <= MAX_REQUEST_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            conn.settimeout(remaining)
            chunk = conn.recv(4096)
            if not chunk:
                break
            buf += chunk
            if b"\n" in chunk:
                break
        return bytes(buf).split(b"\n", 1)[0]

    def _answer(self, line: bytes) -> dict[str, Any]:
        if len(line) > MAX_REQUEST_BYTES:
            return refused(f"request larger than {MAX_REQUEST_BYTES} bytes")
        try:
            request = json.loads(line)
        except RecursionError:
            return refused("request is nested too deeply")
        except Exception:  # ValueError, UnicodeDecodeError, or whatever else json raises
            return refused("request is not valid JSON")
        if not isinstance(request, dict) or request.get("cmd") not in COMMANDS:
            return refused(f"unknown command; expected one of {', '.join(COMMANDS)}")
        text = request.get("text")
        if text is not None and not isinstance(text, str):
            return refused("text must be a string")
        try:
            return self.handler(request)
        except Exception as e:  # the engine must keep serving whatever one handler does
            return refused(f"engine error: {e}")

    def close(self) -> None:
        self._closing.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept() at once on Linux
            except OSError:
                pass
            try:
                self._sock.close()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def send_command(path: Path | str, cmd: str, text: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Send one command and return the engine's reply. Raises ControlError if unreachable."""
    path = Path(path)
    if not path.exists():
        raise ControlError(f"no engine is listening ({path} does not exist)")
    request: dict[str, Any] = {"cmd": cmd}
    if text is not None:
        request["text"] = text
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            with _short_path(path) as p:
                sock.connect(p)
            sock.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                buf += chunk
    except (ConnectionRefusedError, FileNotFoundError):
        raise ControlError("the engine is not running (nothing listens on its control socket)") from None
    except socket.timeout:
        raise ControlError(f"the engine did not answer within {timeout:g} s") from None
    except OSError as e:
        raise ControlError(f"could not reach the engine: {e}") from None
    try:
        reply = json.loads(buf.split(b"\n", 1)[0])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ControlError("the engine sent an unreadable reply") from None
    if not isinstance(reply, dict):
        raise ControlError("the engine sent an unreadable reply")
    return reply
