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
from engine import launcher
from engine.runs import default_tag
from tui import launch

FAKE_ENGINE = Path(fake_engine.__file__).resolve()


@pytest.fixture
def fake_engine_command(monkeypatch):
    """Point the launcher at the fake engine script; kill whatever it started."""
    started: list[int] = []
    real_start = launcher.start_detached

    def fake_process(argv):
        repo = argv[argv.index("--repo") + 1] if "--repo" in argv else "."
        return [sys.executable, str(FAKE_ENGINE), str(Path(repo).resolve()), argv[argv.index("--tag") + 1]]

    def start(*args, **kwargs):
        proc = real_start(*args, **kwargs)
        started.append(proc.pid)
        return proc

    monkeypatch.setattr(launcher, "engine_process", fake_process)
    monkeypatch.setattr(launcher, "start_detached", start)
    yield started
    for pid in started:
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_tui_refuses_unknown_tags_and_non_repositories(repo, tmp_path, capsys):
    assert main(["--repo", str(repo), "tui"]) == 2
    assert "no runs in" in capsys.readouterr().err
    RunDir.for_tag(repo, "nov1").root.mkdir(parents=True)
    assert main(["--repo", str(repo), "tui", "--tag", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown tag 'nope'" in err and "nov1" in err and len(err.strip().splitlines()) == 1
    plain = tmp_path / "plain"
    plain.mkdir()
    assert main(["--repo", str(plain), "tui"]) == 2
    assert "not a git repository" in capsys.readouterr().err
    assert main(["--repo", str(repo), "serve", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_engine_starts_detached_in_its_own_session(repo, fake_engine_command):
    pid = launcher.start_and_wait(["--repo", str(repo), "run", "--headless", "--tag", "nov2"], repo, "nov2")
    run = RunDir.for_tag(repo, "nov2")
    assert holder_pid(run.lock) == pid  # it took the lock
    assert os.getsid(pid) == pid != os.getsid(0)  # its own session: no terminal ties it to us
    assert "started in the background" in (run.root / "engine.log").read_text()  # its output goes here


def test_an_engine_that_exits_at_once_gives_its_reason_and_leaves_nothing(repo, monkeypatch):
    script = "import sys; print('autoresearch: train.py not committed: a run starts from HEAD'); sys.exit(2)"
    monkeypatch.setattr(launcher, "engine_process", lambda argv: [sys.executable, "-c", script])
    with pytest.raises(UsageError, match="train.py not committed"):
        launcher.start_and_wait(["run", "--headless", "--tag", "nov3"], repo, "nov3")
    assert not (repo / ".autoresearch").exists()


def test_default_attaches_to_the_running_engine(repo, engine, monkeypatch):
    opened: list[RunDir] = []
    monkeypatch.setattr(launch, "run_monitor", lambda run: opened.append(run) or 0)
    monkeypatch.setattr(launcher, "start_and_wait", lambda *a: pytest.fail("must not start a second engine"))
    assert main(["--repo", str(repo)]) == 0
    assert opened == [engine.run]


def test_default_starts_an_engine_when_none_runs(repo, fake_engine_command, monkeypatch, capsys):
    opened: list[RunDir] = []
    monkeypatch.setattr(launch, "run_monitor", lambda run: opened.append(run) or 0)
    assert main(["--repo", str(repo), "--tag", "nov4"]) == 0
    assert opened == [RunDir.for_tag(repo, "nov4")]
    assert holder_pid(opened[0].lock) == fake_engine_command[0]
    assert "engine started for tag nov4" in capsys.readouterr().out


def test_run_without_headless_gives_the_engine_the_users_own_arguments(repo, monkeypatch, capsys):
    started: list[tuple] = []
    opened: list[RunDir] = []
    monkeypatch.setattr(launcher, "start_and_wait", lambda argv, repo, tag: started.append((tag, argv)) or 1)
    monkeypatch.setattr(launch, "run_monitor", lambda run: opened.append(run) or 0)
    argv = ["--repo", str(repo), "run", "--tag", "nov5", "--agent", "heuristic", "--budget", "5", "--max-experiments", "3"]
    assert main(argv) == 0
    assert started == [("nov5", [*argv, "--headless", "--tag", "nov5"])]
    assert opened == [RunDir.for_tag(repo, "nov5")]


def test_loopback_detection():
    assert launch.is_loopback("127.0.0.1") and launch.is_loopback("localhost") and launch.is_loopback("::1")
    assert not launch.is_loopback("0.0.0.0") and not launch.is_loopback("192.168.1.4")
    assert default_tag(0).startswith("jan")


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
