"""A [target] that is not this project's workspace: a function whose speed is the metric
(higher is better), read from a `score: N` line, with a pytest guard."""

from __future__ import annotations

import json

from tests.gitrepo import committed_repo

from .conftest import make_engine, run_engine

SLOW = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
FAST = ("from functools import lru_cache\n\n\n@lru_cache(maxsize=None)\n"
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n")
WRONG = "def fib(n):\n    return 0  # very fast, and wrong\n"

BENCH = """\
import time
from fib import fib

start = time.perf_counter()
for _ in range(3):
    fib(22)
    getattr(fib, "cache_clear", lambda: None)()
print("---")
print(f"score: {3 / (time.perf_counter() - start):.3f}")
"""

TEST = "from fib import fib\n\n\ndef test_fib():\n    assert [fib(i) for i in range(8)] == [0, 1, 1, 2, 3, 5, 8, 13]\n"

CONFIG = """\
[loop]
mutable = ["fib.py"]
budget_seconds = 1
baseline_runs = 2
hang_seconds = 30
remeasure_every = 0

[target]
run = "python bench.py"
metric = "score"
direction = "max"
guard = "python -m pytest -q -p no:cacheprovider test_fib.py"
"""


def test_a_speed_target_keeps_an_honest_speed_up_and_refuses_a_wrong_one(tmp_path):
    repo = committed_repo(tmp_path / "repo", {"fib.py": SLOW, "bench.py": BENCH, "test_fib.py": TEST,
                                              "program.md": "Make fib faster. Keep it correct.\n",
                                              "autoresearch.toml": CONFIG})
    steps = [{"write": {"fib.py": WRONG}, "desc": "return 0"}, {"write": {"fib.py": FAST}, "desc": "memoize"}]
    engine = run_engine(repo, steps, loop__max_experiments=4)
    results = engine.results
    assert [r.status for r in results] == ["baseline", "baseline", "discard", "keep"], [r.error for r in results]
    wrong, fast = results[2], results[3]
    assert "the guard" in wrong.error and "failed" in wrong.error
    assert wrong.metric > results[0].metric  # it was faster: only the guard stopped it
    assert fast.metric > 10 * results[0].metric and fast.delta > 0 and len(fast.runs) == 2
    assert all(r.metric_name == "score" and r.self_reported for r in results)
    rows = engine.rd.results_tsv.read_text().splitlines()
    assert rows[0].split("\t")[:2] == ["commit", "score"]
    assert float(rows[4].split("\t")[1]) == round(fast.metric, 6)
    state = json.loads(engine.rd.state_json.read_text())
    assert state["config"]["target"]["direction"] == "max"
    assert "lru_cache" in (engine.rd.worktree / "fib.py").read_text()  # the branch holds the kept change


def test_a_failing_evaluate_command_is_a_crash_with_its_fail_line_cleaned(tmp_path):
    """The trusted evaluate command failing is the experiment's failure, said with its FAIL
    line (control characters from what it read of the run stripped)."""
    evaluate = 'import sys\nprint("FAIL: no score file \\033]0;pwned\\007here")\nsys.exit(3)\n'
    config = CONFIG.replace('guard = "python -m pytest -q -p no:cacheprovider test_fib.py"\n',
                            'evaluate = "python evaluate.py"\n')
    assert "evaluate =" in config
    repo = committed_repo(tmp_path / "repo", {"fib.py": SLOW, "bench.py": BENCH, "evaluate.py": evaluate,
                                              "program.md": "Make fib faster.\n", "autoresearch.toml": config})
    engine = make_engine(repo, [], loop__max_experiments=1)
    assert engine.run() == 1 and "failed its baseline run (crash)" in engine.error  # nothing to compare with
    first = engine.results[0]
    assert first.status == "crash", first
    assert first.error == "evaluation failed: FAIL: no score file here", first.error
    assert first.timings.get("eval") is not None
