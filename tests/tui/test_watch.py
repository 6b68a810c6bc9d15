"""`autoresearch watch`: the monitor on a loop another program drives (Karpathy's
autoresearch run by Claude Code or Codex), on the fixture repository of
tests/engine/test_watch.py. Pilot tests for the screens and keys; one end-to-end run of
the real command in tmux, after which the repository must be exactly as it was."""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path

import pytest
from textual.widgets import Static

from engine.watch import WatchReader
from tests.engine.test_watch import found, karpathy_repo, porcelain, start_training, stop, tree_state
from tests.tui.conftest import FixedSampler, rendered, wait_for
from tests.tui.test_tmux_e2e import TMUX, Tmux
from tui.chart_pane import ChartPane
from tui.diff_pane import DiffPane, DiffScreen
from tui.dialogs import ConfirmModal
from tui.history import Preview
from tui.log_pane import LogPane
from tui.util_pane import UtilPane
from tui.watch_app import WatchApp
from tui.watch_screen import LoopPane, WatchHistoryScreen, WatchScreen


@pytest.fixture
def karpathy(tmp_path: Path) -> dict:
    return karpathy_repo(tmp_path / "autoresearch")


def make_app(repo: Path, **kw) -> WatchApp:
    kw.setdefault("sampler", FixedSampler())
    kw.setdefault("reader", WatchReader(repo, git_interval=0.5, proc_interval=0.2))
    return WatchApp(repo, **kw)


def notes(app) -> list[str]:
    return [f"{n.title}: {n.message}" for n in app._notifications]


def loop_text(app) -> str:
    return rendered(app.screen.query_one(LoopPane))


@pytest.mark.anyio
async def test_the_watch_screen_shows_the_loop(karpathy):
    repo = karpathy["repo"]
    proc = start_training(repo)
    try:
        found(repo, proc.pid)
        app = make_app(repo)
        async with app.run_test(size=(160, 50)) as pilot:
            await wait_for(pilot, lambda: app.training is not None and app.info.git is not None
                           and len(app.info.results) == 5 and app.diff, "the first reads")
            text = loop_text(app)
            assert f"● training pid {proc.pid}" in text and "train.py" in text
            assert f"best 0.9905 (#5 {karpathy['batch']})" in text and "vs baseline 0.9979" in text
            assert "keep 3 · discard 1 · crash 1" in text and "5 rows in results.tsv" in text
            assert f"▶ {karpathy['head']}" in text and "running" in text and "depth 10" in text
            assert karpathy["deep"] not in text  # a crashed commit was reset away: not on the branch
            assert "Loop · autoresearch/nov25" in text
            log = app.screen.query_one(LogPane)
            assert list(log.log.lines) == ["Using CPython 3.10.12", "num_params_M: 50.3"]
            assert log.partial == "step 00001 (0.1%) | loss: 8.742"
            diff = app.screen.query_one(DiffPane)
            assert "+WARMUP_RATIO = 0.05" in diff.text and "train.py +1 -1" in str(diff.border_title)
            top = str(app.screen.query_one("#topbar").render())
            assert f"watching {repo} (driven by another program)" in top and f"pid {proc.pid}" in top
            chart = app.screen.query_one(ChartPane)
            assert chart.data[0]["best_y"][-1] == pytest.approx(0.9905) and chart.data[1] == pytest.approx(0.9979)
            assert chart.border_title == "val_bpb · lower is better"  # results.tsv's header names the metric
            util = app.screen.query_one(UtilPane)
            await wait_for(pilot, lambda: util.samples > 0, "a sample")
            assert "train.py pid 4242" in str(util.render())  # the tree's root is train.py, not an engine

            # The log streams: new lines follow the tail, the progress line updates.
            with open(repo / "run.log", "a") as f:
                f.write("\rstep 00002 (0.2%) | loss: 8.6\n---\nval_bpb:          0.989000\n")
            await wait_for(pilot, lambda: list(log.log.lines)[-1] == "val_bpb:          0.989000", "new log lines")
            assert log.log.following and log.partial == ""
            # A new row arrives: the chart, the counts and the commits follow.
            with open(repo / "results.tsv", "a") as f:
                f.write(f"{karpathy['head']}\t0.989000\t44.0\tkeep\tdepth 10\n")
            await wait_for(pilot, lambda: len(app.info.results) == 6, "the new row")
            await wait_for(pilot, lambda: "best 0.9890 (#6" in loop_text(app), "the new best")
            assert "keep 4 · discard 1" in loop_text(app)
    finally:
        stop(proc)


@pytest.mark.anyio
async def test_steering_keys_say_why_they_are_unavailable_and_k_needs_a_process(karpathy):
    app = make_app(karpathy["repo"])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.reader.training is None and app.info.git is not None, "the first reads")
        bindings = app.screen.active_bindings
        assert all(not bindings[key].enabled for key in "pskn")  # shown, dimmed
        assert bindings["h"].enabled and bindings["d"].enabled and bindings["l"].enabled
        assert not bindings["K"].enabled  # no training process
        for key, name in (("p", "Pause"), ("s", "Skip"), ("k", "Keep"), ("n", "Note")):
            await pilot.press(key)
            await wait_for(pilot, lambda name=name: any(n.startswith(f"{name}: unavailable") for n in notes(app)), name)
        assert all("driven by another program" in n for n in notes(app))
        assert isinstance(app.screen, WatchScreen)  # no dialog opened
        await pilot.press("K")
        await wait_for(pilot, lambda: any("Kill training: refused" in n for n in notes(app)), "the refusal")
        assert any("no train.py process is running" in n for n in notes(app))
        assert isinstance(app.screen, WatchScreen)


@pytest.mark.anyio
async def test_k_confirmed_kills_the_training_once(karpathy):
    repo = karpathy["repo"]
    proc = start_training(repo)
    try:
        found(repo, proc.pid)
        app = make_app(repo, kill_grace=5.0)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.training is not None, "the training process")
            await pilot.press("K")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirmation")
            await pilot.press("K")  # a second press does not stack a second dialog
            assert len(app.screen_stack) == 2
            await pilot.press("n")
            assert proc.poll() is None  # cancelled: nothing sent
            await pilot.press("K")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirmation again")
            await pilot.press("y")
            await wait_for(pilot, lambda: len(app.kills) == 1, "the kill's outcome")
            assert proc.wait(timeout=10) == -signal.SIGTERM
            assert app.kills[0].ended and f"pid {proc.pid}" in app.kills[0].message
            await pilot.press("K")  # at once again: debounced
            await wait_for(pilot, lambda: any("already sent" in n or "refused" in n for n in notes(app)), "debounce")
            assert isinstance(app.screen, WatchScreen) and len(app.kills) == 1
            await wait_for(pilot, lambda: app.training is None, "the process gone")
            assert "no train.py running" in loop_text(app)
    finally:
        stop(proc)


@pytest.mark.anyio
async def test_history_and_diff_screens(karpathy):
    repo = karpathy["repo"]
    app = make_app(repo)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: len(app.info.results) == 5 and app.diff, "the first reads")
        await pilot.press("h")
        await wait_for(pilot, lambda: isinstance(app.screen, WatchHistoryScreen), "the history")
        history = app.screen
        assert [r.description for r in history.table.rows][:2] == ["halve the batch size", "add 10% warmup"]
        assert "History · nov25" in str(history.query_one("#list").border_title)
        preview = str(history.query_one(Preview).query_one("#preview-text", Static).render())
        assert "Enter shows the commit." in preview and "Enter opens" not in preview
        history.table.cursor = 1  # the discarded experiment: its commit was reset away, git still has it
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DiffScreen), "the commit")
        assert "+WARMUP_RATIO = 0.1" in app.screen.diff and "add 10% warmup" in app.screen.diff
        await pilot.press("escape")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, WatchScreen), "back on the watch screen")
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, DiffScreen), "the uncommitted diff")
        assert "+WARMUP_RATIO = 0.05" in app.screen.diff


# --- end to end, in tmux --------------------------------------------------------------------------


@pytest.mark.skipif(TMUX is None, reason="needs tmux")
def test_watch_in_tmux_reads_and_never_writes(karpathy, tmp_path):
    repo = karpathy["repo"]
    proc = start_training(repo)
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "NO_COLOR")}
    env.update(TERM="xterm-256color", XDG_CONFIG_HOME=str(tmp_path / "config"))
    tmux = Tmux(f"autoresearch-watch-{os.getpid()}", env)
    log_bytes = (repo / "run.log").read_bytes()  # bytes: \r stays \r
    try:
        found(repo, proc.pid)
        index = repo / ".git" / "index"
        index_mtime, status = index.stat().st_mtime_ns, porcelain(repo)
        before = {k: v for k, v in tree_state(repo).items() if k != "run.log"}

        command = f"cd {shlex.quote(str(tmp_path))} && {shlex.quote(sys.executable)} -m autoresearch watch {shlex.quote(str(repo))}"
        tmux.start(command, 160, 50)
        screen = tmux.wait_for(lambda s: "driven by another program" in s and f"pid {proc.pid}" in s
                               and "best 0.9905" in s and "+WARMUP_RATIO = 0.05" in s, "the loop on screen")
        assert "watching" in screen and str(repo)[:20] in screen
        assert "halve the batch size" in screen and karpathy["head"] in screen  # results and commits
        assert "num_params_M: 50.3" in screen and "step 00001 (0.1%)" in screen  # the log and its progress line

        # The log streams while the monitor follows it.
        more = "\rstep 00002 (0.2%) | loss: 8.6\ncompiled in 12.3 s\n\rstep 00003 (0.3%) | loss: 8.2   "
        with open(repo / "run.log", "a") as f:
            f.write(more)
        log_bytes += more.encode()
        tmux.wait_for(lambda s: "compiled in 12.3 s" in s and "step 00003 (0.3%)" in s, "the log's new lines")

        # p: unavailable, and why.
        tmux.keys("p")
        tmux.wait_for(lambda s: "Pause: unavailable" in s, "the reason p is unavailable")

        # K, confirmed: the training process ends (the driving agent would see a crash).
        tmux.keys("K")
        tmux.wait_for(lambda s: "Kill the training run?" in s, "the confirmation")
        tmux.keys("y")
        assert proc.wait(timeout=30) == -signal.SIGTERM
        tmux.wait_for(lambda s: "no training process" in s, "the monitor noticing")

        tmux.keys("q")
        tmux.wait_for(lambda _s: tmux.run("list-panes", "-t", "e2e", "-F", "#{pane_dead}").strip() == "1",
                      "the monitor to exit")
        after = {k: v for k, v in tree_state(repo).items() if k != "run.log"}
        assert after == before  # no file written, created or touched, .git included
        assert index.stat().st_mtime_ns == index_mtime
        assert porcelain(repo) == status
        assert (repo / "run.log").read_bytes() == log_bytes
        assert not (repo / ".autoresearch").exists()
    finally:
        tmux.kill()
        stop(proc)
