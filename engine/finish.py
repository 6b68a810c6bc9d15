"""Deciding an experiment, keeping or reverting it, and writing its result.

A scored baseline run refines the baseline (its mean is the first best); a re-measure
of the best adds to the best's own measurements. A change is kept only by the rule in
engine/decide.py (every run and their mean beat the best by more than the noise allows,
after ``confirm_runs`` confirmation runs), or when a person forced it. Either way the
branch ends at the best commit and only the best experiment keeps its checkpoint.
"""

from __future__ import annotations

import shutil
import statistics
import time

from .control import refused
from .decide import Decision, decide, noise_for_decisions
from .results import Result, estimate_baseline
from .session import Session
from .steering import acknowledge
from .trial import Outcome


def judge(s: Session, runs: list[float], against: str | None = None) -> Decision:
    """The rule applied to a change's runs so far, against the current best, or against
    the commit ``against`` it was measured on (an older best: with several workers)."""
    loop = s.config.loop
    f = s.flight
    reference, reference_runs = s.standing.best.metric, s.standing.best_runs
    measured = s.standing.measurements.get((against, s.budget)) if against else None
    if measured and against != s.best_commit():
        reference, reference_runs = statistics.fmean(measured), len(measured)
    return decide(runs, reference, decision=loop.decision, min_delta=loop.min_delta,
                  noise_k=loop.noise_k, noise=decision_noise(s), best_runs=reference_runs,
                  confirm_runs=loop.confirm_runs, forced=bool(f and f.keep), direction=s.config.direction)


def decision_noise(s: Session) -> float:
    """Pooled noise, shrunk toward ``noise_prior`` (a share of the baseline metric)."""
    base = s.standing.baseline
    prior = s.config.loop.noise_prior * abs(base.metric) if base else 0.0
    return noise_for_decisions(s.standing.noise(), prior)


def finish(s: Session, draft: Result, outcomes: list[Outcome], decision: Decision | None,
           timings: dict[str, float], t0: float) -> str:
    """Decide, keep or revert, and journal. Returns "recorded" or "fatal"."""
    t = time.monotonic()
    n = draft.n
    s.set_phase("deciding")
    f = s.flight
    first, last = outcomes[0], outcomes[-1]
    scored = [o for o in outcomes if o.status == "ok"]
    _fill_measurements(draft, outcomes, scored)
    best_before = s.standing.best
    if first.status != "ok":
        status = first.status
        if f and f.keep and not draft.baseline:
            acknowledge(s, "keep", None, refused(f"experiment #{n:04d} ended as {status}: nothing to keep"))
    elif draft.baseline:
        status = "baseline"
        if draft.remeasure:
            draft.delta = draft.metric - best_before.metric
        else:
            b = estimate_baseline(s.standing.series_metrics(s.budget) + [draft.metric])
            draft.noise, draft.noise_dof = b.noise, b.runs - 1
            if best_before:
                draft.delta = draft.metric - best_before.metric
    elif last.status != "ok" and last.status in ("skipped", "interrupted"):
        status = last.status
    elif last.status != "ok":
        status = "discard"  # it did not survive its own confirmation
        draft.error = f"confirmation run {len(outcomes)} ended as {last.status}: {last.error or ''}".strip()
    elif decision is not None and decision.status == "confirm":
        status = s.killed_status()  # stopped or skipped between two runs
        draft.error = s.killed_reason()
    else:
        status = decision.status
        draft.error = decision.reason or draft.error
        noise = s.standing.noise()
        draft.delta, draft.threshold, draft.forced = decision.delta, decision.threshold, decision.forced
        draft.noise, draft.noise_dof = round(decision_noise(s), 6), noise.dof
    draft.status = status
    if draft.remeasure and status != "baseline" and "non-causal" in (draft.error or "") and best_before:
        # The best itself was caught reading ahead: it, and every keep built on it, is revoked.
        draft.revokes = best_before.n
        draft.error = f"{draft.error}; #{best_before.n:04d} is no longer the best"

    # Keep the branch at the best commit and only the best experiment's scratch on disk.
    new_best = status == "keep" or (status == "baseline" and not draft.remeasure)
    if new_best and best_before and best_before.n != n:
        shutil.rmtree(s.rd.experiment(best_before.n) / "scratch", ignore_errors=True)
    elif not new_best and not draft.remeasure:
        shutil.rmtree(s.rd.experiment(n) / "scratch", ignore_errors=True)
    if draft.remeasure:
        shutil.rmtree(s.rd.experiment(n) / "scratch", ignore_errors=True)  # the best keeps its own checkpoint
    if s.rd.worktree.exists():
        s.wt.reset_to(draft.commit if new_best else s.best_commit())
    timings["decide_revert"] = round(time.monotonic() - t, 3)
    draft.ended_at = time.time()
    draft.wall_seconds = round(time.monotonic() - t0, 3)
    draft.timings = timings
    s.record(draft)
    if s.main_wt is not s.wt and s.rd.worktree.exists():
        s.main_wt.reset_to(s.best_commit())  # with several workers the run's worktree mirrors the best
    if draft.revokes is not None and s.rd.worktree.exists():
        s.wt.reset_to(s.best_commit())
        s.say(f"#{draft.n:04d} revoked #{draft.revokes:04d}: the best is #{s.standing.best.n:04d} again"
              if s.standing.best else f"#{draft.n:04d} revoked #{draft.revokes:04d}")
    s.journal.update_state(runs=[], noise=s.standing.noise())
    say_result(s, draft)

    if draft.baseline and not draft.remeasure and status not in ("baseline", "skipped", "interrupted") \
            and not s.standing.baseline:
        s.fatal(f"the unmodified code failed its baseline run ({status}): see {s.rd.experiment(n) / 'run.log'}")
        return "fatal"
    return "recorded"


def _fill_measurements(draft: Result, outcomes: list[Outcome], scored: list[Outcome]) -> None:
    """What the runs measured: the metric is the mean of the scored runs."""
    first = outcomes[0]
    draft.error = first.error if first.status != "ok" else None
    draft.train_spans = [o.span for o in outcomes if o.span]
    draft.self_reported = any(o.self_reported for o in outcomes)
    draft.summary = (scored[-1] if scored else first).summary
    if first.log_tail:
        draft.log_tail = first.log_tail
    if not scored:
        draft.train_seconds, draft.peak_mem_mb = first.train_seconds, first.peak_mem_mb
        return
    draft.runs = [o.metric for o in scored]
    draft.metric = statistics.fmean(draft.runs)
    holdouts = [o.holdout for o in scored if o.holdout is not None]
    draft.holdout = statistics.fmean(holdouts) if holdouts else None
    throughput = [o.tokens_per_sec for o in scored if o.tokens_per_sec is not None]
    draft.tokens_per_sec = round(statistics.fmean(throughput), 1) if throughput else None
    draft.num_steps = scored[0].num_steps
    seconds = [o.train_seconds for o in scored if o.train_seconds is not None]
    draft.train_seconds = statistics.fmean(seconds) if seconds else None
    memory = [o.peak_mem_mb for o in scored if o.peak_mem_mb is not None]
    draft.peak_mem_mb = max(memory) if memory else None


def say_result(s: Session, r: Result) -> None:
    metric = f"{r.metric_name} {r.metric:.6f}" if r.scored else f"{r.metric_name} -"
    if len(r.runs) > 1:
        metric += f" (mean of {len(r.runs)} runs)"
    extra = ""
    if r.delta is not None:
        extra = f"  delta {r.delta:+.6f}"
        if r.threshold is not None:
            extra += f" (needed < -{r.threshold:.6f})"
    if r.forced:
        extra += " forced"
    why = f"  [{' '.join(r.error.split())[:120]}]" if r.error and r.status != "keep" else ""
    s.say(f"#{r.n:04d} {r.status:<11} {metric}{extra}  {r.description}{why}")
