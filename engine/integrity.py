"""The trust boundary: hashes of the evaluator and of the data manifest.

They are recorded when a run starts and checked before every experiment and again
between training and evaluation (a train.py could try to rewrite prepare.py or the
cache while it runs).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


def cache_dir() -> Path:
    """Where prepare.py keeps its artifacts: $AUTORESEARCH_CACHE or ~/.cache/autoresearch."""
    env = os.environ.get("AUTORESEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoresearch"


def manifest_path() -> Path:
    return cache_dir() / "manifest.json"


def sha256_file(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Fingerprint:
    prepare_sha256: str | None
    manifest_sha256: str | None

    @classmethod
    def of(cls, worktree: Path) -> "Fingerprint":
        return cls(sha256_file(Path(worktree) / "prepare.py"), sha256_file(manifest_path()))

    def to_dict(self) -> dict[str, str | None]:
        return {"prepare_sha256": self.prepare_sha256, "manifest_sha256": self.manifest_sha256}

    def problems(self, now: "Fingerprint") -> list[str]:
        """What differs from ``now``, phrased for the journal."""
        out = []
        if now.prepare_sha256 != self.prepare_sha256:
            out.append("prepare.py (the evaluator) changed since the run started")
        if now.manifest_sha256 != self.manifest_sha256:
            out.append("the data manifest changed since the run started")
        return out
