"""A small stand-in for the engine: it writes a run directory the way the real one does
(engine/rundir.py's format, records built with engine/results.py: ``Result``, ``State``,
best, baseline and counts folded by ``Standing``) and answers a real control socket.

The monitor is a client of those files and that socket only, so tests drive it with
this: write a state, stream hypothesis text, append log lines, finish an experiment,
die, resume. Every command the monitor sends is recorded in ``commands``.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from engine.control import ControlServer, accepted, refused
from engine.results import INTERRUPTIBLE_PHASES, Result, Standing, State
from engine.rundir import RunDir, append_jsonl, atomic_write_json

T0 = 1_800_000_000.0  # a fixed "now" for deterministic pictures


def dead_pid() -> int:
    """A pid that certainly belonged to a process that has exited (and was reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


DIFF = """diff --git a/train.py b/train.py
--- a/train.py
+++ b/train.py
@@ -10,7 +10,7 @@ import torch
 BATCH_SIZE = 32
-LEARNING_RATE = 0.003
+LEARNING_RATE = 0.004
 WARMUP_STEPS = 100
"""


SANDBOX = "bwrap 0.8.0"  # what state.json says when training runs confined
BASE_COMMIT = "ba5e000000000000000000000000000000000000"  # what every baseline run measures


class FakeEngine:
    def __init__(self, repo: Path, tag: str = "test", *, t0: float = T0, agent: dict | None = None,
                 sandbox: str = SANDBOX):
        self.repo = Path(repo)
        self.run = RunDir.for_tag(self.repo, tag)
        self.run.experiments.mkdir(parents=True, exist_ok=True)
        self.t0 = t0
        self.commands: list[dict[str, Any]] = []
        self.refuse: dict[str, str] = {}  # cmd -> reason to refuse it with
        self.reply_delay = 0.0
        self.server: ControlServer | None = None
        self._lock = threading.Lock()
        self.state = State(
            tag=tag, pid=os.getpid(), phase="starting", budget=60.0, timeout=210.0,
            agent=agent or {"name": "heuristic", "model": None}, sandbox=sandbox,
            updated_at=t0, heartbeat_at=t0,
        )
        self.results: list[Result] = []
        self.standing = Standing()

    # -- lifecycle ---------------------------------------------------------------

    def start(self, serve: bool = True) -> "FakeEngine":
        # Like the real engine: an exclusive flock on engine.lock, with our pid inside.
        self._lock_fd = os.open(self.run.lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(self._lock_fd, 0)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())
        self.state.pid = os.getpid()
        self.write_state()
        self.event("engine", event="start", pid=self.state.pid)
        if serve:
            self.server = ControlServer(self.run.socket, self.handle)
            self.server.start()
        return self

    def close(self) -> None:
        """Stop answering on the socket (the process, and so the lock, lives on)."""
        if self.server is not None:
            self.server.close()
            self.server = None

    def release(self) -> None:
        self.close()
        if getattr(self, "_lock_fd", None) is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def die(self) -> None:
        """The engine was killed: socket gone, flock dropped, a stale lock file left behind."""
        self.release()
        pid = dead_pid()
        self.run.lock.write_text(f"{pid}\n")
        self.state.pid = pid

    # -- the control socket ------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.commands.append(request)
        if self.reply_delay:
            threading.Event().wait(self.reply_delay)
        cmd = request["cmd"]
        now = time.time()  # acknowledgements are stamped with the real clock, as the engine does
        if cmd in self.refuse:
            self.event("command", cmd=cmd, text=request.get("text"), result="refused", reason=self.refuse[cmd], ts=now)
            return refused(self.refuse[cmd])
        if cmd == "pause":
            self.set_state(pause_requested=True)
        elif cmd == "resume":
            self.set_state(pause_requested=False, paused=False)
        elif cmd == "stop":
            self.set_state(stop_requested=True)
        self.event("command", cmd=cmd, text=request.get("text"), result="accepted", reason="", ts=now)
        return accepted(f"{cmd} noted")

    def sent(self) -> list[str]:
        with self._lock:
            return [c["cmd"] for c in self.commands]

    # -- writing the run directory -----------------------------------------------------

    def write_state(self) -> None:
        atomic_write_json(self.run.state_json, self.state.to_dict())

    def set_state(self, **changes: Any) -> None:
        """Change fields of ``State`` (an unknown name is an error, as in the engine)."""
        self.state.update(**changes)
        self.write_state()

    def event(self, type_: str, ts: float | None = None, **fields: Any) -> None:
        append_jsonl(self.run.events_jsonl, {"ts": ts if ts is not None else self.t0, "type": type_, **fields}, fsync=False)

    def begin(self, n: int, description: str, hypothesis: str, diff: str = DIFF, *, stream: list[str] | None = None,
              phase: str = "running", at: float | None = None) -> None:
        """Propose and start experiment n: hypothesis events, files, phase."""
        at = self.t0 if at is None else at
        exp = self.run.experiment(n)
        exp.mkdir(parents=True, exist_ok=True)
        self.set_state(experiment=n, phase="proposing", phase_started_at=at, started_at=at,
                       hypothesis=None, description=None)
        self.event("phase", n=n, phase="proposing", ts=at)
        for chunk in stream or [hypothesis]:
            self.event("hypothesis", n=n, text=chunk, ts=at)
        self.event("proposal", n=n, hypothesis=hypothesis, description=description, agent=self.state.agent, ts=at)
        (exp / "hypothesis.md").write_text(hypothesis + "\n")
        (exp / "diff.patch").write_text(diff)
        self.set_state(phase=phase, phase_started_at=at, hypothesis=hypothesis, description=description)
        self.event("phase", n=n, phase=phase, ts=at)

    # -- several workers: one entry of state.flights per running experiment ----------------

    def begin_flight(self, n: int, worker: int, description: str, hypothesis: str, diff: str = DIFF, *,
                     phase: str = "running", at: float | None = None, stream: list[str] | None = None,
                     **fields: Any) -> None:
        """Worker ``worker`` proposes and starts experiment n (events name the worker); its
        entry joins state.flights, and the top level holds it, as the last one written."""
        at = self.t0 if at is None else at
        exp = self.run.experiment(n)
        exp.mkdir(parents=True, exist_ok=True)
        self.event("phase", n=n, phase="proposing", worker=worker, ts=at)
        for chunk in stream or [hypothesis]:
            self.event("hypothesis", n=n, text=chunk, worker=worker, ts=at)
        if phase != "proposing":
            self.event("proposal", n=n, hypothesis=hypothesis, description=description, agent=self.state.agent,
                       worker=worker, ts=at)
            (exp / "hypothesis.md").write_text(hypothesis + "\n")
            (exp / "diff.patch").write_text(diff)
        self.event("phase", n=n, phase=phase, worker=worker, ts=at)
        proposed = phase != "proposing"
        entry = {"worker": worker, "experiment": n, "phase": phase, "phase_started_at": at, "started_at": at,
                 "baseline_run": False, "description": description if proposed else None,
                 "hypothesis": hypothesis if proposed else None, "commit": None, "parent": BASE_COMMIT,
                 "train_pgid": None, "runs": [], **fields}
        flights = [f for f in self.state.flights if f.get("worker") != worker] + [entry]
        top = {k: v for k, v in entry.items() if k in State.__dataclass_fields__}
        self.set_state(flights=sorted(flights, key=lambda f: f["worker"]), **top)

    def update_flight(self, n: int, **fields: Any) -> None:
        """Change experiment n's entry of state.flights (and the top level, as the engine does)."""
        for entry in self.state.flights:
            if entry.get("experiment") == n:
                entry.update(fields)
        self.set_state(flights=list(self.state.flights),
                       **{k: v for k, v in fields.items() if k in State.__dataclass_fields__})

    def end_flight(self, n: int) -> None:
        """Experiment n is over: its entry leaves state.flights."""
        self.set_state(flights=[f for f in self.state.flights if f.get("experiment") != n])

    def log(self, n: int, *lines: str, raw: bytes | None = None) -> None:
        path = self.run.experiment(n) / "run.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            if raw is not None:
                f.write(raw)
            if lines:
                f.write(("\n".join(lines) + "\n").encode())

    def finish(self, n: int, status: str, metric: float | None, description: str = "", **fields: Any) -> Result:
        """Record experiment n as the engine does: results.jsonl, eval.json, the state
        (best, baseline and counts from ``Standing``), a ``result`` event. ``fields``
        are more of ``Result``'s fields (forced=True, wall_seconds=..., ...)."""
        best = self.standing.best
        baseline = fields.get("baseline", status == "baseline")
        if fields.get("runs") and metric is None:
            metric = sum(fields["runs"]) / len(fields["runs"])  # a confirmed change: the mean of its runs
        commit = BASE_COMMIT if baseline else f"{n:04d}abcdef0123456789"
        if fields.get("remeasure") and best is not None:
            commit = best.commit or BASE_COMMIT  # the best, measured again
        record = dict(
            n=n, status=status, metric=metric, delta=(metric - best.metric) if metric is not None and best else None,
            noise=0.002, commit=commit,
            parent=best.commit if best else BASE_COMMIT, description=description,
            hypothesis=f"hypothesis {n}", started_at=self.t0 + n * 100, ended_at=self.t0 + n * 100 + 75,
            train_seconds=60.0, wall_seconds=75.0, peak_mem_mb=812.0,
            agent={"name": "heuristic", "model": None, "tokens": 0, "cost_usd": 0.0},
            baseline=baseline, sandbox=self.state.sandbox,
        )
        record.update(fields)
        return self.record(Result(**record))

    def record(self, result: Result) -> Result:
        append_jsonl(self.run.results_jsonl, result.to_dict(), fsync=False)
        self.results.append(result)
        self.standing.add(result)
        if result.scored:
            atomic_write_json(self.run.experiment(result.n) / "eval.json", {result.metric_name: result.metric, "bytes": 123456})
        self.set_state(phase="deciding", **self.standing_fields())
        self.event("result", **result.short())
        return result

    def standing_fields(self) -> dict[str, Any]:
        return {"best": self.standing.best, "baseline": self.standing.baseline, "counts": dict(self.standing.counts),
                "noise": self.standing.noise(), "runs": []}

    def remeasure(self, n: int, metric: float, **fields: Any) -> Result:
        """The drift guard: the best, measured again unchanged (a baseline run)."""
        best = self.standing.best
        why = fields.pop("why", "10 experiments since it was last measured")
        return self.finish(n, "baseline", metric, f"re-measure the best (#{best.n:04d}): {why}",
                           remeasure=True, **fields)

    def confirming(self, n: int, runs: list[float], at: float | None = None) -> None:
        """Experiment n beat the best with ``runs`` so far and is being run again."""
        at = self.t0 if at is None else at
        for i, metric in enumerate(runs, start=1):
            self.event("measurement", n=n, run=i, metric=metric, ts=at)
        self.set_state(phase="confirming", phase_started_at=at, runs=list(runs))
        self.event("phase", n=n, phase="confirming", ts=at)

    def resume(self) -> None:
        """The engine was killed mid-experiment and started again: the experiment in
        flight is recorded as interrupted, the state written afresh, a "resume" event."""
        previous = self.state
        if previous.experiment is not None and previous.phase in INTERRUPTIBLE_PHASES:
            result = Result(
                n=previous.experiment, status="interrupted", baseline=previous.baseline_run,
                started_at=previous.started_at, ended_at=previous.heartbeat_at,
                description=previous.description or "", hypothesis=previous.hypothesis or "",
                error="the engine stopped during this experiment",
            )
            append_jsonl(self.run.results_jsonl, result.to_dict(), fsync=False)
            self.results.append(result)
            self.standing.add(result)
            self.event("result", **result.short())
        self.state = State(
            tag=previous.tag, pid=os.getpid(), phase="starting", phase_started_at=self.t0, budget=previous.budget,
            timeout=previous.timeout, agent=previous.agent, cost_usd=previous.cost_usd, sandbox=previous.sandbox,
            updated_at=self.t0, heartbeat_at=self.t0, **self.standing_fields(),
        )
        self.write_state()
        self.event("engine", event="resume", pid=self.state.pid)


STATUS_MIX = ["discard"] * 6 + ["keep"] * 2 + ["crash", "timeout", "skipped", "rejected"]


def history(engine: FakeEngine, count: int, seed: int = 7) -> None:
    """``count`` finished experiments with varied, deterministic statuses and metrics."""
    rng = random.Random(seed)
    engine.finish(0, "baseline", 1.9, "baseline")
    best = 1.9
    lines = []
    for n in range(1, count):
        status = rng.choice(STATUS_MIX)
        metric = None if status in ("crash", "timeout", "skipped", "rejected") else round(best + rng.uniform(-0.02, 0.03), 4)
        if status == "keep":
            metric = round(best - rng.uniform(0.001, 0.01), 4)
            best = metric
        elif status == "discard" and metric is not None and metric < best:
            metric = round(best + 0.001, 4)
        lines.append((n, status, metric, f"change {n}: tweak {rng.choice(['LR', 'WARMUP', 'DEPTH', 'WIDTH', 'DROPOUT'])}"))
    # Written in one go: thousands of appends with fsync would dominate the test time.
    with open(engine.run.results_jsonl, "a", encoding="utf-8") as f:
        for n, status, metric, desc in lines:
            result = Result(
                n=n, status=status, metric=metric, delta=None if metric is None else round(metric - best, 4),
                noise=0.002, commit=f"{n:07x}", description=desc, hypothesis=f"Because {desc} should help.",
                wall_seconds=70 + n % 10, train_seconds=60, sandbox=engine.state.sandbox,
            )
            f.write(json.dumps(result.to_dict()) + "\n")
            engine.results.append(result)
            engine.standing.add(result)
    engine.set_state(**engine.standing_fields())


def every_status(engine: FakeEngine) -> None:
    """A journal with every status the engine writes, a forced keep that is worse than
    the best (a person's keep moves the best up), and a resumed run: the engine killed
    during #12, which the next engine records as interrupted."""
    engine.finish(0, "baseline", 1.900, "baseline, first run")
    engine.finish(1, "baseline", 1.912, "baseline, second run")
    engine.finish(2, "keep", 1.880, "raise LR")
    engine.finish(3, "discard", 1.895, "deeper")
    for n, status in enumerate(("crash", "timeout", "hang", "oom", "nan"), start=4):
        engine.finish(n, status, None, f"breaks: {status}", error=f"the run ended as {status}")
    engine.finish(9, "skipped", None, "skipped by a person")
    engine.finish(10, "rejected", None, "touches prepare.py")
    engine.finish(11, "keep", 1.891, "wider, kept by a person", forced=True)
    engine.begin(12, "longer warmup", "A longer warmup steadies the first steps.")
    engine.log(12, "step 1 | loss 3.0")
    engine.resume()
    engine.finish(13, "discard", 1.897, "shorter warmup")
    engine.begin(14, "smaller batch", "More steps within the budget.")


CONFIG = {"loop": {"confirm_runs": 1, "remeasure_every": 10, "baseline_runs": 2}}


def decisions(engine: FakeEngine) -> None:
    """A run whose decisions used every new record: two baseline runs (noise pooled from
    them), changes confirmed by a second run (a mean of two, scored on the holdout), one
    whose confirmation did not hold, re-measures of the best, a keep whose holdout got
    worse than the best's (marked H), a keep whose throughput moved 24% (marked T), and
    #0010 in flight, confirming its first run."""
    engine.set_state(config=CONFIG)
    tps = dict(tokens_per_sec=40000.0, num_steps=1200, load_avg=0.4)
    engine.finish(0, "baseline", 1.9000, "baseline: unmodified train.py (run 1 of 2)", holdout=1.9500, **tps)
    engine.finish(1, "baseline", 1.9080, "baseline: unmodified train.py (run 2 of 2)", holdout=1.9560, **tps)
    engine.finish(2, "keep", None, "raise LEARNING_RATE 0.003 -> 0.004", runs=[1.8720, 1.8760], holdout=1.9300,
                  tokens_per_sec=40100.0, num_steps=1210, threshold=0.012)
    engine.finish(3, "discard", 1.9050, "deeper: N_LAYER 4 -> 6", tokens_per_sec=33000.0)
    engine.finish(4, "keep", None, "longer warm-down", runs=[1.8610, 1.8650], holdout=1.9360,
                  tokens_per_sec=40300.0, threshold=0.011)
    engine.finish(5, "discard", None, "smaller batch", runs=[1.8500, 1.8690], holdout=1.9340,
                  error="its mean did not beat the best by the noise")
    engine.remeasure(6, 1.8660, holdout=1.9380, tokens_per_sec=39900.0)
    engine.finish(7, "keep", None, "wider MLP: 4x -> 5x", runs=[1.8470, 1.8510], holdout=1.9250,
                  tokens_per_sec=30500.0, threshold=0.010)
    engine.finish(8, "crash", None, "fused attention off", error="exit status 1: RuntimeError")
    engine.remeasure(9, 1.8500, holdout=1.9260, tokens_per_sec=30400.0, why="recent runs' throughput moved -24%")
    engine.begin(10, "weight decay 0.1 -> 0.05", "Less weight decay lets the wider MLP use its capacity.")
    engine.confirming(10, [1.8390])


# A [target]: another repository's agent scored by its own run (no trusted evaluate), the
# agent pipelined (it writes the next change while the current one trains).
TARGET_CONFIG = {"loop": {"confirm_runs": 1, "baseline_runs": 2, "pipeline": True},
                 "target": {"run": "python eval_agent.py", "metric": "score", "direction": "max", "evaluate": None}}
TARGET_LOG = [f"episode {i:03d}/120 | solved {i // 2 + 3}/{i + 5} | reward {0.61 + i / 2000:.4f}" for i in range(0, 80, 4)]


def target_run(engine: FakeEngine) -> None:
    """A run on a [target] whose metric is "score", higher is better, printed by the run
    itself (every number self-reported), with #0006 running and the agent already
    writing #0007 (pipelined)."""
    engine.set_state(config=TARGET_CONFIG)
    own = {"metric_name": "score"}
    printed = {**own, "self_reported": True}
    engine.finish(0, "baseline", 0.6120, "baseline: unmodified agent.py (run 1 of 2)", **printed)
    engine.finish(1, "baseline", 0.6180, "baseline: unmodified agent.py (run 2 of 2)", **printed)
    engine.finish(2, "keep", None, "few-shot examples in the prompt", runs=[0.6540, 0.6580], threshold=0.012, **printed)
    engine.finish(3, "discard", 0.6490, "temperature 0.7 -> 0.3", threshold=0.012, **printed)
    engine.finish(4, "crash", None, "parallel tool calls", error="exit status 1: KeyError: 'tool'", **own)
    engine.finish(5, "keep", None, "retry once on a malformed answer", runs=[0.6810, 0.6770], threshold=0.011,
                  **printed)
    engine.begin(6, "shorter system prompt", "A shorter system prompt leaves more of the context for the task "
                 "itself, and the model follows the answer format as well without the long preamble.")
    engine.set_state(next_proposal={"n": 7, "state": "thinking"})


WORKERS_CONFIG = {"loop": {"workers": 2, "confirm_runs": 1, "baseline_runs": 2}}
DIFF_13 = """diff --git a/train.py b/train.py
--- a/train.py
+++ b/train.py
@@ -14,7 +14,7 @@ LEARNING_RATE = 0.003
 WARMUP_STEPS = 100
-N_LAYER = 4
+N_LAYER = 6
 N_HEAD = 4
"""


def two_flights(engine: FakeEngine) -> None:
    """#0012 (worker 0) and #0013 (worker 1) running at once, each with its own log and diff."""
    engine.set_state(config=WORKERS_CONFIG)
    engine.finish(8, "baseline", 1.9000, "baseline: unmodified train.py (run 1 of 2)", worker=0)
    engine.finish(9, "baseline", 1.9060, "baseline: unmodified train.py (run 2 of 2)", worker=1)
    engine.finish(10, "keep", None, "raise LEARNING_RATE 0.003 -> 0.004", runs=[1.8720, 1.8760], worker=0)
    engine.finish(11, "discard", 1.9050, "deeper: N_LAYER 4 -> 5", worker=1)
    engine.begin_flight(12, 0, "longer warmup: WARMUP_STEPS 100 -> 200",
                        "A longer warmup steadies the first steps at the higher learning rate.", at=engine.t0)
    engine.begin_flight(13, 1, "deeper: N_LAYER 4 -> 6", "Two more layers use the budget better than width.",
                        DIFF_13, at=engine.t0 + 20)
    engine.log(12, *[f"w0 step {i:05d} | loss {3.2 / (1 + i / 100):.4f}" for i in range(0, 200, 10)])
    engine.log(13, *[f"w1 step {i:05d} | loss {3.3 / (1 + i / 100):.4f}" for i in range(0, 100, 10)])


NON_CAUSAL = "the scorer refused the model: non-causal (changing later bytes changed earlier predictions)"


def revoked_run(engine: FakeEngine) -> None:
    """A best caught reading ahead: #0003 (kept) was the best until the drift guard's
    re-measure, #0005, found it non-causal: #0003 no longer counts, and the best is #0002 again."""
    engine.finish(0, "baseline", 1.9000, "baseline: unmodified train.py (run 1 of 2)")
    engine.finish(1, "baseline", 1.9060, "baseline: unmodified train.py (run 2 of 2)")
    engine.finish(2, "keep", 1.8800, "raise LEARNING_RATE 0.003 -> 0.004")
    engine.finish(3, "keep", 1.7900, "attention window +1")
    engine.finish(4, "discard", 1.7950, "deeper: N_LAYER 4 -> 6")
    engine.finish(5, "crash", None, "re-measure the best (#0003): 2 experiments since it was last measured",
                  baseline=True, remeasure=True, revokes=3, error=f"{NON_CAUSAL}; #0003 is no longer the best")


def main(argv: list[str]) -> None:
    """``python fake_engine.py REPO TAG``: a fake engine as its own process, until SIGTERM.

    Used where the monitor starts an engine itself (the ``r`` key, ``autoresearch``
    with no arguments): the test points the launch command here instead.
    """
    import signal

    repo, tag = Path(argv[0]), argv[1]
    engine = FakeEngine(repo, tag, t0=time.time())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    engine.start()
    engine.set_state(phase="proposing", experiment=1, phase_started_at=time.time())
    print(f"fake engine {os.getpid()} serving {engine.run.root}", flush=True)
    while not stop.wait(0.5):
        engine.set_state(heartbeat_at=time.time())
    engine.set_state(phase="stopped")
    engine.release()


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(sys.argv[1:])
