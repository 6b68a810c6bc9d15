"""Latency from a line appended to run.log to it being on screen (target p95 <= 250 ms).

The real `autoresearch tui` runs in tmux at 160x50 against a fake run; the screen is
read with `tmux capture-pane` (which adds a few ms to every figure).

1. normal: a training log of 10 lines/s, plus marker lines at random moments; each
   marker's latency is the time until it appears on screen.
2. flood: 2,000 lines/s. Most lines scroll past between two repaints and are never
   on screen; the figure is, for each new bottom line seen, how long ago it was written.

    python bench/monitor_latency.py [--markers 100] [--flood-seconds 15]
"""

from __future__ import annotations

import argparse
import random
import re
import threading
import time

from monitor_common import Tmux, full_frame, make_run, monitor_command, summary


def normal(tmux: Tmux, log_path, markers: int) -> list[float]:
    stop = threading.Event()
    lock = threading.Lock()

    def background() -> None:
        i = 0
        while not stop.wait(0.1):
            with lock, open(log_path, "a") as f:
                f.write(f"step {i:06d} | loss 2.5 | lr 4.00e-03 | dt 102ms\n")
            i += 1

    thread = threading.Thread(target=background, daemon=True)
    thread.start()
    rng = random.Random(1)
    latencies = []
    try:
        for i in range(markers):
            time.sleep(rng.uniform(0.1, 0.3))
            marker = f"MARK-{i:04d}-{rng.randrange(10**6):06d}"
            with lock, open(log_path, "a") as f:
                f.write(marker + "\n")
                f.flush()
                t0 = time.monotonic()
            latencies.append(tmux.wait_for(lambda s: marker in s, timeout=10, poll=0.002) - t0)
    finally:
        stop.set()
        thread.join()
    return latencies


def flood(tmux: Tmux, log_path, seconds: float, rate: int = 2000) -> list[float]:
    written: dict[int, float] = {}
    stop = threading.Event()

    def writer() -> None:
        n, start = 0, time.monotonic()
        with open(log_path, "a") as f:
            while not stop.is_set():
                due = int((time.monotonic() - start) * rate)
                if due > n:
                    f.write("".join(f"flood {k:08d} | loss 2.5 | lr 4.00e-03\n" for k in range(n, due)))
                    f.flush()
                    t = time.monotonic()
                    for k in range(n, due):
                        written[k] = t
                    n = due
                time.sleep(0.005)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    latencies, newest = [], -1
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            screen = tmux.screen()
            seen = time.monotonic()
            steps = [int(m) for m in re.findall(r"flood (\d{8})", screen)]
            if steps and max(steps) > newest:
                newest = max(steps)
                if newest in written:
                    latencies.append(seen - written[newest])
            time.sleep(0.002)
    finally:
        stop.set()
        thread.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--markers", type=int, default=100)
    parser.add_argument("--flood-seconds", type=float, default=15.0)
    args = parser.parse_args()
    repo, engine = make_run()
    log_path = engine.run.experiment(engine.state.experiment) / "run.log"
    tmux = Tmux(160, 50)
    try:
        tmux.start(monitor_command(repo))
        tmux.wait_for(full_frame)
        time.sleep(1.0)
        lat = normal(tmux, log_path, args.markers)
        print(f"normal log (10 lines/s + markers): {summary([x * 1000 for x in lat], ' ms')}")
        lat = flood(tmux, log_path, args.flood_seconds)
        print(f"flood (2,000 lines/s), age of each new bottom line when seen: {summary([x * 1000 for x in lat], ' ms')}")
    finally:
        tmux.kill()
        engine.release()


if __name__ == "__main__":
    main()
