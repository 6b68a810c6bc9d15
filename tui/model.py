"""What the monitor knows about a run, folded from watcher batches. No Textual here.

``RunView.apply(batch)`` returns the names of the parts that changed so the app redraws
only those panes (a slow SSH link pays for every repaint).

With several workers (``[loop] workers``) several experiments run at once, one entry
each in state.json's ``flights``; the view keeps one of them selected (``selected``),
and every per-experiment value (``n``, ``exp_phase``, the hypothesis, the runs so far)
is that one's. With one worker nothing is selected and those values come from the top
level of state.json, as they always did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.results import IN_FLIGHT_PHASES, Baseline, Best, Noise, Result, Standing, State, grouped_counts
from tui.flights import Flight, pick_flight, read_flights, several, workers_of
from tui.fmt import Metric
from tui.marks import Marks
from tui.rundata import Batch

# A live engine writes its heartbeat every few seconds; past this it looks stuck.
HEARTBEAT_STALE_S = 60.0
# state.json's next_proposal["state"] (engine/pipeline.py) in words.
NEXT_STATES = {"thinking": "thinking…", "ready": "ready", "rebased": "rebased", "dropped": "dropped: asked again"}


@dataclass
class Ack:
    cmd: str
    result: str  # "accepted" | "refused" | "error"
    message: str = ""


@dataclass
class RunView:
    tag: str
    state: State = field(default_factory=State)
    results: list[Result] = field(default_factory=list)
    by_n: dict[int, Result] = field(default_factory=dict)  # the same records, by experiment number
    # The results folded by the engine's own rule, as they arrive (one add per result).
    standing: Standing = field(default_factory=Standing)
    marks: Marks = field(default_factory=Marks)  # what deserves a second look, by experiment (tui/marks.py)
    alive: bool | None = None  # None until the first check
    log_n: int | None = None
    diff: str = ""
    streamed: dict[int, str] = field(default_factory=dict)  # hypothesis text per n, as it streams
    proposals: dict[int, dict[str, Any]] = field(default_factory=dict)
    last_error: str | None = None
    last_event_ts: float | None = None
    engine_events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)  # acknowledged commands, newest last
    flights: tuple[Flight, ...] = ()  # the experiments in progress (state.json's flights), by worker
    selected: int | None = None  # with several workers: the experiment the panes follow

    def apply(self, batch: Batch) -> set[str]:
        changed: set[str] = set()
        if batch.state is not None:
            self.state = batch.state
            flights = read_flights(batch.state)
            if flights != self.flights:
                self.flights = flights
                changed.add("flights")
            if self._reselect():
                changed.add("selection")
            changed.add("state")
        if batch.results_reset:
            self.results = []
            self.by_n = {}
            self.standing = Standing()
            self.marks = Marks()
            changed.add("results")
        if batch.results:
            self.results.extend(batch.results)
            for r in batch.results:
                self.by_n[r.n] = r
                self.marks.add(r, self.standing)  # folds r into the standing as well
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

    # -- several workers: which experiment the panes follow ----------------------------

    @property
    def workers(self) -> int:
        """The number of workers in force (state.json's configuration), 1 if it does not say."""
        return workers_of(self.state)

    @property
    def several(self) -> bool:
        """Several experiments can run at once: the screen lists them and one is selected."""
        return several(self.state, self.flights)

    def _reselect(self) -> bool:
        """Keep the selection on a running experiment (another one once it finishes).
        Returns whether it changed."""
        numbers = {f.n for f in self.flights}
        if not self.several:
            chosen = None
        elif self.selected in numbers:
            chosen = self.selected
        else:
            chosen = pick_flight(self.flights)
        changed, self.selected = chosen != self.selected, chosen
        return changed

    def select(self, n: int) -> bool:
        """Select experiment n, if it is running. Returns whether the selection changed."""
        if not self.several or n == self.selected or n not in {f.n for f in self.flights}:
            return False
        self.selected = n
        return True

    def select_step(self, step: int) -> bool:
        """The next (step 1) or previous (step -1) running experiment, round the list."""
        if not self.several or not self.flights:
            return False
        numbers = [f.n for f in self.flights]
        at = numbers.index(self.selected) if self.selected in numbers else (-1 if step > 0 else 0)
        return self.select(numbers[(at + step) % len(numbers)])  # type: ignore[arg-type]

    @property
    def flight(self) -> Flight | None:
        """The selected experiment, with several workers (else None)."""
        if self.selected is None:
            return None
        return next((f for f in self.flights if f.n == self.selected), None)

    def current(self) -> Flight:
        """The experiment the panes show: the selected one, else the top level of state.json."""
        flight = self.flight
        if flight is not None:
            return flight
        state = self.state
        return Flight(n=self.n, phase=self.phase, phase_started_at=state.phase_started_at, started_at=state.started_at,
                      description=state.description or "", hypothesis=state.hypothesis or "",
                      runs=tuple(state.runs), baseline_run=state.baseline_run, train_pgid=state.train_pgid)

    def where(self) -> str:
        """Where the loop is, in a few words: "#0012 running" (each running one with several)."""
        if self.several and self.flights:
            return ", ".join(f"#{f.n:04d} {f.phase}" for f in self.flights)
        return f"#{self.n:04d} {self.phase}" if self.n is not None else self.phase

    # -- derived values ---------------------------------------------------------------

    @property
    def n(self) -> int | None:
        if self.selected is not None:
            return self.selected
        n = self.state.experiment
        return n if n is not None else self.log_n

    @property
    def phase(self) -> str:
        """The engine's phase (with several workers: the last any of them wrote, or paused,
        stopped); ``exp_phase`` is the shown experiment's own."""
        return self.state.phase or "waiting"

    @property
    def exp_phase(self) -> str:
        flight = self.flight
        return flight.phase if flight is not None else self.phase

    @property
    def paused(self) -> bool:
        return self.state.paused or self.phase == "paused"

    @property
    def pause_requested(self) -> bool:
        return self.state.pause_requested

    @property
    def in_flight(self) -> bool:
        """The shown experiment trains or is scored (skip and keep apply to it)."""
        return self.exp_phase in IN_FLIGHT_PHASES

    @property
    def finished(self) -> bool:
        return self.phase == "stopped"

    def phase_label(self) -> str:
        """The phase in words: a confirmation run says which run it is ("confirming (run 2 of 2)")."""
        phase = self.exp_phase
        if phase != "confirming":
            return phase
        run = len(self.current().runs) + 1
        loop = (self.state.config or {}).get("loop")
        total = loop.get("confirm_runs") if isinstance(loop, dict) else None
        if isinstance(total, int) and not isinstance(total, bool) and total + 1 >= run:
            return f"confirming (run {run} of {total + 1})"
        return f"confirming (run {run})"

    def hypothesis(self) -> str:
        n = self.n
        if n is not None and n in self.proposals and self.proposals[n].get("hypothesis"):
            return str(self.proposals[n]["hypothesis"])
        if n is not None and n in self.streamed:
            return self.streamed[n]
        return self.current().hypothesis

    def description(self) -> str:
        n = self.n
        if n is not None and n in self.proposals and self.proposals[n].get("description"):
            return str(self.proposals[n]["description"])
        return self.current().description

    def flight_text(self, flight: Flight) -> tuple[str, bool]:
        """One line for a running experiment's row: its description, else (while its
        agent still writes) the newest line of its hypothesis. True when it is the latter."""
        n = flight.n
        proposal = self.proposals.get(n) if n is not None else None
        if proposal and proposal.get("description"):
            return str(proposal["description"]), False
        if flight.description:
            return flight.description, False
        text = self.streamed.get(n, "") if n is not None else ""
        text = text or flight.hypothesis
        lines = [line for line in text.splitlines() if line.strip()]
        return (lines[-1] if lines else ""), True

    def counts(self) -> dict[str, int]:
        """keep / discard / failed / other, grouped by the engine's rule
        (``engine.results.grouped_counts``): from state.json's counts, else from the results."""
        return grouped_counts(self.state.counts or self.standing.counts)

    def best(self) -> Best | None:
        """The engine's best (state.json), else the results folded by the same rule."""
        return self.state.best or self.standing.best

    def best_self_reported(self) -> bool:
        """Whether the best's metric is what its run printed (no trusted evaluation)."""
        best = self.best()
        r = self.by_n.get(best.n) if best is not None else None
        return r is not None and r.self_reported

    def metric(self) -> Metric:
        """The metric's name and direction: the results' own name, else the [target]'s."""
        return Metric.of(self.results, self.state.config)

    def next_proposal(self) -> str | None:
        """The pipelined proposal in one line ("next #0013: thinking…"), or None when
        there is none to tell of (none, one left from an earlier experiment, the engine gone).
        Once the proposal has become the experiment in flight, only a rebase is told."""
        pending = self.state.next_proposal
        if not pending or self.alive is False:
            return None
        n = pending.get("n")
        n = n if isinstance(n, int) and not isinstance(n, bool) else None
        state = pending.get("state")
        word = NEXT_STATES.get(state, str(state)) if isinstance(state, str) and state else "?"
        current = self.n
        if n is not None and current is not None:
            if n < current:
                return None
            if n == current and self.phase != "proposing":
                return f"#{n:04d} was written ahead, then rebased on the new best" if state == "rebased" else None
        return f"next #{n:04d}: {word}" if n is not None else f"next: {word}"

    def baseline(self) -> Baseline | None:
        return self.state.baseline or self.standing.baseline

    def noise(self) -> Noise:
        """The pooled noise: the engine's (state.json), else the results folded by its rule."""
        return self.state.noise or self.standing.noise()

    def runs_so_far(self) -> list[float]:
        """Measurements of the experiment in flight (a candidate's runs before its confirmation)."""
        return list(self.current().runs) if self.in_flight else []

    def agent(self) -> tuple[str, str | None]:
        agent = self.state.agent
        if agent is not None:
            model = agent.get("model")
            return str(agent.get("name") or "?"), str(model) if model else None
        return "?", None

    def cost(self) -> float:
        return self.state.cost_usd

    def unsandboxed(self) -> str | None:
        """Why training runs without a sandbox ("off: <reason>" in state.json), or None
        while it is sandboxed or the engine has not said."""
        sandbox = self.state.sandbox
        if sandbox is None or not sandbox.startswith("off"):
            return None
        return sandbox[3:].lstrip(" :").strip() or "no reason given"

    def last_seen(self) -> float | None:
        return self.state.heartbeat_at or self.state.updated_at or self.last_event_ts

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
