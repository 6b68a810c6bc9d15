"""News of the run for a person who is not watching: notifications through Apprise.

The engine feeds a ``Notifier`` from the loop thread; a background thread sends. The
loop never waits on the network: each call formats a few short lines and appends them
to a bounded queue (O(1); a full queue drops the oldest and says so later), and never
raises. The sender sends at most one message per ``window`` seconds: what arrives in
between is batched into one message with a count, sent when the window ends, or at
``close`` (which flushes with a deadline). A notification that fails is reported through
``on_error`` (the engine records a ``notify`` event), never raised, and Apprise's own
logging is captured for that message instead of reaching the terminal.

What is news: a new best (a kept change, with its delta against the best before it),
a run killed as ``hang`` or ``timeout``, the loop pausing with an error, and the engine
stopping (finished, stopped, or with an error). A baseline run is not news.

Apprise is imported only in the sender thread (and when a configured URL is checked),
so an engine without notifications never loads it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .results import FAILED, Best, Result
from .untrusted import strip_control

WINDOW_SECONDS = 60.0  # at most one message per window (per set of URLs)
MAX_QUEUED = 100  # events waiting to be sent; beyond that the oldest are dropped (and counted)
MAX_LINE = 240  # characters of one line of a message
LEVELS = ("info", "success", "warning", "failure")  # Apprise's notify types, least to most severe

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://\S+")


# --- URLs ---------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """What may be shown of a notification URL: its scheme (the rest often holds a token)."""
    m = _URL.match(url.strip())
    return f"{m.group(1)}://…" if m else "(not a URL)"


def looks_like_url(url: str) -> bool:
    return _URL.fullmatch(url.strip()) is not None


def unusable_url(url: str) -> str | None:
    """Why Apprise cannot send to ``url`` (one line, without the URL's secrets), or None."""
    if not looks_like_url(url):
        return f"{redact_url(url)} is not a URL like ntfy://topic or json://host:port/"
    apprise = _apprise()
    try:
        plugin = apprise.Apprise.instantiate(url.strip())
    except Exception:  # Apprise reports a bad URL with None; be safe with any version
        plugin = None
    if plugin is None:
        return f"{redact_url(url)} is not a URL Apprise can use (unknown service or missing parts)"
    return None


# --- Apprise, quietly ---------------------------------------------------------------------


class _CaptureApprise(logging.Handler):
    """Keeps what Apprise logs while this thread sends, for the error report; nothing
    reaches the terminal (the ``apprise`` logger stops propagating to the root)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        lines = getattr(self.local, "lines", None)
        if lines is None or len(lines) >= 20:
            return
        try:
            lines.append(record.getMessage())
        except Exception:
            pass

    def start(self) -> None:
        self.local.lines = []

    def stop(self) -> list[str]:
        lines, self.local.lines = getattr(self.local, "lines", None) or [], None
        return lines


_capture = _CaptureApprise()
_quiet_lock = threading.Lock()


def _apprise() -> Any:
    """The apprise module, with its logging routed to ``_capture`` only."""
    import apprise

    with _quiet_lock:
        logger = logging.getLogger("apprise")
        if _capture not in logger.handlers:
            logger.addHandler(_capture)
        logger.propagate = False
    return apprise


# --- what a message says ------------------------------------------------------------------


@dataclass
class _Note:
    title: str
    lines: list[str] = field(default_factory=list)
    level: str = "info"


def _line(text: Any, limit: int = MAX_LINE) -> str:
    """One clean line: no escape sequences or control characters (descriptions come from
    agents), whitespace collapsed, bounded."""
    out = " ".join(strip_control(str(text)).split())
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line
    return ""


def compose(tag: str, notes: Sequence[_Note], dropped: int = 0) -> tuple[str, str, str]:
    """(title, body, level) of the one message that carries ``notes``."""
    level = max((n.level for n in notes), key=LEVELS.index, default="info")
    if len(notes) == 1 and not dropped:
        note = notes[0]
        return _line(f"autoresearch {tag}: {note.title}"), "\n".join(note.lines), level
    count = len(notes) + dropped
    body: list[str] = []
    for note in notes:
        body.append(note.title)
        body.extend(f"  {line}" for line in note.lines)
    if dropped:
        body.append(f"({dropped} earlier event{'s' if dropped != 1 else ''} not shown: the queue was full)")
    return _line(f"autoresearch {tag}: {count} events"), "\n".join(body), level


# --- the notifier -------------------------------------------------------------------------


class Notifier:
    """Sends the run's news to ``urls`` (Apprise URLs) from a background thread.

    With no URLs it is disabled: every call returns at once and nothing starts. The
    loop-side calls (``result``, ``paused``, ``stopped``) never block and never raise.
    """

    def __init__(self, urls: Sequence[str], tag: str, *, on_error: Callable[[str], None] | None = None,
                 window: float = WINDOW_SECONDS, max_queued: int = MAX_QUEUED):
        self.urls = list(dict.fromkeys(u.strip() for u in urls if u and u.strip()))
        self.tag = _line(tag, 60)
        self.window = window
        self._on_error = on_error
        self._queue: deque[_Note] = deque()
        self._max_queued = max(1, max_queued)
        self._dropped = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._seen: Counter[str] = Counter()  # statuses of this session's results
        self._thread: threading.Thread | None = None
        if self.urls:
            self._thread = threading.Thread(target=self._run, name="autoresearch-notify", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    # --- the engine's calls (loop thread) ------------------------------------------------

    def result(self, result: Result, best_before: Best | None) -> None:
        """Every recorded result goes through here; a new best, a hang or a timeout is news."""
        try:
            self._seen[result.status] += 1
            if result.status == "keep" and result.scored:
                self._put(self._new_best(result, best_before))
            elif result.status in ("hang", "timeout"):
                lines = [_line(_first_line(result.error))] if result.error else []
                if result.description:
                    lines.append(_line(result.description))
                self._put(_Note(f"#{result.n:04d} killed as {result.status}", lines, "warning"))
        except Exception as e:  # a notification must never stop the loop
            self._report(f"could not prepare a notification: {type(e).__name__}: {e}")

    def paused(self, reason: str) -> None:
        """The loop paused with an error (failure streak, cost cap, low disk, changed data)."""
        try:
            self._put(_Note("paused", [_line(reason), f"resume: autoresearch ctl resume --tag {self.tag}"],
                            "warning"))
        except Exception as e:
            self._report(f"could not prepare a notification: {type(e).__name__}: {e}")

    def stopped(self, reason: str | None, error: bool, best: Best | None = None) -> None:
        """The engine stops: with an error, or the loop finished (max experiments, stop)."""
        try:
            lines = [_line(reason)] if reason else []
            total = sum(self._seen.values())
            if total:
                failed = sum(c for s, c in self._seen.items() if s in FAILED)
                lines.append(f"this session: {total} experiment{'s' if total != 1 else ''}, "
                             f"{self._seen['keep']} kept, {failed} failed")
            if best is not None:
                lines.append(f"best: #{best.n:04d} val_bpb {best.metric:.6f}")
            lines.append(f"report: autoresearch report --tag {self.tag}")
            title = "engine stopped with an error" if error else "loop finished"
            self._put(_Note(title, lines, "failure" if error else "info"))
        except Exception as e:
            self._report(f"could not prepare a notification: {type(e).__name__}: {e}")

    def close(self, timeout: float = 10.0) -> bool:
        """Send what is pending now (the rate window no longer applies) and stop the sender,
        waiting at most ``timeout`` seconds. True when everything was sent or tried."""
        if self._thread is None:
            return True
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    # --- inside ----------------------------------------------------------------------------

    @staticmethod
    def _new_best(r: Result, best_before: Best | None) -> _Note:
        forced = ", kept by a person" if r.forced else ""
        title = f"new best val_bpb {r.metric:.6f} (#{r.n:04d}{forced})"
        lines = []
        delta = r.delta if r.delta is not None else (r.metric - best_before.metric if best_before else None)
        if best_before is not None and delta is not None:
            lines.append(f"{delta:+.6f} against #{best_before.n:04d} ({best_before.metric:.6f})")
        elif delta is not None:
            lines.append(f"{delta:+.6f} against the best before it")
        if r.description:
            lines.append(_line(r.description))
        if r.holdout is not None:
            lines.append(f"holdout {r.holdout:.6f}")
        return _Note(_line(title), lines, "success")

    def _put(self, note: _Note) -> None:
        if self._thread is None:
            return
        with self._lock:
            if self._closing:
                return
            if len(self._queue) >= self._max_queued:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append(note)
        self._wake.set()

    def _report(self, message: str) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(_line(message, 500))
        except Exception:
            pass

    def _run(self) -> None:
        try:
            servers = self._connect()
        except Exception as e:  # Apprise missing or broken: say so once, then drain quietly
            self._report(f"notifications are off: {type(e).__name__}: {e}")
            servers = []
        next_send = 0.0
        while True:
            self._wake.clear()
            with self._lock:
                closing, waiting = self._closing, bool(self._queue)
            if not waiting:
                if closing:
                    return
                self._wake.wait()
                continue
            now = time.monotonic()
            if not closing and now < next_send:
                self._wake.wait(next_send - now)
                continue
            with self._lock:
                batch, dropped = list(self._queue), self._dropped
                self._queue.clear()
                self._dropped = 0
            try:
                if servers:
                    self._send(servers, compose(self.tag, batch, dropped))
            except Exception as e:  # the sender must outlive any one message
                self._report(f"could not send a notification: {type(e).__name__}: {e}")
            next_send = time.monotonic() + self.window

    def _connect(self) -> list[tuple[str, Any]]:
        """One Apprise plugin per URL; a URL Apprise cannot use is reported and left out."""
        apprise = _apprise()
        servers = []
        for i, url in enumerate(self.urls, 1):
            plugin = None
            _capture.start()
            try:
                plugin = apprise.Apprise.instantiate(url)
            except Exception:
                pass
            finally:
                logs = _capture.stop()
            if plugin is None:
                why = f": {logs[-1]}" if logs else ""
                self._report(f"notification URL {i} ({redact_url(url)}) is not one Apprise can use{why}")
                continue
            service = getattr(plugin, "service_name", None) or redact_url(url)
            servers.append((f"{i} of {len(self.urls)} ({service})", plugin))
        return servers

    def _send(self, servers: list[tuple[str, Any]], message: tuple[str, str, str]) -> None:
        apprise = _apprise()
        title, body, level = message  # a plain string type: Apprise 1.x has no enum for it
        for label, plugin in servers:
            _capture.start()
            try:
                ok = bool(plugin.notify(body=body, title=title, notify_type=level,
                                        body_format=apprise.NotifyFormat.TEXT))
                failure = ""
            except Exception as e:
                ok, failure = False, f"{type(e).__name__}: {e}"
            finally:
                logs = _capture.stop()
            if not ok:
                why = failure or (logs[-1] if logs else "the service did not accept it")
                self._report(f"notification {label} failed: {why}")
