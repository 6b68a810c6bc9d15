"""Helpers for the workspace tests: a small deterministic corpus, a small model config,
the scorer as a subprocess, and an in-test reference score to compare it with."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORDS = (
    "the model reads bytes and predicts the next one while a small agent edits constants "
    "def return import class self value for in if else while print loss step width depth"
).split()


def write_corpus(directory: Path, files: int = 12, words_per_file: int = 1500) -> Path:
    """Deterministic pseudo-text files (about 10 KB each) in nested folders."""
    rng = random.Random(0)
    for i in range(files):
        path = directory / f"part{i % 3}" / f"doc{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for _ in range(words_per_file // 10):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(10)))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def small_config(**overrides):
    """The baseline's model configuration, shrunk so that tests run fast."""
    import train

    return {**train.model_config(), "depth": 1, "width": 32, "heads": 2, "mlp_mult": 2, "seq_len": 32, **overrides}


def run_evaluate(train_py: Path, checkpoint: Path, out: Path, *extra: str, cwd: Path = ROOT, timeout: float = 180):
    """`python prepare.py evaluate ...` in its own process, as the engine runs it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "prepare.py"), "evaluate", "--train", str(train_py),
         "--checkpoint", str(checkpoint), "--out", str(out), *extra],
        cwd=cwd, capture_output=True, text=True, env=dict(os.environ), timeout=timeout,
    )


def read_eval(out: Path) -> dict:
    return json.loads(out.read_text())


def reference_scores(model, holdout: bool = False) -> dict[str, float]:
    """val_bpb (and holdout_bpb) computed here, in this process, from the model itself:
    the same windows as the scorer, torch's float32 log_softmax, nats added in float64."""
    import numpy as np
    import torch

    import prepare

    val = prepare.load_split("val").numpy()
    windows = prepare.validation_windows(val, min(model.seq_len, prepare.MAX_SEQ_LEN), holdout)
    with torch.no_grad():
        logits = model(torch.from_numpy(windows.x.reshape(-1, windows.x.shape[-1])).long())
    logp = torch.log_softmax(logits.float(), dim=-1).view(*windows.x.shape, -1)
    picked = logp.gather(-1, torch.from_numpy(windows.y).long().unsqueeze(-1)).squeeze(-1).double()
    scores = {}
    for name, rows in (("val", ~windows.holdout), ("holdout", windows.holdout)):
        if rows.any():
            mask = torch.from_numpy(windows.mask & rows[:, None, None])
            scores[name] = float(-picked[mask].sum()) / (math.log(2) * int(mask.sum()))
    assert np.isfinite(list(scores.values())).all()
    return scores
