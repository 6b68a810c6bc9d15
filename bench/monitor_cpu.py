"""Monitor CPU and memory: idle (the engine paused), and while run.log grows at 2,000 lines/s.

Targets: idle <= 1% of one core; median CPU <= 15% of one core at 2,000 lines/s;
resident memory growth <= 30 MB.
The real `autoresearch tui` runs in tmux at 160x50 against a fake run.

- idle: the engine is paused and writes its heartbeat to state.json every 2 s, as the
  real engine does while it holds; nothing else changes. The figure is the monitor's
  CPU time over the whole sample divided by its length, plus what it wrote to the
  terminal (every repaint is bytes over SSH).
- flood: this script appends 2,000 lines a second (in 20-line writes every 10 ms) to
  the current experiment's run.log and samples the monitor process once a second.

    python bench/monitor_cpu.py [--mode both|idle|flood] [--seconds 60] [--idle-seconds 20] [--rate 2000]

To measure another copy of the monitor (an older version, for a before/after in one
session), set AUTORESEARCH_BENCH_TREE to its directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import psutil

from monitor_common import TREE, Tmux, full_frame, make_run, monitor_command, summary

HEARTBEAT_S = 2.0  # engine/journal.py's HEARTBEAT_SECONDS


def written(proc: psutil.Process) -> int | None:
    """Bytes the process has written (to the terminal, for the monitor)."""
    try:
        return proc.io_counters().write_chars
    except (AttributeError, psutil.AccessDenied):
        return None


def idle(seconds: float) -> None:
    repo, engine = make_run()
    engine.set_state(phase="paused", paused=True, phase_started_at=time.time())
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_S):
            now = round(time.time(), 3)
            engine.set_state(heartbeat_at=now, updated_at=now)

    tmux = Tmux(160, 50)
    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        tmux.start(monitor_command(repo))
        tmux.wait_for(lambda s: full_frame(s) and "PAUSED" in s)
        proc = psutil.Process(tmux.pane_pid())
        time.sleep(3.0)  # start-up work (plot, watchdog) done before measuring
        load0 = os.getloadavg()[0]
        proc.cpu_percent(None)
        t0, w0, c0 = time.monotonic(), written(proc), proc.cpu_times()
        samples = []
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            samples.append(proc.cpu_percent(None))
        t1, w1, c1 = time.monotonic(), written(proc), proc.cpu_times()
        cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0) * 100
        print(f"idle (engine paused, heartbeat every {HEARTBEAT_S:g} s), {t1 - t0:.0f} s at 160x50:")
        print(f"  monitor CPU over the sample: {cpu:.2f}% of one core")
        print(f"  1 s samples: {summary(samples, '%')}")
        if w0 is not None and w1 is not None:
            print(f"  written to the terminal: {(w1 - w0) / (t1 - t0):,.0f} bytes/s")
        print(f"  load average: {load0:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    finally:
        stop.set()
        tmux.kill()
        engine.release()


def flood(seconds: float, rate: int) -> None:
    repo, engine = make_run()
    log_path = engine.run.experiment(engine.state.experiment) / "run.log"
    tmux = Tmux(160, 50)
    try:
        tmux.start(monitor_command(repo))
        tmux.wait_for(full_frame)
        proc = psutil.Process(tmux.pane_pid())
        time.sleep(2.0)  # let start-up work (plot, watchdog) finish before the baseline
        load0 = os.getloadavg()[0]
        proc.cpu_percent(None)
        rss_start = proc.memory_info().rss
        cpu, rss = [], []
        chunk = max(1, rate // 100)
        period = chunk / rate
        lines = 0
        start = time.monotonic()
        next_sample = start + 1.0
        with open(log_path, "a", encoding="utf-8") as log:
            while (now := time.monotonic()) - start < seconds:
                due = int((now - start) * rate)
                while lines < due:
                    log.write("".join(
                        f"step {lines + i:07d} | loss {3.0 / (1 + (lines + i) / 1e4):.4f} | lr 4.00e-03 | dt 102ms | tok/s 40213\n"
                        for i in range(chunk)))
                    lines += chunk
                log.flush()
                if now >= next_sample:
                    cpu.append(proc.cpu_percent(None))
                    rss.append(proc.memory_info().rss)
                    next_sample += 1.0
                time.sleep(period)
        last = f"step {lines - 1:07d}"
        caught_up = tmux.wait_for(lambda s: last in s, timeout=10)
        behind = caught_up - time.monotonic()
        rss_end = proc.memory_info().rss
        print(f"flood: wrote {lines:,} lines in {seconds:g} s ({lines / seconds:,.0f} lines/s)")
        print(f"  monitor CPU (% of one core, 1 s samples): {summary(cpu, '%')}")
        print(f"  monitor RSS: start {rss_start / 2**20:.1f} MB, end {rss_end / 2**20:.1f} MB, "
              f"growth {(rss_end - rss_start) / 2**20:+.1f} MB (peak {max(rss) / 2**20:.1f} MB)")
        print(f"  last line on screen {max(0.0, -behind):.2f} s after the writer stopped")
        print(f"  load average: {load0:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
              f"median CPU {statistics.median(cpu):.1f}%")
    finally:
        tmux.kill()
        engine.release()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("both", "idle", "flood"), default="both")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the flood")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=2000, help="lines per second")
    args = parser.parse_args()
    print(f"monitor from {TREE}")
    if args.mode in ("both", "idle"):
        idle(args.idle_seconds)
    if args.mode in ("both", "flood"):
        flood(args.seconds, args.rate)


if __name__ == "__main__":
    main()
