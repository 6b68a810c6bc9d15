"""GPU (or, without one, CPU) utilization with short sparklines.

The training processes are a tree under one root process, named by ``root_label``: the
engine in the monitor ("engine pid 4242"), train.py itself in watch mode. With several
workers, a line per worker's training tree ("w1 #0012") follows, and each GPU names the
workers that compute on it. With --ray, the runs are on other machines: a section per
node shows what its workers last reported (CPU, memory, the GPUs Ray gave them).
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import Any

from rich.text import Text
from textual.widgets import Static

from tui import fmt
from tui.flights import Flight, NodeUtil
from tui.sysstats import Sample
from tui.themes import on_theme_change, theme_style

HISTORY = 60  # samples kept per series for the sparklines
SPARK_WIDTH = 20


class UtilPane(Static):
    def __init__(self, *args: Any, root_label: str = "engine", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.root_label = root_label  # what the root of the measured process tree is

    def on_mount(self) -> None:
        self.border_title = "Utilization"
        self.samples = 0
        self.series: dict[str, deque[float]] = {}
        self.sample: Sample | None = None
        self.nodes: dict[str, tuple[NodeUtil | None, tuple[str, ...]]] = {}  # --ray: node -> its reading, its runs
        self._text: Text | None = None
        self.update(Text("measuring…", style="dim"))
        on_theme_change(self, self._restyle)

    def _restyle(self) -> None:
        self._text = None
        self._draw()

    def show(self, sample: Sample) -> None:
        self.samples += 1
        self.sample = sample
        for g in sample.gpus:
            self._push(f"gpu{g.index}.util", g.util)
            mem_pct = (g.mem_used / g.mem_total * 100) if g.mem_used is not None and g.mem_total else None
            self._push(f"gpu{g.index}.mem", mem_pct)
        if sample.proc is not None:
            self._push("proc.cpu", sample.proc.cpu_percent / (sample.cpu_count or 1))
        if sample.cpu_percent is not None:
            self._push("sys.cpu", sample.cpu_percent)
        self._draw()

    def show_nodes(self, flights: tuple[Flight, ...]) -> None:
        """The Ray nodes the running experiments are on, with what their workers reported."""
        nodes: dict[str, tuple[NodeUtil | None, tuple[str, ...]]] = {}
        for f in flights:
            if f.node:
                util, runs = nodes.get(f.node, (None, ()))
                nodes[f.node] = (f.node_util or util, (*runs, f"w{f.worker} #{f.n:04d}"))
        if nodes != self.nodes:
            self.nodes = nodes
            self._draw()

    def _push(self, key: str, value: float | None) -> None:
        if value is not None:
            self.series.setdefault(key, deque(maxlen=HISTORY)).append(value)

    def _spark(self, key: str) -> str:
        series = self.series.get(key)
        if not series:
            return ""
        return fmt.spark(series, SPARK_WIDTH, lo=0.0, hi=max(100.0, max(series)))

    def _draw(self) -> None:
        """The last sample and the sparklines, in the current theme's colours."""
        sample = self.sample
        if sample is None:
            return
        style = partial(theme_style, self)
        busy, memory = style("$primary"), style("$secondary")  # green is for kept experiments
        out = Text(no_wrap=True, overflow="ellipsis")
        if sample.gpus:
            for g in sample.gpus:
                out.append(f"GPU{g.index} ", style="bold")
                out.append(fmt.one_line(g.name, 24), style="dim")
                if g.users:
                    out.append("  " + ", ".join(g.users))
                out.append("\n")
                out.append(f"  util {g.util:>3.0f}% " if g.util is not None else "  util   —  ")
                out.append(self._spark(f"gpu{g.index}.util") + "\n", style=busy)
                out.append(f"  mem  {fmt.bytes_(g.mem_used)} / {fmt.bytes_(g.mem_total)} ")
                out.append(self._spark(f"gpu{g.index}.mem") + "\n", style=memory)
                temp = f"{g.temp:.0f}°C" if g.temp is not None else "—"
                power = f"{g.power:.0f} W" if g.power is not None else "—"
                if g.power is not None and g.power_limit:
                    power += f" / {g.power_limit:.0f} W"
                out.append(f"  temp {temp}   power {power}\n")
        else:
            out.append((sample.gpu_note or "No NVIDIA GPU") + "\n", style=style("$warning"))
        if sample.proc is not None:
            p = sample.proc
            out.append("training ", style="bold")
            out.append(f"cpu {p.cpu_percent:>4.0f}% ")
            out.append(self._spark("proc.cpu"), style=busy)
            procs = f"{p.count} proc{'s' if p.count != 1 else ''}"
            out.append(f"\n  rss {fmt.bytes_(p.rss)} · {procs} · {self.root_label} pid {p.root_pid}\n")
            for label, tree in sample.trees.items():  # several workers: each one's training
                out.append(f"  {label} ", style="bold")
                out.append(f" cpu {tree.cpu_percent:>4.0f}%  rss {fmt.bytes_(tree.rss)}\n")
        elif sample.proc_note:
            out.append(f"training: {sample.proc_note}\n", style="dim")
        if sample.cpu_percent is not None:
            out.append("system   ", style="bold")
            out.append(f"cpu {sample.cpu_percent:>4.0f}% ")
            out.append(self._spark("sys.cpu"), style=busy)
            out.append(f"\n  mem {fmt.bytes_(sample.mem_used)} / {fmt.bytes_(sample.mem_total)}")
            if sample.cpu_count:
                out.append(f"  ({sample.cpu_count} cores)")
        self._draw_nodes(out, style)
        out.rstrip()
        if out != self._text:
            # The pane is as tall as its text: a layout pass only when it is not as tall as
            # this text (a GPU or the training processes appear or go), not for new readings.
            self._text = out
            self.update(out, layout=not self._fits())
            self.call_after_refresh(self._heal)

    def _draw_nodes(self, out: Text, style) -> None:  # type: ignore[no-untyped-def]
        for node, (util, runs) in self.nodes.items():
            out.append("\nnode ", style="bold")
            out.append(f"{fmt.one_line(node, 40)}  ")
            out.append(", ".join(runs), style="dim")
            if util is None:
                out.append("\n  waiting for its first reading", style="dim")
                continue
            cpu = f"{util.cpu:.0f}%" if util.cpu is not None else "—"
            out.append(f"\n  cpu {cpu:>4}")
            if util.mem_used is not None and util.mem_total:
                out.append(f"  mem {fmt.bytes_(util.mem_used)} / {fmt.bytes_(util.mem_total)}")
            if util.cores:
                out.append(f"  ({util.cores} cores)")
            for index, used, mem, total in util.gpus:
                busy = f"{used:.0f}%" if used is not None else "—"
                out.append(f"\n  GPU{index} util {busy:>4}", style=style("$primary"))
                if mem is not None and total:
                    out.append(f"  mem {fmt.bytes_(mem)} / {fmt.bytes_(total)}")

    def _fits(self) -> bool:
        """Whether the pane's height is its text's (or its container's, in the tabs)."""
        height = self.styles.height
        if self._text is None or height is None or not height.is_auto:
            return True
        return self.content_region.height == self._text.plain.count("\n") + 1

    def _heal(self) -> None:
        """Once the update is on screen: if a layout pass was lost (the pane's size was
        worked out while another widget mounted), ask for one again."""
        if not self._fits():
            self.refresh(layout=True)
