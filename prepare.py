"""prepare.py: the data, the dataloader, the time budget and the scorer.

This file is the trust boundary of autoresearch. The agent edits train.py and
never this file; the engine hashes it at the start of a run and refuses any
experiment that changes it.

    python prepare.py [--source PATH] [--force]        build the data cache
    python prepare.py evaluate --train PATH --checkpoint PATH --out eval.json
                               [--holdout] [--server-cmd JSON] [--timeout S] [--wait]
    python prepare.py serve-model --train PATH --checkpoint PATH     (started by evaluate)

Data: byte-level tokens (vocabulary 256), so bits per byte fall straight out of
the loss and there is no tokenizer to train, download or unpickle. By default
the corpus is the running Python's standard library (module sources plus the
pydoc topics text); validation text comes only from test-suite files, which no
training or serving process imports. `--source` uses your own text files. The
cache (raw uint8 .bin files and manifest.json with their SHA-256) lives in
$AUTORESEARCH_CACHE (default ~/.cache/autoresearch) and is verified on load.

Scoring is split in two, so that no code from train.py ever runs in the process
that writes the score:

- the SCORER (`evaluate`, trusted) never imports train.py or torch. It holds the
  validation data, picks the windows, turns the logits it receives into float32
  log-probabilities itself, adds up the bits in float64, probes causality and
  writes eval.json;
- the MODEL SERVER (`serve-model`, untrusted: it runs train.py's code, inside the
  engine's sandbox when there is one) loads the model through train.py's
  load_model(path) and answers windows of bytes with raw float32 logits over a
  pipe, in a small fixed binary framing (no pickle anywhere).

Two servers take part in every evaluation: one sees only the scoring windows,
in order; a second, which runs none of train.py's code until the first has
exited, sees only probe rows (scored windows with random bytes from a random cut
onward). Each probe's log-probabilities before its cut must equal the scoring
run's, so a model that reads ahead, or whose answers depend on other rows or
earlier requests, is refused. See "the causality probe" below for the numbers.
This holds only if the first server cannot leave notes for the second: a sandbox
should give each server its own empty scratch space and the checkpoint read-only.

Metric: val_bpb = total nats over every scored validation byte / (ln 2 * bytes).
"""

import sys

# An untracked argparse.py (or json.py, numpy/, ...) beside this file must not shadow the
# real module in the scorer: drop the script's directory from the import path before
# importing anything else. (-I / -P already leave it out; the model server adds train.py's
# directory back itself, for train.py's own imports.)
if __name__ == "__main__" and not (sys.flags.isolated or getattr(sys.flags, "safe_path", False)):
    del sys.path[0]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402  (the scorer's arithmetic; torch is imported only to train or serve)

# OpenMP threads sleep while they wait instead of spinning (much faster on a busy machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# --- constants (fixed for every experiment) -----------------------------------

VOCAB_SIZE = 256  # byte-level tokens
MAX_SEQ_LEN = 512  # longest context the scorer will feed a model
VAL_BYTES = 16384  # validation target bytes scored per slice (decision slice, holdout slice)
VAL_SEGMENTS = 32  # each slice is this many pieces of the validation split (512 bytes: one window
# of MAX_SEQ_LEN), scored separately; a request holds one window of each piece, so more pieces
# mean fewer, larger requests
VAL_PERCENT = 3  # --source: share of files (by stable path hash) that go to validation
STDLIB_VAL_PERCENT = 5  # stdlib: share of test-suite files that go to validation (0.5 MB on 3.11)
TEST_SUITE_DIRS = ("test", "tests", "idle_test")  # stdlib validation files live under these
MIN_STDLIB_VAL_BYTES = 256 * 1024  # fewer test-suite bytes than this: fall back to all files
MIN_TRAIN_BYTES = 2 * MAX_SEQ_LEN + 2  # smallest training split a loader can sample from
MANIFEST_FORMAT = 2  # 2: test-suite-only stdlib validation, "hidden" paths, holdout slice
FIX = "run `autoresearch prepare --force` (or `python prepare.py --force`) to rebuild it"

# The causality probe (figures from bench/scorer_overhead.py, baseline model, context 128):
# - PROBE_ROWS rows per evaluation. Each probe cuts one scored position chosen uniformly at
#   random, so a model that reads ahead at a fraction p of the scored positions escapes one
#   evaluation with probability (1 - p) ** PROBE_ROWS: 7.6% at p = 1%, 0.6% at p = 2%,
#   2e-6 at p = 5%, and a keep also needs its confirming run to escape. The cost is one
#   forward row of the model's context per probe: the probing phase took 1.0 s on a shared
#   2-core CPU (0.6 s with 128 rows, 2.3 s with 512; scoring the decision slice, 0.5 s) and
#   0.8 s on an H100 (1.1 s with 512). Doubling to 512 would more than double the CPU cost
#   to catch a 1% peeker 99.4% instead of 92.4% of the time.
# - PROBE_TOLERANCE is the largest difference allowed between a probe's log-probabilities
#   and the scoring run's before the cut. Honest models gave bitwise-equal answers for
#   equal rows in equal-shaped batches: max difference 0.0 on the CPU and on an H100, in
#   float32, under bf16 autocast, with TF32 and cudnn.benchmark, at context 128 and 512.
#   1e-4 leaves room for kernels that differ in the last bits. Look-ahead hidden under it
#   moves a log-probability by at most 1e-4 nats: a gain of at most 1.4e-4 bits per byte,
#   7x below the engine's default min_delta of 0.001.
PROBE_ROWS = 256
PROBE_TOLERANCE = 1e-4

# The model server's protocol: every message starts with one fixed header, a 4-byte magic
# and three little-endian uint32 fields; payloads are raw bytes. Nothing is ever unpickled.
HEADER = struct.Struct("<4sIII")
GO = b"ARgo"  # scorer -> server: import train.py and load the checkpoint now (fields 0, 0, 0)
WINDOWS = b"ARwn"  # scorer -> server: B, T, 0, then B*T uint8 input bytes (row-major)
READY = b"ARok"  # server -> scorer: context (model.seq_len), num_params low and high 32 bits
LOGITS = b"ARlg"  # server -> scorer: B, T, V, then B*T*V little-endian float32 logits
FAILED = b"ARer"  # server -> scorer: n, 0, 0, then n bytes of UTF-8 explanation (n <= 4096)
MAX_FAILURE_BYTES = 4096
RESPONSE_TIMEOUT = 120.0  # seconds the scorer waits for any one answer (--timeout changes it)
EXIT_GRACE = 10.0  # seconds a server gets to exit after its input is closed


class CacheError(Exception):
    """The data cache is missing, incomplete or does not match its manifest."""


class EvalError(Exception):
    """The model cannot be scored (bad checkpoint, wrong shape, NaN, not causal, broken server)."""


class UsageError(Exception):
    """Bad command-line input: one clear line and exit status 2."""


def cache_dir() -> Path:
    return Path(os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch").expanduser()


# --- device and time budget (for train.py; computed on first use) ---------------
#
# `prepare.DEVICE` and `prepare.TIME_BUDGET` are looked up lazily (PEP 562), so that only
# training and serving import torch and the scorer starts fast.


def _pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _time_budget() -> float:
    """AUTORESEARCH_TIME_BUDGET (the engine always sets it); 300 s on CUDA, 60 s otherwise
    for a person running `python train.py` by hand."""
    raw = os.environ.get("AUTORESEARCH_TIME_BUDGET", "").strip()
    if not raw:
        return 300.0 if _pick_device() == "cuda" else 60.0
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"AUTORESEARCH_TIME_BUDGET must be a number of seconds, not {raw!r}") from None
    if not value > 0:
        raise SystemExit(f"AUTORESEARCH_TIME_BUDGET must be positive, not {raw!r}")
    return value


def __getattr__(name: str):
    if name == "DEVICE":
        value = _pick_device()
    elif name == "TIME_BUDGET":
        value = _time_budget()  # training seconds; warm-up steps do not count
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


# --- building the cache --------------------------------------------------------


def _is_val(relpath: str, percent: int) -> bool:
    """Stable split: the same path always lands in the same split, on any machine."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < percent


def _in_test_suite(relpath: str) -> bool:
    return any(part in TEST_SUITE_DIRS for part in relpath.split("/")[:-1])


def _stdlib_files(root: Path) -> list[tuple[str, Path]]:
    """(relative name, path) of every module source under the stdlib root, in a fixed order."""
    skip = {"site-packages", "dist-packages", "__pycache__"}
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("."))
        paths.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    paths.sort(key=lambda p: p.relative_to(root).as_posix())
    return [(p.relative_to(root).as_posix(), p) for p in paths]


# Run in a child process at build time (train.py's code never runs in the builder): which
# files do `import torch, numpy`, prepare and train.py load, and torch.load and torch.compile
# later? Those must stay visible to training and serving, so never validation.
_IMPORTED_FILES_PROBE = """
import io, json, sys
sys.path.insert(0, sys.argv[1])
import numpy, torch, prepare
for name in ("train", "torch._dynamo", "torch._inductor.compile_fx"):
    try:
        __import__(name)
    except BaseException:
        pass
try:
    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, buffer)
    torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
except BaseException:
    pass
files = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""})
with open(sys.argv[2], "w") as f:
    json.dump(files, f)
"""


def _imported_files() -> set[Path]:
    """Resolved paths of the modules that torch, numpy, prepare and train.py import."""
    import tempfile

    found = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    fd, name = tempfile.mkstemp(prefix="autoresearch-imports-", suffix=".json")
    os.close(fd)
    out = Path(name)
    try:
        subprocess.run(
            [sys.executable, "-I", "-c", _IMPORTED_FILES_PROBE, str(Path(__file__).resolve().parent), str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=False,
        )
        found |= set(json.loads(out.read_text(encoding="utf-8")))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass  # no torch here: what this process has imported still counts
    finally:
        out.unlink(missing_ok=True)
    return {Path(f).resolve() for f in found if f}


def _stdlib_plan(root: Path, imported=None) -> tuple[list[tuple[str, Path, bool]], str]:
    """Every stdlib source as (relative name, path, goes to validation), and the rule used.

    The sandbox shows training and serving the standard library read-only (Python needs
    it), minus the validation files. So validation may only take files that nothing we
    run imports: test-suite files (under a directory named test, tests or idle_test),
    a stable STDLIB_VAL_PERCENT of them. A Python shipped without (enough of) its test
    suite falls back to any file, never one of the modules imported by torch, numpy,
    prepare or train.py: `imported()` lists those (it takes seconds, so only then).
    """
    files = _stdlib_files(root)
    plan = [(rel, path, _in_test_suite(rel) and _is_val(rel, STDLIB_VAL_PERCENT)) for rel, path in files]
    if sum(path.stat().st_size for _, path, val in plan if val) >= MIN_STDLIB_VAL_BYTES:
        rule = (
            f"test-suite files (under a directory named {', '.join(TEST_SUITE_DIRS)}) with "
            f"sha256(relative path) % 100 < {STDLIB_VAL_PERCENT}"
        )
        return plan, rule
    keep_out = (imported or _imported_files)()
    plan = [(rel, path, _is_val(rel, STDLIB_VAL_PERCENT) and path.resolve() not in keep_out) for rel, path in files]
    rule = (
        f"fallback (this Python has too little of its test suite): any file with sha256(relative path) "
        f"% 100 < {STDLIB_VAL_PERCENT}, never a module imported by `import torch, numpy`, prepare, "
        "train.py, torch.load or torch.compile"
    )
    return plan, rule


def _hidden_paths(val_files: list[Path]) -> list[str]:
    """What a sandbox must hide so that no untrusted process reads validation text: the
    source files and any compiled copies of them that exist now (their strings and
    docstrings are in the .pyc)."""
    import importlib.util

    hidden = set()
    for path in val_files:
        hidden.add(str(path))
        hidden.add(str(path.resolve()))
        for level in ("", 1, 2):
            pyc = Path(importlib.util.cache_from_source(str(path), optimization=level))
            if pyc.exists():
                hidden.add(str(pyc))
    return sorted(hidden)


def _stdlib_documents():
    """(relative name, path or bytes, goes to validation) for the stdlib, the rule, hidden paths."""
    root = Path(sysconfig.get_paths()["stdlib"])
    plan, rule = _stdlib_plan(root)
    docs = list(plan)
    try:
        from pydoc_data.topics import topics

        text = "".join(f"{key}\n{topics[key]}\n" for key in sorted(topics))
        docs.append(("pydoc_data/topics.txt", text.encode("utf-8"), False))
    except ImportError:  # some distributions strip pydoc_data
        pass
    return docs, rule, _hidden_paths([path for _, path, val in plan if val])


def _is_text(data: bytes) -> bool:
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _source_documents(source: Path):
    """(relative name, path, goes to validation) for every UTF-8 text file under source."""
    if source.is_file():
        return [(source.name, source, _is_val(source.name, VAL_PERCENT))]
    paths = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    paths.sort(key=lambda p: p.relative_to(source).as_posix())
    return [(p.relative_to(source).as_posix(), p, _is_val(p.relative_to(source).as_posix(), VAL_PERCENT)) for p in paths]


class _Progress:
    """A bar on a terminal; plain newline-terminated lines when piped (logs, the engine)."""

    def __init__(self, total: int, label: str):
        self.total, self.label = max(total, 1), label
        self.tty = sys.stdout.isatty()
        self.last_decile = -1

    def update(self, done: int) -> None:
        frac = done / self.total
        if self.tty:
            bar = "#" * int(frac * 30)
            sys.stdout.write(f"\r{self.label} [{bar:<30}] {frac:4.0%} ({done}/{self.total} files)")
            sys.stdout.flush()
        elif int(frac * 10) > self.last_decile:
            self.last_decile = int(frac * 10)
            print(f"{self.label}: {frac:.0%} ({done}/{self.total} files)", flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stdout.write("\n")
            sys.stdout.flush()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_checksum(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def build_cache(source: str | None = None, force: bool = False) -> Path:
    """Build (or confirm) the cache. Raises UsageError on bad input."""
    out = cache_dir()
    if source is not None:
        src = Path(source).expanduser().resolve()
        if not src.exists():
            raise UsageError(f"--source {source}: no such file or directory")
        corpus = {"kind": "source", "source": str(src)}
    else:
        src = None
        corpus = {"kind": "stdlib", "source": sysconfig.get_paths()["stdlib"]}

    if not force and (out / "manifest.json").exists():
        try:
            manifest = verify_cache(out)
        except CacheError as e:
            print(f"cache at {out} does not verify ({e}); rebuilding", flush=True)
        else:
            built_from = manifest["corpus"]
            if src is not None and built_from.get("source") != corpus["source"]:
                raise UsageError(
                    f"the cache at {out} was built from {built_from.get('source')}; "
                    f"pass --force to rebuild it from {corpus['source']}"
                )
            sizes = ", ".join(f"{k} {v['bytes']:,} bytes" for k, v in manifest["artifacts"].items())
            print(f"cache at {out} is already built and verified ({sizes}); nothing to do (--force rebuilds)")
            return out

    if src is None:
        docs, val_rule, hidden = _stdlib_documents()
    else:
        docs = _source_documents(src)
        val_rule = f"sha256(relative path) % 100 < {VAL_PERCENT}"
        hidden = [str(src)]  # the sandbox must hide the whole source, validation files included
    if not docs:
        raise UsageError(f"--source {source}: no text files found")

    # Build beside the cache; the old cache stays whole until the new one has passed every check.
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    counts = {"train": 0, "val": 0}
    skipped = 0
    progress = _Progress(len(docs), "prepare: reading corpus")
    with open(tmp / "train.bin", "wb") as train_f, open(tmp / "val.bin", "wb") as val_f:
        for i, (name, item, is_val) in enumerate(docs, 1):
            data = item if isinstance(item, bytes) else item.read_bytes()
            if src is not None and not _is_text(data):
                skipped += 1
            elif data:
                (val_f if is_val else train_f).write(data)
                counts["val" if is_val else "train"] += 1
            progress.update(i)
    progress.close()
    total = (tmp / "train.bin").stat().st_size + (tmp / "val.bin").stat().st_size
    if counts["train"] + counts["val"] == 0 or total < 2 * MIN_TRAIN_BYTES:
        shutil.rmtree(tmp, ignore_errors=True)
        if counts["train"] + counts["val"] == 0:
            raise UsageError(f"--source {source}: no text files found (UTF-8, no NUL bytes)")
        raise UsageError(f"--source {source}: too little text ({total} bytes; at least {2 * MIN_TRAIN_BYTES} needed)")
    if _ensure_both_splits(tmp, counts):
        val_rule += "; too little landed in one split, so the bytes were split 90/10 instead"

    (out / "manifest.json").unlink(missing_ok=True)  # no manifest = no cache while files move
    artifacts = {}
    for name in ("train.bin", "val.bin"):
        os.replace(tmp / name, out / name)
        artifacts[name] = {"sha256": _sha256_file(out / name), "bytes": (out / name).stat().st_size}
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = {
        "format": MANIFEST_FORMAT,
        "corpus": {
            **corpus,
            "description": (
                f"Python {sys.version.split()[0]} standard library module sources and pydoc topics"
                if src is None
                else f"UTF-8 text files under {src}"
            ),
            "files": {**counts, "skipped_not_text": skipped},
            "val_rule": val_rule,
        },
        "artifacts": artifacts,
        # Absolute paths a sandbox must hide from training and serving (validation text).
        "hidden": hidden,
        "vocab_size": VOCAB_SIZE,
        "python_version": sys.version.split()[0],
    }
    manifest["checksum"] = _manifest_checksum(manifest)
    tmp_manifest = out / ".manifest.json.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_manifest, out / "manifest.json")
    print(
        f"built cache at {out}: train {artifacts['train.bin']['bytes']:,} bytes "
        f"({counts['train']} files), val {artifacts['val.bin']['bytes']:,} bytes ({counts['val']} files)",
        flush=True,
    )
    return out


def _ensure_both_splits(tmp: Path, counts: dict) -> bool:
    """A small corpus may hash every file to one side: then split the bytes 90/10 (True)."""
    train, val = (tmp / "train.bin").read_bytes(), (tmp / "val.bin").read_bytes()
    if len(val) >= 2 and len(train) >= MIN_TRAIN_BYTES:
        return False
    data = train + val
    cut = len(data) - max(len(data) // 10, 2)
    (tmp / "train.bin").write_bytes(data[:cut])
    (tmp / "val.bin").write_bytes(data[cut:])
    counts["split_by_bytes"] = True
    return True


# --- loading (verified every time) ----------------------------------------------
#
# Training in the sandbox sees a cache directory that holds only manifest.json and
# train.bin, so a load checks the manifest and just the artifacts it reads.


def _read_manifest(root: Path) -> tuple[dict, str]:
    """The manifest after its own checks (format, checksum, shape), and its file's SHA-256."""
    mpath = root / "manifest.json"
    if not mpath.exists():
        raise CacheError(f"no data cache at {root} (manifest.json missing): {FIX}")
    raw = mpath.read_bytes()
    try:
        manifest = json.loads(raw)
        version = manifest.get("format")
    except (ValueError, AttributeError):
        raise CacheError(f"the cache manifest {mpath} is corrupt or was edited: {FIX}") from None
    if version != MANIFEST_FORMAT:
        raise CacheError(
            f"the cache at {root} has manifest format {version!r}, but this prepare.py needs "
            f"format {MANIFEST_FORMAT} (it was built by an older prepare.py): {FIX}"
        )
    try:
        ok = (
            manifest.get("checksum") == _manifest_checksum(manifest)
            and set(manifest["artifacts"]) == {"train.bin", "val.bin"}
            and all(isinstance(a["sha256"], str) for a in manifest["artifacts"].values())
            and isinstance(manifest["hidden"], list)
            and all(isinstance(p, str) for p in manifest["hidden"])
        )
    except (AttributeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CacheError(f"the cache manifest {mpath} is corrupt or was edited: {FIX}")
    return manifest, hashlib.sha256(raw).hexdigest()


def _read_artifact(root: Path, manifest: dict, name: str) -> bytes:
    """One artifact's bytes, after checking them against the manifest."""
    path = root / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CacheError(f"cache artifact {path} is missing: {FIX}") from None
    if hashlib.sha256(data).hexdigest() != manifest["artifacts"][name]["sha256"]:
        raise CacheError(f"cache artifact {path} does not match manifest.json (tampered or corrupt): {FIX}")
    return data


def verify_cache(path: Path | None = None) -> dict:
    """The manifest, after checking it and every artifact's SHA-256. Raises CacheError."""
    root = path or cache_dir()
    manifest, _ = _read_manifest(root)
    for name in manifest["artifacts"]:
        _read_artifact(root, manifest, name)
    return manifest


_SERVING = False  # set in the model server: validation data is never handed to train.py


def load_split(split: str):
    """The verified bytes of "train" or "val" as a uint8 torch tensor (never unpickled)."""
    import torch

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    if split == "val" and _SERVING:
        raise CacheError("the validation split is not available to a model server")
    root = cache_dir()
    manifest, _ = _read_manifest(root)
    data = _read_artifact(root, manifest, f"{split}.bin")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def make_loader(split: str, batch_size: int, seq_len: int, device: str | None = None, seed: int = 0):
    """Endless (x, y) batches of random windows: y is x shifted by one byte (int64)."""
    import torch

    if not 1 <= seq_len <= MAX_SEQ_LEN:
        raise ValueError(f"seq_len must be between 1 and MAX_SEQ_LEN={MAX_SEQ_LEN}, not {seq_len}")
    device = device or _pick_device()
    data = load_split(split)
    if data.numel() < seq_len + 2:
        raise CacheError(f"the {split} split has only {data.numel()} bytes, too few for seq_len {seq_len}")
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(seq_len + 1)
    pin = device == "cuda"
    while True:
        starts = torch.randint(0, data.numel() - seq_len - 1, (batch_size, 1), generator=gen)
        chunk = data[starts + offsets].long()
        if pin:
            chunk = chunk.pin_memory()
        chunk = chunk.to(device, non_blocking=pin)
        yield chunk[:, :-1], chunk[:, 1:]


# --- the scorer: windows and arithmetic -----------------------------------------


class Windows(NamedTuple):
    """Scoring windows, one row of arrays per validation segment (S segments, W windows of T)."""

    x: np.ndarray  # S x W x T uint8: model inputs
    y: np.ndarray  # S x W x T uint8: targets, x shifted by one byte
    mask: np.ndarray  # S x W x T bool: False on padding past a segment's end
    holdout: np.ndarray  # S bool: the segment belongs to the holdout slice


def validation_windows(val: np.ndarray, context: int, holdout: bool = False) -> Windows:
    """The decision slice (and, if asked, the holdout slice) cut into windows of `context` bytes.

    The validation split is divided into 2 * VAL_SEGMENTS equal regions; the decision
    slice takes a piece from the start of every even region, the holdout slice from every
    odd one. Pieces never touch (at least one byte lies between two), each is scored on
    its own (no context crosses a piece), and every real target byte is scored once.
    """
    region = len(val) // (2 * VAL_SEGMENTS)
    seg_len = min(VAL_BYTES // VAL_SEGMENTS + 1, region - 1)
    if seg_len < 2:
        raise CacheError(f"the validation split has only {len(val)} bytes, too few to score: {FIX}")
    regions = list(range(0, 2 * VAL_SEGMENTS, 2)) + (list(range(1, 2 * VAL_SEGMENTS, 2)) if holdout else [])
    n_win = -(-(seg_len - 1) // context)
    xs, ys, ms = [], [], []
    for r in regions:
        padded = np.zeros(n_win * context + 1, dtype=np.uint8)
        padded[:seg_len] = val[r * region : r * region + seg_len]
        mask = np.zeros(n_win * context, dtype=bool)
        mask[: seg_len - 1] = True
        xs.append(padded[:-1].reshape(n_win, context))
        ys.append(padded[1:].reshape(n_win, context))
        ms.append(mask.reshape(n_win, context))
    is_holdout = np.array([r % 2 == 1 for r in regions])
    return Windows(np.stack(xs), np.stack(ys), np.stack(ms), is_holdout)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-probabilities over the last axis, computed here from raw logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def nats_of(logp: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """(sum of nats over masked-in targets, in float64; number of those targets)."""
    picked = np.take_along_axis(logp, targets[..., None].astype(np.intp), axis=-1)[..., 0]
    return float(-picked[mask].astype(np.float64).sum()), int(mask.sum())


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    return total_nats / (math.log(2) * n_bytes)


# --- the scorer: talking to a model server ----------------------------------------


def _printable(raw: bytes, limit: int = 500) -> str:
    """Untrusted text for one line of our output: no control characters, bounded."""
    text = raw.decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


def _die_with_parent():
    """On Linux, a function for the child that has the kernel kill it if the scorer dies
    (even by SIGKILL), so that a server stuck in train.py's code never runs on alone."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG


class ModelServer:
    """One untrusted model server, spoken to only through the framed protocol.

    Every read and write has a deadline; anything unexpected (wrong magic or shape, short
    answer, exit, silence) kills the server's whole process group and raises EvalError.
    """

    def __init__(self, argv: list[str], role: str, timeout: float):
        self.role, self.timeout = role, timeout
        try:
            # Own session: the scorer can kill the server and whatever it started. Its
            # stderr is ours (the log); its stdin and stdout are the protocol.
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
                                         preexec_fn=_die_with_parent())
        except OSError as e:
            raise EvalError(f"could not start the model server {argv[0]!r}: {e}") from None
        self.wfd, self.rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self.wfd, False)

    def _fail(self, why: str):
        self.kill()
        raise EvalError(f"the {self.role} model server {why}")

    def _gone(self):
        try:
            self.proc.wait(timeout=1)  # for its exit status
        except subprocess.TimeoutExpired:
            pass
        self._fail(f"exited early (exit status {self.proc.returncode}; its log is above)")

    def _write(self, data: bytes) -> None:
        view, deadline = memoryview(data), time.monotonic() + self.timeout
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [self.wfd], [], left)[1]:
                self._fail(f"stopped reading its input (no progress in {self.timeout:g} s)")
            try:
                view = view[os.write(self.wfd, view) :]
            except BlockingIOError:
                continue
            except OSError:  # a broken pipe: it has closed its input
                self._gone()

    def _read(self, n: int, deadline: float) -> bytes:
        buf, got = bytearray(n), 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                self._fail(f"did not answer within {self.timeout:g} s")
            chunk = os.read(self.rfd, min(n - got, 1 << 20))
            if not chunk:
                self._gone()
            buf[got : got + len(chunk)] = chunk
            got += len(chunk)
        return bytes(buf)

    def _receive(self, expected: bytes) -> tuple[int, int, int, float]:
        """The next header (checked) and the deadline for its payload."""
        deadline = time.monotonic() + self.timeout
        magic, a, b, c = HEADER.unpack(self._read(HEADER.size, deadline))
        if magic == FAILED and a <= MAX_FAILURE_BYTES:
            self._fail(f"failed: {_printable(self._read(a, deadline))}")
        if magic != expected:
            self._fail(f"broke the protocol: expected {expected!r}, got {_printable(magic)!r} (garbage on its output?)")
        return a, b, c, deadline

    def start(self) -> tuple[int, int]:
        """Tell the server to import train.py and load the model: (context, num_params)."""
        self._write(HEADER.pack(GO, 0, 0, 0))
        context, low, high, _ = self._receive(READY)
        return context, low | (high << 32)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits (B x T x 256 float32, all finite) for a B x T batch of bytes."""
        B, T = x.shape
        self._write(HEADER.pack(WINDOWS, B, T, 0) + np.ascontiguousarray(x, dtype=np.uint8).tobytes())
        b, t, v, deadline = self._receive(LOGITS)
        if (b, t, v) != (B, T, VOCAB_SIZE):
            self._fail(
                f"answered with the wrong shape: logits ({b}, {t}, {v}) for input ({B}, {T}), "
                f"expected ({B}, {T}, {VOCAB_SIZE})"
            )
        logits = np.frombuffer(self._read(B * T * VOCAB_SIZE * 4, deadline), dtype="<f4").reshape(B, T, VOCAB_SIZE)
        if not np.isfinite(logits).all():
            self._fail("answered with NaN or infinite logits")
        return logits.astype(np.float32, copy=False)

    def close(self) -> None:
        """End of input; wait for the server to exit, then kill anything it left behind."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=EXIT_GRACE)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


# --- the scorer: the causality probe ------------------------------------------------


class Probe(NamedTuple):
    segment: int  # which scored window the probe copies ...
    window: int
    cut: int  # ... and from which position on its bytes are replaced
    x: np.ndarray  # T uint8: the probe row


def make_probes(windows: Windows, n_rows: int) -> list[Probe]:
    """Probe rows from fresh OS randomness: each copies a scored window and replaces every
    byte from a cut k on (1 <= k < T) with random bytes, x'[k] != x[k].

    The cut is uniform over the scored positions that can read ahead (t = k - 1 with a
    real input byte at k), so each probe catches a model that reads ahead at any one of
    them with equal chance. The rows come back shuffled.
    """
    T = windows.x.shape[-1]
    cuts_per_window = np.maximum(windows.mask.sum(axis=-1) - 1, 0).ravel()  # S*W: k in 1..m-1
    ends = np.cumsum(cuts_per_window)
    if ends[-1] == 0:
        raise EvalError(f"context {T} leaves no position to probe; the model's seq_len must be at least 2")
    probes = []
    for _ in range(n_rows):
        i = secrets.randbelow(int(ends[-1]))
        flat = int(np.searchsorted(ends, i, side="right"))
        cut = 1 + i - (int(ends[flat - 1]) if flat else 0)
        segment, window = divmod(flat, windows.x.shape[1])
        x = windows.x[segment, window].copy()
        x[cut] = (int(x[cut]) + 1 + secrets.randbelow(VOCAB_SIZE - 1)) % VOCAB_SIZE
        x[cut + 1 :] = np.frombuffer(os.urandom(T - cut - 1), dtype=np.uint8)
        probes.append(Probe(segment, window, cut, x))
    secrets.SystemRandom().shuffle(probes)
    return probes


# --- the scorer: one evaluation -------------------------------------------------------


def default_server_cmd(train: Path, checkpoint: Path) -> list[str]:
    """This prepare.py, isolated (-I: no script dir, no PYTHON* variables, no user site)."""
    return [sys.executable, "-I", "-B", str(Path(__file__).resolve()), "serve-model",
            "--train", str(train.resolve()), "--checkpoint", str(checkpoint.resolve())]


def evaluate(train: Path, checkpoint: Path, server_cmd: list[str] | None = None, holdout: bool = False,
             timeout: float = RESPONSE_TIMEOUT, gate=None) -> dict | None:
    """Score a checkpoint through two model servers. Raises EvalError/CacheError.

    ``gate``, when given, is called once both servers are starting: scoring begins only
    if it returns True (the engine starts the scorer while training runs, so that the
    servers' start-up is hidden, and says "go" once there is a checkpoint); else None.
    """
    t0 = time.monotonic()
    argv = server_cmd or default_server_cmd(train, checkpoint)

    # Both servers start now: importing torch takes seconds, while we verify the cache. S
    # (scoring) then gets its GO and loads the model. P (probe) gets its GO, and so runs
    # any code of train.py's, only after S has exited: nothing S saw can reach P in memory.
    scoring = ModelServer(argv, "scoring", timeout)
    probing = None
    try:
        probing = ModelServer(argv, "probe", timeout)
        root = cache_dir()
        manifest, manifest_sha = _read_manifest(root)
        _read_artifact(root, manifest, "train.bin")  # a run that touched train.bin is refused too
        val = np.frombuffer(_read_artifact(root, manifest, "val.bin"), dtype=np.uint8)
        if gate is not None:
            if not gate():
                return None
            t0 = time.monotonic()  # the time spent waiting for the checkpoint is not scoring time
        context, num_params = scoring.start()
        if context < 2:
            raise EvalError(f"model.seq_len must be at least 2, not {context}")
        context = min(context, MAX_SEQ_LEN)
        windows = validation_windows(val, context, holdout)
        t_ready = time.monotonic()

        # Scoring: request r holds window r of every segment, so no request has two
        # adjacent windows of one text, and a window is sent only after the one before it
        # in its segment has been answered.
        S, W, T = windows.x.shape
        logp = np.empty((S, W, T, VOCAB_SIZE), dtype=np.float32)
        for r in range(W):
            logp[:, r] = log_softmax(scoring.forward(windows.x[:, r]))
        scoring.close()
        t_scored = time.monotonic()

        totals = {}
        for name, rows in (("val", ~windows.holdout), ("holdout", windows.holdout)):
            if rows.any():
                totals[name] = nats_of(logp[rows], windows.y[rows], windows.mask[rows])

        # Probing: same request shape (S rows of T bytes), rows shuffled across requests.
        n_rows = -(-PROBE_ROWS // S) * S
        probes = make_probes(windows, n_rows)
        p_context, _ = probing.start()
        if min(p_context, MAX_SEQ_LEN) != context:
            raise EvalError(f"the probe server reported context {p_context}, the scoring server {context}")
        worst = 0.0
        for i in range(0, n_rows, S):
            batch = probes[i : i + S]
            answer = log_softmax(probing.forward(np.stack([p.x for p in batch])))
            for row, p in zip(answer, batch):
                diff = float(np.abs(row[: p.cut] - logp[p.segment, p.window, : p.cut]).max())
                if not diff <= PROBE_TOLERANCE:  # also catches NaN
                    raise EvalError(
                        f"non-causal model: with the input bytes from position {p.cut} on replaced, its "
                        f"log-probabilities before {p.cut} changed by {diff:.3g} (allowed {PROBE_TOLERANCE:g}): "
                        "it looks ahead, or its logits depend on other rows or earlier requests"
                    )
                worst = max(worst, diff)
        probing.close()
    finally:
        scoring.kill()
        if probing is not None:
            probing.kill()

    result = {}
    for name, (nats, count) in totals.items():
        bpb = bits_per_byte(nats, count)
        if not math.isfinite(bpb):
            raise EvalError(f"{name}_bpb is not finite")
        result[f"{name}_bpb"], result[f"{name}_bytes"] = bpb, count
    t_end = time.monotonic()
    return {
        **result,
        "causal": True,
        "probe_rows": n_rows,
        "probe_max_diff": worst,
        "probe_tolerance": PROBE_TOLERANCE,
        "context": context,
        "num_params": num_params,  # as the server reported it: informational
        "manifest_sha256": manifest_sha,
        "checkpoint": str(checkpoint.resolve()),
        "seconds": round(t_end - t0, 3),
        "timings": {
            "ready": round(t_ready - t0, 3),
            "scoring": round(t_scored - t_ready, 3),
            "probing": round(t_end - t_scored, 3),
        },
    }


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def evaluate_command(train_path: str, checkpoint: str, out: str, server_cmd: str | None = None,
                     holdout: bool = False, timeout: float = RESPONSE_TIMEOUT, wait: bool = False) -> int:
    train_file, ckpt, out_path = Path(train_path), Path(checkpoint), Path(out)
    if not train_file.is_file():
        raise UsageError(f"--train {train_path}: no such file")
    if not wait and not ckpt.is_file():
        raise UsageError(f"--checkpoint {checkpoint}: no such file")
    argv = None
    if server_cmd is not None:
        try:
            argv = json.loads(server_cmd)
        except ValueError:
            argv = None
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise UsageError("--server-cmd must be a JSON list of strings (the server's argv)")
    if not timeout > 0:
        raise UsageError(f"--timeout must be positive, not {timeout}")
    def go() -> bool:
        """--wait: one line on stdin; "go" means the checkpoint is there now."""
        if sys.stdin.readline().strip() != "go":
            return False
        if not ckpt.is_file():
            raise UsageError(f"--checkpoint {checkpoint}: no such file")
        return True

    try:
        result = evaluate(train_file, ckpt, argv, holdout, timeout, gate=go if wait else None)
    except (CacheError, EvalError):
        out_path.unlink(missing_ok=True)  # whatever a server may have put there is no score
        raise
    if result is None:
        return 0  # told not to score (the training failed): nothing is written
    _write_atomically(out_path, json.dumps(result, indent=2) + "\n")
    print(f"val_bpb: {result['val_bpb']:.6f}", flush=True)
    if holdout:
        print(f"holdout_bpb: {result['holdout_bpb']:.6f}", flush=True)
    print(f"val_bytes: {result['val_bytes']}", flush=True)
    print(f"eval_seconds: {result['seconds']:.2f}", flush=True)
    return 0


# --- the model server (untrusted: runs train.py's code) ----------------------------------


def serve_model(train_path: str, checkpoint: str) -> int:
    """Answer the scorer's requests with train.py's model until its input ends."""
    # The protocol gets private copies of fds 0 and 1; fd 1 (and sys.stdout) then point at
    # stderr, so train.py's prints go to the log and can never be taken for an answer.
    requests = os.fdopen(os.dup(0), "rb")
    answers = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)

    def fail(message: str) -> int:
        data = message.encode("utf-8", errors="replace")[:MAX_FAILURE_BYTES]
        answers.write(HEADER.pack(FAILED, len(data), 0, 0) + data)
        answers.flush()
        return 1

    def receive():
        header = requests.read(HEADER.size)
        return HEADER.unpack(header) if len(header) == HEADER.size else None

    import torch  # before GO: this start-up is what the probe server hides behind scoring

    go = receive()
    if go is None:  # input closed without GO: not needed after all
        return 0
    if go[0] != GO:
        return fail(f"unexpected request {go[0]!r}")
    global _SERVING
    _SERVING = True
    train_file = Path(train_path)
    sys.path.insert(0, str(train_file.resolve().parent))  # train.py's own modules
    sys.modules.setdefault("prepare", sys.modules[__name__])  # `import prepare` gets this module
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("train", train_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules["train"] = module
        spec.loader.exec_module(module)
    except BaseException as e:
        return fail(f"could not import {train_path}: {type(e).__name__}: {e}")
    if not callable(getattr(module, "load_model", None)):
        return fail(f"{train_path} has no load_model(path) function")
    try:
        model = module.load_model(str(checkpoint))
    except BaseException as e:
        return fail(f"could not load checkpoint {checkpoint}: {type(e).__name__}: {e}")
    if not isinstance(model, torch.nn.Module):
        return fail(f"load_model returned {type(model).__name__}, not an nn.Module")
    context = getattr(model, "seq_len", MAX_SEQ_LEN)
    if not isinstance(context, int) or isinstance(context, bool) or not 1 <= context < 2**32:
        return fail(f"model.seq_len must be a positive int, not {context!r}")
    device = _pick_device()
    model.to(device).eval()
    num_params = sum(p.numel() for p in model.parameters())
    answers.write(HEADER.pack(READY, context, num_params & 0xFFFFFFFF, (num_params >> 32) & 0xFFFFFFFF))
    answers.flush()

    while (header := receive()) is not None:
        magic, B, T, _ = header
        if magic != WINDOWS:
            return fail(f"unexpected request {magic!r}")
        x = torch.frombuffer(bytearray(requests.read(B * T)), dtype=torch.uint8).view(B, T).long().to(device)
        try:
            with torch.no_grad():
                logits = model(x)
        except BaseException as e:
            return fail(f"forward(idx) raised {type(e).__name__}: {e}")
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (B, T, VOCAB_SIZE):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            return fail(f"wrong shape: forward(idx) with idx {(B, T)} returned {shape}, expected {(B, T, VOCAB_SIZE)}")
        data = logits.detach().to("cpu", torch.float32).contiguous().numpy()
        answers.write(HEADER.pack(LOGITS, B, T, VOCAB_SIZE) + data.astype("<f4", copy=False).tobytes())
        answers.flush()
    return 0


# --- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "evaluate":
            p = argparse.ArgumentParser(prog="prepare.py evaluate", description="score a checkpoint (trusted)")
            p.add_argument("--train", required=True, help="path to train.py (provides load_model)")
            p.add_argument("--checkpoint", required=True)
            p.add_argument("--out", required=True, help="where to write eval.json")
            p.add_argument("--holdout", action="store_true", help="also score the holdout slice")
            p.add_argument("--wait", action="store_true",
                           help="start the model servers now, score after a line 'go' on stdin (the engine's warm start)")
            p.add_argument("--server-cmd", metavar="JSON",
                           help="the model server's argv as a JSON list (default: this prepare.py serve-model)")
            p.add_argument("--timeout", type=float, default=RESPONSE_TIMEOUT,
                           help=f"seconds to wait for any one answer of a server (default {RESPONSE_TIMEOUT:g})")
            args = p.parse_args(argv[1:])
            return evaluate_command(args.train, args.checkpoint, args.out, args.server_cmd, args.holdout, args.timeout,
                                    args.wait)
        if argv and argv[0] == "serve-model":
            p = argparse.ArgumentParser(prog="prepare.py serve-model",
                                        description="answer the scorer's windows with logits (untrusted)")
            p.add_argument("--train", required=True)
            p.add_argument("--checkpoint", required=True)
            args = p.parse_args(argv[1:])
            code = serve_model(args.train, args.checkpoint)
            # Skip the interpreter's teardown (most of a second with torch loaded): the scorer
            # waits for the scoring server to exit before it starts the probe server.
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(code)
        p = argparse.ArgumentParser(prog="prepare.py", description="build the data cache (offline)")
        p.add_argument("--source", metavar="PATH", help="a text file or a directory of text files")
        p.add_argument("--force", action="store_true", help="rebuild even if the cache verifies")
        args = p.parse_args(argv)
        build_cache(args.source, args.force)
        return 0
    except UsageError as e:
        print(f"prepare.py: {e}", file=sys.stderr)
        return 2
    except (CacheError, EvalError) as e:
        print(f"FAIL evaluate: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["evaluate"]:
        # A SIGTERM (the engine stopping us) unwinds through evaluate(), which kills the servers.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
