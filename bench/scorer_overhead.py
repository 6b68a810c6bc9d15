"""What the split scorer costs, and how well its causality probe catches a model that reads ahead.

    python bench/scorer_overhead.py [--budget 5] [--runs 3] [--detect 20] [--old-rev REV]
                                    [--skip-cost] [--skip-honest] [--skip-detect]

1. Trains the real train.py briefly (AUTORESEARCH_TIME_BUDGET=--budget) in a scratch copy
   of the workspace, on the real data cache (built first if missing).
2. Wall time of `python prepare.py evaluate` (the whole process, as the engine runs it),
   without and with --holdout, with the phases from eval.json (ready: both servers up and
   the model loaded; scoring; probing) and the honest model's largest probe difference.
   With --old-rev, the in-process evaluator of that git revision is timed the same way
   (it needs its own cache, built in a scratch directory). Without it, the figure given in
   the design notes is printed for comparison: ~2.2 s for 16 KiB of validation bytes.
3. The probe's cost/power trade-off: the probing phase for several PROBE_ROWS (scorer run
   in this process with the constant changed), next to the chance that a model reading
   ahead at 1% / 2% of positions escapes one evaluation, (1 - p) ** rows.
4. Honest models' largest probe difference (what PROBE_TOLERANCE must clear): the trained
   baseline in float32, under bf16 autocast, with TF32 and cudnn.benchmark on (on CUDA),
   and a randomly initialised GPT with a 512-byte context.
5. Detection: the baseline model wrapped so that it reads the next byte at about 1% (then
   2%) of positions, chosen by a fixed hash of position and byte, scored --detect times
   each; prints how many evaluations refused it, and the score it got when not caught.

Every line carries the load average: on a shared machine the figures depend on it.
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
OLD_FIGURE = 2.2  # seconds, in-process evaluator with 16 KiB of validation bytes (design notes)

PEEKER = """
# The baseline model, reading the next byte at a fraction RATE of positions chosen by a
# fixed hash of (position, byte): the 'small look-ahead' a careless or sly change could add.
import torch
import torch.nn.functional as F

import baseline

RATE = {rate!r}


class Peeker(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.seq_len = inner, inner.seq_len

    def forward(self, idx):
        logits = self.inner(idx)
        T = idx.shape[1]
        h = (idx * 2654435761 + torch.arange(T, device=idx.device) * 40503) % 1000003
        peek = (h % 10000) < RATE * 10000
        peek[:, -1] = False  # nothing to read after the last input byte
        ahead = F.one_hot(torch.roll(idx, -1, dims=1), 256).float() * 20
        return torch.where(peek[..., None], ahead, logits)


def load_model(path):
    return Peeker(baseline.load_model(path))
"""


# Honest variants of the baseline, for the probe's tolerance: each must compare equal.
HONEST = {
    "float32": None,
    "bf16 autocast": """
import torch
import baseline

class Model(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.seq_len = inner, inner.seq_len
    def forward(self, idx):
        with torch.autocast(idx.device.type, dtype=torch.bfloat16):
            return self.inner(idx)

def load_model(path):
    return Model(baseline.load_model(path))
""",
    "tf32 + cudnn.benchmark": """
import torch
import baseline
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
torch.backends.cudnn.benchmark = True
torch.set_float32_matmul_precision("high")
load_model = baseline.load_model
""",
    "seq_len 512, random weights": """
import os
import baseline
def load_model(path):
    return baseline.load_model(os.path.join(os.path.dirname(__file__), "long.pt"))
""",
}


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def run(cmd, cwd, env=None, check=True):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def timed_evaluate(work: Path, train_py: str, *extra: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    result = run([sys.executable, "prepare.py", "evaluate", "--train", train_py, "--checkpoint", "checkpoint.pt",
                  "--out", "eval.json", *extra], cwd=work, check=False)
    return time.monotonic() - t0, result


def cost(work: Path, runs: int, old_rev: str | None) -> None:
    print("\n== scorer wall time (python prepare.py evaluate, whole process) ==")
    for extra in ((), ("--holdout",)):
        walls, reports = [], []
        for _ in range(runs):
            wall, result = timed_evaluate(work, "train.py", *extra)
            if result.returncode != 0:
                raise SystemExit(result.stderr[-2000:])
            walls.append(wall)
            reports.append(json.loads((work / "eval.json").read_text()))
            r = reports[-1]
            print(f"  split {' '.join(extra) or '(decision slice)':18s} wall {wall:5.2f}s  ready {r['timings']['ready']:.2f}  "
                  f"scoring {r['timings']['scoring']:.2f}  probing {r['timings']['probing']:.2f}  "
                  f"val_bpb {r['val_bpb']:.4f}  probe max diff {r['probe_max_diff']:.2g}  {load()}", flush=True)
        print(f"  split {' '.join(extra) or '(decision slice)':18s} median wall {statistics.median(walls):.2f}s "
              f"({reports[0]['val_bytes']} val bytes{', + holdout' if extra else ''}, {reports[0]['probe_rows']} probe rows)")
    if old_rev:
        old = work.parent / "old"
        old.mkdir()
        (old / "prepare.py").write_text(run(["git", "show", f"{old_rev}:prepare.py"], cwd=ROOT).stdout)
        shutil.copy(work / "train.py", old / "train.py")
        shutil.copy(work / "checkpoint.pt", old / "checkpoint.pt")
        env = dict(os.environ, AUTORESEARCH_CACHE=str(work.parent / "old-cache"))
        run([sys.executable, "prepare.py"], cwd=old, env=env)
        walls = []
        for _ in range(runs):
            t0 = time.monotonic()
            run([sys.executable, "prepare.py", "evaluate", "--train", "train.py", "--checkpoint", "checkpoint.pt",
                 "--out", "eval.json"], cwd=old, env=env)
            walls.append(time.monotonic() - t0)
            print(f"  old in-process ({old_rev}) wall {walls[-1]:5.2f}s  {load()}", flush=True)
        print(f"  old in-process median wall {statistics.median(walls):.2f}s")
    else:
        print(f"  old in-process evaluator (design notes): ~{OLD_FIGURE:.1f}s for 16384 val bytes")


def trade_off(work: Path) -> None:
    """The probing phase for several probe counts, the scorer running in this process."""
    print("\n== probe rows: cost (probing phase, decision slice) and power ==")
    sys.path.insert(0, str(work))
    import prepare

    for rows in (64, 128, 256, 512, 1024):
        prepare.PROBE_ROWS = rows
        r = prepare.evaluate(work / "train.py", work / "checkpoint.pt")
        escape = {p: (1 - p) ** r["probe_rows"] for p in (0.01, 0.02, 0.05)}
        print(f"  {r['probe_rows']:5d} rows: probing {r['timings']['probing']:5.2f}s (scoring {r['timings']['scoring']:.2f}s)  "
              f"escape at 1%: {escape[0.01]:.3f}, 2%: {escape[0.02]:.4f}, 5%: {escape[0.05]:.1e}  {load()}", flush=True)
    sys.path.remove(str(work))


def honest(work: Path) -> None:
    print("\n== honest models: largest probe difference (log-probabilities before the cut) ==")
    import importlib.util

    import torch

    shutil.copy(work / "train.py", work / "baseline.py")
    sys.path.insert(0, str(work))  # train.py imports prepare
    spec = importlib.util.spec_from_file_location("baseline_for_bench", work / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    config = {**module.model_config(), "seq_len": 512}
    model = module.GPT(**config)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    torch.save({"config": config, "state_dict": model.state_dict()}, work / "long.pt")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, source in HONEST.items():
        if source is not None:
            (work / "honest.py").write_text(source)
        _, result = timed_evaluate(work, "honest.py" if source else "train.py", "--holdout")
        if result.returncode != 0:
            print(f"  {name:28s} REFUSED: {result.stderr.strip().splitlines()[-1]}", flush=True)
            continue
        r = json.loads((work / "eval.json").read_text())
        print(f"  {name:28s} on {device}: max diff {r['probe_max_diff']:.3g} over {r['probe_rows']} rows "
              f"(context {r['context']}, val_bpb {r['val_bpb']:.4f}, wall {r['seconds']:.2f}s)  {load()}", flush=True)


def detection(work: Path, evaluations: int) -> None:
    print(f"\n== detection of a model that reads ahead at a small share of positions ({evaluations} evaluations each) ==")
    shutil.copy(work / "train.py", work / "baseline.py")
    for rate in (0.01, 0.02):
        (work / "peeker.py").write_text(PEEKER.format(rate=rate))
        caught, escaped = 0, []
        for _ in range(evaluations):
            _, result = timed_evaluate(work, "peeker.py")
            if result.returncode == 1 and "looks ahead" in result.stderr:
                caught += 1
            elif result.returncode == 0:
                escaped.append(json.loads((work / "eval.json").read_text())["val_bpb"])
            else:
                raise SystemExit(result.stderr[-2000:])
        expected = 1 - (1 - rate) ** 256
        note = f"; when not caught it scored {statistics.fmean(escaped):.4f}" if escaped else ""
        print(f"  reads ahead at {rate:.0%}: refused {caught}/{evaluations} "
              f"(expected {expected:.1%} per evaluation at 256 rows){note}  {load()}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=5.0, help="training seconds for the model (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="timed evaluations of each kind (default 3)")
    parser.add_argument("--detect", type=int, default=20, help="evaluations per look-ahead rate (default 20)")
    parser.add_argument("--old-rev", help="also time the in-process evaluator of this git revision")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-honest", action="store_true")
    parser.add_argument("--skip-detect", action="store_true")
    args = parser.parse_args()

    run([sys.executable, str(ROOT / "prepare.py")], cwd=ROOT)
    print(f"cpus {os.cpu_count()}, {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ar-scorer-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        for name in ("prepare.py", "train.py"):
            shutil.copy(ROOT / name, work / name)
        env = dict(os.environ, AUTORESEARCH_TIME_BUDGET=str(args.budget), AUTORESEARCH_CHECKPOINT=str(work / "checkpoint.pt"))
        run([sys.executable, "train.py"], cwd=work, env=env)
        print(f"trained the baseline for {args.budget:g}s", flush=True)
        if not args.skip_cost:
            cost(work, args.runs, args.old_rev)
            trade_off(work)
        if not args.skip_honest:
            honest(work)
        if not args.skip_detect:
            detection(work, args.detect)
    return 0


if __name__ == "__main__":
    sys.exit(main())
