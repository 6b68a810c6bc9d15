"""Duty cycle of a real run: training seconds / wall seconds, and where the rest goes.

Runs the real train.py and prepare.py of this repository (copied into a scratch git
repository, so this checkout is never touched) with the heuristic agent for N
experiments at the given budget, then prints per experiment:

    training  training_seconds from train.py's summary (only counted steps)
    wall      the experiment's wall time in the engine
    startup   train.py process wall - training_seconds (interpreter, imports, data, model)
    eval      the prepare.py evaluate process
    git       scope check + commit, and the revert after the decision
    agent     the agent's proposal
    between   the gap until the next experiment started (journal, state, loop)

and the overall ratio (target >= 0.90 at the 60 s CPU budget over 10 experiments).
The data cache is $AUTORESEARCH_CACHE (default ~/.cache/autoresearch); building it
the first time is not counted.

    python bench/duty_cycle.py [--budget 60] [--experiments 10] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.agents.heuristic import HeuristicAgent  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.loop import Engine  # noqa: E402

FILES = ("train.py", "prepare.py", "program.md")


def scratch_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if not (ROOT / name).is_file():
            raise SystemExit(f"duty_cycle: {ROOT / name} is missing (it measures the real files)")
        shutil.copy2(ROOT / name, path / name)

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("add", *FILES)
    git("-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "real genome")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--experiments", type=int, default=10, help="including the baseline runs")
    parser.add_argument("--baseline-runs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", metavar="DIR", help="build the scratch repository here and keep it")
    args = parser.parse_args()

    tmp = None
    if args.keep:
        base = Path(args.keep).resolve()
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ar-duty-")
        base = Path(tmp.name)
    repo = scratch_repo(base / "repo")
    config = load_config(repo, {"loop.budget_seconds": args.budget, "loop.max_experiments": args.experiments,
                                "loop.baseline_runs": args.baseline_runs, "loop.seed": args.seed})
    engine = Engine(repo, "duty", config, HeuristicAgent(seed=args.seed),
                    out=lambda line: print(line, flush=True))
    t0 = time.monotonic()
    rc = engine.run()
    total = time.monotonic() - t0
    results = engine.rd.read_results()
    print()
    if rc != 0 or not results:
        print(f"engine failed: {engine.error}")
        return 1

    header = (f"{'#':>3} {'status':<9} {'val_bpb':>8} {'training':>8} {'wall':>7} {'ratio':>6} "
              f"{'startup':>7} {'eval':>6} {'git':>6} {'agent':>6} {'between':>7}  description")
    print(header)
    sums = dict(training=0.0, wall=0.0, startup=0.0, eval=0.0, git=0.0, agent=0.0, between=0.0)
    for i, r in enumerate(results):
        t = r.get("timings") or {}
        training = r.get("train_seconds") or 0.0
        wall = r.get("wall_seconds") or 0.0
        startup = max(0.0, t.get("train", 0.0) - training)
        git_s = t.get("check_commit", 0.0) + t.get("decide_revert", 0.0)
        nxt = results[i + 1]["started_at"] if i + 1 < len(results) else None
        between = (nxt - r["ended_at"]) if nxt and r.get("ended_at") else 0.0
        row = dict(training=training, wall=wall + between, startup=startup, eval=t.get("eval", 0.0), git=git_s,
                   agent=t.get("agent", 0.0), between=between)
        for k in sums:
            sums[k] += row[k]
        metric = f"{r['metric']:.4f}" if isinstance(r.get("metric"), float) else "-"
        ratio = training / row["wall"] if row["wall"] else 0.0
        print(f"{r['n']:>3} {r['status']:<9} {metric:>8} {training:8.1f} {row['wall']:7.1f} {ratio:6.3f} "
              f"{startup:7.1f} {row['eval']:6.1f} {git_s:6.2f} {row['agent']:6.2f} {between:7.2f}  "
              f"{r.get('description', '')[:60]}")
    print()
    overall = sums["training"] / sums["wall"] if sums["wall"] else 0.0
    print(f"overall: training {sums['training']:.1f} s / wall {sums['wall']:.1f} s = {overall:.3f} "
          f"(target >= 0.90: {'met' if overall >= 0.90 else 'NOT met'}); engine wall incl. start-up {total:.1f} s")
    rest = sums["wall"] - sums["training"]
    if rest > 0:
        other = rest - sums["startup"] - sums["eval"] - sums["git"] - sums["agent"] - sums["between"]
        parts = [("train.py start-up", sums["startup"]), ("evaluation", sums["eval"]), ("git", sums["git"]),
                 ("agent", sums["agent"]), ("between experiments", sums["between"]), ("other engine work", other)]
        print("where the rest goes: " + ", ".join(f"{name} {v:.1f} s ({100 * v / rest:.0f}%)" for name, v in parts))
    keeps = [r for r in results if r["status"] == "keep"]
    base = engine.baseline_info or {}
    print(f"baseline val_bpb {base.get('metric', float('nan')):.4f} +- {base.get('noise', float('nan')):.4f}; "
          f"keeps: {len(keeps)}" + "".join(f"\n  #{r['n']:04d} {r['description']}: {r['metric']:.4f} "
                                          f"(delta {r['delta']:+.4f}, needed < -{r['threshold']:.4f})" for r in keeps))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
