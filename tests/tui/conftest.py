"""Fixtures for the monitor's tests: a fake engine in a temporary repository, and a
helper that waits (with a deadline, never a timing assertion) for the app to catch up."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
from rich.console import Console

from tests.tui.fake_engine import T0, FakeEngine
from tui.sysstats import ProcReading, Sample

WAIT_S = 10.0  # generous: two shared cores can be slow; a pass usually takes milliseconds


@pytest.fixture(autouse=True)
def _monitor_env(tmp_path_factory, monkeypatch):
    # The user's own themes and monitor.toml must not change what tests see.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
    monkeypatch.delenv("AUTORESEARCH_THEME", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


@pytest.fixture
def engine(repo: Path):
    fake = FakeEngine(repo, "test")
    fake.start()
    yield fake
    fake.release()


async def wait_for(pilot, condition: Callable[[], bool], what: str = "condition", timeout: float = WAIT_S) -> None:
    """Let the app run until ``condition()`` holds; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


class FixedSampler:
    """A sampler with fixed readings, for pictures that must not change between runs."""

    def __init__(self) -> None:
        self.calls = 0

    def sample(self, engine_pid: int | None) -> Sample:
        self.calls += 1
        return Sample(
            gpus=[],
            gpu_note="No NVIDIA GPU (NVML library not found)",
            proc=ProcReading(cpu_percent=187.0, rss=1.3 * 2**30, count=3, root_pid=4242),
            cpu_percent=91.0,
            cpu_count=2,
            mem_used=6.2 * 2**30,
            mem_total=15.5 * 2**30,
        )


def fixed_clock(at: float = T0 + 37.0) -> Callable[[], float]:
    return lambda: at


def rendered(widget) -> str:
    """The text a widget draws right now (its own render(), laid out at its width)."""
    console = Console(width=max(20, widget.content_region.width), record=True, file=io.StringIO())
    console.print(widget.render())
    return console.export_text() + str(widget.border_title or "")
