"""One rule for the best, the baseline and the counts: the chart, the monitor's header,
`autoresearch status --json` and engine.results.Standing agree on a journal that holds
every status, a forced keep worse than the best, and a resumed run."""

from __future__ import annotations

import pytest

from engine.results import STATUSES, Standing, running_best
from engine.rundir import read_jsonl
from engine.runs import status_data
from tests.tui.conftest import FixedSampler, rendered, wait_for
from tests.tui.fake_engine import every_status
from tui import fmt
from tui.app import MonitorApp
from tui.chart_pane import ChartPane
from tui.hypothesis_pane import HypothesisPane


@pytest.fixture
def journal(engine):
    every_status(engine)
    return engine


def test_the_journal_holds_every_case(journal):
    results = journal.run.read_results()
    assert {r.status for r in results} == set(STATUSES)
    assert sum(r.status == "baseline" for r in results) == 2
    forced = [r for r in results if r.forced]
    assert forced and forced[0].status == "keep" and forced[0].metric > min(r.metric for r in results if r.status == "keep")
    engine_events = [e.get("event") for e in read_jsonl(journal.run.events_jsonl) if e.get("type") == "engine"]
    assert engine_events == ["start", "resume"]
    assert [r.n for r in results if r.status == "interrupted"] == [12]


def test_status_json_agrees_with_standing(journal):
    standing = Standing.of(journal.run.read_results())
    data = status_data(journal.repo.resolve(), journal.run.tag)
    assert data["best"] == standing.best.to_dict()
    assert data["baseline"] == standing.baseline.to_dict()
    assert data["counts"] == dict(standing.counts)
    assert data["experiments"] == sum(standing.counts.values())
    # The forced keep (#11) is the best although #2 scored lower: not the plain minimum.
    assert standing.best.n == 11


@pytest.mark.anyio
@pytest.mark.parametrize("source", ["state", "results"])
async def test_chart_and_header_agree_with_standing(journal, source):
    """From state.json's best, baseline and counts, and, where state.json has none yet,
    from the results folded by the same rule."""
    if source == "results":
        journal.set_state(best=None, baseline=None, counts={}, noise=None)
    results = journal.run.read_results()
    standing = Standing.of(results)
    best, base, counts, noise = standing.best, standing.baseline, standing.grouped_counts(), standing.noise()
    assert noise.dof == 1 and noise.runs == 2  # the two baseline runs of one commit
    assert counts == {"keep": 2, "discard": 2, "failed": 5, "other": 5}

    app = MonitorApp(journal.run, sampler=FixedSampler(), stats_interval=3600)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: len(app.view.results) == len(results) and app.view.n == 14, "the journal")
        chart = app.screen.query_one(ChartPane)
        await wait_for(pilot, lambda: chart.data[0]["x"], "the chart")
        pane = app.screen.query_one(HypothesisPane)
        await wait_for(pilot, lambda: f"best val_bpb {fmt.metric(best.metric)}" in rendered(pane), "the header")

        assert app.view.best() == best and app.view.baseline() == base and app.view.counts() == counts
        header = rendered(pane)
        assert f"best val_bpb {fmt.metric(best.metric)} (#{best.n})" in header
        assert f"vs baseline {fmt.metric(base.metric)}" in header
        assert f"noise ±{noise.sigma:.4f} (2 runs)" in header  # pooled, as the engine decides with it
        assert "keep 2 · discard 2 · failed 5 · other 5" in header

        s = chart.data[0]
        assert s["best_y"][-1] == best.metric == running_best(results)[-1][1]
        assert chart.data[1] == base.metric  # the baseline line
        assert f"best ↓ {fmt.metric(best.metric)}" in rendered(app.screen.query_one("#spark"))
        assert chart.border_title == "val_bpb · lower is better"
