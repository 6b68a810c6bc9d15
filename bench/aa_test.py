"""A/A test of the keep rule: changes that do nothing must not be kept; a real one must.

Runs the real train.py and prepare.py (copied into a scratch git repository) with a
command agent that makes only changes with no effect, in rotation: a comment, an unused
constant, a different SEED. Every keep among them is a false keep. Prints the false
keeps, the noise estimate after each experiment (sigma and its degrees of freedom), and
what the protection cost: the extra runs (confirmations, re-measures of the best) as a
share of all training runs.

--burner runs a CPU burner (one busy process) during the middle third of the
experiments, as another user of a shared box would. --power K then runs K trials of a
known-good change (default: DEPTH 2 -> 1) against fresh baselines and prints how many
were kept.

Targets on the 2-core CPU at the 60 s budget: 0 false keeps in 20, with and without the
burner; the known-good change kept in at least 4 of 5 trials; extra runs under 15%.

    python bench/aa_test.py [--budget 60] [--experiments 20] [--burner] [--power 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.agents import make_agent  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.loop import Engine  # noqa: E402

FILES = ("train.py", "prepare.py", "program.md")

# Rotates through three changes that cannot make the model better: a comment, an unused
# constant, another seed.
NO_EFFECT_AGENT = r"""#!/bin/sh
n=$(date +%s%N)
case $(( n / 1000 % 3 )) in
  0) echo "# an A/A comment $n" >> train.py; d="add a comment";;
  1) echo "UNUSED_$n = 1  # not used anywhere" >> train.py; d="add an unused constant";;
  *) sed -i "s/^SEED = .*/SEED = $(( n / 1000 % 997 ))  # random seed/" train.py; d="change the seed";;
esac
echo "HYPOTHESIS: this change has no effect; the keep rule must not keep it"
echo "DESCRIPTION: $d"
"""

GOOD_AGENT = r"""#!/bin/sh
sed -i "s/^{name} = [0-9.e-]*/{name} = {value}/" train.py
echo "HYPOTHESIS: a known-good change; it must be kept"
echo "DESCRIPTION: {name} -> {value}"
"""


def scratch_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(ROOT / name, path / name)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    subprocess.run(["git", "add", *FILES], cwd=path, check=True)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m",
                    "real genome"], cwd=path, check=True)
    return path


def burn(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def run(repo: Path, script: str, args: argparse.Namespace, experiments: int, tag: str,
        burner_between: tuple[int, int] | None = None) -> list:
    agent = repo.parent / f"{tag}-agent.sh"
    agent.write_text(script)
    agent.chmod(0o755)
    config = load_config(repo, {"loop.budget_seconds": args.budget, "loop.max_experiments": experiments,
                                "agent.name": "command", "agent.command": str(agent), "loop.pipeline": False})
    engine = Engine(repo, tag, config, make_agent(config), out=lambda line: print(f"[{tag}] {line}", flush=True))
    stop, burner = multiprocessing.Event(), None

    def watch() -> None:  # the burner runs while the number of results is in the window
        nonlocal burner
        first, last = burner_between
        while not stop.is_set():
            done = len(engine.s.results)
            if burner is None and done >= first:
                burner = multiprocessing.Process(target=burn, args=(stop,), daemon=True)
                burner.start()
                print(f"[{tag}] burner on", flush=True)
            if burner is not None and done >= last:
                stop.set()
                print(f"[{tag}] burner off", flush=True)
            time.sleep(1.0)

    watcher = threading.Thread(target=watch, daemon=True) if burner_between else None
    if watcher:
        watcher.start()
    try:
        if engine.run() != 0:
            raise SystemExit(f"aa_test: the engine failed: {engine.error}")
    finally:
        stop.set()
    return engine.rd.read_results()


def aa(repo_root: Path, args: argparse.Namespace, burner: bool) -> dict:
    tag = "burn" if burner else "quiet"
    repo = scratch_repo(repo_root / tag)
    total = args.experiments + 2  # plus the two baseline runs
    window = (2 + args.experiments // 3, 2 + 2 * args.experiments // 3) if burner else None
    results = run(repo, NO_EFFECT_AGENT, args, total, tag, window)
    changes = [r for r in results if not r.baseline]
    runs = sum(max(1, len(r.runs)) for r in results if r.scored)
    extra = sum(len(r.runs) - 1 for r in changes if len(r.runs) > 1) + sum(1 for r in results if r.remeasure)
    print(f"\n{tag}: noise after each experiment")
    for r in results:
        noise = f"{r.noise:.4f} (dof {r.noise_dof})" if r.noise is not None else "-"
        flag = "  <-- FALSE KEEP" if r.status == "keep" else ""
        print(f"  #{r.n:04d} {r.status:<9} {(f'{r.metric:.4f}' if r.scored else '-'):>8} runs {len(r.runs)} "
              f"noise {noise} load {r.load_avg}  {r.description[:40]}{flag}")
    return {"false_keeps": sum(r.status == "keep" for r in changes), "changes": len(changes),
            "extra": extra, "runs": runs}


def power(repo_root: Path, args: argparse.Namespace) -> tuple[int, list]:
    name, value = args.good.split("=")
    kept, deltas = 0, []
    for k in range(args.power):
        repo = scratch_repo(repo_root / f"power{k}")
        results = run(repo, GOOD_AGENT.format(name=name, value=value), args, 3, f"power{k}")
        change = results[-1]
        kept += change.status == "keep"
        deltas.append(change.delta)
    return kept, deltas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--experiments", type=int, default=20, help="no-effect changes (after two baseline runs)")
    parser.add_argument("--burner", action="store_true", help="also run with a CPU burner in the middle third")
    parser.add_argument("--power", type=int, default=0, metavar="K", help="trials of a known-good change")
    parser.add_argument("--good", default="DEPTH=1", help="the known-good change, NAME=VALUE")
    parser.add_argument("--keep", metavar="DIR")
    args = parser.parse_args()
    if not re.fullmatch(r"[A-Z_]+=[0-9.e-]+", args.good):
        parser.error("--good must look like NAME=VALUE")
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="ar-aa-")
    root = Path(args.keep).resolve() if args.keep else Path(tmp.name)
    rows = [("quiet", aa(root, args, burner=False))]
    if args.burner:
        rows.append(("with burner", aa(root, args, burner=True)))
    print(f"\nbudget {args.budget:g} s")
    for name, r in rows:
        print(f"{name:<12} false keeps {r['false_keeps']} of {r['changes']}; extra runs {r['extra']} of "
              f"{r['runs']} ({100 * r['extra'] / max(r['runs'], 1):.0f}%)")
    if args.power:
        kept, deltas = power(root, args)
        print(f"power: {args.good} kept in {kept} of {args.power} trials; deltas "
              + ", ".join(f"{d:+.4f}" if d is not None else "-" for d in deltas))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
