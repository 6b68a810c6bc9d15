"""Small text formatters shared by the panes and screens. No Textual here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

SPARK_CHARS = "▁▂▃▄▅▆▇█"

# Status -> style spec; $names are the theme's colours (tui.themes.theme_style resolves
# them). The statuses are words, so NO_COLOR loses nothing.
STATUS_STYLE = {
    "baseline": "bold",
    "keep": "bold $success",
    "discard": "dim",
    "crash": "bold $error",
    "timeout": "$error",
    "hang": "$error",
    "oom": "$error",
    "nan": "$error",
    "skipped": "$warning",
    "rejected": "$warning",
    "interrupted": "$warning",
}


DEFAULT_METRIC = "val_bpb"  # engine.results.METRIC: this project's own scorer
SELF_REPORTED = "self-reported"  # a metric the run printed itself, not a trusted evaluation


@dataclass(frozen=True)
class Metric:
    """What the run measures: its name and which way is better.

    The name is the results' own (``Result.metric_name``), else the ``[target]`` metric in
    state.json's configuration, else val_bpb; the direction is the target's ("min" unless
    it says "max"). Every label of the monitor comes from here, never a literal val_bpb.
    """

    name: str = DEFAULT_METRIC
    direction: str = "min"  # "min": lower is better; "max": higher is better

    @classmethod
    def of(cls, results: Sequence[Any] = (), config: Mapping[str, Any] | None = None) -> "Metric":
        target = (config or {}).get("target")
        target = target if isinstance(target, dict) else {}
        name = results[-1].metric_name if results else target.get("metric")
        direction = target.get("direction")
        return cls(name if isinstance(name, str) and name else DEFAULT_METRIC,
                   "max" if direction == "max" else "min")

    @property
    def better(self) -> str:
        return "higher is better" if self.direction == "max" else "lower is better"

    def improved(self, change: Any) -> bool:
        """Whether a change of the metric (new - old) is for the better."""
        if not isinstance(change, (int, float)):
            return False
        return change > 0 if self.direction == "max" else change < 0

    def title(self) -> str:
        """"val_bpb · lower is better": the chart's title."""
        return f"{self.name} · {self.better}"


def metric(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "—"


def delta(value: Any, digits: int = 4) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    return f"{value:+.{digits}f}"


def duration(seconds: Any) -> str:
    """62 -> "1m02s"; 3720 -> "1h02m"; None -> "—"."""
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def coarse_duration(seconds: float) -> str:
    """A duration that changes at most once a minute: "<1m", "5m", "2h05m"."""
    if seconds < 60:
        return "<1m"
    m = int(seconds // 60)
    return f"{m}m" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def noise(n: Any) -> str:
    """The pooled run-to-run noise as the header shows it: "noise ±0.0042 (6 runs)", or
    "noise: prior" while no commit has been measured twice (the engine uses its prior)."""
    if n is None or not n.dof:
        return "noise: prior"
    return f"noise ±{n.sigma:.4f} ({n.runs} runs)"


def ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    return f"{duration(max(0.0, now - ts))} ago"


def clock(ts: float | None) -> str:
    """Local wall-clock time of a unix timestamp, like 14:03:27."""
    if ts is None:
        return "—"
    return time.strftime("%H:%M:%S", time.localtime(ts))


def bytes_(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def spark(values: Sequence[float], width: int, lo: float | None = None, hi: float | None = None) -> str:
    """The last ``width`` values as block characters (a sparkline that costs one string)."""
    values = list(values)[-width:]
    if not values:
        return ""
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    span = hi - lo
    top = len(SPARK_CHARS) - 1
    out = []
    for v in values:
        idx = 0 if span <= 0 else int(round((min(max(v, lo), hi) - lo) / span * top))
        out.append(SPARK_CHARS[idx])
    return "".join(out)


def one_line(text: Any, width: int | None = None) -> str:
    s = " ".join(str(text or "").split())
    if width is not None and len(s) > width:
        s = s[: max(0, width - 1)] + "…"
    return s


def short_commit(commit: Any) -> str:
    return str(commit)[:7] if commit else "—"
