"""GPU and CPU readings: NVML present, NVML missing, the engine's process tree."""

from __future__ import annotations

import subprocess
import sys
import time
import types

import psutil
import pytest

from tui.sysstats import Sampler
from tui.util_pane import UtilPane


class FakeNVML(types.SimpleNamespace):
    """The few pynvml calls the sampler makes, for a box with two GPUs (one half-broken)."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self) -> None:
        super().__init__()
        self.handles = ["h0", "h1"]

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.handles[i]

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3" if h == "h0" else "NVIDIA H100"

    def nvmlDeviceGetUtilizationRates(self, h):
        if h == "h1":
            raise RuntimeError("GPU is lost")
        return types.SimpleNamespace(gpu=87)

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=40 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 71

    def nvmlDeviceGetPowerUsage(self, h):
        return 312_000  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700_000


def test_gpu_readings_and_a_failing_field():
    sampler = Sampler()
    sampler._nvml_tried, sampler._nvml = True, FakeNVML()
    sample = sampler.sample(None)
    first, second = sample.gpus
    assert (first.name, first.util, first.temp, first.power, first.power_limit) == ("NVIDIA H100 80GB HBM3", 87.0, 71.0, 312.0, 700.0)
    assert first.mem_used == 40 * 2**30 and first.mem_total == 80 * 2**30
    assert second.util is None and second.temp == 71.0  # one failing call costs one field, not the pane
    assert sample.gpu_note is None


def test_without_nvml_it_says_so_and_reads_the_process_tree():
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"])
    try:
        sampler = Sampler()
        sampler._nvml_tried, sampler._nvml_error = True, "NVML library not found"
        deadline = time.monotonic() + 10
        while len(psutil.Process(child.pid).children(recursive=True)) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        sample = sampler.sample(child.pid)
        assert sample.gpus == [] and "No NVIDIA GPU (NVML library not found)" == sample.gpu_note
        assert sample.proc is not None and sample.proc.count == 2 and sample.proc.rss > 0
        assert sample.cpu_count and sample.mem_total and sample.mem_used
        gone = sampler.sample(999_999_999)  # a pid that cannot exist
        assert gone.proc is None and "not found" in gone.proc_note
    finally:
        for p in psutil.Process(child.pid).children(recursive=True):
            p.kill()
        child.kill()
        child.wait()


def test_real_nvml_call_never_raises():
    # On this machine NVML may or may not exist; either way sampling answers.
    sample = Sampler().sample(None)
    assert sample.gpus or sample.gpu_note


@pytest.mark.anyio
async def test_pane_shows_gpus(engine):
    from tests.tui.conftest import wait_for
    from tui.app import MonitorApp

    class GpuSampler(Sampler):
        def __init__(self):
            super().__init__()
            self._nvml_tried, self._nvml = True, FakeNVML()

    app = MonitorApp(engine.run, sampler=GpuSampler())
    async with app.run_test(size=(160, 50)) as pilot:
        pane = app.screen.query_one(UtilPane)
        await wait_for(pilot, lambda: pane.samples > 0, "a sample")
        text = str(pane.render())
        assert "GPU0" in text and "util  87%" in text and "40.0 GB / 80.0 GB" in text and "71°C" in text
        assert "312 W / 700 W" in text and "GPU1" in text
