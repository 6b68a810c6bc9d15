"""Experiments per hour with 1 worker and with N workers, side by side in one run.

Runs the real train.py and prepare.py of this repository (copied into scratch git
repositories; this checkout is never touched) with the offline heuristic agent, first
with one worker, then with ``--workers`` workers, each for the same number of
experiments, and prints experiments per hour and training runs per hour for both.
Every training process gets one thread (OMP_NUM_THREADS=1 for the single worker; the
workers split the cores between them), so on a 2-core CPU two workers use the machine
that one worker leaves half idle. Target on this 2-core CPU at a 10 s budget: >= 1.7x.
``--workload baseline`` runs the unchanged train.py every time, so both configurations
do the same work; with the agent (the default) they search different paths, and the
ratio also reflects how many confirmation runs each path needed.

    python bench/workers.py [--budget 10] [--experiments 14] [--workers 2] [--workload baseline]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.duty_cycle import scratch_repo  # noqa: E402
from engine.agents import make_agent  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.loop import Engine  # noqa: E402
from engine.rundir import read_jsonl  # noqa: E402


def run_once(base: Path, workers: int, args: argparse.Namespace) -> dict:
    name = f"workers-{workers}"
    repo = scratch_repo(base / name)
    # --workload baseline: every experiment is a run of the unchanged train.py, so both
    # configurations do the same work; with the agent, where the search goes (how many
    # keeps need a confirmation run, how big the models it tries) differs between them.
    baseline_runs = args.experiments if args.workload == "baseline" else args.baseline_runs
    overrides = {"loop.budget_seconds": args.budget, "loop.max_experiments": args.experiments,
                 "loop.baseline_runs": baseline_runs, "loop.seed": args.seed, "loop.workers": workers}
    config = load_config(repo, overrides)
    engine = Engine(repo, "workers", config, make_agent(config),
                    out=lambda line: print(f"[{name}] {line}", flush=True))
    if engine.run() != 0:
        raise SystemExit(f"workers: the engine failed: {engine.error}")
    results = engine.rd.read_results()
    wall = max(r.ended_at for r in results) - min(r.started_at for r in results)
    runs = sum(len(r.train_spans) for r in results)
    statuses = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {"experiments": len(results), "runs": runs, "wall": wall, "statuses": statuses,
            "phases": phase_seconds(engine.rd.events_jsonl, len(results)),
            "per_hour": len(results) / wall * 3600, "runs_per_hour": runs / wall * 3600,
            "best": engine.s.standing.best.metric if engine.s.standing.best else None}


def phase_seconds(events_path: Path, experiments: int) -> dict[str, float]:
    """Seconds per experiment spent in each phase, from the phase events of events.jsonl.

    A phase lasts until the next phase event or result of the same experiment, so with
    several workers the phases of different experiments overlap in time."""
    spans: dict[str, float] = {}
    open_phase: dict[int, tuple[str, float]] = {}
    for event in read_jsonl(events_path):
        n = event.get("n")
        if n is None or event.get("type") not in ("phase", "result"):
            continue
        if n in open_phase:
            phase, since = open_phase.pop(n)
            spans[phase] = spans.get(phase, 0.0) + event["ts"] - since
        if event["type"] == "phase":
            open_phase[n] = (event["phase"], event["ts"])
    return {phase: total / max(experiments, 1) for phase, total in spans.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--experiments", type=int, default=14, help="per configuration, baseline runs included")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-runs", type=int, default=2)
    parser.add_argument("--workload", choices=("agent", "baseline"), default="agent",
                        help="agent: the offline agent's changes; baseline: the unchanged train.py every time "
                             "(the same work for both configurations)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # one thread per training process, as each of the workers gets
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ar-workers-") as tmp:
        rows = [(w, run_once(Path(tmp), w, args)) for w in (1, args.workers)]
    print(f"\nbudget {args.budget:g} s, {args.experiments} experiments each ({args.workload}), {os.cpu_count()} cpus, "
          f"load before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'workers':>7} {'experiments':>11} {'runs':>5} {'wall s':>7} {'exp/hour':>9} {'runs/hour':>9}  statuses")
    for w, r in rows:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()))
        print(f"{w:>7} {r['experiments']:>11} {r['runs']:>5} {r['wall']:7.1f} {r['per_hour']:9.1f} "
              f"{r['runs_per_hour']:9.1f}  {statuses}")
    phases = sorted({p for _, r in rows for p in r["phases"]}, key=lambda p: -rows[0][1]["phases"].get(p, 0.0))
    print("seconds per experiment in each phase (a worker's own time):")
    print(f"{'workers':>7} " + " ".join(f"{p:>10}" for p in phases))
    for w, r in rows:
        print(f"{w:>7} " + " ".join(f"{r['phases'].get(p, 0.0):10.2f}" for p in phases))
    one, many = rows[0][1], rows[1][1]
    print(f"speed-up: {many['per_hour'] / one['per_hour']:.2f}x experiments per hour, "
          f"{many['runs_per_hour'] / one['runs_per_hour']:.2f}x training runs per hour")
    return 0


if __name__ == "__main__":
    sys.exit(main())
