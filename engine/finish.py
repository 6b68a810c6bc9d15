"""Deciding an experiment, keeping or reverting it, and writing its result.

A scored baseline run refines the baseline (its mean is the first best). A scored
change is kept only by the rule in engine/decide.py, or when a person forced it. Either
way the branch ends at the best commit and only the best experiment keeps its
checkpoint on disk.
"""

from __future__ import annotations

import shutil
import time

from .control import refused
from .decide import decide
from .results import METRIC, Result, estimate_baseline
from .session import Session
from .steering import acknowledge
from .trial import Outcome


def finish(s: Session, draft: Result, outcome: Outcome, timings: dict[str, float], t0: float) -> str:
    """Decide, keep or revert, and journal. Returns "recorded" or "fatal"."""
    t = time.monotonic()
    n = draft.n
    s.set_phase("deciding")
    f = s.flight
    status = outcome.status
    draft.metric, draft.error = outcome.metric, outcome.error
    draft.train_seconds, draft.peak_mem_mb, draft.summary = outcome.train_seconds, outcome.peak_mem_mb, outcome.summary
    if outcome.log_tail:
        draft.log_tail = outcome.log_tail
    best_before = s.standing.best
    if status == "ok" and draft.baseline:
        status = "baseline"
        b = estimate_baseline(s.standing.series_metrics(s.budget) + [outcome.metric])
        draft.noise = b.noise
        if best_before:
            draft.delta = outcome.metric - best_before.metric
    elif status == "ok":
        noise = s.standing.baseline.noise if s.standing.baseline else 0.0
        loop = s.config.loop
        d = decide(outcome.metric, best_before.metric, decision=loop.decision, min_delta=loop.min_delta,
                   noise_k=loop.noise_k, noise=noise, forced=bool(f and f.keep))
        status = d.status
        draft.delta, draft.noise, draft.threshold, draft.forced = d.delta, noise, d.threshold, d.forced
    elif f and f.keep:
        acknowledge(s, "keep", None, refused(f"experiment #{n:04d} ended as {status}: nothing to keep"))
    draft.status = status

    # Keep the branch at the best commit and only the best experiment's scratch on disk.
    new_best = status in ("baseline", "keep")
    if new_best and best_before and best_before.n != n:
        shutil.rmtree(s.rd.experiment(best_before.n) / "scratch", ignore_errors=True)
    elif not new_best:
        shutil.rmtree(s.rd.experiment(n) / "scratch", ignore_errors=True)
    if s.rd.worktree.exists():
        s.wt.reset_to(draft.commit if new_best else s.best_commit())
    timings["decide_revert"] = round(time.monotonic() - t, 3)
    draft.ended_at = time.time()
    draft.wall_seconds = round(time.monotonic() - t0, 3)
    draft.timings = timings
    s.record(draft)
    say_result(s, draft)

    if draft.baseline and status not in ("baseline", "skipped", "interrupted") and not s.standing.baseline:
        s.fatal(f"the unmodified train.py failed its baseline run ({status}): see {s.rd.experiment(n) / 'run.log'}")
        return "fatal"
    return "recorded"


def say_result(s: Session, r: Result) -> None:
    metric = f"{METRIC} {r.metric:.6f}" if r.scored else f"{METRIC} -"
    extra = ""
    if r.delta is not None:
        extra = f"  delta {r.delta:+.6f}"
        if r.threshold is not None:
            extra += f" (needed < -{r.threshold:.6f})"
    if r.forced:
        extra += " forced"
    why = f"  [{' '.join(r.error.split())[:120]}]" if r.error and r.status != "keep" else ""
    s.say(f"#{r.n:04d} {r.status:<11} {metric}{extra}  {r.description}{why}")
