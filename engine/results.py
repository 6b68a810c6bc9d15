"""The records of a run and the rules that read them: one place for each.

- ``Result``: one finished experiment, as a line of results.jsonl (typed; unknown keys
  are kept so that a newer engine's fields survive an older reader's round trip).
- ``State``: the engine's snapshot in state.json.
- The status sets, the experiment ref names, and ``Standing``: the rule that folds a
  journal into the current best, the baseline and the counts. The engine, the agents,
  ``autoresearch status``, the chart and the monitor's header all use this one rule:
  the best is the mean of the baseline runs, then each kept (or force-kept) change.

No I/O here beyond parsing; engine/journal.py writes, engine/rundir.py reads files.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable

METRIC = "val_bpb"

STATUSES = (
    "baseline",
    "keep",
    "discard",
    "crash",
    "timeout",
    "hang",
    "oom",
    "nan",
    "skipped",
    "rejected",
    "interrupted",
)
# The run itself broke: the heuristic learns from these, the monitor counts them as failures.
FAILED = frozenset({"crash", "timeout", "hang", "oom", "nan"})
# Never measured as proposed: refused before running, stopped by a person, or cut by a stop.
NOT_MEASURED = frozenset({"skipped", "rejected", "interrupted"})
# Statuses shown to an agent as "broke or was refused".
BROKE_OR_REFUSED = FAILED | {"rejected", "interrupted"}
# Phases in which an experiment is in flight: skip and force-keep apply.
IN_FLIGHT_PHASES = ("checking", "waiting", "running", "evaluating", "guarding", "confirming")
# Phases after which a killed engine leaves an experiment to be recorded as interrupted.
INTERRUPTIBLE_PHASES = ("checking", "waiting", "running", "evaluating", "guarding", "confirming", "deciding")


def experiment_ref(tag: str, n: int) -> str:
    """Every experiment's commit stays readable here, kept or not."""
    return f"refs/autoresearch/{tag}/{n:04d}"


def base_ref(tag: str) -> str:
    """Where the run started: the commit the baseline measures."""
    return f"refs/autoresearch/{tag}/base"


def is_number(value: Any) -> bool:
    """A finite int or float (never a bool): a metric that can be compared."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(slots=True)  # no instance dict: a monitor may hold tens of thousands
class Result:
    """One finished experiment (a line of results.jsonl)."""

    n: int
    status: str
    metric: float | None = None
    metric_name: str = METRIC
    delta: float | None = None  # metric - best before it (negative is better)
    noise: float | None = None  # the noise estimate the decision used
    threshold: float | None = None  # how much lower than the best it had to be
    forced: bool = False  # kept by a person whatever the number
    commit: str | None = None
    parent: str | None = None  # the best commit it was measured against
    description: str = ""
    hypothesis: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    train_seconds: float | None = None  # what train.py reported (informational)
    wall_seconds: float | None = None
    peak_mem_mb: float | None = None
    agent: dict[str, Any] | None = None  # name, model, tokens, cost_usd
    notes: list[str] = field(default_factory=list)
    baseline: bool = False  # a run of the unmodified baseline
    error: str | None = None
    summary: dict[str, str] = field(default_factory=dict)  # train.py's key: value block
    log_tail: list[str] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    sandbox: str | None = None  # what the untrusted code ran under
    budget: float | None = None  # training seconds it was given: results compare only at one budget
    runs: list[float] = field(default_factory=list)  # every measurement (a kept change: its confirmation runs)
    holdout: float | None = None  # mean holdout_bpb of the runs scored on the holdout slice
    remeasure: bool = False  # a run of the current best to catch drift (status "baseline")
    noise_dof: int | None = None  # degrees of freedom behind ``noise``
    tokens_per_sec: float | None = None  # mean throughput of its runs, as train.py reported it
    num_steps: int | None = None
    load_avg: float | None = None  # the machine's 1-minute load average when it started
    rebased: bool = False  # applied on a best that moved while it was written (pipelined) or measured (workers)
    train_spans: list[list[float]] = field(default_factory=list)  # [start, end] (unix s) of each training process
    self_reported: bool = False  # the metric is what the run printed, not a trusted evaluation
    revokes: int | None = None  # a re-measure that caught the best looking ahead: that keep (and those on it) no longer count
    worker: int | None = None  # which worker ran it, when several did (engine/lanes.py)
    rebased_runs: list[float] = field(default_factory=list)  # its runs on an older best, before it was re-applied
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @property
    def scored(self) -> bool:
        return is_number(self.metric)

    @property
    def failed(self) -> bool:
        return self.status in FAILED

    @property
    def measurements(self) -> list[float]:
        """Every measurement of its commit that this experiment made."""
        return self.runs or ([float(self.metric)] if self.scored else [])

    @classmethod
    def from_dict(cls, d: Any) -> "Result | None":
        """A record from JSON, or None when it is not one (no integer n or status)."""
        if not isinstance(d, dict):
            return None
        n, status = d.get("n"), d.get("status")
        if not isinstance(n, int) or isinstance(n, bool) or not isinstance(status, str):
            return None
        known = _RESULT_FIELDS
        agent = d.get("agent")
        notes = d.get("notes")
        summary = d.get("summary")
        timings = d.get("timings")
        tail = d.get("log_tail")
        return cls(
            n=n,
            status=status,
            metric=_opt_float(d.get("metric")),
            metric_name=d.get("metric_name") if isinstance(d.get("metric_name"), str) else METRIC,
            delta=_opt_float(d.get("delta")),
            noise=_opt_float(d.get("noise")),
            threshold=_opt_float(d.get("threshold")),
            forced=d.get("forced") is True,
            commit=_opt_str(d.get("commit")),
            parent=_opt_str(d.get("parent")),
            description=str(d.get("description") or ""),
            hypothesis=str(d.get("hypothesis") or ""),
            started_at=_opt_float(d.get("started_at")),
            ended_at=_opt_float(d.get("ended_at")),
            train_seconds=_opt_float(d.get("train_seconds")),
            wall_seconds=_opt_float(d.get("wall_seconds")),
            peak_mem_mb=_opt_float(d.get("peak_mem_mb")),
            agent=agent if isinstance(agent, dict) else None,
            notes=[x for x in notes if isinstance(x, str)] if isinstance(notes, list) else [],
            baseline=d.get("baseline") is True,
            error=_opt_str(d.get("error")),
            summary={str(k): str(v) for k, v in summary.items()} if isinstance(summary, dict) else {},
            log_tail=[str(x) for x in tail] if isinstance(tail, list) else None,
            timings={str(k): float(v) for k, v in timings.items() if is_number(v)} if isinstance(timings, dict) else {},
            sandbox=_opt_str(d.get("sandbox")),
            budget=_opt_float(d.get("budget")),
            runs=[float(x) for x in d.get("runs") or [] if is_number(x)] if isinstance(d.get("runs"), list) else [],
            holdout=_opt_float(d.get("holdout")),
            remeasure=d.get("remeasure") is True,
            noise_dof=d.get("noise_dof") if isinstance(d.get("noise_dof"), int) else None,
            tokens_per_sec=_opt_float(d.get("tokens_per_sec")),
            num_steps=d.get("num_steps") if isinstance(d.get("num_steps"), int) else None,
            load_avg=_opt_float(d.get("load_avg")),
            rebased=d.get("rebased") is True,
            self_reported=d.get("self_reported") is True,
            revokes=d.get("revokes") if isinstance(d.get("revokes"), int) else None,
            worker=d.get("worker") if isinstance(d.get("worker"), int) and not isinstance(d.get("worker"), bool) else None,
            rebased_runs=[float(x) for x in d.get("rebased_runs") if is_number(x)]
            if isinstance(d.get("rebased_runs"), list) else [],
            train_spans=[[float(a), float(b)] for a, b in (x for x in d.get("train_spans") or []
                                                             if isinstance(x, list) and len(x) == 2
                                                             and is_number(x[0]) and is_number(x[1]))],
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        if d["log_tail"] is None:
            del d["log_tail"]
        return {**d, **extra}

    def short(self) -> dict[str, Any]:
        """The copy that goes into a ``result`` event."""
        keys = ("n", "status", "metric", "delta", "threshold", "forced", "commit", "description", "baseline", "error")
        return {k: getattr(self, k) for k in keys}


_RESULT_FIELDS = frozenset(f.name for f in fields(Result))


def parse_results(records: Iterable[Any]) -> list[Result]:
    """Typed results from parsed JSON lines; lines that are not records are skipped."""
    return [r for r in (Result.from_dict(d) for d in records) if r is not None]


@dataclass(frozen=True)
class Best:
    n: int
    metric: float
    commit: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "Best | None":
        if isinstance(d, dict) and isinstance(d.get("n"), int) and is_number(d.get("metric")):
            return cls(d["n"], float(d["metric"]), _opt_str(d.get("commit")))
        return None


@dataclass(frozen=True)
class Baseline:
    metric: float  # mean of the baseline runs: the reference the first change must beat
    noise: float  # sample standard deviation of the baseline runs (0 with one run)
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "Baseline | None":
        if isinstance(d, dict) and is_number(d.get("metric")):
            noise = d.get("noise")
            runs = d.get("runs")
            return cls(float(d["metric"]), float(noise) if is_number(noise) else 0.0,
                       runs if isinstance(runs, int) else 1)
        return None


def estimate_baseline(metrics: Iterable[float]) -> Baseline | None:
    values = [m for m in metrics if is_number(m)]
    if not values:
        return None
    noise = statistics.stdev(values) if len(values) >= 2 else 0.0
    return Baseline(metric=statistics.fmean(values), noise=noise, runs=len(values))


@dataclass(frozen=True)
class Noise:
    """The run-to-run noise, pooled from every commit measured more than once."""

    sigma: float  # standard deviation of one run's metric
    dof: int  # degrees of freedom of the measurements behind it (prior excluded)
    runs: int  # measurements in the groups that were pooled

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Standing:
    """Where a run stands after some results: best, baseline, noise, counts.

    Fold results in order with ``add``; ``running_best`` gives the best after each.

    - Every scored measurement is kept per (commit, budget). The best's metric is the
      mean of all measurements of its commit: baseline runs, a kept change's
      confirmation runs, and later re-measurements (the drift guard).
    - Baseline runs come in series: the first runs of a tag, and again whenever the
      budget changes (a result measured at another budget is not comparable). A series
      is open until the first experiment that is not a baseline run.
    - The noise is pooled from every commit measured more than once (engine/decide.py
      adds a prior while there are few degrees of freedom).
    """

    def __init__(self, base_commit: str | None = None):
        self.base_commit = base_commit
        self.best: Best | None = None
        self.baseline: Baseline | None = None
        self.baseline_budget: float | None = None  # the budget of the current baseline series
        self.baseline_attempts = 0  # runs of the current series that were measured or failed
        self.series_open = False
        self.counts: Counter[str] = Counter()
        self.last_n = 0
        self.measurements: dict[tuple[str | None, float | None], list[float]] = {}
        self.throughput: dict[tuple[str | None, float | None], list[float]] = {}
        self.last_measured: dict[tuple[str | None, float | None], int] = {}
        self.recent_throughput: list[float] = []  # tokens/s of the latest scored runs
        self._baseline_metrics: list[float] = []
        self._best_key: tuple[str | None, float | None] | None = None
        self._bests: list[tuple[int, tuple[str | None, float | None]]] = []  # every best so far, in order

    @classmethod
    def of(cls, results: Iterable[Result], base_commit: str | None = None) -> "Standing":
        s = cls(base_commit)
        for r in results:
            s.add(r)
        return s

    def add(self, r: Result) -> None:
        self.counts[r.status] += 1
        self.last_n = max(self.last_n, r.n)
        key = (r.commit or self.base_commit, r.budget)
        if r.baseline and not r.remeasure:
            if not self.series_open or (r.budget is not None and r.budget != self.baseline_budget):
                self._baseline_metrics, self.baseline_attempts, self.series_open = [], 0, True
                self.baseline_budget = r.budget
            if r.status not in ("interrupted", "skipped"):
                self.baseline_attempts += 1
        elif r.status != "interrupted" and not r.remeasure:
            self.series_open = False
        if r.status in ("baseline", "keep", "discard") and r.measurements:
            self.measurements.setdefault(key, []).extend(r.measurements)
            self.last_measured[key] = r.n
            if r.tokens_per_sec is not None:
                self.throughput.setdefault(key, []).append(r.tokens_per_sec)
                self.recent_throughput = (self.recent_throughput + [r.tokens_per_sec])[-3:]
        if r.status == "baseline" and r.scored:
            if not r.remeasure:
                self._baseline_metrics.append(float(r.metric))
                self.baseline = estimate_baseline(self._baseline_metrics)
                self._set_best(r.n, key)
            elif self.best is not None and key == self._best_key:
                self._set_best(self.best.n, key)  # the same best, measured once more
        elif r.status == "keep" and r.scored and r.commit:
            self._set_best(r.n, key)
        if r.revokes is not None:
            self._revoke(r.revokes)

    def _set_best(self, n: int, key: tuple[str | None, float | None]) -> None:
        self._best_key = key
        self.best = Best(n, statistics.fmean(self.measurements[key]), key[0])
        if not self._bests or self._bests[-1] != (n, key):
            self._bests.append((n, key))

    def _revoke(self, n: int) -> None:
        """The keep #n was caught cheating: it and every best built on it stop counting."""
        self._bests = [(m, key) for m, key in self._bests if m < n]
        if self._bests:
            m, key = self._bests[-1]
            self._best_key = key
            self.best = Best(m, statistics.fmean(self.measurements[key]), key[0])

    @property
    def best_runs(self) -> int:
        """How many measurements the best's metric is the mean of."""
        return len(self.measurements.get(self._best_key, [])) if self._best_key else 0

    @property
    def best_throughput(self) -> float | None:
        values = self.throughput.get(self._best_key) if self._best_key else None
        return statistics.fmean(values) if values else None

    def noise(self) -> Noise:
        """Pooled standard deviation over every commit measured more than once."""
        ss, dof, runs = 0.0, 0, 0
        for values in self.measurements.values():
            if len(values) >= 2:
                mean = statistics.fmean(values)
                ss += sum((x - mean) ** 2 for x in values)
                dof += len(values) - 1
                runs += len(values)
        return Noise(sigma=math.sqrt(ss / dof) if dof else 0.0, dof=dof, runs=runs)

    def since_best_measured(self, next_n: int) -> int:
        """Experiments since the best's commit was last measured."""
        if self._best_key is None:
            return 0
        return next_n - 1 - self.last_measured.get(self._best_key, next_n - 1)

    def series_metrics(self, budget: float) -> list[float]:
        """The metrics of the baseline series a baseline run at ``budget`` would join."""
        if self.series_open and self.baseline_budget in (None, budget):
            return list(self._baseline_metrics)
        return []

    def needs_baseline(self, budget: float, runs: int) -> bool:
        """Whether the next experiment must measure the best commit unchanged."""
        if self.baseline is None:
            return True  # nothing to compare a change with yet
        if self.baseline_budget is not None and self.baseline_budget != budget:
            return True  # the budget changed: re-measure the best at the new budget
        return self.series_open and self.baseline_attempts < runs

    @property
    def best_commit(self) -> str | None:
        return self.best.commit if self.best else self.base_commit

    def grouped_counts(self) -> dict[str, int]:
        """keep / discard / failed (the run broke) / other: what a header shows."""
        return grouped_counts(self.counts)


def grouped_counts(counts: dict[str, int]) -> dict[str, int]:
    """Counts per status, grouped as keep / discard / failed (the run broke) / other."""
    out = {"keep": 0, "discard": 0, "failed": 0, "other": 0}
    for status, count in counts.items():
        if status in ("keep", "discard"):
            out[status] += count
        elif status in FAILED:
            out["failed"] += count
        else:
            out["other"] += count
    return out


def running_best(results: Iterable[Result]) -> list[tuple[int, float | None]]:
    """(n, best after n) for every result, by the same rule as ``Standing``."""
    s = Standing()
    out = []
    for r in results:
        s.add(r)
        out.append((r.n, s.best.metric if s.best else None))
    return out


@dataclass
class State:
    """The engine's snapshot (state.json). Readers tolerate missing keys."""

    tag: str | None = None
    pid: int | None = None
    phase: str | None = None
    phase_started_at: float | None = None
    experiment: int | None = None  # n of the experiment in flight
    started_at: float | None = None  # when it started
    baseline_run: bool = False
    budget: float | None = None  # seconds of training per experiment
    timeout: float | None = None
    paused: bool = False
    pause_requested: bool = False
    stop_requested: bool = False
    best: Best | None = None
    baseline: Baseline | None = None
    counts: dict[str, int] = field(default_factory=dict)
    agent: dict[str, Any] | None = None  # name, model
    cost_usd: float = 0.0
    hypothesis: str | None = None
    description: str | None = None
    commit: str | None = None
    parent: str | None = None
    error: str | None = None
    config: dict[str, Any] | None = None
    branch: str | None = None
    worktree: str | None = None
    notes_pending: list[str] = field(default_factory=list)
    train_pgid: int | None = None  # the training process group, for a restart to reap
    agent_pgid: int | None = None  # a command agent's process group, likewise
    sandbox: str | None = None
    noise: Noise | None = None  # the noise estimate in force
    runs: list[float] = field(default_factory=list)  # measurements of the experiment in flight so far
    flights: list[dict[str, Any]] = field(default_factory=list)  # with several workers: each one's experiment
    node: str | None = None  # with --ray: the node the experiment in flight runs on ("host (ip)")
    node_util: dict[str, Any] | None = None  # that node's cpu %, memory and its GPUs (engine/remote.py)
    next_proposal: dict[str, Any] | None = None  # a pipelined proposal: {"n", "state": thinking|ready|rebased|dropped}
    updated_at: float | None = None
    heartbeat_at: float | None = None

    def update(self, **changes: Any) -> None:
        for key, value in changes.items():
            if not hasattr(self, key):
                raise AttributeError(f"State has no field {key!r}")
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("best", "baseline", "noise"):
            if d[key] is not None:
                d[key] = d[key].to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "State":
        if not isinstance(d, dict):
            return cls()
        s = cls()
        for f in fields(cls):
            if f.name not in d:
                continue
            value = d[f.name]
            if f.name == "best":
                value = Best.from_dict(value)
            elif f.name == "baseline":
                value = Baseline.from_dict(value)
            elif f.name == "noise":
                ok = isinstance(value, dict) and is_number(value.get("sigma"))
                value = Noise(float(value["sigma"]), int(value.get("dof") or 0), int(value.get("runs") or 0)) if ok else None
            elif f.name == "runs":
                value = [float(x) for x in value if is_number(x)] if isinstance(value, list) else []
            elif f.name in ("paused", "pause_requested", "stop_requested", "baseline_run"):
                value = value is True
            elif f.name in ("pid", "experiment", "train_pgid", "agent_pgid"):
                value = value if isinstance(value, int) and not isinstance(value, bool) else None
            elif f.name in ("phase_started_at", "started_at", "budget", "timeout", "updated_at", "heartbeat_at"):
                value = _opt_float(value)
            elif f.name == "cost_usd":
                value = _opt_float(value) or 0.0
            elif f.name == "counts":
                value = {str(k): v for k, v in value.items() if isinstance(v, int)} if isinstance(value, dict) else {}
            elif f.name == "flights":
                value = [x for x in value if isinstance(x, dict)] if isinstance(value, list) else []
            elif f.name == "notes_pending":
                value = [x for x in value if isinstance(x, str)] if isinstance(value, list) else []
            elif f.name in ("agent", "config", "next_proposal", "node_util"):
                value = value if isinstance(value, dict) else None
            else:
                value = value if isinstance(value, str) else None
            setattr(s, f.name, value)
        return s
