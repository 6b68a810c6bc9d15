"""Shared test setup: every test runs with its own data cache and no API key."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    # A test must never read or write the user's real cache, nor reach the real API.
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    yield
