"""GPU and CPU readings for the utilization pane. No Textual here.

``Sampler.sample(engine_pid)`` is called from one worker at a time (the app re-arms it
after each call), so the sampler may keep state between calls: the NVML handle, and the
psutil.Process objects whose cpu_percent() needs a previous reading to compare with.
Nothing here raises: a missing NVML library or a vanished process is reported as text.

With several workers, ``sample(engine_pid, trees)`` also sums each worker's training
process tree (``trees``: label -> the root's pid, inside the engine's tree) and names,
per GPU, the trees whose processes use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GpuReading:
    index: int
    name: str
    util: float | None  # percent
    mem_used: float | None  # bytes
    mem_total: float | None
    temp: float | None  # Celsius
    power: float | None  # watts
    power_limit: float | None
    users: list[str] = field(default_factory=list)  # labels of the sampled trees with a process on it


@dataclass
class ProcReading:
    cpu_percent: float  # summed over the tree; 100 = one core
    rss: float  # bytes, summed
    count: int  # processes in the tree
    root_pid: int


@dataclass
class Sample:
    gpus: list[GpuReading] = field(default_factory=list)
    gpu_note: str | None = None  # why there are no GPU readings
    proc: ProcReading | None = None  # the engine and its children (training, evaluation)
    proc_note: str | None = None
    trees: dict[str, ProcReading] = field(default_factory=dict)  # label -> one worker's training tree
    cpu_percent: float | None = None  # whole system
    cpu_count: int | None = None
    mem_used: float | None = None
    mem_total: float | None = None


class Sampler:
    def __init__(self) -> None:
        self._nvml: Any = None
        self._nvml_error: str | None = None
        self._nvml_tried = False
        self._procs: dict[int, Any] = {}  # pid -> psutil.Process (keeps cpu_percent state)
        self._readings: dict[int, tuple[float, float, int]] = {}  # pid -> (cpu percent, rss, ppid), last sample
        self._psutil: Any = None

    # -- GPU --------------------------------------------------------------------

    def _init_nvml(self) -> None:
        self._nvml_tried = True
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as e:  # library missing, driver missing, permission, ...
            self._nvml_error = _nvml_reason(e)

    def _gpus(self) -> list[GpuReading]:
        nv = self._nvml
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            name = _try(lambda: nv.nvmlDeviceGetName(h)) or f"GPU {i}"
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            util = _try(lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu)
            mem = _try(lambda: nv.nvmlDeviceGetMemoryInfo(h))
            temp = _try(lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
            power = _try(lambda: nv.nvmlDeviceGetPowerUsage(h))
            limit = _try(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h))
            out.append(
                GpuReading(
                    index=i,
                    name=str(name),
                    util=float(util) if util is not None else None,
                    mem_used=float(mem.used) if mem is not None else None,
                    mem_total=float(mem.total) if mem is not None else None,
                    temp=float(temp) if temp is not None else None,
                    power=power / 1000.0 if power is not None else None,
                    power_limit=limit / 1000.0 if limit is not None else None,
                )
            )
        return out

    # -- CPU --------------------------------------------------------------------

    def _tree(self, pid: int) -> ProcReading | None:
        ps = self._psutil
        try:
            root = self._procs.get(pid) or ps.Process(pid)
            members = [root] + root.children(recursive=True)
        except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess):
            self._procs.clear()
            return None
        seen: dict[int, Any] = {}
        readings: dict[int, tuple[float, float, int]] = {}
        cpu = rss = 0.0
        for p in members:
            proc = self._procs.get(p.pid, p)  # reuse the object so cpu_percent has a baseline
            seen[p.pid] = proc
            try:
                with proc.oneshot():
                    reading = (proc.cpu_percent(None), float(proc.memory_info().rss), proc.ppid())
            except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess):
                continue
            readings[p.pid] = reading
            cpu += reading[0]
            rss += reading[1]
        self._procs = seen
        self._readings = readings
        return ProcReading(cpu_percent=cpu, rss=rss, count=len(seen), root_pid=pid)

    def _subtrees(self, trees: dict[str, int]) -> tuple[dict[str, ProcReading], dict[int, str]]:
        """Each tree under its root, summed from the engine tree's readings (cpu_percent
        can be read once per sample only); and which tree each pid belongs to."""
        children: dict[int, list[int]] = {}
        for pid, (_, _, ppid) in self._readings.items():
            children.setdefault(ppid, []).append(pid)
        out: dict[str, ProcReading] = {}
        owner: dict[int, str] = {}
        for label, root_pid in trees.items():
            if root_pid not in self._readings:
                continue  # not (or no longer) in the engine's tree
            pids, i = [root_pid], 0
            while i < len(pids):  # breadth first down the tree (one pass, no cycles in a process tree)
                pids += [c for c in children.get(pids[i], []) if c != root_pid]
                i += 1
            out[label] = ProcReading(cpu_percent=sum(self._readings[pid][0] for pid in pids),
                                     rss=sum(self._readings[pid][1] for pid in pids), count=len(pids), root_pid=root_pid)
            owner.update((pid, label) for pid in pids)
        return out, owner

    def _gpu_users(self, gpus: list[GpuReading], owner: dict[int, str]) -> None:
        """Name, per GPU, the trees whose processes compute on it (NVML's process list)."""
        nv = self._nvml
        for g in gpus:
            procs = _try(lambda: nv.nvmlDeviceGetComputeRunningProcesses(nv.nvmlDeviceGetHandleByIndex(g.index))) or []
            users = {owner[p.pid] for p in procs if getattr(p, "pid", None) in owner}
            g.users = sorted(users)

    def sample(self, engine_pid: int | None, trees: dict[str, int] | None = None) -> Sample:
        out = Sample()
        if not self._nvml_tried:
            self._init_nvml()
        if self._nvml is not None:
            try:
                out.gpus = self._gpus()
                if not out.gpus:
                    out.gpu_note = "NVML found no GPU"
            except Exception as e:
                out.gpu_note = f"NVML error: {_nvml_reason(e)}"
        else:
            out.gpu_note = f"No NVIDIA GPU ({self._nvml_error})"
        try:
            if self._psutil is None:
                import psutil

                self._psutil = psutil
            ps = self._psutil
            out.cpu_percent = ps.cpu_percent(None)
            out.cpu_count = ps.cpu_count() or 1
            vm = ps.virtual_memory()
            out.mem_used, out.mem_total = float(vm.total - vm.available), float(vm.total)
            if engine_pid:
                out.proc = self._tree(engine_pid)
                if out.proc is None:
                    out.proc_note = f"engine process {engine_pid} not found"
                elif trees:
                    out.trees, owner = self._subtrees(trees)
                    if out.gpus and owner:
                        self._gpu_users(out.gpus, owner)
            else:
                out.proc_note = "no engine process"
        except Exception as e:
            out.proc_note = f"psutil error: {e}"
        return out


def _try(fn: Any) -> Any:
    try:
        return fn()
    except Exception:
        return None


def _nvml_reason(e: BaseException) -> str:
    name = type(e).__name__
    if "LibraryNotFound" in name:
        return "NVML library not found"
    if "DriverNotLoaded" in name:
        return "NVIDIA driver not loaded"
    text = str(e).strip()
    return text or name
