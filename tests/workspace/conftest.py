"""Fixtures for the research workspace: a small text corpus and a cache built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from .util import write_corpus


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def cache(corpus) -> Path:
    """A verified cache built in-process from the small corpus (AUTORESEARCH_CACHE is per test)."""
    import prepare

    out = prepare.build_cache(str(corpus))
    prepare.verify_cache(out)
    return out
