"""The offline agent: one move of one hyperparameter per experiment, no LLM, no network.

It reads the top-level numeric UPPERCASE constants of train.py with ``ast`` and makes a
minimal text edit of one of them. Choosing the move:

- Every candidate is (constant, direction, step level). Level 0 is a bold step (x2 for
  a learning rate, +-1 layer); higher levels are smaller steps. A candidate whose whole
  configuration was already tried (any experiment of this run, read back from its git
  commit) is never proposed, so after a bold step fails from the current best, the
  next try in that direction is automatically a smaller one: steps shrink around the best.
- Its score is a prior (what tends to help a small model under a fixed time budget:
  higher learning rates, smaller batches, smaller models first), plus what this run
  has learned: for each (constant, direction), the outcomes of the experiments that
  moved exactly that constant that way (kept: good; discarded or crashed: bad).
- Ties are broken by a random number seeded by (seed, experiment number), so the
  agent is deterministic under a seed.

Types are respected (ints stay ints, fractions stay in [0, 1], betas in (0, 1)), and
so are simple constraints it can see: "divisible by NAME" in a constant's comment, and
an even quotient for a width split over heads (rotary embeddings need it).
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import math
import random
import re
import subprocess
import tokenize
from dataclasses import dataclass
from pathlib import Path

from ..results import FAILED
from .base import AgentError, Proposal, ProposalContext

# A constant whose comment says it does not change what is learned (a seed, a logging
# interval) is luck or bookkeeping, not an idea: never proposed.
NO_EFFECT = re.compile(r"no[- ]effect|not an idea|not tuned|random seed", re.IGNORECASE)
LEVEL_PENALTY = 0.15  # a smaller step is a little less attractive than a bold one
REFINE_BONUS = 0.35  # smaller steps of a constant whose moves were kept: home in on its optimum
MAX_LEVELS = 8  # past the ladder, steps keep halving (multiplicative) or growing (counts)

# Step ladders per kind: level k uses ladder[k]. Multiplicative unless noted.
LADDERS = {
    "lr": [2.0, 1.41, 1.19, 1.09],
    "decay": [2.0, 1.41, 1.19],
    "beta": [2.0, 1.41, 1.19],  # applied to (1 - beta)
    "frac": [0.1, 0.05, 0.025, 0.0125],  # additive
    "count": [1, 2],  # additive, for depths and small integers
    "size": [2.0, 1.5, 1.25],
    "generic": [2.0, 1.41, 1.19],
}

# Priors: (kind or name fragment, direction) -> how promising before any evidence.
PRIORS = {
    ("lr", "up"): 1.0,
    ("lr", "down"): 0.45,
    ("batch", "down"): 0.9,
    ("batch", "up"): 0.3,
    ("depth", "down"): 0.6,
    ("depth", "up"): 0.35,
    ("width", "down"): 0.55,
    ("width", "up"): 0.3,
    ("warmdown", "up"): 0.5,
    ("warmdown", "down"): 0.3,
    ("warmup", "down"): 0.45,
    ("warmup", "up"): 0.2,
    ("seq", "down"): 0.45,
    ("seq", "up"): 0.25,
    ("decay", "up"): 0.3,
    ("decay", "down"): 0.35,
    ("beta", "up"): 0.25,
    ("beta", "down"): 0.25,
    ("heads", "up"): 0.25,
    ("heads", "down"): 0.25,
    ("mult", "down"): 0.35,
    ("mult", "up"): 0.2,
}
DEFAULT_PRIOR = 0.15

WHY = {
    ("lr", "up"): "the budget allows only a short schedule, so a larger step size should cover more ground "
    "before the warm-down",
    ("lr", "down"): "the loss may be bouncing at the current rate; a smaller step should settle lower",
    ("batch", "down"): "more optimizer steps inside the same time budget; noisier gradients, but more updates "
    "usually win when training is time-bound",
    ("batch", "up"): "smoother gradients and better use of the hardware per step, at the cost of fewer steps",
    ("depth", "down"): "a shallower model runs each step faster, so it sees more tokens inside the budget",
    ("depth", "up"): "more layers add capacity per token, if the budget still allows enough steps",
    ("width", "down"): "a narrower model runs each step faster, so it sees more tokens inside the budget",
    ("width", "up"): "a wider residual stream adds capacity per token, if the budget still allows enough steps",
    ("seq", "down"): "shorter contexts make attention cheaper, so more tokens go through per second",
    ("seq", "up"): "longer contexts give each prediction more to condition on",
    ("warmdown", "up"): "a longer warm-down anneals the weights into a lower-loss basin before time runs out",
    ("warmdown", "down"): "a shorter warm-down keeps the peak learning rate longer",
    ("warmup", "down"): "a shorter warm-up spends more of the short budget at the peak learning rate",
    ("warmup", "up"): "a longer warm-up can stabilise the first steps",
    ("decay", "up"): "stronger weight decay regularises and can speed up the effective learning rate",
    ("decay", "down"): "weaker weight decay lets a short run fit faster",
    ("beta", "up"): "a shorter averaging window lets the optimizer react faster in a short run",
    ("beta", "down"): "a longer averaging window smooths noisy gradients",
    ("heads", "up"): "more, smaller heads can attend to more patterns at the same cost",
    ("heads", "down"): "fewer, larger heads give each head more capacity",
    ("mult", "down"): "a thinner MLP is cheaper per step, leaving more steps in the budget",
    ("mult", "up"): "a wider MLP adds capacity per token",
}


# --- reading constants -----------------------------------------------------------------------


@dataclass
class Constant:
    name: str
    value: int | float
    line: int  # 1-based
    col: int  # where the value's text starts on that line
    end_col: int
    text: str  # the value as written
    comment: str


def _numeric(node: ast.AST) -> int | float | None:
    """The value of a numeric literal expression (3e-3, -1, 2**10, 64 * 4); None otherwise."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _numeric(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Pow)):
        a, b = _numeric(node.left), _numeric(node.right)
        if a is None or b is None:
            return None
        try:
            if isinstance(node.op, ast.Pow):
                return a**b if abs(b) <= 64 else None
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}[type(node.op)]
        except (OverflowError, ZeroDivisionError):
            return None
    return None


def read_constants(source: str) -> dict[str, Constant]:
    """Top-level ``NAME = <number>`` assignments, on one line each, in file order."""
    tree = ast.parse(source)
    lines = source.splitlines()
    comments = _comments(source)
    out: dict[str, Constant] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name) or node.value.lineno != node.value.end_lineno:
            continue
        value = _numeric(node.value)
        if value is None or isinstance(value, bool):
            continue
        line = lines[node.value.lineno - 1]
        # ast columns count UTF-8 bytes; convert to str offsets for the edit.
        raw = line.encode("utf-8")
        col = len(raw[: node.value.col_offset].decode("utf-8"))
        end = len(raw[: node.value.end_col_offset].decode("utf-8"))
        out[name] = Constant(name, value, node.value.lineno, col, end, line[col:end], comments.get(node.lineno, ""))
    return out


def _comments(source: str) -> dict[int, str]:
    found: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                found[tok.start[0]] = tok.string
    except (tokenize.TokenError, SyntaxError):
        pass
    return found


def config_key(values: dict[str, int | float]) -> str:
    """A stable hash of a whole configuration (every numeric constant)."""
    norm = {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in sorted(values.items())}
    return hashlib.sha256(json.dumps(norm, sort_keys=True).encode()).hexdigest()[:16]


# --- kinds, constraints, moves ---------------------------------------------------------------


def kind_of(name: str, value: int | float) -> str | None:
    """How a constant may move; None for constants the agent leaves alone."""
    tokens = set(name.split("_"))
    if "SEED" in tokens or name.endswith("SEED"):
        return None  # a different seed is luck, not research
    if "LR" in tokens or "LEARNING" in tokens:
        return "lr"
    if tokens & {"BETA", "BETA1", "BETA2", "MOMENTUM"}:
        return "beta"
    if tokens & {"FRAC", "RATIO", "PCT"}:
        return "frac"
    if "DECAY" in tokens:
        return "decay"
    if tokens & {"DEPTH", "LAYER", "LAYERS"}:
        return "depth"
    if tokens & {"WIDTH", "EMBD", "DIM", "HIDDEN", "CHANNELS"}:
        return "width"
    if tokens & {"HEADS", "HEAD"}:
        return "heads"
    if "BATCH" in tokens:
        return "batch"
    if tokens & {"SEQ", "LEN", "BLOCK", "CONTEXT"}:
        return "seq"
    if "MULT" in tokens:
        return "mult"
    return "generic"


def _ladder(kind: str, value: int | float) -> tuple[str, list]:
    """(mode, steps): mode is 'mul', 'add' or 'one_minus'."""
    if kind == "frac":
        return "add", LADDERS["frac"]
    if kind == "beta":
        return "one_minus", LADDERS["beta"]
    if kind in ("depth", "mult") or (isinstance(value, int) and kind == "generic" and abs(value) <= 8):
        return "add", LADDERS["count"]
    if kind in ("width", "heads", "batch", "seq"):
        return "mul", LADDERS["size"] if kind != "heads" else [2.0]
    return "mul", LADDERS.get(kind, LADDERS["generic"])


def _round_int(old: int, new: float, kind: str) -> int:
    """Round a moved integer sensibly: sizes stay multiples of the power of two they were
    a multiple of (at most 64, and small enough to let the value move); other integers
    keep two significant digits."""
    if kind in ("width", "heads", "batch", "seq") or (old > 0 and old & (old - 1) == 0):
        g = 1
        while old % (g * 2) == 0 and g < 64 and g * 2 <= new / 4:
            g *= 2
        return int(round(new / g) * g)
    return int(round(float(f"{new:.2g}")))


def _round_sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def step_value(c: Constant, kind: str, direction: str, level: int) -> int | float | None:
    """The constant's value after one move, or None when the move is impossible."""
    mode, ladder = _ladder(kind, c.value)
    if level < len(ladder):
        step = ladder[level]
    elif ladder is LADDERS["count"]:
        step = level + 1  # +-3, +-4 ... layers: the near ones were tried
    elif mode == "add":
        step = ladder[-1] / 2 ** (level - len(ladder) + 1)
    else:
        step = 1 + (ladder[-1] - 1) / 2 ** (level - len(ladder) + 1)
        if step < 1.02:
            return None  # too small a move to measure
    sign = 1 if direction == "up" else -1
    v = c.value
    if mode == "add":
        new = v + sign * step
        if kind == "frac":
            new = min(1.0, max(0.0, round(new, 6)))
            if isinstance(v, int):
                new = int(round(new))
        elif isinstance(v, int):
            new = int(new)
            if new < 1:
                return None
    elif mode == "one_minus":
        if not 0 < v < 1:
            return None
        gap = (1 - v) * (step if direction == "up" else 1 / step)  # "up" = more reactive = larger gap
        new = _round_sig(1 - gap, 4)
        if not 0 < new < 1:
            return None
    else:
        if v == 0:
            if kind == "decay" and direction == "up":
                new = [0.01, 0.03, 0.1][level] if level < 3 else None
                return new if isinstance(v, float) else None
            return None
        new = v * step if direction == "up" else v / step
        if isinstance(v, int):
            new = _round_int(v, new, kind)
            if new < 1:
                return None
        else:
            new = _round_sig(new)
    if new == v:
        return None
    return new


def constraints(consts: dict[str, Constant]) -> list[tuple[str, str, str]]:
    """(kind, a, b) relations the configuration must keep: 'div' a % b == 0, 'even' (a // b) even."""
    out = []
    names = set(consts)
    for c in consts.values():
        for subject, other in re.findall(r"(?:([A-Z][A-Z0-9_]*) (?:must be |is |should be )?)?divisible by ([A-Z][A-Z0-9_]*)",
                                         c.comment):
            subject = subject or c.name
            if other in names and subject in names and subject != other:
                out.append(("div", subject, other))
    ints = {n: c.value for n, c in consts.items() if isinstance(c.value, int) and c.value > 0}
    for a, va in ints.items():
        for b, vb in ints.items():
            if a != b and kind_of(b, vb) == "heads" and kind_of(a, va) == "width" and va % vb == 0:
                out.append(("div", a, b))
                if (va // vb) % 2 == 0:
                    out.append(("even", a, b))
    frac_pair = [n for n in names if "WARMUP" in n] + [n for n in names if "WARMDOWN" in n]
    if len(frac_pair) == 2:
        out.append(("sum1", frac_pair[0], frac_pair[1]))
    return sorted(set(out))


def satisfies(values: dict[str, int | float], rules: list[tuple[str, str, str]]) -> bool:
    for kind, a, b in rules:
        va, vb = values.get(a), values.get(b)
        if va is None or vb is None:
            continue
        if kind == "div" and (vb == 0 or va % vb != 0):
            return False
        if kind == "even" and (vb == 0 or va % vb != 0 or (va // vb) % 2 != 0):
            return False
        if kind == "sum1" and va + vb > 1:
            return False
    return True


def format_value(new: int | float, old_text: str) -> str:
    """The literal to write: ints as ints, floats in the style they were written (3e-3 or 0.003)."""
    if isinstance(new, int):
        return str(new)
    if "e" in old_text.lower() and new != 0:
        exp = math.floor(math.log10(abs(new)))
        mant = round(new / 10**exp, 2)
        if abs(mant) >= 10:
            mant, exp = mant / 10, exp + 1
        return f"{mant:g}e{exp}"
    return repr(new)


def apply_edit(source: str, c: Constant, new: int | float) -> str:
    lines = source.splitlines(keepends=True)
    line = lines[c.line - 1]
    lines[c.line - 1] = line[: c.col] + format_value(new, c.text) + line[c.end_col :]
    return "".join(lines)


# --- the agent -------------------------------------------------------------------------------


def learned_score(observations: list[tuple[float, str]], here: str) -> float:
    """What the run has learned about one (constant, direction): the mean outcome, shrunk
    toward zero while there are few observations, plus half the mean of the outcomes that
    started from the current best (the most relevant evidence for the next step)."""
    if not observations:
        return 0.0
    scores = [s for s, _ in observations]
    learned = sum(scores) / len(scores) * len(scores) / (len(scores) + 1)
    local = [s for s, parent in observations if parent == here]
    if local:
        learned += 0.5 * sum(local) / len(local)
    return learned


@dataclass
class Move:
    name: str
    direction: str  # "up" or "down"
    level: int
    old: int | float
    new: int | float
    kind: str
    score: float


class HeuristicAgent:
    name = "heuristic"
    model = None

    def __init__(self, seed: int = 0, target: str = "train.py"):
        self.seed = seed
        self.target = target
        self._configs: dict[str, dict[str, int | float] | None] = {}  # commit -> constants

    # -- history --

    def _config_at(self, worktree: Path, commit: str | None) -> dict[str, int | float] | None:
        if not commit:
            return None
        if commit not in self._configs:
            try:
                src = subprocess.run(["git", "show", f"{commit}:{self.target}"], cwd=worktree, capture_output=True,
                                     text=True, check=True).stdout
                self._configs[commit] = {k: c.value for k, c in read_constants(src).items()}
            except (subprocess.CalledProcessError, SyntaxError, ValueError):
                self._configs[commit] = None
        return self._configs[commit]

    def _learn(self, context: ProposalContext) -> tuple[set[str], dict[tuple[str, str], list], dict]:
        """Configurations tried, and per (constant, direction) outcomes from history:
        a list of (score, key of the configuration the move started from)."""
        tried: set[str] = set()
        stats: dict[tuple[str, str], list[tuple[float, str]]] = {}
        evidence: dict[tuple[str, str], tuple[int, float | None, str]] = {}
        for r in context.history:
            if r.status == "interrupted":
                continue  # cut short by a stop or a crash of the engine: still untried
            cfg = self._config_at(context.worktree, r.commit)
            if cfg is None:
                continue
            tried.add(config_key(cfg))
            parent = self._config_at(context.worktree, r.parent)
            if parent is None or r.baseline:
                continue
            moved = [k for k in cfg if k in parent and cfg[k] != parent[k]]
            if len(moved) != 1:
                continue
            name = moved[0]
            direction = "up" if cfg[name] > parent[name] else "down"
            status = r.status
            scale = max(r.threshold or 0.0, 0.002)
            if status == "keep":
                outcome = 1.0 + min(1.0, max(0.0, -(r.delta or 0.0) / scale) / 4)
            elif status == "discard":
                outcome = max(-1.5, min(0.5, -(r.delta or 0.0) / scale)) - 0.5
            elif status in FAILED:
                outcome = -2.0
            else:
                continue
            stats.setdefault((name, direction), []).append((outcome, config_key(parent)))
            evidence[(name, direction)] = (r.n, r.delta, status)
        for running in [context.in_flight, *context.running]:  # being measured: not to propose again
            if running is not None and running.commit:
                cfg = self._config_at(context.worktree, running.commit)
                if cfg is not None:
                    tried.add(config_key(cfg))
        return tried, stats, evidence

    # -- choosing --

    def _prior(self, name: str, kind: str, direction: str) -> float:
        key = kind
        if kind == "frac":
            key = "warmdown" if "DOWN" in name or "COOL" in name else "warmup" if "WARMUP" in name else "frac"
        if kind == "width" and "HIDDEN" in name:
            key = "width"
        return PRIORS.get((key, direction), DEFAULT_PRIOR)

    def candidates(self, source: str, tried: set[str], stats: dict, rng: random.Random) -> list[Move]:
        consts = read_constants(source)
        values = {k: c.value for k, c in consts.items()}
        rules = constraints(consts)
        here = config_key(values)
        tried = set(tried) | {here}
        moves: list[Move] = []
        for name in sorted(consts):
            c = consts[name]
            kind = kind_of(name, c.value)
            if kind is None or NO_EFFECT.search(c.comment):
                continue
            # A constant that already paid off is worth refining in both directions.
            paid_off = any(score >= 1.0 for d in ("up", "down") for score, _ in stats.get((name, d), []))
            for direction in ("up", "down"):
                for level in range(MAX_LEVELS):
                    new = step_value(c, kind, direction, level)
                    if new is None:
                        continue
                    trial = dict(values, **{name: new})
                    if not satisfies(trial, rules) or config_key(trial) in tried:
                        continue
                    score = self._prior(name, kind, direction) + learned_score(stats.get((name, direction), []), here)
                    score -= LEVEL_PENALTY * level
                    if paid_off and level > 0:
                        score += REFINE_BONUS
                    score += rng.uniform(0, 0.05)
                    moves.append(Move(name, direction, level, c.value, new, kind, score))
                    break  # the boldest untried step in this direction
        moves.sort(key=lambda m: (-m.score, m.name, m.direction))
        return moves

    def propose(self, context: ProposalContext) -> Proposal:
        path = Path(context.worktree) / self.target
        if self.target not in context.mutable:
            raise AgentError(f"the heuristic agent edits {self.target}, which is not in [loop] mutable")
        try:
            source = path.read_text(encoding="utf-8")
            consts = read_constants(source)
        except (OSError, SyntaxError, ValueError) as e:
            raise AgentError(f"cannot read the constants of {self.target}: {e}") from None
        rng = random.Random(self.seed * 1_000_003 + context.n)
        tried, stats, evidence = self._learn(context)
        for move in self.candidates(source, tried, stats, rng):
            new_source = apply_edit(source, consts[move.name], move.new)
            try:
                after = read_constants(new_source)
            except SyntaxError:
                continue
            if after.get(move.name) is None or after[move.name].value != move.new:
                continue
            path.write_text(new_source, encoding="utf-8")
            proposal = Proposal(hypothesis=self._hypothesis(move, stats, evidence),
                                description=self._description(move, consts[move.name].text, new_source))
            context.emit(proposal.hypothesis)
            return proposal
        # Every single move from here was tried: combine the two most promising ones.
        moves = self.candidates(source, set(), stats, rng)
        for i, first in enumerate(moves):
            for second in moves[i + 1 :]:
                if second.name == first.name:
                    continue
                values = {k: c.value for k, c in consts.items()}
                values.update({first.name: first.new, second.name: second.new})
                if config_key(values) in tried or not satisfies(values, constraints(consts)):
                    continue
                new_source = apply_edit(apply_edit(source, consts[second.name], second.new), consts[first.name],
                                        first.new) if consts[first.name].line != consts[second.name].line else None
                if new_source is None:
                    continue
                path.write_text(new_source, encoding="utf-8")
                d1 = self._description(first, consts[first.name].text, new_source)
                d2 = self._description(second, consts[second.name].text, new_source)
                proposal = Proposal(
                    hypothesis=(f"Every single-constant move from the best configuration has been tried; combine "
                                f"the two most promising. {self._hypothesis(first, stats, evidence)} "
                                f"{self._hypothesis(second, stats, evidence)}"),
                    description=f"{d1}; {d2}",
                )
                context.emit(proposal.hypothesis)
                return proposal
        raise AgentError("the heuristic agent has no untried move left from the best configuration")

    # -- words --

    def _description(self, m: Move, old_text: str, new_source: str) -> str:
        new_text = read_constants(new_source)[m.name].text
        if isinstance(m.old, (int, float)) and m.old and m.new == m.old * 2:
            verb = "Double"
        elif isinstance(m.old, (int, float)) and m.old and m.new * 2 == m.old:
            verb = "Halve"
        else:
            verb = "Raise" if m.direction == "up" else "Lower"
        return f"{verb} {m.name} ({old_text} -> {new_text})"

    def _hypothesis(self, m: Move, stats: dict, evidence: dict) -> str:
        key = m.kind
        if m.kind == "frac":
            key = "warmdown" if "DOWN" in m.name or "COOL" in m.name else "warmup" if "WARMUP" in m.name else "frac"
        if m.kind == "beta":
            direction_word = "up" if m.new < m.old else "down"  # a smaller beta reacts faster
        else:
            direction_word = m.direction
        why = WHY.get((key, direction_word), f"moving {m.name} {m.direction} is untested in this run and cheap to try")
        text = f"{'Raise' if m.direction == 'up' else 'Lower'} {m.name} from {m.old:g} to {m.new:g}: {why}."
        ev = evidence.get((m.name, m.direction))
        if ev:
            n, delta, status = ev
            d = f" ({delta:+.4f})" if isinstance(delta, (int, float)) else ""
            text += f" Last time this direction was tried (#{n:04d}) it ended {status}{d}."
        else:
            text += " This direction is untried in this run."
        if m.level > 0:
            text += (f" The bolder step from this configuration was already tried, so this is a smaller one "
                     f"(level {m.level}).")
        return text
