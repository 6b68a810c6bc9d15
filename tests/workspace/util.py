"""Helpers for the workspace tests: a small deterministic corpus and a small model config."""

from __future__ import annotations

import random
from pathlib import Path

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
