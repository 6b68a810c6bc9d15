"""Baseline train.py against the plain reference GPT, through the same evaluator.

    python bench/baseline_quality.py [--runs 3] [--budget 60] [--only baseline|reference]

Each run trains in a fresh copy of the workspace (train.py + prepare.py, as the
engine's worktree holds them), then scores the checkpoint with
`python prepare.py evaluate` in its own process. Runs alternate baseline and
reference so that changing machine load hits both alike. Prints every val_bpb,
the mean and spread of each, the gap, and the overheads that matter for the
loop's duty cycle (train process start-up and warm-up beyond the budget, and the
evaluation process). The load average is printed with every run: on a shared
machine the figures depend on it.

Targets (issue 2, 2-core CPU, 60 s): baseline mean <= 2.3, and reference mean
minus baseline mean >= 0.15.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRIES = {"baseline": ROOT / "train.py", "reference": ROOT / "bench" / "reference_gpt.py"}


def summary_of(stdout: str) -> dict[str, str]:
    tail = stdout.rsplit("\n---\n", 1)[-1]
    return dict(line.split(": ", 1) for line in tail.strip().splitlines() if ": " in line)


def one_run(kind: str, budget: float, scratch: Path, index: int) -> dict:
    work = scratch / f"{kind}-{index}"
    work.mkdir()
    shutil.copy(ROOT / "prepare.py", work / "prepare.py")
    shutil.copy(ENTRIES[kind], work / "train.py")
    env = dict(os.environ, AUTORESEARCH_TIME_BUDGET=str(budget), AUTORESEARCH_CHECKPOINT=str(work / "checkpoint.pt"))
    load_before = os.getloadavg()[0]
    t0 = time.time()
    train = subprocess.run([sys.executable, "train.py"], cwd=work, env=env, capture_output=True, text=True)
    train_wall = time.time() - t0
    if train.returncode != 0:
        raise SystemExit(f"{kind} run {index} failed:\n{train.stdout[-2000:]}\n{train.stderr[-2000:]}")
    t1 = time.time()
    evaluate = subprocess.run(
        [sys.executable, "prepare.py", "evaluate", "--train", "train.py", "--checkpoint", "checkpoint.pt", "--out", "eval.json"],
        cwd=work, env=env, capture_output=True, text=True,
    )
    eval_wall = time.time() - t1
    if evaluate.returncode != 0:
        raise SystemExit(f"{kind} run {index}: evaluation failed:\n{evaluate.stderr[-2000:]}")
    result = json.loads((work / "eval.json").read_text())
    summary = summary_of(train.stdout)
    training = float(summary["training_seconds"])
    return {
        "kind": kind,
        "val_bpb": result["val_bpb"],
        "val_bytes": result["val_bytes"],
        "training_seconds": training,
        "train_wall": train_wall,
        "eval_wall": eval_wall,
        "duty": training / (train_wall + eval_wall),
        "steps": int(summary["num_steps"]),
        "tokens_per_sec": float(summary["tokens_per_sec"]),
        "load": (load_before + os.getloadavg()[0]) / 2,
    }


def describe(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = max(values) - min(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"mean {mean:.4f}  spread {spread:.4f} (min {min(values):.4f}, max {max(values):.4f}, sd {sd:.4f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run (default 60)")
    parser.add_argument("--only", choices=sorted(ENTRIES), help="run just one of the two")
    args = parser.parse_args()
    kinds = [args.only] if args.only else ["baseline", "reference"]

    check = subprocess.run([sys.executable, str(ROOT / "prepare.py")], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"prepare.py failed:\n{check.stderr}")
    print(f"budget {args.budget:.0f}s, {args.runs} run(s) each, cpus {os.cpu_count()}, load {os.getloadavg()}", flush=True)

    results: dict[str, list[dict]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="ar-quality-") as tmp:
        for i in range(args.runs):
            for kind in kinds:
                r = one_run(kind, args.budget, Path(tmp), i)
                results[kind].append(r)
                print(
                    f"{kind:9s} run {i + 1}: val_bpb {r['val_bpb']:.4f}  steps {r['steps']:5d}  "
                    f"{r['tokens_per_sec']:7.0f} tok/s  train wall {r['train_wall']:5.1f}s "
                    f"(training {r['training_seconds']:.1f}s)  eval wall {r['eval_wall']:.1f}s  "
                    f"duty {r['duty']:.3f}  load {r['load']:.1f}",
                    flush=True,
                )

    print()
    for kind in kinds:
        rs = results[kind]
        print(f"{kind:9s} val_bpb {describe([r['val_bpb'] for r in rs])}")
        startup = [r["train_wall"] - r["training_seconds"] for r in rs]
        print(
            f"{kind:9s} train overhead (wall - training) {statistics.fmean(startup):.2f}s, "
            f"eval process {statistics.fmean(r['eval_wall'] for r in rs):.2f}s "
            f"({rs[0]['val_bytes']} val bytes), duty cycle {statistics.fmean(r['duty'] for r in rs):.3f}"
        )
    if len(kinds) == 2:
        base = statistics.fmean(r["val_bpb"] for r in results["baseline"])
        ref = statistics.fmean(r["val_bpb"] for r in results["reference"])
        print(f"gap (reference - baseline): {ref - base:.4f}   targets: baseline <= 2.3, gap >= 0.15")
    return 0


if __name__ == "__main__":
    sys.exit(main())
