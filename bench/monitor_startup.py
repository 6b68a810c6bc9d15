"""Start to first full frame: `autoresearch tui` in tmux until every pane shows data.

Target: <= 0.6 s. The clock starts before tmux spawns the process, so the figure
includes Python's own start-up and every import (the monitor never imports torch).

    python bench/monitor_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import psutil

from monitor_common import Tmux, full_frame, make_run, monitor_command, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    repo, engine = make_run()
    times, cpu = [], []
    try:
        for _ in range(args.runs):
            tmux = Tmux(160, 50)
            try:
                t0 = tmux.start(monitor_command(repo))
                times.append(tmux.wait_for(full_frame) - t0)
                # CPU the monitor spent until then: the part of the figure that does not
                # depend on how busy the machine's other processes keep the two cores.
                t = psutil.Process(tmux.pane_pid()).cpu_times()
                cpu.append(t.user + t.system)
            finally:
                tmux.kill()
    finally:
        engine.release()
    code = "import sys, tui.launch, tui.app; print('torch' in sys.modules, 'textual_plotext' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    print(f"start to first full frame (160x50): {summary(times, ' s')}")
    print(f"monitor CPU time to that frame:     {summary(cpu, ' s')}")
    print(f"load average during the runs: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"torch imported by the monitor: {loaded[0]}")


if __name__ == "__main__":
    main()
