"""A terminal bell, or a desktop notification (OSC 9), when the run needs a person. No Textual here.

Off by default. ``AUTORESEARCH_BELL`` turns it on:

- ``1`` (or ``bel``): the terminal bell (BEL), which a terminal, tmux or an SSH client
  turns into a sound, a flash or a marked tab, as it is set up to;
- ``osc9``: an OSC 9 notification with one line of text (iTerm2, WezTerm, kitty, foot,
  Windows Terminal, Ghostty show it as a desktop notification). Inside tmux it is wrapped
  for tmux's passthrough, which tmux forwards only with ``set -g allow-passthrough on``.

With ``NO_COLOR`` nothing changes: a bell is not an escape sequence, and OSC 9 is sent
only because it was asked for by name.

What rings (``News``): a new best (a kept change), a run killed as ``hang`` or ``timeout``,
the loop paused on an error, and the engine gone (or stopped). Only what happens while the
monitor watches: the history read when it opens, or a pause that was there already, rings
nothing. Alerts that come together are sent as one, at most one per ``MIN_GAP_S``.
"""

from __future__ import annotations

import os
from typing import Mapping

from engine.results import Result
from engine.untrusted import strip_control

ENV = "AUTORESEARCH_BELL"
MODES = {"1": "bel", "bel": "bel", "bell": "bel", "on": "bel", "yes": "bel", "true": "bel", "osc9": "osc9"}
MIN_GAP_S = 2.0
MAX_TEXT = 200  # characters of a notification's text


def mode_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """"bel", "osc9", or None (off: unset, empty, 0, off, or anything unknown)."""
    env = os.environ if environ is None else environ
    return MODES.get(env.get(ENV, "").strip().lower())


def clean(text: str, limit: int = MAX_TEXT) -> str:
    """One line a terminal shows as text: no control characters (a description comes from
    an agent, and an ESC or BEL in it would end the sequence early), bounded."""
    out = " ".join(strip_control(text).split())
    return out if len(out) <= limit else out[: limit - 1] + "…"


def sequence(mode: str, text: str, *, tmux: bool = False) -> str:
    """What to write to the terminal for one alert."""
    if mode != "osc9":
        return "\a"
    osc = f"\x1b]9;{clean(text)}\x07"
    if tmux:  # tmux's passthrough: the sequence inside a DCS, each ESC doubled
        return "\x1bPtmux;" + osc.replace("\x1b", "\x1b\x1b") + "\x1b\\"
    return osc


class News:
    """Tells what is news in what the watcher brought, from the second batch on."""

    def __init__(self) -> None:
        self.primed = False
        self._alive: bool | None = None
        self._error: str | None = None  # the pause-with-error already told (or found at start)

    def results(self, results: list[Result]) -> list[str]:
        if not self.primed:
            return []
        out = []
        for r in results:
            if r.status == "keep" and r.scored:
                gain = f" ({r.delta:+.4f})" if r.delta is not None else ""
                out.append(f"new best #{r.n:04d} {r.metric_name} {r.metric:.4f}{gain}: {r.description}")
            elif r.status in ("hang", "timeout"):
                out.append(f"#{r.n:04d} killed as {r.status}: {r.description}")
        return out

    def paused(self, paused: bool, error: str | None) -> list[str]:
        """The loop holds on an error (a new one: the same error again is not news)."""
        if not (paused and error):
            self._error = None
            return []
        if error == self._error:
            return []
        self._error = error
        return [f"paused: {error}"] if self.primed else []

    def alive(self, alive: bool | None, phase: str, where: str) -> list[str]:
        """The engine's process went away: gone (it died), or stopped (on its own)."""
        was, self._alive = self._alive, alive
        if not self.primed or was is not True or alive is not False:
            return []
        if phase == "stopped":
            return ["the run has stopped"]
        if phase == "error":
            return ["the engine stopped with an error"]
        return [f"the engine is gone (last: {where})"]
