"""Start to first full frame: `autoresearch tui` in tmux until every pane shows data.

Target: <= 0.6 s. The clock starts before tmux spawns the process, so the figure
includes Python's own start-up and every import (the monitor never imports torch).

Two ways Python can load the monitor's own modules, measured in alternation:
- cached: from bytecode (`__pycache__`), as a default Python does from the second start
  on and as `pip install` (not `-e`) leaves them. Kept in a private cache directory
  (PYTHONPYCACHEPREFIX), filled by one untimed start.
- source: compiled from source at every start, as when PYTHONDONTWRITEBYTECODE is set
  (this development VM's environment sets it) and no cache was ever written.

    python bench/monitor_startup.py [--runs 7] [--bytecode both|cached|source] [--tree DIR ...]

--tree (repeatable) measures other copies of the source, e.g. an older commit's
`git worktree`, in alternation with each other: before and after in one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from monitor_common import TREE, Tmux, full_frame, make_run, monitor_command, summary


def bytecode_env(mode: str, cache: str) -> dict[str, str]:
    if mode == "cached":
        return {"PYTHONPYCACHEPREFIX": cache, "PYTHONDONTWRITEBYTECODE": ""}
    return {"PYTHONPYCACHEPREFIX": "", "PYTHONDONTWRITEBYTECODE": "1"}


def first_frame(repo, tree, env: dict[str, str]) -> tuple[float, float]:
    """Seconds to the first full frame, and the monitor's CPU seconds until then."""
    tmux = Tmux(160, 50)
    tmux.env.update(env)
    tmux.env = {k: v for k, v in tmux.env.items() if v}  # an empty value means unset
    try:
        t0 = tmux.start(monitor_command(repo, tree=tree))
        elapsed = tmux.wait_for(full_frame) - t0
        # CPU the monitor spent until then: the part of the figure that does not
        # depend on how busy the machine's other processes keep the two cores.
        t = psutil.Process(tmux.pane_pid()).cpu_times()
        return elapsed, t.user + t.system
    finally:
        tmux.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--bytecode", choices=("both", "cached", "source"), default="both")
    parser.add_argument("--tree", action="append", type=Path, help="a source tree to measure (repeatable)")
    args = parser.parse_args()
    modes = ("cached", "source") if args.bytecode == "both" else (args.bytecode,)
    trees = [t.resolve() for t in args.tree] if args.tree else [TREE]
    cases = [(tree, mode) for tree in trees for mode in modes]
    repo, engine = make_run()
    cache = tempfile.mkdtemp(prefix="autoresearch-pycache-")
    times: dict[tuple, list[float]] = {c: [] for c in cases}
    cpu: dict[tuple, list[float]] = {c: [] for c in cases}
    try:
        if "cached" in modes:
            for tree in trees:
                first_frame(repo, tree, bytecode_env("cached", cache))  # fills the cache; not timed
        for _ in range(args.runs):
            for case in cases:  # alternated, so every case sees the same machine
                tree, mode = case
                elapsed, used = first_frame(repo, tree, bytecode_env(mode, cache))
                times[case].append(elapsed)
                cpu[case].append(used)
    finally:
        engine.release()
        shutil.rmtree(cache, ignore_errors=True)
    code = "import sys, tui.launch, tui.app; print('torch' in sys.modules, 'textual_plotext' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    for case in cases:
        tree, mode = case
        name = f"{tree.name} {mode}" if len(trees) > 1 else mode
        print(f"[{name}] start to first full frame (160x50): {summary(times[case], ' s')}")
        print(f"[{name}] monitor CPU time to that frame:     {summary(cpu[case], ' s')}")
    print(f"load average during the runs: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"torch imported by the monitor: {loaded[0]}")


if __name__ == "__main__":
    main()
