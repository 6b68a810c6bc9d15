"""The offline agent: minimal edits that parse, no repeats, deterministic, learns."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from engine.agents.base import AgentError, ProposalContext
from engine.agents.heuristic import HeuristicAgent, config_key, read_constants
from engine.results import parse_results

from .genome import git, make_repo

ROOT = Path(__file__).resolve().parents[2]

GENOME = '''\
"""A genome with the usual kinds of constants."""
import math

DEPTH = 4  # number of blocks
WIDTH = 256  # model width
HEADS = 4  # attention heads; WIDTH must be divisible by HEADS
BATCH_SIZE = 32  # sequences per step
MATRIX_LR = 3e-3  # peak learning rate
WEIGHT_DECAY = 0.1
ADAM_BETA2 = 0.95
WARMUP_FRAC = 0.02
WARMDOWN_FRAC = 0.4
SEED = 0
NAME = "gpt"  # not a number: left alone
FLAG = True  # a bool: left alone
lower_case = 5  # not a constant by convention


def f():
    LOCAL = 3  # not top level
    return LOCAL
'''


@pytest.fixture
def wt(tmp_path):
    repo = make_repo(tmp_path / "repo", train_py=GENOME)
    return repo


def context(wt: Path, n: int = 3, history=None) -> ProposalContext:
    return ProposalContext(n=n, worktree=wt, program="", mutable=["train.py"], history=parse_results(history or []),
                           best=None, last_result=None, last_log_tail="", notes=[])


def test_reads_only_top_level_numeric_uppercase_constants():
    consts = read_constants(GENOME)
    assert list(consts) == ["DEPTH", "WIDTH", "HEADS", "BATCH_SIZE", "MATRIX_LR", "WEIGHT_DECAY", "ADAM_BETA2",
                            "WARMUP_FRAC", "WARMDOWN_FRAC", "SEED"]
    assert consts["MATRIX_LR"].value == 0.003 and consts["MATRIX_LR"].text == "3e-3"
    assert "divisible by HEADS" in consts["HEADS"].comment
    assert read_constants("X = 2 ** 10\nY = -0.5\nZ = 64 * 4\n")["X"].value == 1024


def test_one_minimal_edit_that_parses_and_keeps_types(wt):
    before = (wt / "train.py").read_text()
    proposal = HeuristicAgent(seed=0).propose(context(wt))
    after = (wt / "train.py").read_text()
    ast.parse(after)
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(changed) == 1 and len(before.splitlines()) == len(after.splitlines())
    old, new = changed[0]
    assert old.split("=")[0] == new.split("=")[0] and old.split("#")[1:] == new.split("#")[1:]  # comment kept
    b, a = read_constants(before), read_constants(after)
    moved = [k for k in b if b[k].value != a[k].value]
    assert len(moved) == 1 and type(a[moved[0]].value) is type(b[moved[0]].value)
    assert moved[0] in proposal.description and "->" in proposal.description
    assert len(proposal.hypothesis) > 40 and ":" in proposal.hypothesis


def test_deterministic_under_a_seed(tmp_path):
    outs = []
    for i, seed in enumerate((7, 7)):
        repo = make_repo(tmp_path / f"r{i}", train_py=GENOME)
        p = HeuristicAgent(seed=seed).propose(context(repo))
        outs.append((p.description, (repo / "train.py").read_text()))
    assert outs[0] == outs[1]


def simulate(repo: Path, agent: HeuristicAgent, metric, steps: int) -> list[dict]:
    """Play the loop without training: commit each proposal, keep it when ``metric`` improves."""
    history: list[dict] = []
    best_commit = git(repo, "rev-parse", "HEAD")
    best_metric = metric(read_constants((repo / "train.py").read_text()))
    history.append({"n": 1, "status": "baseline", "baseline": True, "commit": best_commit, "parent": best_commit,
                    "metric": best_metric})
    for n in range(2, steps + 2):
        p = agent.propose(context(repo, n, [dict(h) for h in history]))
        git(repo, "commit", "-qam", p.description)
        commit = git(repo, "rev-parse", "HEAD")
        value = metric(read_constants((repo / "train.py").read_text()))
        status = "keep" if value < best_metric - 0.001 else "discard"
        history.append({"n": n, "status": status, "commit": commit, "parent": best_commit, "metric": value,
                        "delta": value - best_metric, "threshold": 0.001, "description": p.description})
        if status == "keep":
            best_commit, best_metric = commit, value
        else:
            git(repo, "reset", "-q", "--hard", best_commit)
    return history


def test_never_repeats_a_configuration_and_respects_constraints(wt):
    def metric(c):  # flat: nothing ever helps, so the agent has to keep finding new moves
        return 1.0

    history = simulate(wt, HeuristicAgent(seed=3), metric, 30)
    configs = []
    for h in history:
        src = git(wt, "show", f"{h['commit']}:train.py")
        consts = read_constants(src)
        values = {k: c.value for k, c in consts.items()}
        configs.append(config_key(values))
        assert values["WIDTH"] % values["HEADS"] == 0 and (values["WIDTH"] // values["HEADS"]) % 2 == 0
        assert 0 <= values["WARMUP_FRAC"] <= 1 and 0 <= values["WARMDOWN_FRAC"] <= 1
        assert values["WARMUP_FRAC"] + values["WARMDOWN_FRAC"] <= 1
        assert 0 < values["ADAM_BETA2"] < 1 and isinstance(values["DEPTH"], int) and values["DEPTH"] >= 1
        assert values["SEED"] == 0  # a new seed is luck, not research
    assert len(set(configs)) == len(configs)


def test_learns_which_direction_helps_and_shrinks_steps_around_the_best(wt):
    def metric(c):  # a bowl in the learning rate around 0.02; everything else is neutral
        import math
        return 1.0 + abs(math.log2(c["MATRIX_LR"].value / 0.02))

    history = simulate(wt, HeuristicAgent(seed=0), metric, 10)
    moves = [h for h in history[1:]]
    # It starts with the learning rate (the prior), and keeps pushing while that pays off.
    assert [h["status"] for h in moves[:3]] == ["keep"] * 3
    assert all(h["description"].startswith("Double MATRIX_LR") for h in moves[:3])
    # The next doubling overshoots; within a few proposals it refines with smaller steps.
    first_miss = next(i for i, h in enumerate(moves) if h["status"] == "discard")
    refined = [h for h in moves[first_miss + 1 : first_miss + 4] if "MATRIX_LR" in h["description"]
               and not h["description"].startswith(("Double", "Halve"))]
    assert refined
    assert min(h["metric"] for h in history) < 1.25  # from 3.74 at the start


def test_a_failed_direction_is_avoided_from_the_same_best(wt):
    agent = HeuristicAgent(seed=0)
    base = git(wt, "rev-parse", "HEAD")
    first = agent.propose(context(wt))
    git(wt, "commit", "-qam", first.description)
    bad = git(wt, "rev-parse", "HEAD")
    git(wt, "reset", "-q", "--hard", base)
    history = [{"n": 1, "status": "baseline", "baseline": True, "commit": base, "parent": base, "metric": 1.0},
               {"n": 2, "status": "oom", "commit": bad, "parent": base, "metric": None, "description": first.description}]
    second = agent.propose(context(wt, 3, history))
    name = first.description.split()[1]
    assert not (name in second.description and second.description.split()[0] == first.description.split()[0])


def test_refuses_when_train_py_is_not_mutable(wt):
    ctx = context(wt)
    ctx.mutable = ["model.py"]
    with pytest.raises(AgentError):
        HeuristicAgent().propose(ctx)


def test_first_moves_on_the_real_train_py_are_valid():
    path = ROOT / "train.py"
    if not path.exists():
        pytest.skip("the real train.py has not landed")
    source = path.read_text()
    moves = HeuristicAgent(seed=0).candidates(source, set(), {}, random.Random(0))
    assert len(moves) >= 10
    for m in moves:
        assert type(m.new) is type(m.old) and m.new != m.old
        assert m.name != "SEED"


def test_an_interrupted_configuration_is_tried_again(wt):
    """A run cut short by a stop never measured its move: the heuristic proposes it again
    (a skipped or rejected one stays tried)."""
    agent = HeuristicAgent(seed=0)
    base = git(wt, "rev-parse", "HEAD")
    history = [{"n": 1, "status": "baseline", "baseline": True, "commit": base, "parent": base, "metric": 1.0}]
    first = agent.propose(context(wt, 2, history))
    git(wt, "commit", "-qam", first.description)
    moved = git(wt, "rev-parse", "HEAD")
    git(wt, "reset", "-q", "--hard", base)
    interrupted = history + [{"n": 2, "status": "interrupted", "commit": moved, "parent": base}]
    again = agent.propose(context(wt, 3, interrupted))
    assert again.description == first.description
    git(wt, "checkout", "-q", "--", ".")
    skipped = history + [{"n": 2, "status": "skipped", "commit": moved, "parent": base}]
    assert agent.propose(context(wt, 3, skipped)).description != first.description
