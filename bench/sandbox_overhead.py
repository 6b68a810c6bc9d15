"""What the bubblewrap sandbox adds to starting an experiment's process.

Wall time of `python -c pass` and `python -c "import torch"`, plain and inside the
sandbox (the engine's mounts: experiment files read-only, a scratch dir read-write,
60 hidden files), runs interleaved so drift hits both sides alike. Target: the
sandbox adds well under 0.3 s per process.

    python bench/sandbox_overhead.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import sandbox  # noqa: E402

ENV = {"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}
CASES = {"python -c pass": "pass", 'python -c "import torch"': "import torch"}


def timed(launch: sandbox.Launch) -> float:
    start = time.perf_counter()
    subprocess.run(launch.argv, env=launch.env, cwd=launch.cwd, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each case and mode (median reported)")
    args = parser.parse_args()
    sb = sandbox.detect("auto")
    if not sb.enabled:
        print(f"no sandbox here: {sb.describe()}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        src, scratch, lib = (Path(tmp, name) for name in ("src", "scratch", "lib"))
        for d in (src, scratch, lib):
            d.mkdir()
        hidden = []
        for i in range(60):
            (lib / f"v{i:02d}.py").write_text(f"TEXT = {i}\n")
            hidden.append(lib / f"v{i:02d}.py")
        mounts = sandbox.Mounts(ro={"/work": src, "/stdlib": lib}, rw={"/scratch": scratch}, hide=hidden)
        jails = {"plain": sandbox.detect("off").jail(mounts), "sandbox": sb.jail(mounts)}
        print(f"{sb.describe()}, {sys.executable}, median of {args.runs} runs, interleaved\n")
        print(f"{'command':<28}{'plain s':>10}{'sandbox s':>12}{'added s':>10}")
        for name, code in CASES.items():
            launches = {mode: j.launch([j.python, "-c", code], env=ENV, cwd="/work") for mode, j in jails.items()}
            for launch in launches.values():  # warm the page cache once
                timed(launch)
            times: dict[str, list[float]] = {mode: [] for mode in launches}
            for _ in range(args.runs):
                for mode, launch in launches.items():
                    times[mode].append(timed(launch))
            plain, boxed = (statistics.median(times[m]) for m in ("plain", "sandbox"))
            print(f"{name:<28}{plain:>10.3f}{boxed:>12.3f}{boxed - plain:>+10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
