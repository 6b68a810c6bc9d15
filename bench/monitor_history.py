"""History of 10,000 experiments: open it and scroll it (target <= 1.0 s).

The real `autoresearch tui` in tmux at 160x50 on a fake run of 10,000 results. Times
are from the key press until the screen shows the expected rows.

    python bench/monitor_history.py [--experiments 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import time

from monitor_common import Tmux, full_frame, make_run, monitor_command, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    total = args.experiments
    repo, engine = make_run(results=total)
    opened, ended, paged, sorted_, back = [], [], [], [], []
    count = f"{total:,} of {total:,}"
    newest = f" {total - 1} "
    try:
        for _ in range(args.runs):
            tmux = Tmux(160, 50)
            try:
                tmux.start(monitor_command(repo))
                tmux.wait_for(full_frame, timeout=60)
                t0 = time.monotonic()
                tmux.keys("h")
                opened.append(tmux.wait_for(lambda s: count in s and newest in s) - t0)
                t0 = time.monotonic()
                tmux.keys("End")
                ended.append(tmux.wait_for(lambda s: "baseline" in s and "    0 " in s) - t0)
                t0 = time.monotonic()
                tmux.keys("PageUp", "PageUp")  # the first only moves the cursor to the top row
                paged.append(tmux.wait_for(lambda s: "baseline" not in s) - t0)
                t0 = time.monotonic()
                tmux.keys("o", "o")  # sort by val_bpb: 10,000 records re-ordered
                sorted_.append(tmux.wait_for(lambda s: "val_bpb ▲" in s) - t0)
                t0 = time.monotonic()
                tmux.keys("Escape")
                back.append(tmux.wait_for(lambda s: "Training log" in s) - t0)
            finally:
                tmux.kill()
    finally:
        engine.release()
    print(f"history of {total:,} experiments (160x50):")
    print(f"  open (h until the newest rows show): {summary(opened, ' s')}")
    print(f"  End (jump to the oldest row):        {summary(ended, ' s')}")
    print(f"  PageUp twice (the view scrolls):     {summary(paged, ' s')}")
    print(f"  sort by val_bpb (o o):               {summary(sorted_, ' s')}")
    print(f"  back to the live screen (Esc):       {summary(back, ' s')}")


if __name__ == "__main__":
    main()
