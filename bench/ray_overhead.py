"""The head's overhead per experiment with Ray against a local run, side by side.

Both runs use the stand-in genome (tests/engine/genome.py) and one worker. Overhead is an
experiment's wall time on the head minus the wall time of its training and evaluation
processes (measured where they ran: on the node with Ray). With Ray it adds shipping the
commit and the scorer, following the log, bringing eval.json and the checkpoint back, and
the first run's actor start. The Ray side is a real cluster started here on 127.0.0.1
(tests/raycluster.py), so network time is loopback's.

    python bench/ray_overhead.py [--experiments 10]

Needs Ray: pip install -e '.[ray]'.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.agents.heuristic import HeuristicAgent  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.loop import Engine  # noqa: E402
from tests.engine.genome import make_repo  # noqa: E402
from tests.raycluster import local_cluster  # noqa: E402

BASELINE_RUNS = 2


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def overheads(tmp: Path, name: str, experiments: int, extra: dict) -> tuple[list[float], float]:
    """Each experiment's overhead (after the first, which also starts things), and the total wall."""
    repo = make_repo(tmp / name, timeout=60, hang=30)
    config = load_config(repo, {"loop.max_experiments": experiments + BASELINE_RUNS,
                                "loop.baseline_runs": BASELINE_RUNS, "loop.workers": 1, **extra})
    engine = Engine(repo, "bench", config, HeuristicAgent(seed=0))
    t0 = time.monotonic()
    rc = engine.run()
    total = time.monotonic() - t0
    if rc != 0:
        raise SystemExit(f"{name}: the engine failed: {engine.error}")
    rows = []
    for r in engine.rd.read_results():
        t = r.timings
        rows.append(r.wall_seconds - t.get("train", 0.0) - t.get("eval", 0.0))
    return rows, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10, help="experiments after the baseline runs, each side")
    args = parser.parse_args()
    try:
        import ray  # noqa: F401
    except ImportError:
        print("Ray is not installed: pip install -e '.[ray]'")
        return 2
    with tempfile.TemporaryDirectory(prefix="ar-rayoh-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["AUTORESEARCH_CACHE"] = str(tmp / "cache")
        local, local_total = overheads(tmp, "local", args.experiments, {})
        with local_cluster({"slot": 1}, num_cpus=os.cpu_count() or 1) as cluster:
            remote, remote_total = overheads(tmp, "ray", args.experiments,
                                             {"loop.ray": cluster.address, "loop.ray_resources": {"slot": 1}})
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"{'':>16} {'local':>8} {'ray':>8}")
    for label, fn in (("median s", statistics.median), ("p90 s", lambda v: percentile(v, 0.9)), ("max s", max)):
        print(f"{label:>16} {fn(local[1:]):8.3f} {fn(remote[1:]):8.3f}")
    print(f"{'first exp. s':>16} {local[0]:8.3f} {remote[0]:8.3f}  (the first also starts the worker / Ray actor)")
    print(f"{'total wall s':>16} {local_total:8.1f} {remote_total:8.1f}")
    extra = statistics.median(remote[1:]) - statistics.median(local[1:])
    print(f"Ray adds {extra:+.3f} s per experiment at the median ({len(local)} experiments each side, "
          f"{os.cpu_count()} cores, load {load:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
