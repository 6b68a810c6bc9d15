"""The research loop: propose -> check -> commit -> train -> evaluate -> decide -> journal.

One Engine runs one tag. The main thread runs the loop below; each step lives in its
own module and works on the shared ``Session`` (engine/session.py):

    startup.py   open the tag (lock, worktree, resume from the journal), close it
    preflight.py reasons to pause before an experiment (disk, data, failure streaks)
    propose.py   ask the agent for a change (in a worker thread)
    pipeline.py  ... or take the one it wrote while the previous experiment trained
    commit.py    check the change and commit it, or reject it
    trial.py     train the commit (warm.py: a process started ahead, in the sandbox) and
                 score it (prepare.py's scorer, or target.py for another repository)
    decide.py    the keep rule (pure functions); finish.py applies it, keeps or reverts,
                 journals
    steering.py  pause / resume / skip / keep / stop / note from the control socket

Conventions worth knowing:

- The baseline (unmodified train.py) runs ``baseline_runs`` times; their mean is the
  first "best" and their sample standard deviation the noise. If the baseline itself
  fails before any baseline succeeded, the engine stops with an error.
- ``max_cost`` pauses the loop before the next proposal once the run's agent cost
  reaches it; ``resume`` lifts the cap for the rest of this engine's life.
- ``max_experiments`` counts the experiments of this engine process (a resumed run
  does that many more).
- ``stop`` (or SIGTERM/SIGINT/SIGHUP) kills a run in progress and records it as
  ``interrupted``; the worktree is left at the best commit.
"""

from __future__ import annotations

import errno
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Callable

from .agents.base import Agent
from .commit import check_and_commit, commit_baseline
from .config import Config
from .errors import UsageError
from .decide import Decision
from .finish import finish, judge
from .journal import JournalError
from .lanes import Job, make_lanes, reapply_on_best, record_unrun, run_lanes, twin_in_flight
from .preflight import preflight_problem
from .pipeline import NextProposal
from .propose import propose
from .results import Result
from .runner import KILL_GRACE_SECONDS
from .session import Flight, Session
from .startup import close_tag, open_tag, record_interrupted_flight
from .target import run_guard
from .trial import Outcome, ScorerTampered, run_trial
from .warm import discard_warm


class Engine:
    def __init__(self, repo: Path | str, tag: str, config: Config, agent: Agent, *,
                 out: Callable[[str], None] | None = None, kill_grace: float = KILL_GRACE_SECONDS,
                 agent_retry_seconds: float = 5.0, agent_stop_wait: float = 2.0, **kwargs):
        self.s = Session(repo, tag, config, agent, out=out, kill_grace=kill_grace,
                         agent_retry_seconds=agent_retry_seconds, agent_stop_wait=agent_stop_wait, **kwargs)
        if config.loop.ray:  # every worker's runs go to a node of a Ray cluster (engine/remote.py)
            from .remote import make_remote_lanes

            self.s.lanes = make_remote_lanes(config)
        else:
            self.s.lanes = make_lanes(config.loop.effective_workers(), config.loop.overlap)
        self.next: NextProposal | None = None  # a pipelined proposal being written
        self.taken = 0  # experiments this engine has numbered (for max_experiments)

    # Read-only views for callers and tests.
    @property
    def rd(self):
        return self.s.rd

    @property
    def results(self) -> list[Result]:
        return self.s.results

    @property
    def error(self) -> str | None:
        return self.s.error

    def run(self) -> int:
        """Run until stopped or out of experiments. Returns the process exit status."""
        s = self.s
        server = None
        try:
            server = open_tag(s)
            self._loop()
        except UsageError:
            raise
        except ScorerTampered as e:  # something with the user's rights edited the trusted scorer: stop
            s.exit_code = 1
            s.error = f"{e}; start a new tag (and find out what changed it)"
            record_interrupted_flight(s)
            s.journal.event("error", message=s.error, n=None)
            s.set_phase("error")
            s.say(f"error: {s.error}")
        except JournalError as e:  # a full disk or a read-only file system: nothing recorded is lost
            s.exit_code = 1
            s.error = f"{e}; free space (or make it writable) and start the engine again"
            s.set_phase("error")
            s.say(f"error: {s.error}")
        except Exception as e:  # a bug or a broken repository: say so in one line, keep the journal sane
            s.exit_code = 1
            s.error = describe_failure(e)
            try:
                record_interrupted_flight(s)
            except JournalError:
                pass  # restarting records it from state.json
            s.journal.event("error", message=s.error, n=None)
            s.set_phase("error")
            s.say(f"error: {s.error}")
        finally:
            if self.next is not None:
                self.next.cancel(s)
            discard_warm(s)
            if any(lane.remote is not None for lane in s.lanes):
                from .remote import close_remote

                close_remote(s)
            close_tag(s, server)
        if s.exit_code == 0 and s.stop_signal is not None:
            return 128 + s.stop_signal
        return s.exit_code

    def request_stop(self, signum: int | None = None) -> None:
        """Stop as soon as possible (signal handlers call this; it only sets a flag).

        Stopped by a signal, the engine exits with 128 + its number, as a shell would
        report it, so a job scheduler sees that it did not finish on its own.
        """
        if signum is not None and self.s.stop_signal is None:
            self.s.stop_signal = signum
            self.s.stop_reason = f"stopped by {signal.Signals(signum).name}"
        self.s.stop_event.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # started under nohup: leave it that way
            signal.signal(sig, lambda signum, frame: self.request_stop(signum))

    # --- the loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        s = self.s
        if s.several:
            run_lanes(s, self._lane_loop)
        else:
            self._lane_loop()

    def _lane_loop(self) -> None:
        """Experiments, one after another, until stopped or out of experiments (with
        several workers, every worker's thread runs this)."""
        s = self.s
        job: Job | None = None  # a number taken and not yet recorded (an agent retry keeps it)
        try:
            while not s.stopping:
                if not self._hold_while_paused():
                    break
                with s.decide_lock:
                    if job is None and self._out_of_experiments():
                        break
                    if self._pause_for_the_machine() or self._pause_for_the_cost_cap():
                        continue
                    job = job or self._take_job()
                if job is None:  # the other workers are running the baseline first
                    s.stop_event.wait(0.1)
                    s.tick()
                    continue
                outcome = self._experiment(job)
                if outcome == "retry":
                    continue
                job = None if outcome != "stopped" else job
                if outcome == "fatal":
                    s.exit_code = 1
                    s.stop_event.set()
                    break
        finally:
            if job is not None and s.several:
                record_unrun(s, job)  # the numbers of several workers stay contiguous

    def _out_of_experiments(self) -> bool:
        s, limit = self.s, self.s.config.loop.max_experiments
        if limit is None or self.taken < limit:
            return False
        if not s.flights() and s.stop_reason is None:  # the last worker to finish says so
            s.stop_reason = f"reached --max-experiments {limit}"
            s.say(s.stop_reason)
        return True

    def _pause_for_the_machine(self) -> bool:
        """Pause (with the reason) rather than start an experiment that cannot end well:
        too little disk, a run directory that cannot be written, a data cache that no
        longer matches its manifest, or a streak of failed runs."""
        s = self.s
        reason = preflight_problem(s)
        if reason:
            s.pause_with_error(reason)
            return True
        return False

    def _pause_for_the_cost_cap(self) -> bool:
        s = self.s
        cap = s.config.agent.max_cost
        if cap is not None and not s.cost_cap_lifted and s.cost_usd >= cap and not self._needs_baseline():
            s.pause_with_error(f"cost cap reached: ${s.cost_usd:.2f} of ${cap:.2f}; resume to continue past it")
            return True
        return False

    def _needs_baseline(self) -> bool:
        return self.s.standing.needs_baseline(self.s.budget, self.s.config.loop.baseline_runs)

    def _take_job(self) -> Job | None:
        """The next experiment's number and kind (under ``decide_lock``), or None when this
        worker must wait: every baseline run still needed is running on another worker."""
        s = self.s
        running = s.flights()
        if self._needs_baseline():
            st, runs = s.standing, s.config.loop.baseline_runs
            attempts = st.baseline_attempts if st.series_open and st.baseline_budget in (None, s.budget) else 0
            in_flight = sum(1 for f in running if f.baseline and not f.remeasure)
            if running and attempts + in_flight >= runs:
                return None
            job = Job(s.next_n, "baseline")
        else:
            reason = None if any(f.remeasure for f in running) else self._remeasure_reason()
            job = Job(s.next_n, "remeasure", reason) if reason else Job(s.next_n, "change")
        s.next_n += 1
        self.taken += 1
        return job

    def _experiment(self, job: Job) -> str:
        """One experiment. Returns "recorded", "retry" (nothing recorded), "stopped" or "fatal"."""
        s = self.s
        n = job.n
        baseline = job.kind == "baseline"
        remeasure = job.reason
        started = time.time()
        t0 = time.monotonic()
        parent = s.best_commit()
        with s.ctl:
            s.flight = Flight(n, job.kind != "change", started, remeasure=remeasure is not None)
        draft = Result(n=n, status="", metric_name=s.config.metric, baseline=job.kind != "change",
                       remeasure=remeasure is not None, started_at=started, parent=parent,
                       sandbox=s.sandbox.describe(), budget=s.budget, load_avg=_load_average(),
                       worker=s.lane.index if s.several else None)
        timings: dict[str, float] = {}
        if s.several:
            s.wt.reset_to(parent)  # this worker's worktree, at the best of the moment
        s.update_flight(experiment=n, started_at=started, baseline_run=draft.baseline, hypothesis=None,
                        description=None, commit=None, parent=parent, train_pgid=None, runs=[])
        try:
            metadata = None
            if baseline:
                runs = s.config.loop.baseline_runs
                series = s.standing.series_open and s.standing.baseline_budget in (None, s.budget)
                k = s.standing.baseline_attempts + 1 if series else 1
                if s.several:
                    k += sum(1 for f in s.flights() if f.baseline and not f.remeasure and f.n < n)
                what = "train.py" if s.config.target is None else ", ".join(s.config.loop.mutable)
                draft.description = f"baseline: unmodified {what} (run {k} of {runs})"
                draft.hypothesis = f"Measure the unmodified {what} to set the reference and estimate run-to-run noise."
            elif remeasure is not None:
                draft.description = f"re-measure the best (#{s.standing.best.n:04d}): {remeasure}"
                draft.hypothesis = ("Measure the current best again, unchanged, so that a change in the machine "
                                    "(its load, its clock) does not pass for a change in the model.")
            else:
                asked, metadata, known_problems = self._proposal(draft)
                timings["agent"] = round(time.monotonic() - t0, 3)
                if asked.outcome in ("retry", "stopped"):
                    return asked.outcome
                if asked.outcome == "failed":
                    with s.decide_lock:
                        return finish(s, draft, [Outcome("crash", error=asked.error)], None, timings, t0)
            s.update_flight(hypothesis=draft.hypothesis, description=draft.description)
            t = time.monotonic()
            s.set_phase("checking")  # from here on, a killed engine records this one as interrupted
            exp_dir = s.rd.experiment(n)
            exp_dir.mkdir(parents=True, exist_ok=True)
            _write_hypothesis(exp_dir, draft)
            rejected = (commit_baseline(s, draft, exp_dir) if draft.baseline
                        else check_and_commit(s, draft, exp_dir, metadata, known_problems))
            timings["check_commit"] = round(time.monotonic() - t, 3)
            if rejected:
                with s.decide_lock:
                    return finish(s, draft, [Outcome("rejected", error=rejected)], None, timings, t0)
            twin = twin_in_flight(s, job, draft.commit) if s.several and not draft.baseline else None
            if twin is not None:  # asked again (same number), now knowing what the other one runs
                job.twins += 1
                s.wt.reset_to(draft.parent)
                s.journal.event("proposal_dropped", n=n, description=draft.description,
                                reason=f"the same change as #{twin:04d}, which another worker is measuring")
                s.say(f"#{n:04d} proposal dropped: the same change as #{twin:04d}; asking again")
                return "retry"
            if s.should_kill():
                with s.decide_lock:
                    return finish(s, draft, [Outcome(s.killed_status(), error=s.killed_reason())], None, timings, t0)
            self._start_next_proposal(draft, exp_dir)
            return self._measure_and_finish(draft, exp_dir, timings, t0)
        except BaseException:
            try:  # the engine goes down with this experiment in flight: say so in the journal
                record_interrupted_flight(s)
            except JournalError:
                pass  # a restart records it from state.json
            raise
        finally:
            s.git_metadata_checked()
            with s.ctl:
                s.flight = None
            s.end_flight()

    def _proposal(self, draft: Result):
        """The change for this experiment: the pipelined proposal when one was written
        while the previous experiment trained (asked again if it no longer applies), else
        one asked for now. Returns (Asked, git metadata snapshot, known problems)."""
        s = self.s
        pending, self.next = self.next, None
        if pending is not None:
            s.set_phase("proposing")
            pending.draft.started_at, pending.draft.parent = draft.started_at, draft.parent
            pending.draft.budget, pending.draft.load_avg = draft.budget, draft.load_avg
            asked, metadata, problems = pending.take(s)
            _copy_proposal(pending.draft, draft)
            if asked.outcome != "dropped":
                return asked, metadata, problems
        metadata = s.watch_git_metadata()  # before the phase says so: a note sent from then on is for this one
        s.set_phase("proposing")
        return propose(s, draft), metadata, []

    def _start_next_proposal(self, draft: Result, exp_dir: Path) -> None:
        """While this experiment trains, let the agent write the next change (pipelining),
        unless the next experiment will surely be another baseline run."""
        s = self.s
        if self.next is not None or not s.config.effective_pipeline() or s.stopping:
            return
        if draft.baseline and not draft.remeasure and s.standing.baseline_attempts + 1 < s.config.loop.baseline_runs:
            return
        diff = (exp_dir / "diff.patch").read_text(encoding="utf-8") if (exp_dir / "diff.patch").exists() else ""
        upcoming = Result(n=draft.n + 1, status="", sandbox=draft.sandbox)
        self.next = NextProposal(s, upcoming, in_flight=draft, in_flight_diff=diff)

    def _measure_and_finish(self, draft: Result, exp_dir: Path, timings: dict[str, float], t0: float) -> str:
        """Train and score the commit, decide, journal. A change that beats the best is run
        again (``confirm_runs`` times) before it may be kept. With several workers the best
        may move while a change is measured: one that beats the best is then re-applied on
        the new best and measured there from scratch (engine/lanes.py). Each run's number is
        journaled (an event and state.json) as soon as it is known, so a kill loses none."""
        s = self.s
        outcomes = [run_trial(s, draft.n, draft.commit, exp_dir, timings, holdout=draft.baseline)]
        guarded = False
        while True:
            with s.decide_lock:  # judged and recorded against one best, whatever other workers do
                if draft.baseline or outcomes[-1].status != "ok":
                    return finish(s, draft, outcomes, None, timings, t0)
                # Another worker may have kept a change since this one started: a change that
                # beats the best it was measured on is carried onto the new best and measured there.
                decision = judge(s, [o.metric for o in outcomes], against=draft.parent)
                promising = decision.status in ("confirm", "keep")
                if promising and draft.parent != s.best_commit():
                    why = reapply_on_best(s, draft, exp_dir)
                    if why:
                        return finish(s, draft, outcomes, Decision("discard", decision.delta, decision.threshold,
                                                                   reason=why), timings, t0)
                    draft.rebased_runs += [o.metric for o in outcomes]
                    outcomes, guarded = [], False
                elif not promising or guarded:
                    if decision.status != "confirm" or s.should_kill():
                        return finish(s, draft, outcomes, decision, timings, t0)
            if promising and not guarded and outcomes:  # a [target]'s guard must pass before anything is kept
                guarded = True
                why = run_guard(s, draft.commit, exp_dir / "run.log")
                if why:
                    with s.decide_lock:
                        return finish(s, draft, outcomes, Decision("discard", decision.delta, decision.threshold,
                                                                   reason=why), timings, t0)
                continue  # judged again: the best may have moved while the guard ran
            if outcomes:
                s.journal.event("measurement", n=draft.n, run=len(outcomes), metric=outcomes[-1].metric)
            s.update_flight(runs=[o.metric for o in outcomes])
            run = len(draft.rebased_runs) + len(outcomes) + 1
            outcomes.append(run_trial(s, draft.n, draft.commit, exp_dir, timings, holdout=True, run=run))

    def _remeasure_reason(self) -> str | None:
        """Why the best should be measured again now (the drift guard), or None."""
        s, loop = self.s, self.s.config.loop
        st = s.standing
        if st.best is None:
            return None
        since = st.since_best_measured(s.next_n)
        if loop.remeasure_every and since >= loop.remeasure_every:
            return f"{since} experiments since it was last measured"
        reference, recent = st.best_throughput, st.recent_throughput
        if reference and len(recent) == 3 and since >= 3:
            moved = statistics.median(recent) / reference - 1
            if abs(moved) > loop.drift_ratio:
                return f"recent runs' throughput moved {moved:+.0%} from the best's"
        return None

    def _hold_while_paused(self) -> bool:
        s = self.s
        with s.ctl:
            if s.pause_requested:
                s.paused, s.pause_requested = True, False
        if not s.paused:
            return True
        s.journal.update_state(paused=True, pause_requested=False)
        if s.phase != "paused":  # (said once, whichever worker gets here first)
            s.set_phase("paused")
        while not s.stopping:
            with s.ctl:
                if not s.paused:
                    break
            time.sleep(0.1)
            s.tick()
        return not s.stopping


def _copy_proposal(source: Result, target: Result) -> None:
    """What a pipelined proposal filled in, onto the experiment's own draft."""
    for name in ("description", "hypothesis", "notes", "agent", "error", "rebased"):
        setattr(target, name, getattr(source, name))


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


NO_SPACE = ("No space left on device", "Out of diskspace", "Disk quota exceeded")


def describe_failure(e: BaseException) -> str:
    """One line for the log and the monitor (git's errors span several)."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    if getattr(e, "errno", None) == errno.ENOSPC or any(phrase in text for phrase in NO_SPACE):
        return f"no space left on device ({text[:300]}): free space and start the engine again; nothing recorded is lost"
    return text[:500]


def _write_hypothesis(exp_dir: Path, r: Result) -> None:
    lines = [f"# #{r.n:04d} {r.description}", "", r.hypothesis]
    if r.notes:
        lines += ["", "## Notes from a human", *[f"- {n}" for n in r.notes]]
    (exp_dir / "hypothesis.md").write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
