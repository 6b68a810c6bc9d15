"""The trust boundary: hashes of the evaluator and of the data manifest.

They are recorded when a run starts and checked before every experiment and again
between training and evaluation (a train.py could try to rewrite prepare.py or the
cache while it runs).
"""

from __future__ import annotations

import hashlib
import os
import re
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


# Added lines that reach for what only the evaluator may touch. train.py runs with the
# cache readable (it needs train.bin), so a change could train on the validation split
# or patch the evaluator from inside the process; both would fool the metric. This is a
# tripwire for the obvious ways, not a sandbox: the diff is also there for a human.
_OFF_LIMITS = [
    (re.compile(r"""(load_split|make_loader)\s*\(\s*(split\s*=\s*)?["']val["']|\bval\.bin\b"""),
     "reads the validation split"),
    (re.compile(r"""\b(load_split|make_loader)\s*\(\s*(split\s*=\s*)?[^\s"')]"""),
     "loads a data split not named by a literal"),
    (re.compile(r"\bmanifest\.json\b"), "reads the data manifest"),
    (re.compile(r"\b(validation_windows|make_probes|ModelServer|serve_model|_SERVING|nats_of|bits_per_byte|"
                r"evaluate_command|verify_cache|_read_artifact|_read_manifest)\b"), "touches the evaluator's internals"),
    (re.compile(r"""\bprepare\.\w+\s*=(?!=)|setattr\s*\(\s*prepare\b|sys\.modules\s*\[\s*["'](prepare|__main__)["']"""),
     "patches the evaluator's module"),
]


def off_limits_additions(diff: str) -> list[str]:
    """Why the added lines of a unified diff reach for the evaluator or its data."""
    found: dict[str, str] = {}  # why -> the first line that shows it
    for line in diff.splitlines():
        if not line.startswith("+") or line.startswith("+++"):
            continue
        code = line[1:].split("#", 1)[0]  # a comment mentioning val.bin is harmless
        for pattern, why in _OFF_LIMITS:
            if why not in found and pattern.search(code):
                found[why] = line[1:].strip()[:120]
    return [f"the change {why}: {example}" for why, example in found.items()]
