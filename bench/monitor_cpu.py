"""Monitor CPU and memory while run.log grows at 2,000 lines/s.

Targets: median CPU <= 15% of one core; resident memory growth <= 30 MB.
The real `autoresearch tui` runs in tmux at 160x50 against a fake run; this script
appends 2,000 lines a second (in 20-line writes every 10 ms) to the current
experiment's run.log and samples the monitor process once a second.

    python bench/monitor_cpu.py [--seconds 60] [--rate 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import psutil

from monitor_common import Tmux, full_frame, make_run, monitor_command, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=2000, help="lines per second")
    args = parser.parse_args()
    repo, engine = make_run()
    log_path = engine.run.experiment(engine.state.experiment) / "run.log"
    tmux = Tmux(160, 50)
    try:
        tmux.start(monitor_command(repo))
        tmux.wait_for(full_frame)
        proc = psutil.Process(tmux.pane_pid())
        time.sleep(2.0)  # let start-up work (plot, watchdog) finish before the baseline
        proc.cpu_percent(None)
        rss_start = proc.memory_info().rss
        cpu, rss = [], []
        chunk = max(1, args.rate // 100)
        period = chunk / args.rate
        written = 0
        start = time.monotonic()
        next_sample = start + 1.0
        with open(log_path, "a", encoding="utf-8") as log:
            while (now := time.monotonic()) - start < args.seconds:
                due = int((now - start) * args.rate)
                while written < due:
                    log.write("".join(
                        f"step {written + i:07d} | loss {3.0 / (1 + (written + i) / 1e4):.4f} | lr 4.00e-03 | dt 102ms | tok/s 40213\n"
                        for i in range(chunk)))
                    written += chunk
                log.flush()
                if now >= next_sample:
                    cpu.append(proc.cpu_percent(None))
                    rss.append(proc.memory_info().rss)
                    next_sample += 1.0
                time.sleep(period)
        last = f"step {written - 1:07d}"
        caught_up = tmux.wait_for(lambda s: last in s, timeout=10)
        behind = caught_up - time.monotonic()
        rss_end = proc.memory_info().rss
        print(f"wrote {written:,} lines in {args.seconds:g} s ({written / args.seconds:,.0f} lines/s)")
        print(f"monitor CPU (% of one core, 1 s samples): {summary(cpu, '%')}")
        print(f"monitor RSS: start {rss_start / 2**20:.1f} MB, end {rss_end / 2**20:.1f} MB, "
              f"growth {(rss_end - rss_start) / 2**20:+.1f} MB (peak {max(rss) / 2**20:.1f} MB)")
        print(f"last line on screen {max(0.0, -behind):.2f} s after the writer stopped")
        print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; median CPU "
              f"{statistics.median(cpu):.1f}%")
    finally:
        tmux.kill()
        engine.release()


if __name__ == "__main__":
    main()
