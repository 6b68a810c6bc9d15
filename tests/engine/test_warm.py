"""Warm training processes: the next run's process starts while this one is scored, and
still sees nothing of any other experiment."""

from __future__ import annotations

import json
import re

from .conftest import run_engine


def test_the_next_training_process_starts_warm_and_fresh(repo):
    steps = [{"set": {"MODE": "leave"}}, {"set": {"MODE": "look"}}]
    engine = run_engine(repo, steps, loop__max_experiments=3, loop__baseline_runs=1,
                        loop__warm_imports=["json", "email.parser"])
    rd = engine.rd
    logs = {n: (rd.experiment(n) / "run.log").read_text() for n in (2, 3)}
    ages = {n: float(re.search(r"process age ([0-9.]+)", log).group(1)) for n, log in logs.items()}
    # #3's process was started while #2 was scored (a 1.5 s evaluation), before #3 existed.
    assert ages[3] > 1.0, ages
    # It saw its own fresh scratch directory, not #2's file, and the budget's clock started at
    # its release: the time it waited is not in the wall time the engine measured.
    seen = json.loads(next(line[8:] for line in logs[3].splitlines() if line.startswith("SCRATCH ")))
    assert seen == ["home", "tmp"]
    assert engine.results[2].timings["train"] < ages[3] + 1.0
    assert not (rd.root / "slots").exists() or not any((rd.root / "slots").iterdir())
