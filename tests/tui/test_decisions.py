"""How the monitor shows the engine's decisions: confirmation runs, pooled noise, re-measures
of the best, the holdout, and the marks on keeps that deserve a second look."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from textual.widgets import Static

from engine.results import Noise, Result, Standing
from tests.tui.conftest import FixedSampler, rendered, wait_for
from tests.tui.fake_engine import decisions
from tui import fmt
from tui.app import MonitorApp
from tui.chart_pane import ChartPane, series
from tui.detail import ExperimentScreen
from tui.history import HistoryScreen, Preview
from tui.hypothesis_pane import HypothesisPane
from tui.marks import THROUGHPUT_RATIO, Marks


def keep(n: int, metric: float, *, holdout: float | None = None, tps: float | None = None, **kw) -> Result:
    return Result(n=n, status="keep", metric=metric, commit=f"c{n}", holdout=holdout, tokens_per_sec=tps, **kw)


BASELINE = [
    Result(n=0, status="baseline", metric=2.00, baseline=True, commit="base", holdout=2.10, tokens_per_sec=1000.0),
    Result(n=1, status="baseline", metric=2.02, baseline=True, commit="base", holdout=2.12, tokens_per_sec=1000.0),
]


def marks_of(results: list[Result]) -> dict[int, str]:
    marks = Marks.of(results)
    return {r.n: "".join(m.code for m in marks.get(r.n)) for r in results if marks.get(r.n)}


def test_a_keep_whose_holdout_got_worse_is_marked_h():
    results = [*BASELINE, keep(2, 1.95, delta=-0.06, holdout=2.15)]  # the best's holdout: the mean, 2.11
    assert marks_of(results) == {2: "H"}
    why = Marks.of(results).get(2)[0].why
    assert "improved by 0.0600" in why and "from 2.1100 (best #1) to 2.1500" in why
    # No mark: a better holdout, no holdout at all, a keep that did not improve, a discard.
    assert marks_of([*BASELINE, keep(2, 1.95, delta=-0.06, holdout=2.05)]) == {}
    assert marks_of([*BASELINE, keep(2, 1.95, delta=-0.06)]) == {}
    assert marks_of([*BASELINE, keep(2, 2.03, delta=0.02, holdout=2.2, forced=True)]) == {}
    discard = Result(n=2, status="discard", metric=1.95, delta=-0.06, holdout=2.2, commit="c2")
    assert marks_of([*BASELINE, discard]) == {}


def test_the_best_holdout_is_the_mean_over_its_commit_re_measures_included():
    results = [*BASELINE, keep(2, 1.95, delta=-0.06, holdout=2.00),
               Result(n=3, status="baseline", metric=1.96, baseline=True, remeasure=True, commit="c2", holdout=2.04),
               keep(4, 1.90, delta=-0.05, holdout=2.015)]  # worse than 2.00, better than the mean 2.02
    assert marks_of(results) == {}
    assert marks_of(results[:3] + [keep(4, 1.90, delta=-0.05, holdout=2.03)]) == {4: "H"}


def test_a_keep_whose_throughput_moved_more_than_the_ratio_is_marked_t():
    assert THROUGHPUT_RATIO == 0.20
    assert marks_of([*BASELINE, keep(2, 1.95, delta=-0.06, tps=790.0)]) == {2: "T"}
    assert marks_of([*BASELINE, keep(2, 1.95, delta=-0.06, tps=1210.0)]) == {2: "T"}
    assert marks_of([*BASELINE, keep(2, 1.95, delta=-0.06, tps=810.0)]) == {}
    both = marks_of([*BASELINE, keep(2, 1.95, delta=-0.06, tps=700.0, holdout=2.5)])
    assert both == {2: "HT"}


def test_marks_fold_into_the_standing_they_are_given():
    standing = Standing()
    marks = Marks()
    for r in BASELINE:
        marks.add(r, standing)
    assert standing.best is not None and standing.best.n == 1 and standing.baseline.runs == 2


def test_the_header_says_noise_prior_until_a_commit_is_measured_twice():
    assert fmt.noise(None) == "noise: prior"
    assert fmt.noise(Noise(sigma=0.0, dof=0, runs=0)) == "noise: prior"
    assert fmt.noise(Noise(sigma=0.004213, dof=5, runs=8)) == "noise ±0.0042 (8 runs)"


def test_the_chart_draws_kept_points_at_their_mean_and_re_measures_apart():
    results = [*BASELINE, keep(2, 1.95, runs=[1.94, 1.96]),
               Result(n=3, status="baseline", metric=1.97, baseline=True, remeasure=True, commit="c2", runs=[1.97]),
               Result(n=4, status="discard", metric=1.99, commit="c4")]
    s = series(results)
    assert list(zip(s["keep_x"], s["keep_y"])) == [(0, 2.0), (1, 2.02), (2, 1.95)]
    assert list(zip(s["runs_x"], s["runs_y"])) == [(0, 2.0), (1, 2.02), (2, 1.94), (2, 1.96), (4, 1.99)]
    assert list(zip(s["re_x"], s["re_y"])) == [(3, 1.97)]
    assert s["x"] == [0, 1, 2, 3, 4]  # the sparkline: one value per result
    # The best is the mean of every measurement of its commit, the re-measure included.
    assert s["best_y"][-1] == pytest.approx((1.94 + 1.96 + 1.97) / 3)


anyio = pytest.mark.anyio


@pytest.fixture
def decided(engine):
    decisions(engine)
    return engine


@anyio
async def test_the_experiment_pane_shows_a_confirmation_run_and_the_noise(decided):
    app = MonitorApp(decided.run, sampler=FixedSampler(), stats_interval=3600)
    async with app.run_test(size=(160, 50)) as pilot:
        pane = app.screen.query_one(HypothesisPane)
        await wait_for(pilot, lambda: "CONFIRMING" in rendered(pane), "the confirming phase")
        text = rendered(pane)
        assert "CONFIRMING (RUN 2 OF 2)" in text  # run 2 of 1 + confirm_runs, from state.runs and the config
        best = decided.standing.best
        assert f"measured 1.8390  {1.8390 - best.metric:+.4f} vs best {best.metric:.4f}" in text
        noise = decided.standing.noise()
        assert noise.runs == 12 and f"noise ±{noise.sigma:.4f} (12 runs)" in text
        # The candidate is decided: its runs go, the pane says so.
        decided.finish(10, "keep", None, "weight decay 0.1 -> 0.05", runs=[1.8390, 1.8410], holdout=1.92)
        decided.begin(11, "next", "h")
        await wait_for(pilot, lambda: "RUNNING" in rendered(pane), "the next experiment")
        assert "measured" not in rendered(pane)


@anyio
async def test_history_shows_means_holdouts_re_measures_and_marks(decided):
    app = MonitorApp(decided.run, sampler=FixedSampler(), stats_interval=3600)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: len(app.view.results) == 10, "the results")
        await pilot.press("h")
        screen = app.screen
        assert isinstance(screen, HistoryScreen)
        cells = {r.n: [c.cell(r)[0] for c in screen.columns] for r in screen.table.rows}
        keys = [c.key for c in screen.columns]
        row = lambda n: dict(zip(keys, cells[n]))  # noqa: E731
        assert row(2)["metric"] == "1.8740 ×2" and row(2)["holdout"] == "1.9300" and row(2)["marks"] == ""
        assert row(3)["metric"] == "1.9050" and row(3)["holdout"] == "—"
        assert row(6)["status"] == "re-measure" and row(9)["status"] == "re-measure"
        assert row(4)["marks"] == "H" and row(7)["marks"] == "T"
        # The preview explains the marks of the highlighted keep.
        screen.table.cursor = [r.n for r in screen.table.rows].index(4)
        await pilot.pause()
        preview = str(screen.query_one(Preview).query_one("#preview-text", Static).render())
        assert "mean of 2 runs: 1.8610, 1.8650" in preview and "holdout 1.9360" in preview
        assert "H holdout worse: val_bpb improved by 0.0110, but the holdout rose from 1.9300 (best #2)" in preview
        # ...and so does the detail screen.
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ExperimentScreen), "the experiment")
        table = app.screen.query_one("#summary-metrics", Static).content
        console = Console(width=200, record=True, file=io.StringIO())
        console.print(table)
        summary = console.export_text()
        assert "H holdout worse" in summary and "1.861000, 1.865000" in summary and "holdout" in summary
        await pilot.press("escape")
        screen.table.cursor = [r.n for r in screen.table.rows].index(7)
        await pilot.pause()
        preview = str(screen.query_one(Preview).query_one("#preview-text", Static).render())
        assert "T throughput differs: 30,500 tokens/s against 40,100 for the best before it (#4, -24%)" in preview  # #4 and its re-measure, #6


@anyio
async def test_without_the_preview_a_line_under_the_table_explains_the_marks(decided):
    app = MonitorApp(decided.run, sampler=FixedSampler(), stats_interval=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: len(app.view.results) == 10, "the results")
        await pilot.press("h")
        screen = app.screen
        line = screen.query_one("#mark-line", Static)
        assert not line.display or not line.has_class("-shown")  # #9 (a re-measure) has no mark
        screen.table.cursor = [r.n for r in screen.table.rows].index(7)
        await pilot.pause()
        assert line.has_class("-shown") and line.region.height > 0
        assert str(line.render()).startswith("T throughput differs: 30,500 tokens/s")


@anyio
async def test_the_chart_marks_re_measures(decided):
    app = MonitorApp(decided.run, sampler=FixedSampler(), stats_interval=3600)
    async with app.run_test(size=(160, 50)) as pilot:
        chart = app.screen.query_one(ChartPane)
        await wait_for(pilot, lambda: len(chart.data[0]["x"]) == 9, "the chart")
        s = chart.data[0]
        assert s["re_x"] == [6, 9]
        assert (7, pytest.approx(1.849)) in list(zip(s["keep_x"], s["keep_y"]))
        await wait_for(pilot, lambda: chart.plot is not None, "the plot")
        await pilot.pause(0.2)
        assert "re-measure" in rendered(chart.plot)
