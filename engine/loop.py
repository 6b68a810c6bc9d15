"""The research loop: propose -> check -> commit -> train -> evaluate -> decide -> journal.

One Engine runs one tag. The main thread runs the loop; the control socket's thread
only flips flags (and queues notes) that the loop reads between and during steps;
the agent runs in a worker thread so that stop and skip stay responsive while it
thinks. Everything a reader needs is in the run directory (see engine/rundir.py).

Conventions worth knowing:

- The baseline (unmodified train.py) runs ``baseline_runs`` times; their mean is the
  first "best" and their sample standard deviation the noise. If the baseline itself
  fails before any baseline succeeded, the engine stops with an error.
- Evaluation output is appended to the experiment's run.log after the line
  ``=== autoresearch: evaluation (python prepare.py evaluate) ===``.
- An agent error that is not transient is recorded as ``crash`` with the message in
  ``error``; transient ones are retried and not recorded. ``max_failures`` consecutive
  agent errors of either kind pause the loop (state ``error``); ``resume`` retries.
- ``max_cost`` pauses the loop before the next proposal once the run's agent cost
  reaches it; ``resume`` lifts the cap for the rest of this engine's life.
- ``max_experiments`` counts the experiments of this engine process (a resumed run
  does that many more).
- ``stop`` (or SIGTERM/SIGINT/SIGHUP) kills a run in progress and records it as
  ``interrupted``; the worktree is left at the best commit.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import gitops, rundir
from .agents.base import Agent, AgentError, Proposal, ProposalContext, Usage
from .config import Config
from .control import ControlServer, accepted, refused
from .decide import classify_failure, decide, estimate_baseline, metric_is_bad, parse_float
from .errors import UsageError
from .integrity import Fingerprint, cache_dir, manifest_path, off_limits_additions
from .journal import Journal
from .lock import EngineLock
from .runner import KILL_GRACE_SECONDS, kill_stale_group, minimal_env, run_process
from .untrusted import bound_tail, strip_control

METRIC = "val_bpb"
RUN_INFO = "run.json"  # written once when a tag starts: base commit and fingerprints
FAILED_STATUSES = ("crash", "timeout", "hang", "oom", "nan")
EVAL_MARKER = "=== autoresearch: evaluation (python prepare.py evaluate) ==="
MAX_HYPOTHESIS = 8000
MAX_DESCRIPTION = 200


@dataclass
class Flight:
    """The experiment in progress."""

    n: int
    baseline: bool
    started_at: float
    phase: str = "starting"
    skip: bool = False
    keep: bool = False


@dataclass
class Outcome:
    status: str
    metric: float | None = None
    error: str | None = None
    train_seconds: float | None = None
    peak_mem_mb: float | None = None
    summary: dict[str, str] = field(default_factory=dict)
    log_tail: list[str] | None = None


class Engine:
    def __init__(
        self,
        repo: Path | str,
        tag: str,
        config: Config,
        agent: Agent,
        *,
        out: Callable[[str], None] | None = None,
        python: str = sys.executable,
        kill_grace: float = KILL_GRACE_SECONDS,
        agent_retry_seconds: float = 5.0,
        agent_stop_wait: float = 2.0,
    ):
        self.repo_path = Path(repo).resolve()
        self.tag = gitops.check_tag(tag)
        self.config = config
        self.agent = agent
        self.python = python
        self.kill_grace = kill_grace
        self.agent_retry_seconds = agent_retry_seconds
        self.agent_stop_wait = agent_stop_wait  # on stop, how long a thinking agent may finish
        self._out = out
        self.rd = rundir.RunDir.for_tag(self.repo_path, self.tag)
        self.journal = Journal(self.rd)
        self.lock = EngineLock(self.rd.lock, self.tag)
        self.budget = config.loop.effective_budget()
        self.timeout = config.loop.effective_timeout()

        # Loop state, rebuilt from results.jsonl on start.
        self.results: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.baseline_info: dict[str, Any] | None = None
        self.next_n = 1
        self.cost_usd = 0.0
        self.fingerprint: Fingerprint | None = None
        self.base_commit = ""
        self.exit_code = 0

        # Control flags, shared with the socket thread (guarded by _ctl).
        self._ctl = threading.Lock()
        self._stop = threading.Event()
        self.flight: Flight | None = None
        self.pause_requested = False
        self.paused = False
        self.error: str | None = None
        self.notes: list[str] = []
        self.failures = 0  # consecutive transient agent failures
        self.cost_cap_lifted = False
        self._server: ControlServer | None = None
        self._phase_name = "starting"

    # --- output -------------------------------------------------------------------

    def say(self, line: str) -> None:
        if self._out is None:
            return
        try:
            self._out(time.strftime("%H:%M:%S ") + line)
        except OSError:  # the terminal went away (SSH dropped): keep running
            pass

    # --- public entry points ----------------------------------------------------------

    def run(self) -> int:
        """Run until stopped or out of experiments. Returns the process exit status."""
        try:
            self.open()
            self.loop()
        except UsageError:
            raise
        except Exception as e:  # a bug or a broken repository: say so, keep the journal sane
            self.exit_code = 1
            self.error = f"{type(e).__name__}: {e}"
            self._record_interrupted_flight()
            self.journal.event("error", message=self.error, n=None)
            self._phase("error")
            self.say(f"error: {self.error}")
        finally:
            self.close()
        return self.exit_code

    def request_stop(self, why: str = "stop") -> None:
        """Stop as soon as possible (signal handlers call this; it only sets a flag)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # started under nohup: leave it that way
            signal.signal(sig, lambda signum, frame: self.request_stop(signal.Signals(signum).name))

    # --- start-up and shutdown -------------------------------------------------------------

    def open(self) -> None:
        self.lock.acquire()
        repo = gitops.open_repo(self.repo_path)
        gitops.ensure_excluded(repo)
        resuming = self.rd.results_jsonl.exists() or self.rd.state_json.exists()
        previous_state = self.rd.read_state()
        self.results = self.journal.open()
        self.wt = gitops.Worktree.open_or_create(repo, self.rd.worktree, self.tag)
        self.base_commit = self.wt.resolve(gitops.base_ref(self.tag)) or self.wt.head()
        kill_stale_group(previous_state.get("train_pgid"), self.rd.worktree)

        self._record_interrupted_from(previous_state)
        self._rebuild_from_results()
        self.wt.reset_to(self.best["commit"] if self.best else self.base_commit)
        self.cost_usd = self._cost_from_events()
        self.notes = [n for n in previous_state.get("notes_pending") or [] if isinstance(n, str)]

        self.journal.state = {}
        self._write_full_state(phase="starting")
        self.journal.event("engine", event="resume" if resuming else "start", pid=os.getpid())
        self._server = ControlServer(self.rd.socket, self._on_command)
        self._server.start()
        verb = "resuming" if resuming else "starting"
        self.say(f"{verb} tag {self.tag}: branch {gitops.branch_name(self.tag)}, "
                 f"agent {self._agent_label()}, budget {self.budget:g} s, next experiment #{self.next_n:04d}")
        self.say(f"run directory {self.rd.root}")
        if self.lock.took_over_pid:
            self.say(f"took over a stale lock left by pid {self.lock.took_over_pid}")

        self._ensure_prepared()
        self._check_fingerprint_on_start()

    def close(self) -> None:
        if not self.lock.held:
            return  # never started (another engine holds the tag): touch nothing
        if self._server is not None:
            self._server.close()
            self._server = None
        try:
            if self.base_commit:
                self.wt.reset_to(self._best_commit())
        except Exception:
            pass
        if self._phase_name != "error":
            self._phase("stopped")
        self.journal.update_state(train_pgid=None, notes_pending=list(self.notes))
        self.journal.event("engine", event="exit", pid=os.getpid())
        self.lock.release()

    def _ensure_prepared(self) -> None:
        """Build the data cache first if it is missing (its output shown as it comes)."""
        if manifest_path().exists():
            return
        self.say(f"no data cache at {cache_dir()}: running python prepare.py first")
        echo = self._out is not None
        result = run_process(
            [self.python, "prepare.py"],
            cwd=self.rd.worktree,
            env=self._child_env({}),
            log_path=self.rd.root / "prepare.log",
            tick=self._tick,
            should_kill=self._stop.is_set,
            grace=self.kill_grace,
            echo=(lambda b: _echo(b)) if echo else None,
        )
        if self._stop.is_set():
            return  # stopped while preparing: the loop will not start
        if result.returncode != 0 or not manifest_path().exists():
            raise RuntimeError(f"python prepare.py failed (exit {result.returncode}); see {self.rd.root / 'prepare.log'}")

    def _check_fingerprint_on_start(self) -> None:
        info_path = self.rd.root / RUN_INFO
        info = rundir.read_json(info_path)
        now = Fingerprint.of(self.rd.worktree)
        if not info:
            info = {"tag": self.tag, "created_at": time.time(), "base_commit": self.base_commit,
                    "budget": self.budget, **now.to_dict()}
            rundir.atomic_write_json(info_path, info)
        self.fingerprint = Fingerprint(info.get("prepare_sha256"), info.get("manifest_sha256"))
        problems = self.fingerprint.problems(now)
        if problems:
            raise UsageError(f"cannot resume tag {self.tag}: {'; '.join(problems)}; start a new run with another --tag")
        if info.get("budget") not in (None, self.budget):
            self.say(f"note: this run started with a {info['budget']:g} s budget; now {self.budget:g} s "
                     "(results are comparable only at the same budget)")

    def _record_interrupted_from(self, state: dict[str, Any]) -> None:
        """A previous engine died mid-experiment: record that experiment as interrupted."""
        n = state.get("experiment")
        done = {r.get("n") for r in self.results}
        if not isinstance(n, int) or n in done or state.get("phase") not in ("checking", "running", "evaluating", "deciding"):
            return
        record = self._record_skeleton(n, baseline=bool(state.get("baseline_run")), started_at=state.get("started_at"))
        record.update(status="interrupted", description=state.get("description") or "",
                      hypothesis=state.get("hypothesis") or "", commit=state.get("commit"),
                      parent=state.get("parent"), ended_at=state.get("heartbeat_at") or time.time(),
                      error="the engine stopped during this experiment")
        self.journal.append_result(record)
        self.results.append(record)
        self.journal.event("result", **_short(record))

    def _record_interrupted_flight(self) -> None:
        f = self.flight
        if f is None or any(r.get("n") == f.n for r in self.results) or f.phase in ("proposing", "starting"):
            return
        st = self.journal.state
        record = self._record_skeleton(f.n, f.baseline, f.started_at)
        record.update(status="interrupted", description=st.get("description") or "", hypothesis=st.get("hypothesis") or "",
                      commit=st.get("commit"), ended_at=time.time(), error="the engine was stopped during this experiment")
        self._journal_result(record)

    def _rebuild_from_results(self) -> None:
        """Best, baseline, numbering: everything the loop needs, from results.jsonl."""
        self.best = None
        baseline_metrics: list[float] = []
        for r in self.results:
            if r.get("status") == "baseline" and not metric_is_bad(r.get("metric")):
                baseline_metrics.append(r["metric"])
                b = estimate_baseline(baseline_metrics)
                self.baseline_info = {"metric": b.metric, "noise": b.noise, "runs": b.runs}
                self.best = {"n": r["n"], "metric": b.metric, "commit": r.get("commit") or self.base_commit}
            elif r.get("status") == "keep" and not metric_is_bad(r.get("metric")) and r.get("commit"):
                self.best = {"n": r["n"], "metric": r["metric"], "commit": r["commit"]}
        numbers = [r.get("n") for r in self.results if isinstance(r.get("n"), int)]
        if self.rd.experiments.is_dir():
            numbers += [int(p.name) for p in self.rd.experiments.iterdir() if p.name.isdigit()]
        self.next_n = max(numbers, default=0) + 1

    def _cost_from_events(self) -> float:
        total = 0.0
        for e in rundir.read_jsonl(self.rd.events_jsonl):
            if e.get("type") == "usage":
                cost = (e.get("agent") or {}).get("cost_usd")
                if isinstance(cost, (int, float)):
                    total += cost
        return round(total, 6)

    # --- the loop -------------------------------------------------------------------------

    def loop(self) -> None:
        done = 0
        limit = self.config.loop.max_experiments
        while not self._stop.is_set():
            if limit is not None and done >= limit:
                self.say(f"reached --max-experiments {limit}")
                break
            if not self._hold_while_paused():
                break
            cap = self.config.agent.max_cost
            if cap is not None and not self.cost_cap_lifted and self.cost_usd >= cap and not self._needs_baseline():
                self._pause_with_error(f"cost cap reached: ${self.cost_usd:.2f} of ${cap:.2f}; "
                                       "resume to continue past it")
                continue
            outcome = self._experiment(self.next_n)
            if outcome == "recorded":
                self.next_n += 1
                done += 1
            elif outcome == "fatal":
                self.exit_code = 1
                break

    def _needs_baseline(self) -> bool:
        if self.baseline_info is None:
            return True  # nothing to compare a change with yet
        if any(not r.get("baseline") for r in self.results if r.get("status") not in ("interrupted",)):
            return False
        attempts = [r for r in self.results if r.get("baseline") and r.get("status") not in ("interrupted", "skipped")]
        return len(attempts) < self.config.loop.baseline_runs

    def _experiment(self, n: int) -> str:
        """One experiment. Returns "recorded", "retry" (nothing recorded), "stopped" or "fatal"."""
        baseline = self._needs_baseline()
        started = time.time()
        t0 = time.monotonic()
        with self._ctl:
            self.flight = Flight(n, baseline, started)
        record = self._record_skeleton(n, baseline, started)
        timings: dict[str, float] = {}
        self.journal.update_state(experiment=n, started_at=started, baseline_run=baseline, hypothesis=None,
                                  description=None, commit=None, parent=self._best_commit(), train_pgid=None)
        try:
            if baseline:
                runs = self.config.loop.baseline_runs
                k = sum(1 for r in self.results if r.get("baseline") and r.get("status") not in ("interrupted", "skipped")) + 1
                record["description"] = f"baseline: unmodified train.py (run {k} of {runs})"
                record["hypothesis"] = ("Measure the unmodified train.py to set the reference and estimate "
                                        "run-to-run noise.")
            else:
                self._phase("proposing")
                got = self._propose(n, record)
                timings["agent"] = round(time.monotonic() - t0, 3)
                if got in ("retry", "stopped"):
                    return got
                if got == "failed":
                    return self._finish(record, Outcome("crash", error=record.get("error")), timings, t0)
            self.journal.update_state(hypothesis=record["hypothesis"], description=record["description"])
            t = time.monotonic()
            self._phase("checking")  # from here on, a killed engine records this one as interrupted
            exp_dir = self.rd.experiment(n)
            exp_dir.mkdir(parents=True, exist_ok=True)
            _write_hypothesis(exp_dir, record)
            rejected = self._check_and_commit(record, exp_dir)
            timings["check_commit"] = round(time.monotonic() - t, 3)
            if rejected:
                return self._finish(record, Outcome("rejected", error=rejected), timings, t0)
            if self._should_kill():
                return self._finish(record, Outcome(self._killed_status(), error=self._killed_reason()), timings, t0)

            outcome = self._train_and_evaluate(n, exp_dir, timings)
            return self._finish(record, outcome, timings, t0)
        finally:
            with self._ctl:
                self.flight = None

    # --- proposing -------------------------------------------------------------------------

    def _propose(self, n: int, record: dict[str, Any]) -> str:
        """Ask the agent for a change. Fills ``record``; returns "ok", "failed", "retry" or "stopped"."""
        with self._ctl:
            notes = list(self.notes)
        last = self.results[-1] if self.results else None
        context = ProposalContext(
            n=n,
            worktree=self.rd.worktree,
            program=_read_text(self.rd.worktree / "program.md"),
            mutable=list(self.config.loop.mutable),
            history=[dict(r) for r in self.results],
            best=dict(self.best) if self.best else None,
            last_result=dict(last) if last else None,
            last_log_tail=self._last_log_tail(last),
            notes=notes,
            seed=self.config.loop.seed,
            emit=lambda text: self.journal.event("hypothesis", fsync=False, n=n, text=str(text)),
        )
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["proposal"] = self.agent.propose(context)
            except BaseException as e:  # handed to the loop below
                box["error"] = e

        thread = threading.Thread(target=work, name="agent", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.1)
            self._tick()
            if self._stop.is_set():
                thread.join(self.agent_stop_wait)  # then it is abandoned (a daemon thread)
                break
        if self._stop.is_set():
            self.wt.reset_to(self._best_commit())
            return "stopped"

        error = box.get("error")
        usage = error.usage if isinstance(error, AgentError) else (box["proposal"].usage if "proposal" in box else Usage())
        self._account(n, usage, record)
        if error is not None:
            transient = isinstance(error, AgentError) and error.transient
            message = str(error) if isinstance(error, AgentError) else f"{type(error).__name__}: {error}"
            self.journal.event("error", message=f"agent: {message}", n=n)
            self.wt.reset_to(self._best_commit())
            if transient:
                return self._transient_failure(message)
            # Recorded as a crash and the loop goes on; but an agent that fails every time
            # would fill the journal with crashes, so a streak of them pauses the loop too.
            self.failures += 1
            if self.failures >= self.config.agent.max_failures:
                self._pause_with_error(f"agent failed {self.failures} times in a row: {message}; resume to retry")
            record.update(description=f"agent error: {_one_line(message)}", hypothesis="", error=message,
                          notes=notes)
            self._consume_notes(notes)
            self.say(f"#{n:04d} agent error: {_one_line(message)}")
            return "failed"

        self.failures = 0
        proposal: Proposal = box["proposal"]
        # Bounded: these go into every journal line and the agent's own future prompts.
        record.update(hypothesis=str(proposal.hypothesis or "").strip()[:MAX_HYPOTHESIS],
                      description=_one_line(proposal.description)[:MAX_DESCRIPTION] or "(no description)",
                      notes=notes)
        self._consume_notes(notes)
        self.journal.event("proposal", n=n, hypothesis=record["hypothesis"], description=record["description"],
                           agent=record["agent"])
        return "ok"

    def _transient_failure(self, message: str) -> str:
        self.failures += 1
        limit = self.config.agent.max_failures
        if self.failures >= limit:
            self._pause_with_error(f"agent failed {self.failures} times in a row: {message}; resume to retry")
            return "retry"
        self.say(f"agent failed ({self.failures} of {limit}): {_one_line(message)}; retrying")
        deadline = time.monotonic() + self.agent_retry_seconds * self.failures
        while time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.1)
            self._tick()
        return "retry"

    def _account(self, n: int, usage: Usage, record: dict[str, Any]) -> None:
        info = {"name": getattr(self.agent, "name", "?"), "model": getattr(self.agent, "model", None), **usage.to_dict()}
        record["agent"] = info
        self.cost_usd = round(self.cost_usd + usage.cost_usd, 6)
        self.journal.event("usage", n=n, agent=info)
        self.journal.update_state(cost_usd=self.cost_usd)

    def _consume_notes(self, used: list[str]) -> None:
        with self._ctl:
            self.notes = self.notes[len(used):]
            self.journal.update_state(notes_pending=list(self.notes))

    def _last_log_tail(self, last: dict[str, Any] | None) -> str:
        if not last:
            return ""
        path = self.rd.experiment(last["n"]) / "run.log"
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return bound_tail(strip_control(text))

    # --- checking and committing ----------------------------------------------------------

    def _check_and_commit(self, record: dict[str, Any], exp_dir: Path) -> str | None:
        """Commit the change, or return why it is rejected (the worktree is then reset)."""
        n = record["n"]
        parent = self._best_commit()
        record["parent"] = parent
        if record["baseline"]:
            (exp_dir / "diff.patch").write_text("")
            problems = self.fingerprint.problems(Fingerprint.of(self.rd.worktree))
            if problems:
                self._pause_with_error("; ".join(problems))
                return "; ".join(problems)
            record["commit"] = parent
            self.wt.set_ref(gitops.experiment_ref(self.tag, n), parent)
            self.journal.update_state(commit=parent)
            return None
        change = self.wt.change()
        (exp_dir / "diff.patch").write_text(change.diff, encoding="utf-8")
        problems = scope_problems(change.paths, self.config.loop.mutable) + off_limits_additions(change.diff)
        for problem in self.fingerprint.problems(Fingerprint.of(self.rd.worktree)):
            if "manifest" in problem:
                # The data cache changed (no agent edit does that): hold the loop for a human.
                self._pause_with_error(problem)
                problems.append(problem)
            elif "prepare.py" not in change.paths:
                problems.append(problem)
        if problems:
            self.wt.reset_to(parent)
            return "; ".join(problems)
        message = f"autoresearch #{n:04d}: {record['description']}\n\n{record['hypothesis']}".strip()
        commit = self.wt.commit(message)
        self.wt.set_ref(gitops.experiment_ref(self.tag, n), commit)
        record["commit"] = commit
        self.journal.update_state(commit=commit)
        return None

    # --- training and evaluation -------------------------------------------------------------

    def _run_child(self, cmd: list[str], env: dict[str, str], log: Path):
        """Run train.py or the evaluator in the worktree under the run's limits, logging to ``log``.

        Its process group is in state.json while it runs, so a restarted engine can kill
        what a killed one left behind.
        """
        result = run_process(
            cmd,
            cwd=self.rd.worktree,
            env=env,
            log_path=log,
            timeout=self.timeout,
            hang_seconds=self.config.loop.hang_seconds,
            tick=self._tick,
            should_kill=self._should_kill,
            grace=self.kill_grace,
            on_start=lambda pid: self.journal.update_state(train_pgid=pid),
        )
        self.journal.update_state(train_pgid=None)
        return result

    def _train_and_evaluate(self, n: int, exp_dir: Path, timings: dict[str, float]) -> Outcome:
        ckpt = exp_dir / "checkpoint.pt"
        log = exp_dir / "run.log"
        env = self._child_env({"AUTORESEARCH_CHECKPOINT": str(ckpt)})
        self._phase("running")
        train = self._run_child([self.python, "train.py"], env, log)
        timings["train"] = round(train.wall_seconds, 3)
        summary = train.summary
        base = dict(train_seconds=parse_float(summary.get("training_seconds")),
                    peak_mem_mb=parse_float(summary.get("peak_mem_mb")), summary=summary)
        failure = classify_failure(train)
        if failure == "killed":
            return Outcome(self._killed_status(), error=self._killed_reason(), **base)
        if failure:
            return Outcome(failure, error=_failure_message(failure, train, self), log_tail=train.tail[-30:], **base)
        if not ckpt.exists():
            return Outcome("crash", error="train.py exited 0 but wrote no checkpoint to $AUTORESEARCH_CHECKPOINT",
                           log_tail=train.tail[-30:], **base)

        # Between training and evaluation: the run must not have touched the evaluator,
        # the data manifest or any tracked file (the evaluator loads this train.py).
        tampered = self.fingerprint.problems(Fingerprint.of(self.rd.worktree))
        dirty = self.wt.dirty_tracked()
        if tampered or dirty:
            what = tampered + ([f"training modified tracked files: {', '.join(dirty)}"] if dirty else [])
            if any("manifest" in w for w in tampered):
                self._pause_with_error("; ".join(tampered))
            return Outcome("rejected", error="; ".join(what), **base)

        self._phase("evaluating")
        with open(log, "ab") as f:
            f.write(f"\n{EVAL_MARKER}\n".encode())
        eval_json = exp_dir / "eval.json"
        ev = self._run_child(
            [self.python, "prepare.py", "evaluate", "--train", str(self.rd.worktree / "train.py"),
             "--checkpoint", str(ckpt), "--out", str(eval_json)],
            env,
            log,
        )
        timings["eval"] = round(ev.wall_seconds, 3)
        failure = classify_failure(ev)
        if failure == "killed":
            return Outcome(self._killed_status(), error=self._killed_reason(), **base)
        if failure:
            status = failure if failure in ("oom", "timeout", "hang") else "crash"
            return Outcome(status, error=f"evaluation failed: {_failure_message(failure, ev, self)}",
                           log_tail=ev.tail[-30:], **base)
        data = rundir.read_json(eval_json)
        value = data.get(METRIC) if isinstance(data, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and metric_is_bad(value):
            return Outcome("nan", error=f"{METRIC} is {value}", **base)
        if metric_is_bad(value):
            return Outcome("crash", error=f"eval.json has no numeric {METRIC}", log_tail=ev.tail[-30:], **base)
        return Outcome("ok", metric=float(value), **base)

    def _should_kill(self) -> bool:
        f = self.flight
        return self._stop.is_set() or (f is not None and f.skip)

    def _killed_status(self) -> str:
        return "interrupted" if self._stop.is_set() else "skipped"

    def _killed_reason(self) -> str:
        return "the engine was stopped during this experiment" if self._stop.is_set() else "skipped by a human"

    def _child_env(self, extra: dict[str, str]) -> dict[str, str]:
        return minimal_env({
            "AUTORESEARCH_CACHE": str(cache_dir()),
            "AUTORESEARCH_TIME_BUDGET": f"{self.budget:g}",
            **extra,
        })

    # --- deciding and journaling --------------------------------------------------------------

    def _finish(self, record: dict[str, Any], outcome: Outcome, timings: dict[str, float], t0: float) -> str:
        """Decide, keep or revert, and write the result. Returns "recorded" or "fatal"."""
        t = time.monotonic()
        n = record["n"]
        self._phase("deciding")
        f = self.flight
        status = outcome.status
        record.update(metric=outcome.metric, error=outcome.error, train_seconds=outcome.train_seconds,
                      peak_mem_mb=outcome.peak_mem_mb, summary=outcome.summary)
        if outcome.log_tail:
            record["log_tail"] = outcome.log_tail
        best_before = dict(self.best) if self.best else None
        new_best = False
        if status == "ok" and record["baseline"]:
            status = "baseline"
            metrics = [r["metric"] for r in self.results if r.get("status") == "baseline"] + [outcome.metric]
            b = estimate_baseline(metrics)
            self.baseline_info = {"metric": b.metric, "noise": b.noise, "runs": b.runs}
            record["noise"] = b.noise
            if best_before:
                record["delta"] = outcome.metric - best_before["metric"]
            self.best = {"n": n, "metric": b.metric, "commit": record["commit"]}
            new_best = True
        elif status == "ok":
            noise = (self.baseline_info or {}).get("noise", 0.0)
            loop = self.config.loop
            d = decide(outcome.metric, best_before["metric"], decision=loop.decision, min_delta=loop.min_delta,
                       noise_k=loop.noise_k, noise=noise, forced=bool(f and f.keep))
            status = d.status
            record.update(delta=d.delta, noise=noise, threshold=d.threshold, forced=d.forced)
            if status == "keep":
                self.best = {"n": n, "metric": outcome.metric, "commit": record["commit"]}
                new_best = True
        elif f and f.keep:
            self._command_event("keep", None, refused(f"experiment #{n:04d} ended as {status}: nothing to keep"))
        record["status"] = status

        # Keep the branch at the best commit and only the best checkpoint on disk.
        if new_best:
            if best_before and best_before["n"] != n:
                (self.rd.experiment(best_before["n"]) / "checkpoint.pt").unlink(missing_ok=True)
        else:
            (self.rd.experiment(n) / "checkpoint.pt").unlink(missing_ok=True)
        if self.rd.worktree.exists():
            self.wt.reset_to(self._best_commit())
        timings["decide_revert"] = round(time.monotonic() - t, 3)

        record["ended_at"] = time.time()
        record["wall_seconds"] = round(time.monotonic() - t0, 3)
        record["timings"] = timings
        self._journal_result(record)
        self._say_result(record)

        if record["baseline"] and status not in ("baseline", "skipped", "interrupted") and not self.baseline_info:
            self._fatal(f"the unmodified train.py failed its baseline run ({status}): "
                        f"see {self.rd.experiment(n) / 'run.log'}")
            return "fatal"
        return "recorded"

    def _journal_result(self, record: dict[str, Any]) -> None:
        self.journal.append_result(record)
        self.results.append(record)
        self.journal.event("result", **_short(record))
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
        self.journal.update_state(best=self.best, baseline=self.baseline_info, counts=counts)

    def _say_result(self, r: dict[str, Any]) -> None:
        metric = f"{METRIC} {r['metric']:.6f}" if isinstance(r.get("metric"), float) else f"{METRIC} -"
        extra = ""
        if isinstance(r.get("delta"), float):
            extra = f"  delta {r['delta']:+.6f}"
            if isinstance(r.get("threshold"), float):
                extra += f" (needed < -{r['threshold']:.6f})"
        if r.get("forced"):
            extra += " forced"
        why = f"  [{_one_line(r['error'])[:120]}]" if r.get("error") and r["status"] != "keep" else ""
        self.say(f"#{r['n']:04d} {r['status']:<11} {metric}{extra}  {r.get('description', '')}{why}")

    def _record_skeleton(self, n: int, baseline: bool, started_at: float | None) -> dict[str, Any]:
        return {
            "n": n, "status": None, "metric": None, "metric_name": METRIC, "delta": None, "noise": None,
            "threshold": None, "forced": False, "commit": None, "parent": self._best_commit(),
            "description": "", "hypothesis": "", "started_at": started_at, "ended_at": None,
            "train_seconds": None, "wall_seconds": None, "peak_mem_mb": None,
            "agent": None, "notes": [], "baseline": baseline, "error": None,
        }

    def _best_commit(self) -> str:
        return self.best["commit"] if self.best else self.base_commit

    # --- phases, pausing, heartbeats -----------------------------------------------------------

    def _phase(self, phase: str) -> None:
        self._phase_name = phase
        f = self.flight
        n = f.n if f else None
        if f:
            f.phase = phase
        self.journal.update_state(phase=phase, phase_started_at=round(time.time(), 3), paused=self.paused,
                                  error=self.error)
        self.journal.event("phase", n=n, phase=phase)
        label = f"#{n:04d} " if n else ""
        desc = ""
        if phase == "running" and self.journal.state.get("description"):
            desc = "  " + self.journal.state["description"]
        self.say(f"{label}{phase}{desc}")

    def _tick(self) -> None:
        self.journal.heartbeat()

    def _hold_while_paused(self) -> bool:
        with self._ctl:
            if self.pause_requested:
                self.paused, self.pause_requested = True, False
        if not self.paused:
            return True
        self.journal.update_state(paused=True, pause_requested=False)
        self._phase("paused")
        while not self._stop.is_set():
            with self._ctl:
                if not self.paused:
                    break
            time.sleep(0.1)
            self._tick()
        return not self._stop.is_set()

    def _pause_with_error(self, message: str) -> None:
        with self._ctl:
            self.error = message
            self.paused = True
        self.journal.event("error", message=message, n=self.flight.n if self.flight else None)
        self.journal.update_state(error=message, paused=True)
        self.say(f"paused: {message}")

    def _fatal(self, message: str) -> None:
        self.error = message
        self.journal.event("error", message=message, n=None)
        self._phase("error")
        self.say(f"error: {message}")

    def _write_full_state(self, phase: str) -> None:
        self._phase_name = phase
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
        self.journal.update_state(
            tag=self.tag, pid=os.getpid(), phase=phase, phase_started_at=round(time.time(), 3),
            experiment=None, started_at=None, budget=self.budget, timeout=self.timeout, paused=False,
            pause_requested=False, stop_requested=False, best=self.best, baseline=self.baseline_info,
            counts=counts, agent={"name": getattr(self.agent, "name", "?"), "model": getattr(self.agent, "model", None)},
            cost_usd=self.cost_usd, hypothesis=None, description=None, error=None, config=self.config.to_dict(),
            branch=gitops.branch_name(self.tag), worktree=str(self.rd.worktree), notes_pending=list(self.notes),
            train_pgid=None, commit=None,
        )

    def _agent_label(self) -> str:
        model = getattr(self.agent, "model", None)
        return f"{getattr(self.agent, 'name', '?')}" + (f" ({model})" if model else "")

    # --- control commands (socket thread) -------------------------------------------------------

    def _on_command(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd, text = request["cmd"], request.get("text")
        if cmd == "ping":
            f = self.flight
            return accepted(f"engine pid {os.getpid()}, phase {self._phase_name}" + (f", experiment #{f.n:04d}" if f else ""))
        with self._ctl:
            reply = getattr(self, f"_cmd_{cmd}")(text)
        self._command_event(cmd, text, reply)
        return reply

    def _command_event(self, cmd: str, text: str | None, reply: dict[str, Any]) -> None:
        self.journal.event("command", cmd=cmd, text=text, result=reply["result"],
                           reason=reply.get("reason") or reply.get("message") or "")

    def _cmd_pause(self, text: str | None) -> dict[str, Any]:
        if self.paused:
            return refused("already paused")
        if self.pause_requested:
            return refused("a pause is already requested")
        self.pause_requested = True
        self.journal.update_state(pause_requested=True)
        f = self.flight
        return accepted(f"will pause after experiment #{f.n:04d} finishes" if f else "pausing")

    def _cmd_resume(self, text: str | None) -> dict[str, Any]:
        if not self.paused and not self.pause_requested:
            return refused("not paused")
        was_cost = bool(self.error and self.error.startswith("cost cap"))
        self.paused = self.pause_requested = False
        self.error = None
        self.failures = 0
        if was_cost:
            self.cost_cap_lifted = True
        self.journal.update_state(paused=False, pause_requested=False, error=None)
        return accepted("resumed past the cost cap for this session" if was_cost else "resumed")

    def _cmd_skip(self, text: str | None) -> dict[str, Any]:
        f = self.flight
        if f is None or f.phase in ("deciding",):
            return refused("no experiment is in progress")
        f.skip = True
        return accepted(f"skipping experiment #{f.n:04d}")

    def _cmd_keep(self, text: str | None) -> dict[str, Any]:
        f = self.flight
        if f is None or f.phase == "deciding":
            return refused("no experiment is in progress")
        if f.baseline:
            return refused(f"experiment #{f.n:04d} is a baseline run: there is no change to keep")
        f.keep = True
        return accepted(f"will keep experiment #{f.n:04d} if it finishes with a {METRIC}")

    def _cmd_stop(self, text: str | None) -> dict[str, Any]:
        self._stop.set()
        self.journal.update_state(stop_requested=True)
        f = self.flight
        return accepted(f"stopping (experiment #{f.n:04d} will be recorded as interrupted)" if f and f.phase != "proposing"
                        else "stopping")

    def _cmd_note(self, text: str | None) -> dict[str, Any]:
        text = (text or "").strip()
        if not text:
            return refused("a note needs text")
        self.notes.append(text)
        self.journal.update_state(notes_pending=list(self.notes))
        return accepted(f"note queued for the next proposal ({len(self.notes)} pending)")


# --- helpers ----------------------------------------------------------------------------------


def scope_problems(paths: list[str], mutable: list[str]) -> list[str]:
    """Why a change may not run: empty, touches the evaluator, or leaves the mutable files."""
    if not paths:
        return ["the change is empty (nothing differs from the best commit)"]
    problems = []
    if "prepare.py" in paths:
        problems.append("changed prepare.py (the evaluator is immutable)")

    def allowed(p: str) -> bool:
        return any(p == m or (m.endswith("/") and p.startswith(m)) for m in mutable)

    outside = sorted(p for p in set(paths) if p != "prepare.py" and not allowed(p))
    if outside:
        problems.append(f"changed files outside its scope ({', '.join(mutable)}): {', '.join(outside[:10])}")
    return problems


def _failure_message(status: str, run, engine: Engine) -> str:
    if status == "timeout":
        return f"killed after the {engine.timeout:g} s wall-clock limit"
    if status == "hang":
        return f"no output and no CPU progress for {engine.config.loop.hang_seconds:g} s"
    last = next((line.strip() for line in reversed(run.tail) if line.strip()), "")
    if status == "oom":
        if run.killed_by_signal == 9:
            return "killed by SIGKILL (out of memory?)"
        return _one_line(last)[:300] or "out of memory"
    if status == "nan":
        return run.fail_line or _one_line(last)[:300]
    code = f"killed by signal {run.killed_by_signal}" if run.killed_by_signal else f"exit status {run.returncode}"
    return f"{code}: {_one_line(last)[:300]}" if last else code


def _short(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "status", "metric", "delta", "threshold", "forced", "commit", "description", "baseline", "error")
    return {k: record.get(k) for k in keys}


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def _write_hypothesis(exp_dir: Path, record: dict[str, Any]) -> None:
    lines = [f"# #{record['n']:04d} {record['description']}", "", record.get("hypothesis") or ""]
    if record.get("notes"):
        lines += ["", "## Notes from a human", *[f"- {n}" for n in record["notes"]]]
    (exp_dir / "hypothesis.md").write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def _echo(data: bytes) -> None:
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except (OSError, ValueError):
        pass
