"""Duty cycle of a real run: how much of the wall time the accelerator spends training.

Runs the real train.py and prepare.py of this repository (copied into a scratch git
repository, so this checkout is never touched) for N experiments at the given budget,
and prints:

    duty     counted training seconds (train.py's summary, every run of every
             experiment, confirmation runs included) / wall seconds from the first
             experiment's start to the last one's end
    idle     the gaps between one training process's end and the next one's start
             (evaluation, deciding, proposing when not pipelined, git, start-up):
             median and max
    per experiment: status, metric, its training processes and where the rest went

Agents: the offline heuristic (default), or `--agent-delay S`: a command agent that
sleeps S seconds, then adds a harmless comment to train.py (an A/A change: every
experiment trains). `--overlap` turns on [loop] overlap (two lanes take turns on the
device: one trains while the other's experiment is scored). `--compare` runs the loop
in each way one after the other and prints them side by side: with --agent-delay,
sequential (pipeline = false), pipelined and overlapped; without, the offline agent
plain and overlapped. Targets on the 2-core CPU at 60 s: offline >= 0.95; 30 s agent
delay: pipelined >= 0.93 against about 0.6 sequential; median idle <= 1 s when the
agent is faster than training.

    python bench/duty_cycle.py [--budget 60] [--experiments 10] [--agent-delay S] [--overlap] [--compare]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.agents import make_agent  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.loop import Engine  # noqa: E402

FILES = ("train.py", "prepare.py", "program.md")

DELAY_AGENT = """#!/bin/sh
sleep {delay}
echo "# A/A change $(date +%s%N)" >> train.py
echo "HYPOTHESIS: a comment changes nothing; this measures the loop, not an idea"
echo "DESCRIPTION: add a comment"
"""


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


def run_once(base: Path, name: str, args: argparse.Namespace, delay: float | None, pipeline: bool,
             overlap: bool = False) -> dict:
    repo = scratch_repo(base / name)
    overrides = {"loop.budget_seconds": args.budget, "loop.max_experiments": args.experiments,
                 "loop.baseline_runs": args.baseline_runs, "loop.seed": args.seed, "loop.pipeline": pipeline,
                 "loop.overlap": overlap}
    if delay is not None:
        script = base / f"{name}-agent.sh"
        script.write_text(DELAY_AGENT.format(delay=delay))
        script.chmod(0o755)
        overrides.update({"agent.name": "command", "agent.command": str(script), "loop.sandbox": "auto"})
    config = load_config(repo, overrides)
    engine = Engine(repo, "duty", config, make_agent(config), out=lambda line: print(f"[{name}] {line}", flush=True))
    if engine.run() != 0:
        raise SystemExit(f"duty_cycle: the engine failed: {engine.error}")
    return summarize(engine.rd.read_results())


def summarize(results: list) -> dict:
    spans = sorted(span for r in results for span in r.train_spans)
    training = sum((r.train_seconds or 0.0) * max(1, len(r.train_spans)) for r in results if r.train_spans)
    wall = max(r.ended_at for r in results) - min(r.started_at for r in results)
    gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    rows = []
    for r in results:
        t = r.timings
        rows.append(f"{r.n:>3} {r.status:<9} {(f'{r.metric:.4f}' if r.scored else '-'):>8} "
                    f"{len(r.train_spans):>4} {r.train_seconds or 0:8.1f} {r.wall_seconds or 0:7.1f} "
                    f"{t.get('eval', 0):6.1f} {t.get('agent', 0):6.1f} "
                    f"{t.get('check_commit', 0) + t.get('decide_revert', 0):6.2f}  {r.description[:50]}")
    # What a run trained per second: overlapping scoring with training must not cost much of it.
    speed = [r.tokens_per_sec for r in results if r.tokens_per_sec]
    return {"duty": training / wall if wall else 0.0, "training": training, "wall": wall,
            "tokens_per_sec": statistics.median(speed) if speed else 0.0,
            "gap_median": statistics.median(gaps) if gaps else 0.0, "gap_max": max(gaps, default=0.0),
            "experiments": len(results), "runs": len(spans), "rows": rows}


def report(name: str, summary: dict) -> None:
    print(f"\n{name}: {summary['experiments']} experiments, {summary['runs']} training runs")
    print(f"{'#':>3} {'status':<9} {'val_bpb':>8} {'runs':>4} {'training':>8} {'wall':>7} {'eval':>6} "
          f"{'agent':>6} {'git':>6}  description")
    print("\n".join(summary["rows"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--experiments", type=int, default=10, help="including the baseline runs")
    parser.add_argument("--baseline-runs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agent-delay", type=float, metavar="S", help="a command agent that thinks S seconds")
    parser.add_argument("--overlap", action="store_true", help="[loop] overlap: one trains while another is scored")
    parser.add_argument("--compare", action="store_true", help="each way of running the loop, side by side")
    parser.add_argument("--keep", metavar="DIR", help="build the scratch repositories here and keep them")
    args = parser.parse_args()

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="ar-duty-")
    base = Path(args.keep).resolve() if args.keep else Path(tmp.name)
    delay = args.agent_delay
    if args.compare and delay is not None:
        runs = [("sequential", run_once(base, "sequential", args, delay, False)),
                ("pipelined", run_once(base, "pipelined", args, delay, True)),
                ("overlapped", run_once(base, "overlapped", args, delay, False, overlap=True))]
    elif args.compare:
        runs = [("offline", run_once(base, "offline", args, None, False)),
                ("offline overlapped", run_once(base, "overlapped", args, None, False, overlap=True))]
    else:
        label = f"agent delay {delay:g} s" if delay is not None else "offline heuristic"
        label += " overlapped" if args.overlap else ""
        runs = [(label, run_once(base, "run", args, delay, delay is not None and not args.overlap, args.overlap))]
    for name, summary in runs:
        report(name, summary)
    print(f"\nbudget {args.budget:g} s, {args.experiments} experiments each")
    print(f"{'':<20} {'duty':>6} {'training s':>10} {'wall s':>8} {'idle median':>11} {'idle max':>8} "
          f"{'tokens/s median':>15}")
    for name, s in runs:
        print(f"{name:<20} {s['duty']:6.3f} {s['training']:10.1f} {s['wall']:8.1f} {s['gap_median']:11.2f} "
              f"{s['gap_max']:8.2f} {s['tokens_per_sec']:15.0f}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
