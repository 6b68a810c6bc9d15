"""The morning report: what a run did, as Markdown that renders on GitHub.

``build_report`` reads a run directory (results.jsonl, run.json, experiments/NNNN/diff.patch)
and says: when the run ran and on what, the best against the baseline with the noise
(``Standing``: the one rule for best, baseline and noise) and the holdout, each kept
change with its delta, hypothesis and diff, the failures by kind, the time spent, the
agent's cost, a text chart of the metric and a table of every experiment. ``chart_svg``
draws the same chart as a small SVG (plotext writes only text or HTML), which
``write_report`` saves next to the Markdown.

Every string from an agent or a log is stripped of control characters and escaped, so
the report renders as text: no raw HTML, no stray tables, no fences it can break out of.
The metric is named as the results record it (val_bpb, or a [target]'s metric) and its
direction is the one in state.json's configuration ("lower is better" unless "max").
Nothing here imports Textual; plotext is imported only to draw the text chart.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import escape as xml_escape

from . import gitops, rundir
from .errors import UsageError
from .results import FAILED, METRIC, NOT_MEASURED, STATUSES, Result, Standing, running_best
from .rundir import RunDir
from .untrusted import strip_control

MAX_DIFF_LINES = 60  # of each kept change's diff shown in the report
MAX_DIFF_CHARS = 6000
MAX_DIFF_READ = 4 * 1024 * 1024  # bytes of a diff.patch read at all
MAX_HYPOTHESIS = 300  # characters of a kept change's hypothesis
MAX_TEXT = 160  # characters of a description or an error line
PROBLEM_KINDS = tuple(s for s in STATUSES if s in FAILED or s in NOT_MEASURED)

# --- text that renders as text ------------------------------------------------------------

# What could start formatting mid-line (emphasis, code, links, HTML, tables, strikethrough).
_MD_INLINE = re.compile(r"([\\`*_\[\]<|~])")
# What could start a block at the beginning of a line (heading, quote, list, rule).
_MD_LEADING = re.compile(r"^([#>+=-])|^(\d+)([.)])")


def plain(text: object, limit: int = MAX_TEXT) -> str:
    """One line of untrusted text: no control characters, whitespace collapsed, bounded."""
    out = " ".join(strip_control(str(text or "")).split())
    return out if len(out) <= limit else out[: limit - 1] + "…"


def md(text: object, limit: int = MAX_TEXT) -> str:
    """One line of untrusted text, safe anywhere in Markdown, a table cell included."""
    out = _MD_INLINE.sub(r"\\\1", plain(text, limit))
    return _MD_LEADING.sub(lambda m: "\\" + m.group(1) if m.group(1) else m.group(2) + "\\" + m.group(3), out)


def fenced(text: str, info: str = "") -> str:
    """A code block whose fence is longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip(chr(10))}\n{fence}"


def _last_line(text: str | None) -> str:
    for line in reversed((text or "").splitlines()):
        if line.strip():
            return line
    return ""


def _when(ts: float, tz: tzinfo | None) -> str:
    t = datetime.fromtimestamp(ts, tz) if tz is not None else datetime.fromtimestamp(ts).astimezone()
    return t.strftime("%Y-%m-%d %H:%M %Z").strip()


def duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _num(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return ""
    return f"{x:+.6f}" if signed else f"{x:.6f}"


def _cost(r: Result) -> float:
    cost = (r.agent or {}).get("cost_usd")
    return float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) and math.isfinite(cost) else 0.0


def metric_name(results: Sequence[Result]) -> str:
    """The metric's name, as the results record it (val_bpb, or a [target]'s metric)."""
    return plain(results[-1].metric_name if results else METRIC, 60) or METRIC


def _md_name(name: str) -> str:
    """A metric's name for Markdown: a plain identifier as it is, anything else escaped."""
    return name if re.fullmatch(r"\w[\w.]*", name) else md(name, 60)


def better(rd: RunDir) -> str:
    """Which way the run's metric is better, from state.json's configuration."""
    target = (rd.read_state().config or {}).get("target")
    return "higher is better" if isinstance(target, dict) and target.get("direction") == "max" else "lower is better"


def _table(header: Sequence[str], align: Sequence[str], rows: list[list[str]]) -> list[str]:
    rule = {"l": "---", "r": "---:"}
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule[a] for a in align) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


# --- the report ---------------------------------------------------------------------------


def build_report(rd: RunDir, *, image: str | None = None, tz: tzinfo | None = None) -> str:
    """The run as Markdown. ``image``: the chart's file name, linked when given; ``tz``: the
    time zone of dates (default: the machine's)."""
    results = rd.read_results()
    info = rundir.read_json(rd.run_info)
    info = info if isinstance(info, dict) else {}
    base_commit = info.get("base_commit") if isinstance(info.get("base_commit"), str) else None
    st = Standing.of(results, base_commit)
    tag = md(rd.tag, 80)

    out = [f"# autoresearch report: {tag}", ""]
    if not results:
        out += [f"Run {tag} on branch `{gitops.branch_name(rd.tag)}` has no experiments yet.", ""]
        return "\n".join(out)
    name, direction = metric_name(results), better(rd)
    out += _facts(rd, results, st, info, tz)
    out += _standing(results, st, _md_name(name))
    out += _chart_section(results, image, name, direction)
    out += _kept(rd, results, _md_name(name), direction)
    out += _problems(results)
    out += _every(results, _md_name(name))
    return "\n".join(out).rstrip() + "\n"


def _facts(rd: RunDir, results: list[Result], st: Standing, info: dict, tz: tzinfo | None) -> list[str]:
    starts = [r.started_at for r in results if r.started_at is not None]
    ends = [r.ended_at for r in results if r.ended_at is not None]
    counts = ", ".join(f"{s} {st.counts[s]}" for s in STATUSES if st.counts[s])
    counts += "".join(f", {md(s, 20)} {c}" for s, c in sorted(st.counts.items()) if s not in STATUSES)
    rows = [["branch", f"`{gitops.branch_name(rd.tag)}`"]]
    if isinstance(info.get("base_commit"), str):
        rows.append(["started from", f"`{plain(info['base_commit'], 40)[:12]}`"])
    rows.append(["experiments", f"{len(results)} (#{results[0].n:04d} to #{results[-1].n:04d}): {counts}"])
    if starts and ends:
        rows.append(["dates", f"{_when(min(starts), tz)} to {_when(max(ends), tz)}"])
        rows.append(["time spent", f"{duration(max(ends) - min(starts))} from the first start to the last end"])
    walls = [r.wall_seconds for r in results if r.wall_seconds is not None]
    if walls:
        trained = sum(r.train_seconds for r in results if r.train_seconds is not None)
        rows.append(["in experiments", f"{duration(sum(walls))} (training: {duration(trained)})"])
    budgets = sorted({r.budget for r in results if r.budget is not None})
    if budgets:
        rows.append(["budget", ", ".join(f"{b:g} s" for b in budgets) + " of training per experiment"])
    sandboxes = list(dict.fromkeys(md(r.sandbox, 80) for r in results if r.sandbox))
    if sandboxes:
        rows.append(["sandbox", "; ".join(sandboxes)])
    memory = [r.peak_mem_mb for r in results if r.peak_mem_mb is not None]
    if memory:
        rows.append(["peak memory", f"{max(memory) / 1024:.2f} GB (the most any run used)"])
    loads = [r.load_avg for r in results if r.load_avg is not None]
    if loads:
        rows.append(["load average", f"{min(loads):.2f} to {max(loads):.2f} (1 minute, as each experiment started)"])
    agents = list(dict.fromkeys(
        md(a.get("name"), 40) + (f" ({md(a.get('model'), 60)})" if a.get("model") else "")
        for r in results if (a := r.agent) and a.get("name")))
    if agents:
        rows.append(["agent", ", ".join(agents)])
    costs = [_cost(r) for r in results]
    paid = sum(1 for c in costs if c > 0)
    rows.append(["agent cost", f"${sum(costs):.2f}" + (f" over {paid} proposal{'s' if paid != 1 else ''}" if paid else "")])
    return _table(["", ""], ["l", "l"], rows) + [""]


def _standing(results: list[Result], st: Standing, name: str = METRIC) -> list[str]:
    out = ["## Best against the baseline", ""]
    base, best = st.baseline, st.best
    noise = st.noise()
    if base is None or best is None:
        return out + ["No baseline run finished with a score: nothing to compare with.", ""]
    by_n = {r.n: r for r in results}
    best_result = by_n.get(best.n)
    base_holdouts = [r.holdout for r in results if r.status == "baseline" and not r.remeasure
                     and r.holdout is not None and r.budget == st.baseline_budget]
    base_holdout = statistics.fmean(base_holdouts) if base_holdouts else None
    best_is_baseline = best_result is not None and best_result.status == "baseline"
    rows = [[f"baseline, mean of {base.runs} run{'s' if base.runs != 1 else ''}", _num(base.metric), _num(base_holdout)]]
    if not best_is_baseline:
        commit = f" `{plain(best.commit, 40)[:7]}`" if best.commit else ""
        forced = ", forced" if best_result is not None and best_result.forced else ""
        runs = st.best_runs
        best_holdout = best_result.holdout if best_result is not None else None
        rows.append([f"best: #{best.n:04d}{commit}{forced}, mean of {runs} run{'s' if runs != 1 else ''}",
                     _num(best.metric), _num(best_holdout)])
        change = best.metric - base.metric
        pct = f" ({change / base.metric:+.2%})" if base.metric else ""
        holdout_change = best_holdout - base_holdout if best_holdout is not None and base_holdout is not None else None
        rows.append(["change", f"{_num(change, True)}{pct}", _num(holdout_change, True)])
    out += _table(["", name, "holdout"], ["l", "r", "r"], rows) + [""]
    if best_is_baseline:
        out.append("No change has beaten the baseline yet.")
    if noise.dof:
        line = (f"Noise: σ = {noise.sigma:.6f} per run, pooled from every commit measured more than once "
                f"({noise.runs} runs, {noise.dof} degree{'s' if noise.dof != 1 else ''} of freedom).")
        if not best_is_baseline and noise.sigma > 0:
            a, b = max(base.runs, 1), max(st.best_runs, 1)
            se = noise.sigma * math.sqrt(1 / a + 1 / b)
            line += (f" The change is {abs(best.metric - base.metric) / se:.1f} times its standard error "
                     f"(σ·√(1/{a} + 1/{b})).")
        out.append(line)
    else:
        out.append("Noise: unknown (no commit was measured more than once).")
    return out + [""]


def _chart_section(results: list[Result], image: str | None, name: str = METRIC,
                   direction: str = "lower is better") -> list[str]:
    out = [f"## {_md_name(name)} by experiment", ""]
    if image:
        out += [f"![{_md_name(name)} by experiment]({image})", ""]
    chart = text_chart(results, metric=name, direction=direction)
    if chart:
        out += [fenced(chart, "text"), ""]
    elif not image:
        out += ["No experiment has a score yet.", ""]
    return out


def _kept(rd: RunDir, results: list[Result], name: str = METRIC, direction: str = "lower is better") -> list[str]:
    kept = [r for r in results if r.status == "keep"]
    out = [f"## Kept changes ({len(kept)})", ""]
    if not kept:
        return out + ["None.", ""]
    for r in kept:
        out += [f"### #{r.n:04d} {md(r.description) or '(no description)'}", ""]
        facts = [f"{name} {_num(r.metric)}" + (f" over {len(r.runs)} runs" if len(r.runs) > 1 else "")]
        if r.delta is not None:
            bar = f"above +{r.threshold:.6f}" if direction.startswith("higher") else f"below -{r.threshold:.6f}"
            needed = f" (needed {bar})" if r.threshold is not None and not r.forced else ""
            facts.append(f"{_num(r.delta, True)} against the best before it{needed}")
        if r.holdout is not None:
            facts.append(f"holdout {_num(r.holdout)}")
        if r.commit:
            facts.append(f"commit `{plain(r.commit, 40)[:7]}`")
        if r.forced:
            facts.append("**kept by a person** (forced)")
        out += ["; ".join(facts) + ".", ""]
        if r.hypothesis.strip():
            out += ["> " + md(r.hypothesis, MAX_HYPOTHESIS), ""]
        out += _diff(rd, r.n)
    return out


def _diff(rd: RunDir, n: int) -> list[str]:
    path = rd.experiment(n) / "diff.patch"
    rel = f"experiments/{n:04d}/diff.patch"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DIFF_READ)
    except OSError:
        return [f"(no `{rel}`)", ""]
    lines = strip_control(data.decode("utf-8", errors="replace")).splitlines()
    if not lines:
        return ["(empty diff)", ""]
    shown, size = [], 0
    for line in lines[:MAX_DIFF_LINES]:
        size += len(line) + 1
        if size > MAX_DIFF_CHARS:
            break
        shown.append(line)
    out = [fenced("\n".join(shown), "diff")]
    if len(shown) < len(lines):
        more = len(lines) - len(shown)
        out.append(f"({more} more line{'s' if more != 1 else ''} in `{rel}`)")
    return out + [""]


def _problems(results: list[Result]) -> list[str]:
    counts = Counter(r.status for r in results if r.status in PROBLEM_KINDS)
    out = ["## Failures and refusals", ""]
    if not counts:
        return out + ["None.", ""]
    rows = []
    for kind in PROBLEM_KINDS:
        if not counts[kind]:
            continue
        latest = [r for r in results if r.status == kind][-1]
        line = _last_line(latest.error) or _last_line("\n".join(latest.log_tail or []))
        rows.append([kind, str(counts[kind]), f"#{latest.n:04d}: {md(line) or '(no message)'}"])
    return out + _table(["kind", "count", "latest"], ["l", "r", "l"], rows) + [""]


def _every(results: list[Result], name: str = METRIC) -> list[str]:
    rows = []
    for r in results:
        status = r.status + (" (forced)" if r.forced else "") + (" (re-measure)" if r.remeasure else "")
        rows.append([str(r.n), md(status, 40), _num(r.metric), _num(r.delta, True), md(r.description)])
    return ["## Every experiment", ""] + _table(["#", "status", name, "delta", "description"],
                                                 ["r", "l", "r", "r", "l"], rows) + [""]


# --- the chart ----------------------------------------------------------------------------


def _series(results: list[Result]) -> tuple[list[tuple[int, float, str]], list[tuple[int, float]]]:
    """(n, metric, kind) of every scored result, kind "keep", "baseline" or "other"; and
    the running best after each result."""
    points = []
    for r in results:
        if r.scored:
            kind = "keep" if r.status == "keep" else "baseline" if r.status == "baseline" else "other"
            points.append((r.n, float(r.metric), kind))
    best = [(n, b) for n, b in running_best(results) if b is not None]
    return points, best


def _y_range(points: list[tuple[int, float, str]]) -> tuple[float, float]:
    """The metric's range to draw: up to twice the spread of the baseline and kept points
    above them, so that one run far off does not flatten the rest (it is drawn at the top)."""
    values = [m for _, m, _ in points]
    lo, hi = min(values), max(values)
    anchors = [m for _, m, k in points if k != "other"]
    if anchors:
        cap = max(anchors) + 2 * (max(anchors) - lo)
        if cap > lo:
            hi = min(hi, cap)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.001, hi + 0.001
    return lo, hi


def text_chart(results: list[Result], width: int = 76, height: int = 20, *, metric: str | None = None,
               direction: str = "lower is better") -> str | None:
    """The metric's chart as plain text (plotext, no colours), or None with nothing scored.
    ``metric``: its name (default: the results'); ``direction``: "lower is better" or
    "higher is better"."""
    points, best = _series(results)
    if not points:
        return None
    import plotext as plt

    lo, hi = _y_range(points)
    points = [(n, min(m, hi), k) for n, m, k in points]  # a run far off sits on the top edge
    plt.clear_figure()
    try:
        plt.plot_size(width, height)
        plt.theme("clear")
        if best:  # a step line: the best holds until the next one
            steps = [best[0]] + [p for i in range(1, len(best)) for p in ((best[i][0], best[i - 1][1]), best[i])]
            plt.plot([n for n, _ in steps], [b for _, b in steps], marker=".")
        other = [(n, m) for n, m, k in points if k == "other"]
        if other:
            plt.scatter([n for n, _ in other], [m for _, m in other], marker="x")
        kept = [(n, m) for n, m, k in points if k != "other"]
        if kept:
            plt.scatter([n for n, _ in kept], [m for _, m in kept], marker="o")
        ns = [n for n, _, _ in points] + [n for n, _ in best]
        step = max(1, math.ceil((max(ns) - min(ns)) / 8))
        plt.xticks(list(range(min(ns), max(ns) + 1, step)))
        plt.ylim(lo, hi)
        plt.title(f"{metric or metric_name(results)} by experiment ({direction})")
        plt.xlabel("experiment   (o baseline or kept, x not kept, . the best so far)")
        text = plt.uncolorize(plt.build())
    finally:
        plt.clear_figure()
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def chart_svg(results: list[Result], width: int = 720, height: int = 360, *, metric: str | None = None,
              direction: str = "lower is better") -> str | None:
    """The metric's chart as a small self-contained SVG, or None with nothing scored.

    Every scored experiment is a point (kept: green, baseline: blue, the rest: grey), the
    running best a step line. Points far above the baseline are drawn at the top edge
    (as triangles) so that one bad run does not flatten the rest."""
    points, best = _series(results)
    if not points:
        return None
    left, right, top, bottom = 72, 16, 36, 44
    w, h = width - left - right, height - top - bottom
    lo, hi = _y_range(points)
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    n_lo = min(n for n, _, _ in points + [(n, b, "") for n, b in best])
    n_hi = max(n for n, _, _ in points + [(n, b, "") for n, b in best])
    n_lo, n_hi = n_lo - 0.5, n_hi + 0.5  # no point on the frame

    def x(n: float) -> float:
        return round(left + (n - n_lo) / (n_hi - n_lo) * w, 1)

    def y(v: float) -> float:
        return round(top + (hi - min(max(v, lo), hi)) / (hi - lo) * h, 1)

    colour = {"keep": "#1a7f37", "baseline": "#0969da", "other": "#8c959f"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="22" font-size="14" fill="#24292f">'
        f'{xml_escape(metric or metric_name(results))} by experiment ({direction})</text>',
    ]
    for i in range(5):  # horizontal grid and the metric's ticks
        v = lo + (hi - lo) * i / 4
        parts.append(f'<line x1="{left}" y1="{y(v)}" x2="{left + w}" y2="{y(v)}" stroke="#d0d7de" stroke-width="1"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4}" text-anchor="end" fill="#57606a">{v:.4f}</text>')
    step = max(1, math.ceil((n_hi - n_lo) / 10))
    for n in range(math.ceil(n_lo), math.floor(n_hi) + 1, step):
        parts.append(f'<text x="{x(n)}" y="{top + h + 16}" text-anchor="middle" fill="#57606a">{n}</text>')
    parts.append(f'<text x="{left + w / 2}" y="{height - 8}" text-anchor="middle" fill="#57606a">experiment</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#8c959f"/>')
    if best:
        path = []
        for i, (n, b) in enumerate(best):
            if i:
                path.append(f"{x(n)},{y(best[i - 1][1])}")
            path.append(f"{x(n)},{y(b)}")
        parts.append(f'<polyline points="{" ".join(path)}" fill="none" stroke="#1a7f37" stroke-width="2"/>')
    for n, m, kind in points:
        if m > hi:  # off the chart: a triangle at the top edge
            cx, cy = x(n), top + 1
            parts.append(f'<polygon points="{cx - 4},{cy + 7} {cx + 4},{cy + 7} {cx},{cy}" fill="{colour[kind]}">'
                         f'<title>#{n:04d}: {m:.6f}</title></polygon>')
        else:
            parts.append(f'<circle cx="{x(n)}" cy="{y(m)}" r="{4 if kind != "other" else 3}" fill="{colour[kind]}">'
                         f'<title>#{n:04d}: {m:.6f}</title></circle>')
    legend = [("keep", "kept"), ("baseline", "baseline"), ("other", "not kept")]
    lx = left + w - 340
    parts.append(f'<line x1="{lx - 6}" y1="18" x2="{lx + 8}" y2="18" stroke="{colour["keep"]}" stroke-width="2"/>')
    parts.append(f'<text x="{lx + 12}" y="22" fill="#24292f">best so far</text>')
    for i, (kind, label) in enumerate(legend):
        cx = lx + 95 + i * 85
        parts.append(f'<circle cx="{cx}" cy="18" r="4" fill="{colour[kind]}"/>')
        parts.append(f'<text x="{cx + 8}" y="22" fill="#24292f">{xml_escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# --- writing ------------------------------------------------------------------------------


def write_report(rd: RunDir, out: Path, *, tz: tzinfo | None = None) -> tuple[Path, Path | None]:
    """Write the Markdown to ``out`` and the chart next to it (same name, .svg).
    Returns both paths (the chart's None when nothing is scored yet)."""
    out = Path(out)
    if out.suffix.lower() == ".svg":
        raise UsageError(f"--out {out}: the report is Markdown (the chart goes next to it as .svg)")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no such directory {out.parent}")
    image = out.with_suffix(".svg")
    svg = chart_svg(rd.read_results(), direction=better(rd))
    try:
        if svg is not None:
            image.write_text(svg, encoding="utf-8")
        out.write_text(build_report(rd, image=image.name if svg else None, tz=tz), encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    return out, image if svg else None
