"""Writing the run directory: results, events and the state snapshot.

results.jsonl is the record that must never be lost (append + fsync per experiment);
results.tsv is derived from it and rebuilt at start-up; events.jsonl is the running
commentary; state.json is a snapshot replaced atomically. Writes come from the main
loop, the agent thread (streamed text) and the control-socket thread, so they share
one lock.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from . import rundir
from .results import Result, State
from .rundir import RunDir

def tsv_header(metric: str = "val_bpb") -> str:
    """Karpathy's five columns; the second is named after the metric."""
    return f"commit\t{metric}\tmemory_gb\tstatus\tdescription\n"
HEARTBEAT_SECONDS = 2.0


def tsv_row(r: Result) -> str:
    """Karpathy's five columns. Failed runs get 0.000000 and 0.0, as in his notebook."""
    commit = (r.commit or "")[:7] or "-------"
    val = f"{r.metric:.6f}" if r.scored else "0.000000"
    mem_gb = f"{r.peak_mem_mb / 1024:.1f}" if r.peak_mem_mb is not None else "0.0"
    desc = " ".join(r.description.split())  # no tabs or newlines
    return f"{commit}\t{val}\t{mem_gb}\t{r.status}\t{desc}\n"


class JournalError(Exception):
    """A result could not be recorded (a full disk, a read-only file system)."""


class Journal:
    """Writes the run directory. A result that cannot be written is an error (JournalError);
    events and the state snapshot are best-effort: when they fail (a full disk), the
    failure is kept in ``write_error`` for the loop to pause on, and nothing is raised."""

    def __init__(self, rd: RunDir, metric: str = "val_bpb"):
        self.rd = rd
        self.metric = metric
        self._lock = threading.RLock()
        self.state = State()
        self._last_heartbeat = 0.0
        self.write_error: str | None = None
        self.context: Callable[[], dict[str, Any]] | None = None  # fields every event gets (its worker)

    # --- start-up ---------------------------------------------------------------

    def open(self) -> list[Result]:
        """Repair truncated lines, rebuild the TSV, load the previous state; return results."""
        self.rd.experiments.mkdir(parents=True, exist_ok=True)
        rundir.repair_jsonl(self.rd.results_jsonl)
        rundir.repair_jsonl(self.rd.events_jsonl)
        results = self.rd.read_results()
        try:  # derived from results.jsonl: a full disk must not stop a restart
            rundir.atomic_write_text(self.rd.results_tsv, tsv_header(self.metric) + "".join(tsv_row(r) for r in results))
        except OSError as e:
            self.write_error = f"could not rebuild results.tsv: {e.strerror or e}"
        self.state = self.rd.read_state()
        return results

    # --- writing ----------------------------------------------------------------

    def append_result(self, result: Result) -> None:
        with self._lock:
            try:
                rundir.append_jsonl(self.rd.results_jsonl, result.to_dict())
            except OSError as e:
                raise JournalError(f"could not record experiment #{result.n:04d} in {self.rd.results_jsonl}: "
                                   f"{e.strerror or e}") from None
            try:
                with open(self.rd.results_tsv, "a", encoding="utf-8") as f:
                    f.write(tsv_row(result))
            except OSError as e:  # rebuilt from results.jsonl at the next start
                self.write_error = f"could not append to results.tsv: {e.strerror or e}"

    def event(self, type_: str, fsync: bool = True, **fields: Any) -> None:
        context = self.context() if self.context is not None else {}
        record = {"ts": round(time.time(), 3), "type": type_, **context, **fields}
        with self._lock:
            try:
                rundir.append_jsonl(self.rd.events_jsonl, record, fsync=fsync)
            except OSError as e:
                self.write_error = f"could not write events.jsonl: {e.strerror or e}"

    def update_state(self, **fields: Any) -> None:
        with self._lock:
            t = round(time.time(), 3)
            self.state.update(**fields, updated_at=t, heartbeat_at=t)
            self._last_heartbeat = time.monotonic()
            try:
                rundir.atomic_write_json(self.rd.state_json, self.state.to_dict())
                self.write_error = None  # the run directory is writable (again)
            except OSError as e:
                self.write_error = f"could not write state.json: {e.strerror or e}"

    def heartbeat(self) -> None:
        """Refresh heartbeat_at every few seconds so readers can tell the engine lives."""
        if time.monotonic() - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self.update_state()
