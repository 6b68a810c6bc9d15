"""Fixtures for engine tests: a stand-in research repo and helpers to run an engine."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from engine.config import load_config
from engine.loop import Engine
from engine.rundir import RunDir

from .genome import ScriptedAgent, make_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def make_engine(repo: Path, steps: list[dict[str, Any]], tag: str = "t", **overrides: Any) -> Engine:
    config = load_config(repo, {k.replace("__", "."): v for k, v in overrides.items()})
    return Engine(repo, tag, config, ScriptedAgent(steps), kill_grace=1.0, agent_retry_seconds=0.0,
                  agent_stop_wait=0.2)


def run_engine(repo: Path, steps: list[dict[str, Any]], tag: str = "t", **overrides: Any) -> Engine:
    """Run an engine in this process until it stops; returns it (results in .results)."""
    engine = make_engine(repo, steps, tag, **overrides)
    assert engine.run() == 0, engine.error
    return engine


class Background:
    """An engine running in a thread, for control-socket tests."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.rd: RunDir = engine.rd
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.rc = self.engine.run()

    def wait_for(self, what: Callable[[], Any], timeout: float = 20.0, why: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            if not self.thread.is_alive():
                value = what()
                if value:
                    return value
                raise AssertionError(f"engine exited while waiting for {why}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {why}; state: {self.rd.read_state()}")

    def state(self) -> dict[str, Any]:
        return self.rd.read_state()

    def phase_is(self, phase: str, n: int | None = None) -> bool:
        s = self.state()
        return s.phase == phase and (n is None or s.experiment == n)

    def results(self) -> list[dict[str, Any]]:
        return self.rd.read_results()

    def stop(self) -> None:
        self.engine.request_stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()


@pytest.fixture
def background():
    started: list[Background] = []

    def start(engine: Engine) -> Background:
        bg = Background(engine)
        started.append(bg)
        return bg

    yield start
    for bg in started:
        if bg.thread.is_alive():
            bg.stop()


def log_text(path: Path) -> str:
    """A run.log as it is now ("" before the run has started writing it)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def processes_in(directory: Path) -> list[psutil.Process]:
    """Live processes started in ``directory`` (a run's directory), and all their descendants
    (inside a sandbox a process's working directory is an inside path like /work)."""
    found: dict[int, psutil.Process] = {}
    target = Path(directory).resolve()
    for p in psutil.process_iter(["pid"]):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and Path(p.cwd()).resolve().is_relative_to(target):
                for q in [p, *p.children(recursive=True)]:
                    if q.status() != psutil.STATUS_ZOMBIE:
                        found[q.pid] = q
        except (psutil.Error, OSError):
            continue
    return list(found.values())
