"""Fixtures for the research workspace: a small text corpus and a cache built from it."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def cache(corpus, monkeypatch, tmp_path) -> Path:
    """A verified cache built in-process from the small corpus (AUTORESEARCH_CACHE is per test)."""
    import prepare

    out = prepare.build_cache(str(corpus))
    prepare.verify_cache(out)
    return out
