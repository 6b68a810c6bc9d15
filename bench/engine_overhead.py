"""Engine overhead per experiment, with a trivial genome.

Overhead = the experiment's wall time minus the wall time of its training and
evaluation processes: everything the engine itself adds (agent call, scope check,
git commit/reset, journal writes, state updates). Target: median <= 0.5 s.

    python bench/engine_overhead.py [--experiments 20] [--agent heuristic|scripted]

Prints per-experiment figures, then the median and p90, and the mean of each timed
step the engine records (results.jsonl "timings").
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
from tests.engine.genome import ScriptedAgent, make_repo  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=20, help="experiments after the baseline runs")
    parser.add_argument("--agent", choices=["heuristic", "scripted"], default="heuristic")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ar-overhead-") as tmp:
        os.environ["AUTORESEARCH_CACHE"] = str(Path(tmp) / "cache")
        repo = make_repo(Path(tmp) / "repo", timeout=30, hang=30)
        baseline_runs = 2
        config = load_config(repo, {"loop.max_experiments": args.experiments + baseline_runs,
                                    "loop.baseline_runs": baseline_runs})
        agent = HeuristicAgent(seed=0) if args.agent == "heuristic" else ScriptedAgent([])
        engine = Engine(repo, "bench", config, agent)
        t0 = time.monotonic()
        rc = engine.run()
        total = time.monotonic() - t0
        results = engine.rd.read_results()
    if rc != 0:
        print(f"engine failed: {engine.error}")
        return 1

    rows = []
    print(f"{'#':>4} {'status':<9} {'wall':>7} {'train':>7} {'eval':>7} {'overhead':>9}")
    for r in results:
        t = r.timings
        process = t.get("train", 0.0) + t.get("eval", 0.0)
        overhead = r.wall_seconds - process
        rows.append((r, overhead))
        print(f"{r.n:>4} {r.status:<9} {r.wall_seconds:7.3f} {t.get('train', 0):7.3f} "
              f"{t.get('eval', 0):7.3f} {overhead:9.3f}")
    proposals = [o for r, o in rows if not r.baseline]
    print()
    print(f"experiments: {len(results)} ({len(proposals)} proposals, agent {args.agent}), "
          f"total wall {total:.1f} s")
    for label, values in (("all experiments", [o for _, o in rows]), ("proposals only", proposals)):
        if values:
            print(f"overhead {label}: median {statistics.median(values):.3f} s, p90 {percentile(values, 0.9):.3f} s, "
                  f"max {max(values):.3f} s")
    steps: dict[str, list[float]] = {}
    for r, _ in rows:
        for k, v in r.timings.items():
            steps.setdefault(k, []).append(v)
    print("mean seconds per step: " + ", ".join(f"{k} {statistics.fmean(v):.3f}" for k, v in steps.items()))
    med = statistics.median(proposals or [o for _, o in rows])
    print(f"target median <= 0.5 s: {'met' if med <= 0.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
