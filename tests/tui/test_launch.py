"""Starting and attaching: `autoresearch`, `autoresearch tui`, `autoresearch serve`."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from autoresearch.cli import main
from engine.errors import UsageError
from engine.lock import holder_pid
from engine.rundir import RunDir
from tests.tui import fake_engine
from tests.tui.conftest import wait_for
from tui import launch

FAKE_ENGINE = Path(fake_engine.__file__).resolve()


@pytest.fixture
def fake_engine_command(monkeypatch):
    """Point the launcher at the fake engine script; kill whatever it started."""
    started: list[int] = []
    real_start = launch.start_engine

    def start(repo, tag, run_args=()):
        proc = real_start(repo, tag, run_args)
        started.append(proc.pid)
        return proc

    monkeypatch.setattr(
        launch, "engine_command", lambda repo, tag, run_args=(): [sys.executable, str(FAKE_ENGINE), str(repo), tag]
    )
    monkeypatch.setattr(launch, "start_engine", start)
    yield started
    for pid in started:
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_tui_refuses_unknown_tags_and_non_repositories(repo, tmp_path, capsys):
    assert main(["--repo", str(repo), "tui"]) == 2
    assert "no runs yet" in capsys.readouterr().err
    RunDir.for_tag(repo, "nov1").root.mkdir(parents=True)
    assert main(["--repo", str(repo), "tui", "--tag", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no run tagged 'nope'" in err and "nov1" in err and len(err.strip().splitlines()) == 1
    plain = tmp_path / "plain"
    plain.mkdir()
    assert main(["--repo", str(plain), "tui"]) == 2
    assert "not a git repository" in capsys.readouterr().err
    assert main(["--repo", str(repo), "serve", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_engine_starts_detached_in_its_own_session(repo, fake_engine_command):
    pid = launch.start_and_wait(repo, "nov2")
    run = RunDir.for_tag(repo, "nov2")
    assert holder_pid(run.lock) == pid  # it took the lock
    assert os.getsid(pid) == pid != os.getsid(0)  # its own session: no terminal ties it to us
    assert "started by the monitor" in (run.root / "engine.log").read_text()  # its output goes here


def test_an_engine_that_exits_at_once_gives_its_reason_and_leaves_nothing(repo, monkeypatch):
    script = "import sys; print('autoresearch: train.py not committed: a run starts from HEAD'); sys.exit(2)"
    monkeypatch.setattr(launch, "engine_command", lambda repo, tag, run_args=(): [sys.executable, "-c", script])
    with pytest.raises(UsageError, match="train.py not committed"):
        launch.start_and_wait(repo, "nov3")
    assert not (repo / ".autoresearch").exists()


def test_default_attaches_to_the_running_engine(repo, engine, monkeypatch):
    opened: list[RunDir] = []
    monkeypatch.setattr(launch, "run_monitor", lambda run: opened.append(run) or 0)
    monkeypatch.setattr(launch, "start_and_wait", lambda *a: pytest.fail("must not start a second engine"))
    assert main(["--repo", str(repo)]) == 0
    assert opened == [engine.run]


def test_default_starts_an_engine_when_none_runs(repo, fake_engine_command, monkeypatch, capsys):
    opened: list[RunDir] = []
    monkeypatch.setattr(launch, "run_monitor", lambda run: opened.append(run) or 0)
    assert main(["--repo", str(repo), "--tag", "nov4"]) == 0
    assert opened == [RunDir.for_tag(repo, "nov4")]
    assert holder_pid(opened[0].lock) == fake_engine_command[0]
    assert "engine started for tag nov4" in capsys.readouterr().out


def test_run_without_headless_starts_the_engine_with_its_options_and_attaches(repo, monkeypatch, capsys):
    started: list[tuple] = []
    opened: list[RunDir] = []
    monkeypatch.setattr(launch, "start_and_wait", lambda repo, tag, run_args=(): started.append((tag, run_args)) or 1)
    monkeypatch.setattr(launch, "run_monitor", lambda run: opened.append(run) or 0)
    argv = ["--repo", str(repo), "run", "--tag", "nov5", "--agent", "heuristic", "--budget", "5", "--max-experiments", "3"]
    assert main(argv) == 0
    assert started == [("nov5", ["--agent", "heuristic", "--budget", "5.0", "--max-experiments", "3"])]
    assert opened == [RunDir.for_tag(repo, "nov5")]
    cmd = launch.engine_command(repo, "nov5", started[0][1])
    assert cmd[cmd.index("run"):] == [
        "run", "--headless", "--tag", "nov5", "--agent", "heuristic", "--budget", "5.0", "--max-experiments", "3"
    ]


def test_loopback_detection():
    assert launch.is_loopback("127.0.0.1") and launch.is_loopback("localhost") and launch.is_loopback("::1")
    assert not launch.is_loopback("0.0.0.0") and not launch.is_loopback("192.168.1.4")
    assert launch.default_tag(0).startswith("jan")


@pytest.mark.anyio
async def test_r_restarts_a_dead_engine(engine, fake_engine_command):
    from tests.tui.conftest import FixedSampler
    from tui.app import MonitorApp

    engine.begin(2, "d", "h")
    engine.die()
    app = MonitorApp(engine.run, sampler=FixedSampler())
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.alive is False, "the dead engine")
        await pilot.press("r")
        await wait_for(pilot, lambda: app.view.alive is True, "a new engine", timeout=20)
        assert holder_pid(engine.run.lock) == fake_engine_command[0]
        await wait_for(pilot, lambda: not app.screen.query_one("#banner").has_class("-show"), "the banner gone")
