"""What status an experiment gets: failure classification and the keep/discard rule.

Pure functions over numbers and log lines, so every rule is easy to test and read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


@dataclass
class Decision:
    status: str  # "keep" or "discard"
    delta: float  # metric - best (negative is better)
    threshold: float  # how much lower than the best a change had to be
    forced: bool = False


def threshold_for(decision: str, min_delta: float, noise_k: float, noise: float) -> float:
    if decision == "strict":
        return 0.0
    return max(min_delta, noise_k * noise)


def decide(metric: float, best: float, *, decision: str, min_delta: float, noise_k: float,
           noise: float, forced: bool = False) -> Decision:
    """Keep only a change that beats the best by more than the threshold.

    "noise": by more than max(min_delta, k * noise). "strict": Karpathy's rule,
    any strictly lower value. ``forced`` (a human's keep) keeps whatever the number.
    """
    delta = metric - best
    threshold = threshold_for(decision, min_delta, noise_k, noise)
    better = delta < 0 if decision == "strict" else -delta > threshold
    status = "keep" if (better or forced) else "discard"
    return Decision(status=status, delta=delta, threshold=threshold, forced=forced and not better)
