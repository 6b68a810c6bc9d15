"""What status an experiment gets: failure classification and the keep/discard rule.

Pure functions over numbers and log lines, so every rule is easy to test and read.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from .results import Noise
from .runner import ProcessResult

_OOM = re.compile(r"out of memory|OutOfMemoryError|MemoryError|CUBLAS_STATUS_ALLOC_FAILED|std::bad_alloc", re.I)


def classify_failure(run: ProcessResult) -> str | None:
    """The status of a training process that did not succeed, or None if it did.

    timeout / hang: the engine killed it at a limit. oom: an out-of-memory error in
    its output, or SIGKILL that the engine did not send (the kernel's OOM killer).
    nan: a ``FAIL`` line (train.py's fail-fast on NaN or explosion). Anything else
    that exited non-zero is a crash.
    """
    if run.reason in ("timeout", "hang"):
        return run.reason
    if run.reason == "killed":
        return "killed"
    tail = run.tail[-80:]
    if run.returncode == 0:
        return "nan" if run.fail_line else None
    if any(_OOM.search(line) for line in tail) or run.killed_by_signal == 9:
        return "oom"
    if run.fail_line or any(line.strip().startswith("FAIL") for line in tail):
        return "nan"
    return "crash"


def parse_float(text: str | None) -> float | None:
    """A number from a summary value like '58.3' or '1234.5 MB'; None if there is none."""
    if text is None:
        return None
    m = re.match(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", text)
    return float(m.group(1)) if m else None


# While few commits have been measured twice, the noise estimate is pooled with a prior
# worth this many degrees of freedom: two baseline runs that happen to agree must not
# make every small wobble look like an improvement.
PRIOR_DOF = 3


def noise_for_decisions(measured: Noise, prior_sigma: float) -> float:
    """The noise the keep rule uses: the pooled estimate shrunk toward a prior."""
    if prior_sigma <= 0:
        return measured.sigma
    return math.sqrt((PRIOR_DOF * prior_sigma**2 + measured.dof * measured.sigma**2) / (PRIOR_DOF + measured.dof))


@dataclass
class Decision:
    status: str  # "keep", "discard", or "confirm" (it passed so far: measure it again)
    delta: float  # mean of its runs - best (negative is better)
    threshold: float  # how much lower than the best the mean had to be
    forced: bool = False
    reason: str | None = None  # why not, when it is not what the numbers say (a failed guard)


def thresholds(decision: str, min_delta: float, noise_k: float, noise: float, runs: int,
               best_runs: int) -> tuple[float, float]:
    """(bar for each single run, bar for the mean of ``runs`` runs), against a best that
    is the mean of ``best_runs`` runs: k standard deviations of the difference."""
    if decision == "strict":
        return 0.0, 0.0
    best_runs = max(best_runs, 1)
    single = noise_k * noise * math.sqrt(1 + 1 / best_runs)
    mean = noise_k * noise * math.sqrt(1 / max(runs, 1) + 1 / best_runs)
    return max(min_delta, single), max(min_delta, mean)


def decide(runs: list[float], best: float, *, decision: str, min_delta: float, noise_k: float, noise: float,
           best_runs: int = 1, confirm_runs: int = 0, forced: bool = False, direction: str = "min") -> Decision:
    """Keep a change only when every one of its runs, and their mean, beat the best.

    "noise": by more than k standard deviations of the difference (and ``min_delta``).
    "strict": Karpathy's rule, strictly better. A change that passes with fewer than
    1 + ``confirm_runs`` runs is a candidate ("confirm"): it is measured again before
    anything is kept. ``forced`` (a human's keep) keeps whatever the numbers. With
    ``direction`` "max" higher is better; ``delta`` is always mean - best.
    """
    if direction == "max":  # decide on the negated numbers: lower is better there
        d = decide([-x for x in runs], -best, decision=decision, min_delta=min_delta, noise_k=noise_k, noise=noise,
                   best_runs=best_runs, confirm_runs=confirm_runs, forced=forced)
        return Decision(d.status, -d.delta, d.threshold, d.forced)
    mean = statistics.fmean(runs)
    delta = mean - best
    single, bar = thresholds(decision, min_delta, noise_k, noise, len(runs), best_runs)
    if decision == "strict":
        better = all(x < best for x in runs)
    else:
        better = all(best - x > single for x in runs) and -delta > bar
    if forced:
        return Decision("keep", delta, bar, forced=not (better and len(runs) > confirm_runs))
    if not better:
        return Decision("discard", delta, bar)
    return Decision("keep" if len(runs) > confirm_runs else "confirm", delta, bar)
