"""What the monitor knows about a run, folded from watcher batches. No Textual here.

``RunView.apply(batch)`` returns the names of the parts that changed so the app redraws
only those panes (a slow SSH link pays for every repaint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tui.rundata import Batch

# Statuses that mean "the run failed" for the keep/discard/crash counts.
FAILED = ("crash", "timeout", "hang", "oom", "nan", "interrupted")
# Phases in which an experiment is in flight (skip / force-keep make sense).
IN_FLIGHT = ("checking", "running", "evaluating")
# A live engine writes its heartbeat every few seconds; past this it looks stuck.
HEARTBEAT_STALE_S = 60.0


@dataclass
class Ack:
    cmd: str
    result: str  # "accepted" | "refused" | "error"
    message: str = ""


@dataclass
class RunView:
    tag: str
    state: dict[str, Any] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    alive: bool | None = None  # None until the first check
    log_n: int | None = None
    diff: str = ""
    streamed: dict[int, str] = field(default_factory=dict)  # hypothesis text per n, as it streams
    proposals: dict[int, dict[str, Any]] = field(default_factory=dict)
    last_error: str | None = None
    last_event_ts: float | None = None
    engine_events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)  # acknowledged commands, newest last

    def apply(self, batch: Batch) -> set[str]:
        changed: set[str] = set()
        if batch.state is not None:
            self.state = batch.state
            changed.add("state")
        if batch.results_reset:
            self.results = []
            changed.add("results")
        if batch.results:
            self.results.extend(batch.results)
            changed.add("results")
        for ev in batch.events:
            changed |= self._apply_event(ev)
        if batch.log_reset or batch.log_lines or batch.log_partial is not None:
            changed.add("log")
        if batch.log_n is not None and batch.log_n != self.log_n:
            self.log_n = batch.log_n
            changed.add("state")
        if batch.diff is not None:
            self.diff = batch.diff
            changed.add("diff")
        if batch.alive is not None:
            self.alive = batch.alive
            changed.add("alive")
        return changed

    def _apply_event(self, ev: dict[str, Any]) -> set[str]:
        kind = ev.get("type")
        if isinstance(ev.get("ts"), (int, float)):
            self.last_event_ts = float(ev["ts"])
        n = ev.get("n")
        if kind == "hypothesis" and isinstance(n, int) and isinstance(ev.get("text"), str):
            if n not in self.streamed and len(self.streamed) > 16:
                self.streamed.pop(min(self.streamed))  # keep memory bounded on long runs
            self.streamed[n] = self.streamed.get(n, "") + ev["text"]
            return {"hypothesis"}
        if kind == "proposal" and isinstance(n, int):
            if len(self.proposals) > 16:
                self.proposals.pop(min(self.proposals))
            self.proposals[n] = ev
            return {"hypothesis"}
        if kind == "error":
            self.last_error = str(ev.get("message", ""))
            return {"state"}
        if kind == "command":
            self.commands.append(ev)
            del self.commands[:-16]
            return {"command"}
        if kind == "engine":
            self.engine_events.append(ev)
            del self.engine_events[:-8]
            return {"state"}
        return set()

    # -- derived values ---------------------------------------------------------------

    @property
    def n(self) -> int | None:
        n = self.state.get("experiment")
        return n if isinstance(n, int) else self.log_n

    @property
    def phase(self) -> str:
        phase = self.state.get("phase")
        if isinstance(phase, str) and phase:
            return phase
        return "waiting"

    @property
    def paused(self) -> bool:
        return bool(self.state.get("paused")) or self.phase == "paused"

    @property
    def pause_requested(self) -> bool:
        return bool(self.state.get("pause_requested"))

    @property
    def in_flight(self) -> bool:
        return self.phase in IN_FLIGHT

    @property
    def finished(self) -> bool:
        return self.phase == "stopped"

    def hypothesis(self) -> str:
        n = self.n
        if n is not None and n in self.proposals and self.proposals[n].get("hypothesis"):
            return str(self.proposals[n]["hypothesis"])
        if n is not None and n in self.streamed:
            return self.streamed[n]
        if self.state.get("hypothesis"):
            return str(self.state["hypothesis"])
        return ""

    def description(self) -> str:
        n = self.n
        if n is not None and n in self.proposals and self.proposals[n].get("description"):
            return str(self.proposals[n]["description"])
        return str(self.state.get("description") or "")

    def counts(self) -> dict[str, int]:
        """keep / discard / crash (every failure) / other, from state or the results."""
        raw = self.state.get("counts")
        if not isinstance(raw, dict) or not raw:
            raw = {}
            for r in self.results:
                s = r.get("status")
                raw[s] = raw.get(s, 0) + 1
        out = {"keep": 0, "discard": 0, "crash": 0}
        for status, count in raw.items():
            if not isinstance(count, int):
                continue
            if status == "keep":
                out["keep"] += count
            elif status == "discard":
                out["discard"] += count
            elif status in FAILED:
                out["crash"] += count
        return out

    def best(self) -> tuple[float | None, int | None]:
        best = self.state.get("best")
        if isinstance(best, dict) and isinstance(best.get("metric"), (int, float)):
            return float(best["metric"]), best.get("n")
        pick: tuple[float | None, int | None] = (None, None)
        for r in self.results:
            m = r.get("metric")
            if r.get("status") in ("keep", "baseline") and isinstance(m, (int, float)):
                if pick[0] is None or m < pick[0]:
                    pick = (float(m), r.get("n"))
        return pick

    def baseline(self) -> tuple[float | None, float | None]:
        base = self.state.get("baseline")
        if isinstance(base, dict) and isinstance(base.get("metric"), (int, float)):
            noise = base.get("noise")
            return float(base["metric"]), float(noise) if isinstance(noise, (int, float)) else None
        metrics = [r["metric"] for r in self.results if r.get("status") == "baseline" and isinstance(r.get("metric"), (int, float))]
        if metrics:
            return sum(metrics) / len(metrics), None
        return None, None

    def agent(self) -> tuple[str, str | None]:
        agent = self.state.get("agent")
        if isinstance(agent, dict):
            return str(agent.get("name") or "?"), agent.get("model")
        return "?", None

    def cost(self) -> float | None:
        cost = self.state.get("cost_usd")
        return float(cost) if isinstance(cost, (int, float)) else None

    def last_seen(self) -> float | None:
        for key in ("heartbeat_at", "updated_at"):
            ts = self.state.get(key)
            if isinstance(ts, (int, float)):
                return float(ts)
        return self.last_event_ts

    def engine_state(self, now: float) -> str:
        """"running", "stale" (alive but silent), "stopped" (exited cleanly) or "gone"."""
        if self.alive:
            seen = self.last_seen()
            if seen is not None and now - seen > HEARTBEAT_STALE_S and self.phase not in ("paused", "stopped"):
                return "stale"
            return "running"
        if self.alive is None:
            return "unknown"
        return "stopped" if self.finished else "gone"
