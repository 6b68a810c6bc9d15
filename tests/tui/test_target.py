"""The monitor on a [target] (another repository's metric, either direction, possibly
self-reported), a best revoked by a re-measure, the pipelined proposal's line, and the
pieces watch mode reuses (the key bar, the process tree's label, the preview's hint)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Static, Tab

from engine.report import build_report, chart_svg
from engine.results import Result, State, running_best
from tests.tui.conftest import FixedSampler, rendered, wait_for
from tests.tui.fake_engine import TARGET_CONFIG, FakeEngine, revoked_run, target_run
from tui import fmt
from tui.app import MonitorApp
from tui.chart_pane import ChartPane
from tui.detail import ExperimentScreen
from tui.history import HistoryScreen, Preview
from tui.hypothesis_pane import HypothesisPane
from tui.keybar import KeyBar
from tui.marks import Marks
from tui.model import RunView
from tui.runs_screen import RunsScreen, run_columns, summarize
from tui.table import TableHeader
from tui.util_pane import UtilPane

anyio = pytest.mark.anyio


def make_app(engine) -> MonitorApp:
    return MonitorApp(engine.run, sampler=FixedSampler(), stats_interval=3600)


def text(renderable, width: int = 200) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def preview_text(screen: HistoryScreen) -> str:
    return str(screen.query_one(Preview).query_one("#preview-text", Static).render())


def row(screen: HistoryScreen, n: int) -> dict[str, str]:
    record = next(r for r in screen.table.rows if r.n == n)
    return {c.key: c.cell(record)[0] for c in screen.columns}


# -- the metric: its name and direction ---------------------------------------------------------


def test_the_metric_is_the_results_name_else_the_targets_and_lower_is_better_by_default():
    assert fmt.Metric.of() == fmt.Metric("val_bpb", "min")
    assert fmt.Metric.of([], TARGET_CONFIG) == fmt.Metric("score", "max")
    assert fmt.Metric.of([Result(n=0, status="baseline", metric_name="reward")], TARGET_CONFIG).name == "reward"
    assert fmt.Metric.of([], {"target": {"metric": "loss"}}) == fmt.Metric("loss", "min")
    assert fmt.Metric.of([], {"loop": {}}).better == "lower is better"
    score = fmt.Metric("score", "max")
    assert score.better == "higher is better" and score.title() == "score · higher is better"
    assert score.improved(0.01) and not score.improved(-0.01) and not score.improved(None)
    assert fmt.Metric().improved(-0.01) and not fmt.Metric().improved(0.0)


@anyio
async def test_a_target_metric_higher_is_better_self_reported_everywhere(engine):
    target_run(engine)
    app = make_app(engine)
    async with app.run_test(size=(160, 50)) as pilot:
        chart = app.screen.query_one(ChartPane)
        await wait_for(pilot, lambda: len(app.view.results) == 6 and chart.data[0]["x"], "the results")
        pane = app.screen.query_one(HypothesisPane)
        await wait_for(pilot, lambda: "best score" in rendered(pane), "the header")

        # The header: the metric's name, the best (the mean of #5's runs), self-reported, and
        # a gain over the baseline that is a rise, shown as a gain.
        header = rendered(pane)
        best = engine.standing.best
        assert best.n == 5 and f"best score {best.metric:.4f} (#5) self-reported" in header
        gain = best.metric - engine.standing.baseline.metric
        assert gain > 0 and f"{gain:+.4f}" in header
        against = pane.score[1]  # the best against the baseline
        spans = [s for s in against.spans if against.plain[s.start:s.end].startswith("+")]
        assert spans and spans[0].style == pane.app.stylesheet.parse_style("$success").rich_style

        # The chart: titled after the metric and its direction; the running best is the engine's.
        assert chart.border_title == "score · higher is better"
        assert chart.data[0]["best_y"][-1] == running_best(engine.results)[-1][1] == best.metric
        assert f"best ↑ {best.metric:.4f}" in rendered(app.screen.query_one("#spark"))
        assert app.screen.query_one("#tab-chart", Tab).label_text == "2 score"

        # The history: the column is the metric's, every scored row is marked S, the
        # preview says self-reported, a rise of a keep is a gain.
        await pilot.press("h")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), "the history")
        screen = app.screen
        assert "score" in str(screen.query_one(TableHeader).render()) and "val_bpb" not in str(
            screen.query_one(TableHeader).render())
        assert row(screen, 5)["marks"] == "S" and row(screen, 4)["marks"] == ""  # a crash has no number
        delta = next(c for c in screen.columns if c.key == "delta")
        assert delta.cell(next(r for r in screen.table.rows if r.n == 5))[1] == "$success"
        screen.table.cursor = [r.n for r in screen.table.rows].index(5)
        await pilot.pause()
        preview = preview_text(screen)
        assert "score 0.6790 (self-reported)" in preview
        assert "S self-reported: the run printed this number itself" in preview

        # The detail screen: self-reported, and the bar to pass is a rise.
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ExperimentScreen), "the experiment")
        summary = text(app.screen.query_one("#summary-metrics", Static).content)
        assert "self-reported" in summary and "> +0.011000" in summary and "(higher is better)" in summary
        assert "(self-reported)" in str(app.screen.query_one("#detail-head", Static).render())


# -- a best revoked by a re-measure ---------------------------------------------------------------


def test_a_revoking_re_measure_is_marked_r_and_the_keep_it_revoked_x():
    results = [
        Result(n=0, status="baseline", metric=1.90, baseline=True, commit="base", holdout=2.00),
        Result(n=1, status="baseline", metric=1.91, baseline=True, commit="base", holdout=2.02),
        Result(n=2, status="keep", metric=1.88, delta=-0.025, commit="c2", holdout=1.99),
        Result(n=3, status="keep", metric=1.79, delta=-0.09, commit="c3", holdout=1.95),
        Result(n=4, status="crash", baseline=True, remeasure=True, revokes=3, commit="c3"),
        # Compared with the best again (#2): its holdout, 1.99, not the revoked #3's.
        Result(n=5, status="keep", metric=1.86, delta=-0.02, commit="c5", holdout=2.00),
    ]
    marks = Marks.of(results)
    assert [m.code for m in marks.get(4)] == ["R"] and marks.get(4)[0].label == "revoked #3"
    assert "the best is #2 again" in marks.get(4)[0].why
    assert [m.code for m in marks.get(3)] == ["X"] and "#4 measured it again" in marks.get(3)[0].why
    assert [m.code for m in marks.get(5)] == ["H"] and "from 1.9900 (best #2)" in marks.get(5)[0].why
    assert marks.get(2) == ()


@anyio
async def test_a_revoked_best_the_header_follows_the_standing_and_history_says_so(engine):
    revoked_run(engine)
    app = make_app(engine)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: len(app.view.results) == 6, "the results")
        pane = app.screen.query_one(HypothesisPane)
        assert app.view.standing.best.n == 2 and engine.standing.best.n == 2
        await wait_for(pilot, lambda: "best val_bpb 1.8800 (#2)" in rendered(pane), "the best #2 again")
        # Without the engine's word (state.json's best), the monitor's own fold says the same.
        app.view.state = State(phase="running")
        assert app.view.best().n == 2

        await pilot.press("h")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), "the history")
        screen = app.screen
        assert row(screen, 5)["marks"] == "R" and row(screen, 3)["marks"] == "X"
        screen.table.cursor = [r.n for r in screen.table.rows].index(5)
        await pilot.pause()
        preview = preview_text(screen)
        assert "R revoked #3: measured again, the best was caught reading ahead" in preview
        assert "the best is #2 again" in preview
        screen.table.cursor = [r.n for r in screen.table.rows].index(3)
        await pilot.pause()
        assert "X revoked: #5 measured it again and caught it reading ahead" in preview_text(screen)


# -- the pipelined proposal -----------------------------------------------------------------------


def view_with(next_proposal, experiment: int = 12, phase: str = "running", alive: bool | None = True) -> RunView:
    view = RunView(tag="t", state=State(experiment=experiment, phase=phase, next_proposal=next_proposal))
    view.alive = alive
    return view


def test_the_next_proposal_in_one_line_only_while_there_is_one():
    assert view_with(None).next_proposal() is None
    assert view_with({"n": 13, "state": "thinking"}).next_proposal() == "next #0013: thinking…"
    assert view_with({"n": 13, "state": "ready"}).next_proposal() == "next #0013: ready"
    assert view_with({"n": 13, "state": "ready"}, 13, "proposing").next_proposal() == "next #0013: ready"
    assert view_with({"n": 13, "state": "rebased"}, 13, "proposing").next_proposal() == "next #0013: rebased"
    dropped = view_with({"n": 13, "state": "dropped"}, 13, "proposing")
    assert dropped.next_proposal() == "next #0013: dropped: asked again"
    # Carried over: the proposal is the experiment in flight; only a rebase is worth a line.
    assert view_with({"n": 13, "state": "ready"}, 13, "running").next_proposal() is None
    assert "rebased" in view_with({"n": 13, "state": "rebased"}, 13, "running").next_proposal()
    # Left from an earlier experiment, or an engine that is gone: nothing to tell.
    assert view_with({"n": 11, "state": "ready"}).next_proposal() is None
    assert view_with({"n": 13, "state": "thinking"}, alive=False).next_proposal() is None


@anyio
async def test_the_experiment_pane_follows_the_next_proposal(engine):
    target_run(engine)
    app = make_app(engine)
    async with app.run_test(size=(160, 50)) as pilot:
        pane = app.screen.query_one(HypothesisPane)
        await wait_for(pilot, lambda: "next #0007: thinking…" in rendered(pane), "thinking")
        lines = rendered(pane).splitlines()
        assert sum("next #0007" in line for line in lines) == 1
        engine.set_state(next_proposal={"n": 7, "state": "ready"})
        await wait_for(pilot, lambda: "next #0007: ready" in rendered(pane), "ready")
        engine.finish(6, "discard", 0.6700, "shorter system prompt", metric_name="score", self_reported=True)
        engine.set_state(experiment=7, phase="proposing", next_proposal={"n": 7, "state": "dropped"})
        await wait_for(pilot, lambda: "next #0007: dropped: asked again" in rendered(pane), "dropped")
        engine.set_state(next_proposal=None)
        await wait_for(pilot, lambda: "next #" not in rendered(pane), "no line")


# -- what watch mode reuses -----------------------------------------------------------------------


class Toggle(Screen):
    BINDINGS = [Binding("x", "go", "Go"), Binding("y", "stay", "Stay")]
    on = False

    def compose(self) -> ComposeResult:
        yield KeyBar()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return True if action != "go" or self.on else None  # None: shown, dimmed

    def action_go(self) -> None:
        pass

    def action_stay(self) -> None:
        pass


class ToggleApp(App):
    def get_default_screen(self) -> Screen:
        return Toggle()


def key_style(bar: KeyBar, key: str) -> str:
    content = bar.content
    start = content.plain.index(f" {key} ") + 1
    return " ".join(str(s.style) for s in content.spans if s.start == start)


@anyio
async def test_the_key_bar_restyles_a_key_that_turns_available_with_the_same_words():
    app = ToggleApp()
    async with app.run_test(size=(60, 5)) as pilot:
        bar = app.screen.query_one(KeyBar)
        await wait_for(pilot, lambda: "Go" in bar.content.plain, "the keys")
        words = bar.content.plain
        assert key_style(bar, "x") == "dim" and key_style(bar, "y") == "bold $accent"
        app.screen.on = True
        app.screen.refresh_bindings()
        await wait_for(pilot, lambda: key_style(bar, "x") == "bold $accent", "x available")
        assert bar.content.plain == words


@anyio
async def test_the_utilization_pane_names_the_root_of_the_process_tree(engine):
    class Panes(App):
        def compose(self) -> ComposeResult:
            yield UtilPane(id="monitor")
            yield UtilPane(id="watch", root_label="train.py")

    app = Panes()
    async with app.run_test(size=(80, 20)):
        sample = FixedSampler().sample(4242)
        for pane in app.query(UtilPane):
            pane.show(sample)
        assert "engine pid 4242" in str(app.query_one("#monitor", UtilPane).render())
        assert "train.py pid 4242" in str(app.query_one("#watch", UtilPane).render())


# -- the run list and the report -----------------------------------------------------------------


@anyio
async def test_the_run_list_names_each_best_when_runs_measure_different_things(repo):
    own = FakeEngine(repo, "nov21").start()
    own.finish(0, "baseline", 1.9, "baseline")
    own.release()
    other = FakeEngine(repo, "nov22").start()
    target_run(other)
    other.release()
    assert summarize(repo, "nov22").metric == "score" and summarize(repo, "nov21").metric == "val_bpb"

    class Runs(App):
        def on_mount(self) -> None:
            self.push_screen(RunsScreen(repo, ["nov21", "nov22"]))

    app = Runs()
    async with app.run_test(size=(100, 20)) as pilot:
        await wait_for(pilot, lambda: app.screen.runs is not None, "the runs")
        screen = app.screen
        best = next(c for c in screen.columns if c.key == "best")
        assert best.label == "best"
        cells = {r.tag: best.cell(r)[0] for r in screen.runs}
        assert cells["nov21"] == "val_bpb 1.9000 (#0)" and cells["nov22"].startswith("score 0.6790")
    assert [c.label for c in run_columns(lambda: 0.0, "score") if c.key == "best"] == ["score"]


def test_the_report_names_the_metric_and_its_direction(engine):
    target_run(engine)
    report = build_report(engine.run)
    assert "## score by experiment" in report and "(higher is better)" in report
    assert "val_bpb" not in report and "needed above +0.011000" in report
    assert "score by experiment (higher is better)" in chart_svg(engine.run.read_results(), direction="higher is better")
