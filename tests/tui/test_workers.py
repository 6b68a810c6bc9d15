"""The monitor with several workers: a row per running experiment, a selection that the
experiment, log and diff panes follow, skip and keep for the selected one (by number,
over a real socket), utilization per worker, and the one-worker screen left as it was.

Update the pictures after an intended change with:
pytest tests/tui/test_workers.py --snapshot-update
"""

from __future__ import annotations

import subprocess
import sys
import time
import types

import psutil
import pytest
from textual.widgets import Static

from engine.results import State
from tests.tui.conftest import FixedSampler, fixed_clock, rendered, wait_for
from tests.tui.fake_engine import DIFF, DIFF_13, T0, FakeEngine, two_flights
from tests.tui.test_sysstats import FakeNVML
from tui.app import MonitorApp
from tui.diff_pane import DiffPane
from tui.dialogs import ConfirmModal, HelpScreen
from tui.flights_pane import FlightsPane
from tui.hypothesis_pane import HypothesisPane
from tui.keybar import KeyBar
from tui.log_pane import LogPane
from tui.model import Flight, RunView, pick_flight, read_flights
from tui.rundata import Batch, RunReader
from tui.sysstats import ProcReading, Sample, Sampler
from tui.util_pane import UtilPane


@pytest.fixture(autouse=True)
def _utc(monkeypatch):
    """Clock times in the pictures must not depend on the machine's time zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def workers(repo):
    engine = FakeEngine(repo, "nov28", agent={"name": "claude", "model": "claude-sonnet-5-5"})
    engine.start()
    two_flights(engine)
    yield engine
    engine.release()


def make_app(engine, **kw) -> MonitorApp:
    kw.setdefault("sampler", FixedSampler())
    kw.setdefault("clock", fixed_clock())
    kw.setdefault("stats_interval", 3600)
    return MonitorApp(engine.run, **kw)


def log_lines(app) -> list[str]:
    return list(app.screen.query_one(LogPane).log.lines)


def rows(app) -> str:
    return rendered(app.screen.query_one(FlightsPane))


async def loaded(pilot, app, engine) -> None:
    await wait_for(pilot, lambda: len(app.view.results) == len(engine.results), "results")
    await wait_for(pilot, lambda: len(app.view.flights) == 2, "two flights")
    await wait_for(pilot, lambda: app.screen.query_one(LogPane).n == 12 and len(log_lines(app)) == 20, "#12's log")
    await wait_for(pilot, lambda: app.screen.query_one(DiffPane).text == DIFF, "#12's diff")
    await wait_for(pilot, lambda: app.screen.query_one(UtilPane).samples == 1, "a sample")


async def settle(pilot) -> None:
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.1)
    await pilot.pause()


# -- the model (no Textual) --------------------------------------------------------------


def state_with(*flights: dict, workers: int = 2) -> State:
    return State.from_dict({"phase": "running", "experiment": 99, "config": {"loop": {"workers": workers}},
                            "flights": list(flights)})


def test_flights_are_read_tolerantly_and_ordered_by_worker():
    state = state_with(
        {"worker": 1, "experiment": 13, "phase": "running", "runs": [1.5, "x"], "phase_started_at": "soon"},
        {"worker": 0, "experiment": 12},  # every other key missing: unknown
        {"worker": 2, "phase": "proposing"},  # no number: nothing to select or show
        "not a dict",
    )
    flights = read_flights(state)
    assert [f.n for f in flights] == [12, 13]
    assert flights[0] == Flight(n=12, worker=0)  # missing keys are unknown, not errors
    assert flights[1].runs == (1.5,) and flights[1].phase_started_at is None


def test_the_selection_prefers_a_training_experiment_and_moves_when_it_ends():
    view = RunView(tag="t")
    view.apply(Batch(state=state_with({"worker": 0, "experiment": 12, "phase": "proposing"},
                                      {"worker": 1, "experiment": 13, "phase": "running"})))
    assert view.several and view.selected == 13 and view.n == 13  # not the top level's 99
    assert pick_flight(()) is None
    assert view.select_step(1) and view.selected == 12
    assert view.select_step(1) and view.selected == 13  # round the list
    assert view.select_step(-1) and view.selected == 12
    assert not view.select(77)  # not running: the selection stays
    changed = view.apply(Batch(state=state_with({"worker": 1, "experiment": 13, "phase": "running"},
                                                {"worker": 0, "experiment": 14, "phase": "proposing"})))
    assert "selection" in changed and view.selected == 13  # #12 finished: another running one
    changed = view.apply(Batch(state=state_with({"worker": 1, "experiment": 13, "phase": "evaluating"},
                                                {"worker": 0, "experiment": 14, "phase": "running"})))
    assert "selection" not in changed and view.selected == 13  # it stays while it runs
    assert view.in_flight and view.exp_phase == "evaluating"
    assert view.where() == "#0014 running, #0013 evaluating"  # by worker


def test_one_worker_selects_nothing_and_reads_the_top_level():
    view = RunView(tag="t")
    state = State.from_dict({"phase": "running", "experiment": 5, "description": "d", "runs": [1.2],
                             "flights": [{"worker": 0, "experiment": 5, "phase": "running"}]})
    view.apply(Batch(state=state))
    assert not view.several and view.selected is None and view.flight is None
    assert view.n == 5 and view.exp_phase == "running" and view.description() == "d"
    assert view.current().runs == (1.2,) and not view.select_step(1)


def test_the_reader_follows_the_chosen_experiment(workers):
    reader = RunReader(workers.run)
    first = reader.collect()
    assert workers.state.experiment == 13  # the top level: the last one written
    assert first.log_n == 12 and len(first.log_lines) == 20  # but the one the view selects first
    assert first.diff == DIFF
    reader.follow = 13
    batch = reader.collect()
    assert batch.log_reset and batch.log_n == 13 and batch.log_lines[0].startswith("w1 step")
    assert batch.diff == DIFF_13
    workers.log(12, "w0 more")
    workers.log(13, "w1 more")
    assert reader.collect().log_lines == ["w1 more"]  # only the followed experiment's log


# -- pictures ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(160, 50), (80, 24)], ids=["wide", "compact"])
def test_two_workers_screen(workers, snap_compare, size):
    """A row per running experiment above the panes (number, worker, phase, budget bar,
    description); the first is selected and the panes show it."""
    app = make_app(workers)

    async def run_before(pilot) -> None:
        await loaded(pilot, app, workers)
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_two_workers_skip_dialog(workers, snap_compare):
    """s with #0013 selected: the dialog names it, its worker and its description."""
    app = make_app(workers)

    async def run_before(pilot) -> None:
        await loaded(pilot, app, workers)
        await pilot.press("right_square_bracket", "s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmModal), "the dialog")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


# -- behaviour ----------------------------------------------------------------------------

pytest_anyio = pytest.mark.anyio  # (the pictures above run their own loop)


@pytest_anyio
async def test_rows_show_each_running_experiment(workers):
    app = make_app(workers)
    async with app.run_test(size=(160, 50)) as pilot:
        await loaded(pilot, app, workers)
        pane = app.screen.query_one(FlightsPane)
        assert pane.display and pane.region.height == 4  # two rows and the border
        text = rows(app)
        first, second = text.splitlines()[:2]
        assert first.startswith("▸ #0012  w0  running") and "37s/1m00s" in first and "longer warmup" in first
        assert second.startswith("  #0013  w1  running") and "17s/1m00s" in second and "N_LAYER 4 -> 6" in second
        assert "2 of 2 workers" in str(pane.border_title)
        hyp = rendered(app.screen.query_one(HypothesisPane))
        assert "#0012 · worker 0" in hyp and "longer warmup" in hyp and "A longer warmup steadies" in hyp
        keys = str(app.screen.query_one(KeyBar).render())
        assert "[ ] Select" in keys


@pytest_anyio
async def test_selection_moves_the_experiment_log_and_diff_panes(workers):
    app = make_app(workers)
    async with app.run_test(size=(160, 50)) as pilot:
        await loaded(pilot, app, workers)
        assert "LEARNING_RATE = 0.004" in app.screen.query_one(DiffPane).text
        await pilot.press("right_square_bracket")
        assert app.view.selected == 13
        await wait_for(pilot, lambda: app.screen.query_one(LogPane).n == 13, "#13's log")
        await wait_for(pilot, lambda: len(log_lines(app)) == 10, "#13's ten lines")
        assert all(line.startswith("w1 step") for line in log_lines(app))
        assert "Training log #0013" in str(app.screen.query_one(LogPane).border_title)
        await wait_for(pilot, lambda: app.screen.query_one(DiffPane).text == DIFF_13, "#13's diff")
        assert "Pending change #0013" in str(app.screen.query_one(DiffPane).border_title)
        hyp = rendered(app.screen.query_one(HypothesisPane))
        assert "#0013 · worker 1" in hyp and "Two more layers" in hyp and "N_LAYER 4 -> 6" in hyp
        assert rows(app).splitlines()[1].startswith("▸ #0013")
        workers.log(13, "w1 fresh line")  # the selected one streams on
        workers.log(12, "w0 fresh line")  # the other does not reach the pane
        await wait_for(pilot, lambda: log_lines(app)[-1] == "w1 fresh line", "#13's new line")
        await pilot.pause(0.2)
        assert "w0 fresh line" not in log_lines(app)
        await pilot.press("left_square_bracket")
        await wait_for(pilot, lambda: app.screen.query_one(LogPane).n == 12 and log_lines(app)[-1] == "w0 fresh line",
                       "back to #12's log")


@pytest_anyio
async def test_a_click_on_a_row_selects_it(workers):
    app = make_app(workers)
    async with app.run_test(size=(160, 50)) as pilot:
        await loaded(pilot, app, workers)
        pane = app.screen.query_one(FlightsPane)
        await pilot.click(FlightsPane, offset=(10, 2))  # the border, then the second row
        await wait_for(pilot, lambda: app.view.selected == 13, "#13 selected")
        await wait_for(pilot, lambda: app.screen.query_one(LogPane).n == 13, "#13's log")
        assert pane.selected == 13


@pytest_anyio
async def test_when_the_selected_experiment_ends_the_selection_moves_on(workers):
    app = make_app(workers)
    async with app.run_test(size=(160, 50)) as pilot:
        await loaded(pilot, app, workers)
        workers.finish(12, "discard", 1.8800, "longer warmup: WARMUP_STEPS 100 -> 200", worker=0)
        workers.end_flight(12)
        workers.begin_flight(14, 0, "", "Thinking about the optimizer…", phase="proposing", at=T0 + 30)
        await wait_for(pilot, lambda: app.view.selected == 13, "the selection on #13")
        await wait_for(pilot, lambda: app.screen.query_one(LogPane).n == 13, "#13's log")
        text = rows(app)
        assert "#0014  w0  proposing" in text and "Thinking about the optimizer" in text  # its hypothesis, so far
        assert text.splitlines()[1].startswith("▸ #0013")


@pytest_anyio
async def test_skip_and_keep_name_the_selected_experiment(workers):
    app = make_app(workers)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot, app, workers)
        await pilot.press("right_square_bracket", "s")
        assert isinstance(app.screen, ConfirmModal)
        question = str(app.screen.query_one(".question", Static).render())
        assert "#0013 (worker 1: deeper: N_LAYER 4 -> 6)" in question
        await pilot.press("y")
        await wait_for(pilot, lambda: app.last_ack is not None, "the engine's answer")
        assert workers.commands == [{"cmd": "skip", "text": "13"}]
        assert app.last_ack.cmd == "skip #0013" and app.last_ack.result == "accepted"
        await wait_for(pilot, lambda: "skip #0013: accepted" in str(app.screen.query_one("#topbar", Static).render()),
                       "the answer in the top bar")
        await pilot.press("left_square_bracket", "s", "y")  # the other one at once: not a repeat
        await wait_for(pilot, lambda: len(app.acks) == 2, "the second answer")
        await pilot.press("k", "y")
        await wait_for(pilot, lambda: len(app.acks) == 3, "the keep's answer")
        assert workers.commands[1:] == [{"cmd": "skip", "text": "12"}, {"cmd": "keep", "text": "12"}]
        await pilot.press("s", "y")  # #12 again within 2 s: debounced
        await pilot.pause(0.2)
        assert len(workers.commands) == 3


@pytest_anyio
async def test_the_number_is_the_one_selected_when_s_was_pressed(workers):
    """The selection moves (the experiment ended) while the dialog is open: the command
    still names the one the person saw, and the engine says it is no longer running."""
    app = make_app(workers)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot, app, workers)
        await pilot.press("s")
        workers.end_flight(12)
        await wait_for(pilot, lambda: app.view.selected == 13, "the selection on #13")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.last_ack is not None, "the engine's answer")
        assert workers.commands == [{"cmd": "skip", "text": "12"}]


@pytest_anyio
async def test_a_skip_sent_elsewhere_says_which_experiment(workers):
    app = make_app(workers)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot, app, workers)
        workers.event("command", cmd="skip", text="13", result="accepted", reason="", ts=time.time() + 1)
        await wait_for(pilot, lambda: app.acks, "the acknowledgement")
        assert (app.acks[-1].cmd, app.acks[-1].message) == ("skip #0013", "sent elsewhere")


@pytest_anyio
async def test_one_worker_screen_and_commands_are_as_before(engine):
    engine.begin(1, "d", "h")
    app = make_app(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.in_flight, "a running experiment")
        assert not app.screen.query_one(FlightsPane).display
        assert app.screen.query_one(HypothesisPane).border_title == "Experiment #0001"
        assert "Select" not in str(app.screen.query_one(KeyBar).render())
        await pilot.press("right_square_bracket")  # nothing to select: no effect
        await pilot.press("s", "y")
        await wait_for(pilot, lambda: app.last_ack is not None, "the skip's answer")
        assert engine.commands == [{"cmd": "skip"}]  # no number, as before
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
        assert "Several workers" not in str(app.screen.query_one("VerticalScroll > Static:last-of-type").render())


@pytest_anyio
async def test_help_lists_the_selection_keys_with_several_workers(workers):
    app = make_app(workers)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot, app, workers)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
        help_text = "".join(str(s.render()) for s in app.screen.query(Static))
        assert "] / [    select the next / previous one" in help_text


@pytest_anyio
async def test_the_palette_names_the_selected_experiment(workers):
    app = make_app(workers)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot, app, workers)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Skip this run #0012", "Force-keep this experiment #0012", "Next running experiment"} <= titles


# -- utilization per worker -------------------------------------------------------------


def test_each_workers_training_tree_and_its_gpu():
    """Two training trees under one root: each summed apart, and each GPU names the tree
    whose process computes on it (NVML's list of compute processes)."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    spawn = ("import subprocess, sys, time; subprocess.Popen(%r); "
             "subprocess.Popen(%r); time.sleep(30)")
    # The root starts two "trainings", each with a child of its own.
    child = [sys.executable, "-c", "import subprocess, time; subprocess.Popen(%r); time.sleep(30)" % (sleeper,)]
    root = subprocess.Popen([sys.executable, "-c", spawn % (child, child)])
    try:
        deadline = time.monotonic() + 15
        while len(psutil.Process(root.pid).children(recursive=True)) < 4:
            assert time.monotonic() < deadline, "the trees did not start"
            time.sleep(0.05)
        trainings = sorted(psutil.Process(root.pid).children(), key=lambda p: p.pid)
        a, b = (t.pid for t in trainings)
        a_child = psutil.Process(a).children()[0].pid

        class TwoGpus(FakeNVML):
            def nvmlDeviceGetComputeRunningProcesses(self, h):
                return [types.SimpleNamespace(pid=a_child)] if h == "h0" else [types.SimpleNamespace(pid=12345678)]

        sampler = Sampler()
        sampler._nvml_tried, sampler._nvml = True, TwoGpus()
        sample = sampler.sample(root.pid, {"w0 #0012": a, "w1 #0013": b, "w2 #0014": 999_999_999})
        assert sample.proc is not None and sample.proc.count == 5
        assert set(sample.trees) == {"w0 #0012", "w1 #0013"}  # a root outside the engine's tree: left out
        assert sample.trees["w0 #0012"].count == 2 and sample.trees["w1 #0013"].count == 2
        assert sample.trees["w0 #0012"].rss > 0 and sample.trees["w0 #0012"].root_pid == a
        assert sample.gpus[0].users == ["w0 #0012"] and sample.gpus[1].users == []
    finally:
        for p in psutil.Process(root.pid).children(recursive=True):
            p.kill()
        root.kill()
        root.wait()


class TreeSampler(FixedSampler):
    """Fixed readings, with one tree per worker's training when asked for them."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[dict[str, int] | None] = []

    def sample(self, engine_pid: int | None, trees: dict[str, int] | None = None) -> Sample:
        self.asked.append(trees)
        out = super().sample(engine_pid)
        out.trees = {label: ProcReading(cpu_percent=95.0, rss=600 * 2**20, count=2, root_pid=pid)
                     for label, pid in (trees or {}).items()}
        return out


@pytest.mark.anyio
async def test_the_utilization_pane_shows_each_workers_training(workers):
    workers.update_flight(12, train_pgid=5012)
    workers.update_flight(13, train_pgid=5013)
    sampler = TreeSampler()
    app = make_app(workers, sampler=sampler, stats_interval=0.05)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: any(sampler.asked), "a sample with the trees")
        assert {"w0 #0012": 5012, "w1 #0013": 5013} in sampler.asked
        pane = app.screen.query_one(UtilPane)
        await wait_for(pilot, lambda: "w1 #0013" in str(pane.render()), "the trees on screen")
        text = str(pane.render())
        assert "  w0 #0012  cpu   95%  rss 600.0 MB" in text


@pytest.mark.anyio
async def test_one_worker_samples_as_before(engine):
    engine.begin(1, "d", "h")
    engine.set_state(train_pgid=4321)
    sampler = TreeSampler()
    app = make_app(engine, sampler=sampler)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: sampler.asked, "a sample")
        assert sampler.asked == [None]


@pytest.mark.anyio
async def test_ray_nodes_name_each_row_and_show_their_utilization(workers):
    """With --ray, each row names its node's host, and the utilization pane has a section per
    node with what its workers last reported (the runs are on other machines)."""
    gib = 2**30
    workers.update_flight(12, node="gpu-box-1 (10.0.0.5)",
                          node_util={"cpu": 41.0, "mem": [12 * gib, 64 * gib], "cores": 32,
                                     "gpus": [[0, 97, 40 * gib, 80 * gib]]})
    workers.update_flight(13, node="gpu-box-2 (10.0.0.6)", node_util="garbage")  # read tolerantly
    app = make_app(workers)
    async with app.run_test(size=(160, 50)) as pilot:
        await loaded(pilot, app, workers)
        first, second = rows(app).splitlines()[:2]
        assert first.startswith("▸ #0012  w0@gpu-box-1  running"), first
        assert second.startswith("  #0013  w1@gpu-box-2  running"), second  # the columns align
        pane = app.screen.query_one(UtilPane)
        await wait_for(pilot, lambda: "gpu-box-2" in str(pane.render()), "the nodes on screen")
        text = str(pane.render())
        assert "node gpu-box-1 (10.0.0.5)  w0 #0012\n  cpu  41%  mem 12.0 GB / 64.0 GB  (32 cores)" in text, text
        assert "  GPU0 util  97%  mem 40.0 GB / 80.0 GB" in text, text
        assert "node gpu-box-2 (10.0.0.6)  w1 #0013\n  waiting for its first reading" in text, text
