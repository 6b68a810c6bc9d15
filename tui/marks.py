"""Marks on experiments that deserve a second look. No Textual here.

The rules, each stated once, applied to a keep against the best it replaced (``RULES``):

- ``H`` holdout worse: the keep improved the metric (val_bpb), but its holdout score is
  higher than the best's before it. The gain may be fitted to the validation slice.
- ``T`` throughput differs: the keep's tokens/s differs by more than
  ``THROUGHPUT_RATIO`` from the best's before it. Part of the change in the metric may
  come from the machine (its load, its clock), or the change trades speed for steps.

and to any result, on what it says of itself or of an earlier one:

- ``S`` self-reported: the metric is what the run printed (a ``[target]`` without a
  trusted ``evaluate`` command), not a trusted evaluation;
- ``R`` revoked #N: a re-measure of the best caught it reading ahead; the keep #N and
  every best built on it no longer count (``Result.revokes``; ``Standing`` undoes them);
- ``X`` revoked: that keep, on the row of the keep itself.

``Marks`` folds results in order, like ``engine.results.Standing`` (it folds them into
a Standing as it goes, so a caller that keeps one pays for one fold), and keeps the
marks of each experiment by its number. The best's holdout is the mean of the
holdouts recorded for the best's commit so far (baseline runs, confirmation runs,
re-measures); its throughput is ``Standing.best_throughput``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterable

from engine.results import Result, Standing

THROUGHPUT_RATIO = 0.20  # a keep whose tokens/s differs more than this from the best's is marked


@dataclass(frozen=True)
class Mark:
    code: str  # one letter, for a table cell
    label: str  # a few words
    why: str  # one sentence with the numbers

    def line(self) -> str:
        return f"{self.label}: {self.why}"


@dataclass(frozen=True)
class BestBefore:
    """What a keep is compared with: the best just before it."""

    n: int
    metric: float
    holdout: float | None
    throughput: float | None


def holdout_worse(r: Result, best: BestBefore) -> Mark | None:
    if r.delta is None or r.delta >= 0 or r.holdout is None or best.holdout is None:
        return None
    if r.holdout <= best.holdout:
        return None
    return Mark("H", "holdout worse",
                f"{r.metric_name} improved by {-r.delta:.4f}, but the holdout rose from {best.holdout:.4f} "
                f"(best #{best.n}) to {r.holdout:.4f}: the gain may not carry beyond the validation slice")


def throughput_differs(r: Result, best: BestBefore) -> Mark | None:
    if r.tokens_per_sec is None or not best.throughput:
        return None
    change = r.tokens_per_sec / best.throughput - 1
    if abs(change) <= THROUGHPUT_RATIO:
        return None
    return Mark("T", "throughput differs",
                f"{r.tokens_per_sec:,.0f} tokens/s against {best.throughput:,.0f} for the best before it "
                f"(#{best.n}, {change:+.0%}): the machine may have changed, not only the model")


RULES = (holdout_worse, throughput_differs)


def marks_for(r: Result, best: BestBefore | None) -> tuple[Mark, ...]:
    """The marks of one keep, given the best before it (other results get none here)."""
    if r.status != "keep" or best is None:
        return ()
    return tuple(m for m in (rule(r, best) for rule in RULES) if m is not None)


SELF_REPORTED = Mark("S", "self-reported", "the run printed this number itself; no trusted evaluation measured it")


def revoking(r: Result, best: int | None) -> Mark:
    """The mark of a re-measure that revoked keep #``r.revokes``; ``best``: the best after it."""
    again = f"the best is #{best} again" if best is not None else "there is no best"
    return Mark("R", f"revoked #{r.revokes}",
                f"measured again, the best was caught reading ahead: #{r.revokes} and every keep built on it "
                f"no longer count, and {again}")


def revoked(by: int) -> Mark:
    return Mark("X", "revoked", f"#{by} measured it again and caught it reading ahead: it no longer counts")


Key = tuple[str | None, float | None]


class Marks:
    """Every experiment's marks, by number, folded in order."""

    def __init__(self) -> None:
        self.by_n: dict[int, tuple[Mark, ...]] = {}
        self._holdouts: dict[Key, list[float]] = {}
        self._keys: dict[int, Key] = {}  # each experiment's (commit, budget): where a best's holdouts are
        self._bests: list[int] = []  # every experiment that became the best, in order

    @classmethod
    def of(cls, results: Iterable[Result]) -> "Marks":
        marks, standing = cls(), Standing()
        for r in results:
            marks.add(r, standing)
        return marks

    def get(self, n: int) -> tuple[Mark, ...]:
        return self.by_n.get(n, ())

    def best_before(self, standing: Standing) -> BestBefore | None:
        best = standing.best
        if best is None:
            return None
        key = self._keys.get(best.n)
        holdouts = self._holdouts.get(key) if key else None
        return BestBefore(best.n, best.metric, statistics.fmean(holdouts) if holdouts else None,
                          standing.best_throughput)

    def add(self, r: Result, standing: Standing) -> tuple[Mark, ...]:
        """Mark ``r`` (and, when it revokes one, the keeps it revokes), then fold it into
        ``standing``."""
        found = marks_for(r, self.best_before(standing)) if r.status == "keep" else ()
        if r.self_reported and r.scored:
            found += (SELF_REPORTED,)
        before = standing.best
        standing.add(r)
        key = (r.commit or standing.base_commit, r.budget)
        self._keys[r.n] = key
        if r.holdout is not None and r.status in ("baseline", "keep", "discard"):
            self._holdouts.setdefault(key, []).append(r.holdout)
        after = standing.best
        if after is not None and after.n == r.n and (before is None or before.n != r.n):
            self._bests.append(r.n)  # this result made the best
        if r.revokes is not None:
            found += (revoking(r, after.n if after is not None else None),)
            for n in [n for n in self._bests if n >= r.revokes]:
                self.by_n[n] = self.get(n) + (revoked(r.n),)
            self._bests = [n for n in self._bests if n < r.revokes]
        if found:
            self.by_n[r.n] = found
        return found
