"""The current experiment's run.log, streaming.

Follows the tail while the view is at the bottom; once the user scrolls up it stays put
and counts the lines that arrived meanwhile. Memory is bounded by ``MAX_LINES``.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Log, Static

MAX_LINES = 5000


class FollowLog(Log):
    """A Log that remembers whether it follows the tail.

    ``following`` changes only when the scroll position changes (the user scrolled, or
    we jumped to the end), so a resize that moves the end does not count as scrolling up.
    """

    following = True

    @property
    def at_end(self) -> bool:
        return self.scroll_y >= self.max_scroll_y

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self.following = self.at_end

    def on_resize(self) -> None:
        if self.following:
            self.scroll_end(animate=False, immediate=True)

    def write_lines(self, lines, scroll_end=None):  # type: ignore[no-untyped-def, override]
        lines = list(lines)
        prunes = self.max_lines is not None and self.line_count + len(lines) > self.max_lines
        super().write_lines(lines, scroll_end)
        if prunes:
            # Textual's Log repaints only the rows of the new lines, but pruning the oldest
            # lines shifted every row: without this the view freezes once MAX_LINES is hit.
            self.refresh()
        return self


class LogPane(Vertical):
    DEFAULT_CSS = """
    LogPane FollowLog { height: 1fr; scrollbar-size-vertical: 1; }
    LogPane #log-status { height: 1; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield FollowLog(max_lines=MAX_LINES, auto_scroll=False, id="log")
        yield Static("", id="log-status")

    def on_mount(self) -> None:
        self.border_title = "Training log"
        self.waiting = 0  # lines that arrived while scrolled up
        self.partial = ""
        self.skipped_bytes = 0
        self.n: int | None = None
        self._status = ""
        self.watch(self.query_one(FollowLog), "scroll_y", self._scrolled, init=False)

    @property
    def log(self) -> FollowLog:
        return self.query_one(FollowLog)

    def reset(self, n: int | None) -> None:
        self.n = n
        log = self.log
        log.clear()
        # Textual's clear() keeps the scroll offset, and Log only follows from exactly the
        # end: the new log's lines would stay where the old one was scrolled. Start at the
        # top, following.
        log.scroll_to(0, 0, animate=False, immediate=True)
        log.following = True
        self.waiting = 0
        self.partial = ""
        self.skipped_bytes = 0
        self.border_title = f"Training log #{n:04d}" if n is not None else "Training log"
        self._show_status()

    def append(self, lines: list[str], partial: str | None = None, skipped_bytes: int = 0) -> None:
        log = self.log
        if lines:
            follow = log.following
            log.write_lines(lines, scroll_end=follow)
            if not follow:
                self.waiting += len(lines)
        if partial is not None:
            self.partial = partial
        self.skipped_bytes += skipped_bytes
        self._show_status()

    def _scrolled(self, _old: float, _new: float) -> None:
        if self.waiting and self.log.following:
            self.waiting = 0
            self._show_status()

    def _show_status(self) -> None:
        parts = []
        if self.waiting:
            parts.append(f"↓ {self.waiting} new lines (End to follow)")
        if self.skipped_bytes:
            parts.append(f"{self.skipped_bytes // 1024} KiB skipped to keep up")
        if self.partial:
            parts.append(f"… {self.partial}")
        if not parts and self.n is not None and not self.log.line_count:
            parts.append("no output yet")
        status = "   ".join(parts)
        if status != self._status:
            self._status = status
            line = self.query_one("#log-status", Static)
            shown = bool(status)
            # One line either way: a layout pass only when it appears or goes.
            line.update(Text(status, no_wrap=True, overflow="ellipsis"), layout=shown != line.display)
            line.display = shown  # an empty status line would waste a log line
