"""Several experiments at once: one lane per worker (``[loop] workers``, ``--workers``).

A lane is a thread of the engine with a worktree of its own
(``.autoresearch/<tag>/lanes/<k>``, on no branch), its own warm training process and its
share of the machine: one GPU (``CUDA_VISIBLE_DEVICES``) and cpu_count / workers threads.
The run's worktree, on the tag's branch, then only mirrors the best. The engine stays the
only writer of the journal; lanes take turns (``s.decide_lock``) to take a number, to
decide and to record, so the keep rule and the noise estimate are those of one worker.

- Numbers are global and contiguous: a lane takes the next one as it starts an
  experiment, and every number taken is recorded (one stopped while its agent was still
  proposing as ``interrupted``), so no number is skipped or used twice.
- Baseline runs go to several lanes at once; changes wait until the baseline is set.
- A change that beats the best after another lane kept a change is re-applied on the
  new best (git's three-way merge) and measured there from scratch (engine/loop.py); one
  that no longer applies is discarded with the reason.
- Each lane's experiment is one entry of ``state.flights``; every event and record
  names its worker.

Overlap (``[loop] overlap``, ``--overlap``): two lanes per device, taking turns to train
(``Lane.turn``, one lock per device, held from a training process's release to its exit).
While one lane's experiment is scored, decided and its next change proposed, the other's
trains: the device no longer waits for scoring. The pair shares the device's GPU and
threads; only one of them trains at a time, and the wait for the turn (phase
``waiting``) is not part of any budget.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import gitops
from .config import cuda_available, visible_gpus
from .journal import JournalError
from .results import Result, experiment_ref
from .session import Lane, Session


@dataclass
class Job:
    """An experiment's number and kind, taken before it starts."""

    n: int
    kind: str  # "baseline", "remeasure" or "change"
    reason: str | None = None  # why the best is re-measured
    twins: int = 0  # proposals dropped because another worker was measuring the same code


MAX_TWINS = 3  # then a twin runs anyway: an agent that can only propose that is better measured twice


def twin_in_flight(s: Session, job: Job, commit: str) -> int | None:
    """The number of another worker's experiment that measures the same code as
    ``commit`` (two agents that proposed the same change at once), or None."""
    tree = s.wt.tree(commit)
    with s.decide_lock:  # of two at once, the first to get here runs, the second is asked again
        for lane in s.lanes:
            if lane is not s.lane and lane.tree == tree and lane.flight is not None and job.twins < MAX_TWINS:
                return lane.flight.n
        s.lane.tree = tree
    return None


def make_lanes(workers: int, overlap: bool = False) -> list[Lane]:
    """``workers`` lanes, each with its share of the machine (one lane: all of it); with
    ``overlap``, two lanes per share that take turns to train on it."""
    if workers == 1 and not overlap:
        return [Lane(0)]
    gpus = visible_gpus() if cuda_available() else []
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    lanes = []
    for k in range(workers):
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} if workers > 1 else {}
        if gpus and workers > 1:
            env["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]
        turn = threading.Lock() if overlap else None
        for _ in range(2 if overlap else 1):
            lanes.append(Lane(len(lanes), env=dict(env), turn=turn))
    return lanes


def take_turn(s: Session, poll: float = 0.1) -> bool:
    """Wait until this lane's device is free to train on (with ``overlap``; at once
    without). False when the run is stopped or skipped meanwhile. Pair with ``end_turn``."""
    turn = s.lane.turn
    if turn is None or turn.acquire(blocking=False):
        return True
    s.set_phase("waiting")
    while not turn.acquire(timeout=poll):
        s.tick()
        if s.should_kill():
            return False
    return True


def end_turn(s: Session) -> None:
    if s.lane.turn is not None:
        s.lane.turn.release()


def open_lane_worktrees(s: Session) -> None:
    """Every lane's worktree at the best (lane 0 alone works in the run's worktree);
    worktrees of workers a previous engine had and this one has not are removed."""
    if not s.several:
        s.lanes[0].wt = s.main_wt
        return
    repo = gitops.open_repo(s.repo_path)
    for lane in s.lanes:
        lane.wt = gitops.Worktree.open_or_create_detached(repo, s.rd.lane_worktree(lane.index), s.tag,
                                                          s.best_commit())
    folder = s.rd.lane_worktree(0).parent
    for extra in sorted(folder.iterdir()):
        if not extra.name.isdigit() or int(extra.name) >= len(s.lanes):
            repo.git.worktree("remove", "--force", str(extra))
    if len({lane.env.get("CUDA_VISIBLE_DEVICES") for lane in s.lanes}) < len(s.lanes) and cuda_available():
        s.say(f"note: {len(s.lanes)} workers share {len(visible_gpus())} GPU(s)")


def run_lanes(s: Session, work: Callable[[], None]) -> None:
    """Run ``work`` in one thread per lane until every lane is done. A lane that fails
    stops the others; its exception is raised here, after they have all finished."""
    failures: list[BaseException] = []

    def lane_main(lane: Lane) -> None:
        s.bind_lane(lane)
        try:
            work()
        except BaseException as e:  # handed to the main thread, which reports it
            failures.append(e)
            s.stop_event.set()

    threads = [threading.Thread(target=lane_main, args=(lane,), name=f"worker-{lane.index}", daemon=True)
               for lane in s.lanes]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # the main thread stays free for signals
            t.join(0.2)
    if failures:
        raise failures[0]


def record_unrun(s: Session, job: Job) -> None:
    """A number taken but never run (the engine stopped while the agent proposed):
    recorded as interrupted, so that the numbers of several workers stay contiguous."""
    with s.decide_lock:
        if any(r.n == job.n for r in s.results):
            return
        try:
            s.record(Result(n=job.n, status="interrupted", baseline=job.kind != "change",
                            remeasure=job.kind == "remeasure", started_at=time.time(), ended_at=time.time(),
                            error="the engine was stopped before this experiment ran", budget=s.budget,
                            parent=s.best_commit(), worker=s.lane.index))
        except JournalError:
            pass  # a restart records it from state.json


def reapply_on_best(s: Session, draft: Result, exp_dir: Path) -> str | None:
    """Carry a candidate measured on an older best onto the current one (called under
    ``decide_lock``): a new commit on the best, the experiment's ref and diff.patch
    moved to it. Returns why it cannot be, or None."""
    best, best_n = s.best_commit(), s.standing.best.n if s.standing.best else None
    wt = s.wt
    patch = wt.diff(draft.parent, draft.commit)
    wt.reset_to(best)
    if not wt.apply(patch, three_way=True):
        wt.reset_to(best)
        return f"it no longer applies on the new best (#{best_n:04d}), which changed the same lines"
    change = wt.change()
    if not change.paths:
        wt.reset_to(best)
        return f"the new best (#{best_n:04d}) already contains this change"
    message = f"autoresearch #{draft.n:04d}: {draft.description}\n\n{draft.hypothesis}\n\nRe-applied on #{best_n:04d}."
    commit = wt.commit(message.strip())
    (exp_dir / "diff.patch").write_text(change.diff, encoding="utf-8")
    wt.set_ref(experiment_ref(s.tag, draft.n), commit)
    s.say(f"#{draft.n:04d} beats the best measured before #{best_n:04d} was kept: re-applied on it, measuring again")
    s.journal.event("rebased", n=draft.n, onto=best, onto_n=best_n, commit=commit)
    draft.parent, draft.commit, draft.rebased = best, commit, True
    s.update_flight(parent=best, commit=commit)
    return None
