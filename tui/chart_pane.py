"""The run's metric over the experiments: a one-line sparkline and a plot.

The metric is the run's own (val_bpb, or a [target]'s): the title gives its name and
which way is better. The plot shows every measurement as a dot, kept experiments at the
mean of their runs, re-measures of the best as their own marker, the running best as a
step line and the baseline as a reference line. The running best is the engine's
(``engine.results.running_best``), which follows kept changes whichever way is better.
It is rebuilt only when a result arrives.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.color import Color
from textual.containers import Vertical
from textual.content import Content
from textual.dom import DOMNode
from textual.widget import Widget
from textual.widgets import Tab

from engine.results import Result, running_best
from tui import fmt
from tui.themes import on_theme_change, theme_style

SPARK_WIDTH = 40
# What each part of the chart is drawn in: theme colours, as everywhere in the monitor.
SPARK_STYLE = "$primary"  # every value
BEST_STYLE = "bold $success"  # green is for kept experiments
# The plot's series: theme variable, and how far it is faded toward the background.
PLOT_COLOURS = {"all": ("foreground", 0.5), "kept": ("success", 0.0), "best": ("primary", 0.0),
                "baseline": ("accent", 0.0), "re-measure": ("secondary", 0.0)}
KEPT_MARKER = "●"  # a kept change (or a baseline run), at the mean of its runs
REMEASURE_MARKER = "◆"  # the best measured again, unchanged (the drift guard)
# The plot's canvas, axes and tick labels: no colour of their own, so the plot lies on
# the pane's background and its labels are in the pane's text colour, in every theme
# (a terminal theme's "default" colours included).
PLOT_FRAME_THEME = "textual-clear"


def series(results: list[Result]) -> dict[str, list]:
    """Split results into the plotted series.

    - ``x``/``y``: one value per scored result, its metric (the mean of its runs): the sparkline;
    - ``runs_x``/``runs_y``: every single measurement (a confirmed change has several), but
      not the re-measures of the best, which are their own series (``re_x``/``re_y``);
    - ``keep_x``/``keep_y``: kept changes and baseline runs, at their mean;
    - ``best_x``/``best_y``: the running best, the engine's own
      (``engine.results.running_best``, the rule of ``Standing``), so chart and header
      agree: the mean of the baseline runs, then of each kept (or force-kept) change's
      measurements, re-measures included. A step line with a point at each scored run.
    """
    xs, ys, run_x, run_y, keep_x, keep_y, re_x, re_y, best_x, best_y = ([] for _ in range(10))
    last: float | None = None
    for r, (n, best) in zip(results, running_best(results)):
        if not r.scored:
            continue
        metric = float(r.metric)  # type: ignore[arg-type]
        xs.append(n)
        ys.append(metric)
        if r.remeasure:
            re_x.append(n)
            re_y.append(metric)
        else:
            for value in r.measurements:
                run_x.append(n)
                run_y.append(value)
            if r.status in ("keep", "baseline"):
                keep_x.append(n)
                keep_y.append(metric)
        if best is None:
            continue
        if last is not None and best != last:  # a vertical move at n: a step, not a slope
            best_x.append(n)
            best_y.append(last)
        best_x.append(n)
        best_y.append(best)
        last = best
    return {"x": xs, "y": ys, "runs_x": run_x, "runs_y": run_y, "keep_x": keep_x, "keep_y": keep_y,
            "re_x": re_x, "re_y": re_y, "best_x": best_x, "best_y": best_y}


def plot_colour(variables: dict[str, str], name: str, fade: float = 0.0) -> Any:
    """A theme variable's colour as plotext takes it: an RGB triple, or in a terminal
    (ANSI) theme the terminal's own palette number, or "default" for its default colour."""
    colour = Color.parse(variables[name])
    if colour.ansi is not None:
        return "default" if colour.ansi < 0 else colour.ansi
    if fade:
        colour = colour.blend(Color.parse(variables["background"]), fade)
    return colour.rgb


class SparkLine(Widget):
    """One line: the metric's sparkline sized to the pane, then the last and best values
    (the best says its direction: "best ↓" when lower is better, "best ↑" when higher)."""

    DEFAULT_CSS = "SparkLine { height: 1; }"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.values: list[float] = []
        self.best: float | None = None
        self.metric = fmt.Metric()

    def on_mount(self) -> None:
        on_theme_change(self, self.refresh)  # render() takes its colours from the theme

    def set(self, values: list[float], best: float | None, metric: fmt.Metric | None = None) -> None:
        self.values, self.best = values, best
        self.metric = metric or fmt.Metric()
        self.refresh()

    def render(self) -> Text:
        line = Text(no_wrap=True, overflow="ellipsis")
        if not self.values:
            line.append("no results yet", style="dim")
            return line
        tail = f"  last {fmt.metric(self.values[-1])}"
        arrow = "↑" if self.metric.direction == "max" else "↓"
        best = f"  best {arrow} {fmt.metric(self.best)}" if self.best is not None else ""
        room = max(4, min(SPARK_WIDTH, self.size.width - len(tail) - len(best)))
        line.append(fmt.spark(self.values, room), style=theme_style(self, SPARK_STYLE))
        line.append(tail)
        line.append(best, style=theme_style(self, BEST_STYLE))
        return line


class ChartPane(Vertical):
    DEFAULT_CSS = """
    ChartPane #plot { height: 1fr; min-height: 4; }
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.redraws = 0  # counted so tests can check it redraws only on new results
        self.plot: Any = None
        self.data: tuple[dict[str, list], float | None] = (series([]), None)  # the series and baseline last shown
        self.metric = fmt.Metric()

    def compose(self) -> ComposeResult:
        yield SparkLine(id="spark")

    def on_mount(self) -> None:
        self.border_title = self.metric.title()
        on_theme_change(self, lambda: self._draw(*self.data))  # the series' colours
        # plotext costs a noticeable share of start-up: bring it in after the first frame.
        self.call_after_refresh(lambda: self.set_timer(0.05, self._mount_plot))

    def _mount_plot(self) -> None:
        from textual_plotext import PlotextPlot

        self.plot = PlotextPlot(id="plot")
        self.plot.theme = PLOT_FRAME_THEME
        self.mount(self.plot)
        self._draw(*self.data)

    def set_metric(self, metric: fmt.Metric) -> None:
        """The run's metric (name and direction) for the title and the sparkline."""
        if metric == self.metric:
            return
        self.metric = metric
        self.border_title = metric.title()
        spark = self.query_one(SparkLine)
        spark.set(spark.values, spark.best, metric)

    def show(self, results: list[Result], baseline: float | None, metric: fmt.Metric | None = None) -> None:
        """``metric``: the run's (name and direction); without it, the results' own name."""
        self.redraws += 1
        self.set_metric(metric or fmt.Metric.of(results))
        s = series(results)  # once per result batch, shared by the sparkline and the plot
        self.data = (s, baseline)
        self.query_one(SparkLine).set(s["y"], s["best_y"][-1] if s["best_y"] else None, self.metric)
        self._draw(s, baseline)

    def _draw(self, s: dict[str, list], baseline: float | None) -> None:
        plot = self.plot
        if plot is None:
            return
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xlabel("experiment")
        if s["x"]:
            variables = self.app.theme_variables
            colour = {series: plot_colour(variables, *spec) for series, spec in PLOT_COLOURS.items()}
            plt.scatter(s["runs_x"], s["runs_y"], marker="dot", color=colour["all"], label="runs")
            plt.scatter(s["keep_x"], s["keep_y"], marker=KEPT_MARKER, color=colour["kept"], label="kept")
            if s["re_x"]:
                plt.scatter(s["re_x"], s["re_y"], marker=REMEASURE_MARKER, color=colour["re-measure"], label="re-measure")
            if s["best_x"]:
                plt.plot(s["best_x"], s["best_y"], color=colour["best"], label="best")
            if baseline is not None:
                plt.hline(baseline, color=colour["baseline"])
        plot.refresh()


def show_metric(screen: DOMNode, metric: fmt.Metric) -> None:
    """Name the screen's chart, and its tab in the compact layout (``#tab-chart``), after
    the run's metric."""
    screen.query_one(ChartPane).set_metric(metric)
    for tab in screen.query("#tab-chart").results(Tab):
        label = f"2 {metric.name}"
        if tab.label_text != label:
            tab.label = Content(label)  # a name from a configuration file: never markup
