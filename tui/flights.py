"""The experiments in progress with several workers, as state.json's ``flights`` says.
No Textual here: the reader (tui/rundata.py) and the view (tui/model.py) share these, so
that both pick the same experiment to follow before the user picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.results import IN_FLIGHT_PHASES, State


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class NodeUtil:
    """A Ray node's utilization as its worker last reported it (state.json's ``node_util``):
    the node's CPU % and memory, and the GPUs Ray gave that worker."""

    cpu: float | None = None
    mem_used: float | None = None
    mem_total: float | None = None
    cores: int | None = None
    gpus: tuple[tuple[int, float | None, float | None, float | None], ...] = ()  # index, util %, used, total

    @classmethod
    def from_entry(cls, d: Any) -> "NodeUtil | None":
        if not isinstance(d, dict):
            return None
        mem = d.get("mem") if isinstance(d.get("mem"), list) and len(d["mem"]) == 2 else [None, None]
        gpus = []
        for g in d.get("gpus") if isinstance(d.get("gpus"), list) else ():
            if isinstance(g, list) and len(g) == 4 and _int(g[0]) is not None:
                gpus.append((g[0], _float(g[1]), _float(g[2]), _float(g[3])))
        return cls(_float(d.get("cpu")), _float(mem[0]), _float(mem[1]), _int(d.get("cores")), tuple(gpus))


@dataclass(frozen=True)
class Flight:
    """One experiment in progress: an entry of state.json's ``flights`` (missing keys are
    unknown), or, with one worker, the top level of state.json."""

    n: int | None
    worker: int | None = None
    phase: str = "waiting"
    phase_started_at: float | None = None
    started_at: float | None = None
    description: str = ""
    hypothesis: str = ""
    runs: tuple[float, ...] = ()
    baseline_run: bool = False
    train_pgid: int | None = None
    node: str = ""  # with --ray: the node it runs on, "host (ip)"
    node_util: NodeUtil | None = None

    @classmethod
    def from_entry(cls, d: dict[str, Any]) -> "Flight":
        runs = d.get("runs")
        return cls(
            n=_int(d.get("experiment")),
            worker=_int(d.get("worker")),
            phase=d["phase"] if isinstance(d.get("phase"), str) and d["phase"] else "waiting",
            phase_started_at=_float(d.get("phase_started_at")),
            started_at=_float(d.get("started_at")),
            description=d["description"] if isinstance(d.get("description"), str) else "",
            hypothesis=d["hypothesis"] if isinstance(d.get("hypothesis"), str) else "",
            runs=tuple(float(x) for x in runs if _float(x) is not None) if isinstance(runs, list) else (),
            baseline_run=d.get("baseline_run") is True,
            train_pgid=_int(d.get("train_pgid")),
            node=d["node"] if isinstance(d.get("node"), str) else "",
            node_util=NodeUtil.from_entry(d.get("node_util")),
        )

    @property
    def label(self) -> str:
        """Its worker, and with --ray the node's host: "w1", "w1@gpu-box-2"."""
        worker = f"w{self.worker}" if self.worker is not None else "w?"
        host = self.node.split(" (", 1)[0]
        return f"{worker}@{host}" if host else worker


def read_flights(state: State) -> tuple[Flight, ...]:
    """The experiments in progress, by worker (those without a number are left out: there
    is nothing to select or show of them)."""
    out = [Flight.from_entry(d) for d in state.flights]
    out = [f for f in out if f.n is not None]
    return tuple(sorted(out, key=lambda f: (f.worker is None, f.worker or 0, f.n or 0)))


def pick_flight(flights: tuple[Flight, ...]) -> int | None:
    """The experiment to select when none is (or the selected one has finished): one that
    trains or is scored, the oldest first; else the oldest of the rest."""
    if not flights:
        return None
    busy = [f for f in flights if f.phase in IN_FLIGHT_PHASES]
    return min(busy or flights, key=lambda f: f.n or 0).n


def workers_of(state: State) -> int:
    """The number of workers in force (state.json's configuration), 1 if it does not say."""
    loop = (state.config or {}).get("loop")
    workers = _int(loop.get("workers")) if isinstance(loop, dict) else None
    return workers if workers is not None and workers > 0 else 1


def several(state: State, flights: tuple[Flight, ...]) -> bool:
    """Several experiments can run at once: the screen lists them and one is selected."""
    return workers_of(state) > 1 or len(flights) > 1
