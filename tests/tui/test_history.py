"""History and experiment-detail screens, driven through the live app."""

from __future__ import annotations

import gc
import io
import json
import os
import sys

import pytest
from rich.console import Console
from rich.text import Text
from textual.widgets import Log, Static

from tests.tui.conftest import FixedSampler, wait_for
from tests.tui.fake_engine import history
from tui.app import MonitorApp
from engine.results import Result, experiment_ref
from tui.detail import ExperimentScreen
from tui.history import HistoryScreen, select_rows

pytestmark = pytest.mark.anyio


def plain(widget: Static) -> str:
    """The text a Static shows, whatever renderable it holds."""
    console = Console(width=200, record=True, file=io.StringIO())
    content = widget.content
    console.print(content if not isinstance(content, str) else Text(content))
    return console.export_text()


def shown(screen: HistoryScreen) -> list[int]:
    return [r.n for r in screen.table.rows]


async def open_history(pilot, app, count: int) -> HistoryScreen:
    await wait_for(pilot, lambda: len(app.view.results) == count, f"{count} results")
    await pilot.press("h")
    assert isinstance(app.screen, HistoryScreen)
    return app.screen


async def test_history_sorts_filters_and_searches(engine):
    history(engine, 40)
    app = MonitorApp(engine.run, sampler=FixedSampler())
    async with app.run_test(size=(160, 50)) as pilot:
        screen = await open_history(pilot, app, 40)
        assert shown(screen) == list(range(39, -1, -1))  # newest first
        assert str(screen.query_one("#count", Static).render()) == "40 of 40"
        await pilot.press("o")  # sort by status, ascending
        statuses = [r.status for r in screen.table.rows]
        assert statuses == sorted(statuses)
        await pilot.press("i")
        assert [r.status for r in screen.table.rows] == sorted(statuses, reverse=True)
        screen.sort_key, screen.reverse = "metric", False
        screen.refilter()
        metrics = [r.metric for r in screen.table.rows if r.metric is not None]
        assert metrics == sorted(metrics) and screen.table.rows[-1].metric is None  # no metric sorts last
        await pilot.press("f")  # first status present in the data
        assert screen.status == "baseline" and shown(screen) == [0]
        while screen.status != "keep":
            await pilot.press("f")
        keeps = [r.n for r in engine.results if r.status == "keep"]
        assert sorted(shown(screen)) == sorted(keeps)
        while screen.status != "all":
            await pilot.press("f")
        await pilot.press("slash")
        screen.query_one("#search").value = "WIDTH"
        await wait_for(pilot, lambda: screen.needle == "WIDTH", "the search applied")
        wanted = {r.n for r in engine.results if "WIDTH" in r.description}
        assert wanted and set(shown(screen)) == wanted
        await pilot.press("enter", "escape")  # back to the list, then back to live
        assert not isinstance(app.screen, HistoryScreen)


async def test_enter_opens_the_experiment_in_full(engine):
    engine.finish(0, "baseline", 1.9, "baseline")
    engine.begin(1, "raise LR", "Higher LR, faster descent.")
    engine.log(1, "step 1 | loss 3.0", "---", "training_seconds: 60.1", "num_steps: 1234")
    # The engine reads train.py's summary block as the run goes and keeps it in the record.
    engine.finish(1, "keep", 1.8, "raise LR", hypothesis="Higher LR, faster descent.",
                  summary={"training_seconds": "60.1", "num_steps": "1234"})
    app = MonitorApp(engine.run, sampler=FixedSampler())
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_history(pilot, app, 2)
        assert shown(screen)[0] == 1
        await pilot.press("enter")
        assert isinstance(app.screen, ExperimentScreen)
        detail = app.screen
        await wait_for(pilot, lambda: detail.loaded is not None, "the files")
        summary = plain(detail.query_one("#summary-metrics", Static))
        assert "1.800000" in summary and experiment_ref("test", 1) in summary  # the engine's ref name
        assert "num_steps" in summary and "1234" in summary  # train.py's summary block, from the record
        assert '"val_bpb": 1.8' in plain(detail.query_one("#eval", Static))
        assert "Higher LR" in plain(detail.query_one("#hypothesis-text", Static))
        await pilot.press("4")
        assert list(detail.query_one("#log-detail", Log).lines)[:2] == ["step 1 | loss 3.0", "---"]
        await pilot.press("escape")
        assert isinstance(app.screen, HistoryScreen)


async def test_new_results_reach_an_open_history(engine):
    history(engine, 5)
    app = MonitorApp(engine.run, sampler=FixedSampler())
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_history(pilot, app, 5)
        engine.finish(5, "discard", 1.95, "late arrival")
        await wait_for(pilot, lambda: 5 in shown(screen), "the new row")
        assert shown(screen)[0] == 5


async def test_ten_thousand_experiments_open_and_scroll(engine):
    history(engine, 10_000)
    app = MonitorApp(engine.run, sampler=FixedSampler())
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_history(pilot, app, 10_000)
        assert len(screen.table.rows) == 10_000
        await pilot.press("end")
        assert screen.table.current.n == 0
        assert screen.table.scroll_y == screen.table.max_scroll_y > 9000
        await pilot.press("pageup", "up")
        assert screen.table.current.n < 100


async def test_a_long_run_s_records_are_kept_out_of_full_collections(engine):
    """Thousands of records, read at start, stay for the whole session: they are frozen
    out of the cyclic collector. They hold no cycles, so a reset still frees them."""
    history(engine, 1500)
    app = MonitorApp(engine.run, sampler=FixedSampler())
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: len(app.view.results) == 1500, "1500 results")
        assert gc.get_freeze_count() > 0
        first = app.view.results[0]  # a slots record has no weak references: count its references
        only_ours = 2  # the cell that holds ``first`` (the lambdas below use it), and getrefcount's argument
        assert sys.getrefcount(first) > only_ours
        engine.results.clear()  # the fake's own copies
        replacement = engine.run.results_jsonl.with_suffix(".new")
        replacement.write_text(json.dumps(Result(n=0, status="baseline", metric=1.9, baseline=True).to_dict()) + "\n")
        os.replace(replacement, engine.run.results_jsonl)  # results.jsonl replaced: a reset
        await wait_for(pilot, lambda: len(app.view.results) == 1, "the reset")
        await wait_for(pilot, lambda: sys.getrefcount(first) == only_ours, "the old records let go")
    assert gc.get_freeze_count() == 0  # unfrozen when the app ended


def test_select_rows_is_stable_and_searches_every_field():
    records = [
        Result(n=0, status="baseline", metric=2.0, description="baseline"),
        Result(n=1, status="keep", metric=1.9, description="depth 8", commit="abc1234"),
        Result(n=2, status="discard", metric=1.9, description="width", hypothesis="wider is better"),
    ]
    assert [r.n for r in select_rows(records, "all", "", "metric", False)] == [1, 2, 0]
    assert [r.n for r in select_rows(records, "all", "WIDER", "n", False)] == [2]
    assert [r.n for r in select_rows(records, "all", "abc12", "n", False)] == [1]
    assert [r.n for r in select_rows(records, "keep", "", "n", False)] == [1]
    assert [r.n for r in select_rows(records, "all", "#2", "n", False)] == [2]
