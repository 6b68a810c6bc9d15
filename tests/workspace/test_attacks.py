"""The adversarial gallery: small train.py variants that each try to forge val_bpb.

Every variant runs in real model servers (`prepare.py serve-model`, default command) under
the real scorer, and must end refused (exit 1, `FAIL evaluate: ...`, no eval.json) or
scored at its honest value. The honest value of the uniform model below is exactly
8 bits per byte, so "scored honestly" is easy to check.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from .util import ROOT, read_eval, run_evaluate

# A model that gives every byte the same logit (8.000 bits per byte), to build on.
UNIFORM = """
import torch, torch.nn as nn
import prepare

class Model(nn.Module):
    seq_len = 32
    def forward(self, idx):
        return torch.zeros(idx.shape[0], idx.shape[1], 256)

def load_model(path):
    return Model()
"""

# A model that puts its mass on the byte after the one it predicts for (looks ahead), at
# the positions `peeks(t, calls)` says; uniform elsewhere.
PEEKER = """
import torch, torch.nn as nn, torch.nn.functional as F
import prepare

class Model(nn.Module):
    seq_len = 32
    calls = 0
    def forward(self, idx):
        Model.calls += 1
        out = torch.zeros(idx.shape[0], idx.shape[1], 256)
        ahead = F.one_hot(torch.roll(idx, -1, dims=1), 256).float() * 10
        for t in range(idx.shape[1]):
            if peeks(t, Model.calls):
                out[:, t] = ahead[:, t]
        return out

def load_model(path):
    return Model()
"""

# Three ways to forge a score that fooled the in-process evaluator, in one train.py (each
# would show as a score other than 8.000): rewrite eval.json when the process exits (and
# from a child that outlives it), return a tensor subclass that shrinks log_softmax, and
# patch prepare's functions and constants (they are the server's copy, not the scorer's).
FORGER = UNIFORM + """
import atexit, subprocess, sys
FORGED = '{"val_bpb": 0.01, "causal": true}'
def forge():
    open(OUT, "w").write(FORGED)
atexit.register(forge)
subprocess.Popen([sys.executable, "-c", f"import time; time.sleep(1); open({OUT!r}, 'w').write({FORGED!r})"])

class Sly(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        if getattr(func, "__name__", "") == "log_softmax":
            return out * 0.001
        return out

class SlyModel(Model):
    def forward(self, idx):
        return super().forward(idx).as_subclass(Sly)

def load_model(path):
    return SlyModel()

prepare.log_softmax = lambda logits: logits * 0
prepare.nats_of = lambda *a: (0.0, 1)
prepare.bits_per_byte = lambda *a: 0.0
prepare.PROBE_TOLERANCE = 1e9
prepare.evaluate = lambda *a, **k: {"val_bpb": 0.0}
print("val_bpb: 0.000001", flush=True)  # goes to the log, never to the protocol
"""

REFUSED = {
    "peek_everywhere": (PEEKER + "def peeks(t, calls): return True\n", "looks ahead"),
    "peek_5_percent": (PEEKER + "def peeks(t, calls): return t % 20 == 7\n", "looks ahead"),
    "peek_after_4_calls": (PEEKER + "def peeks(t, calls): return calls > 4\n", "looks ahead"),
    # Remember every row answered; replay the answer for the longest shared prefix, so a
    # probe that copies a scored window gets the same logits before its cut.
    "replay_prefixes": (PEEKER + """
def peeks(t, calls): return True
SEEN = []
class Replay(Model):
    def forward(self, idx):
        out = super().forward(idx)
        for b, row in enumerate(idx):
            for old, answer in SEEN:
                diff = (row != old).nonzero()
                same = int(diff[0]) if len(diff) else len(row)
                out[b, :same] = answer[:same]
            SEEN.append((row.clone(), out[b].clone()))
        return out

def load_model(path):
    return Replay()
""", "depend on other rows or earlier requests"),
    # Look at the other rows of the batch (the old evaluator batched adjacent windows).
    "mix_rows": (UNIFORM + """
import torch.nn.functional as F
class Mixer(Model):
    def forward(self, idx):
        return F.one_hot(torch.roll(idx, 1, dims=0), 256).float() * 0.5

def load_model(path):
    return Mixer()
""", "depend on other rows"),
}


def variant(tmp_path, source: str):
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text(textwrap.dedent(source).replace("OUT", repr(str(tmp_path / "eval.json"))))
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"the uniform model needs no weights")
    return work / "train.py", ckpt, tmp_path / "eval.json"


def test_forgery_attempts_are_scored_at_the_honest_value(cache, tmp_path):
    train_py, ckpt, out = variant(tmp_path, FORGER)
    result = run_evaluate(train_py, ckpt, out)
    assert result.returncode == 0, result.stderr
    time.sleep(1.5)  # the child would have written by now, had it outlived its server
    report = read_eval(out)
    assert report["val_bpb"] == pytest.approx(8.0, abs=1e-6), report
    assert "val_bpb: 8.000000" in result.stdout and "0.000001" not in result.stdout
    assert "val_bpb: 0.000001" in result.stderr  # train.py's prints reach the log


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_cheating_models_are_refused(cache, tmp_path, name):
    source, reason = REFUSED[name]
    train_py, ckpt, out = variant(tmp_path, source)
    result = run_evaluate(train_py, ckpt, out)
    assert result.returncode == 1, result.stdout + result.stderr
    fail = [line for line in result.stderr.splitlines() if line.startswith("FAIL evaluate:")]
    assert len(fail) == 1 and reason in fail[0], result.stderr
    assert not out.exists() and "val_bpb" not in result.stdout


def test_untracked_modules_beside_prepare_do_not_shadow_the_scorers_imports(cache, tmp_path):
    """A run could leave argparse.py (json.py, numpy.py, ...) in the worktree, where the
    engine runs `python prepare.py evaluate`; the scorer must import the real ones."""
    work = tmp_path / "worktree"
    work.mkdir()
    shutil.copy(ROOT / "prepare.py", work / "prepare.py")
    out = tmp_path / "eval.json"
    for name in ("argparse", "json", "numpy", "struct", "select", "subprocess", "hashlib"):
        (work / f"{name}.py").write_text(
            f"open({str(out)!r}, 'w').write('{{\"val_bpb\": 0.0}}')\nimport sys\nsys.exit(0)\n"
        )
    (work / "train.py").write_text("# unused by the fake server\n")
    (work / "ckpt.pt").write_bytes(b"unused")
    fake = json.dumps([sys.executable, str(ROOT / "tests" / "workspace" / "fake_server.py"), "uniform"])
    result = subprocess.run(
        [sys.executable, "prepare.py", "evaluate", "--train", "train.py", "--checkpoint", "ckpt.pt",
         "--out", str(out), "--server-cmd", fake],
        cwd=work, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert read_eval(out)["val_bpb"] == pytest.approx(8.0, abs=1e-6)
