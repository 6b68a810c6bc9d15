"""prepare.py: the data, the dataloader, the time budget and the evaluator.

This file is the trust boundary of autoresearch. The agent edits train.py and
never this file; the engine hashes it at the start of a run and refuses any
experiment that changes it.

    python prepare.py [--source PATH] [--force]      build the data cache
    python prepare.py evaluate --train train.py --checkpoint CKPT --out eval.json

Data: byte-level tokens (vocabulary 256), so bits per byte fall straight out of
the loss and there is no tokenizer to train, download or unpickle. By default
the corpus is the running Python's standard library (module sources plus the
pydoc topics text), read in a fixed order; a file goes to validation when a
stable hash of its relative path says so. `--source` uses your own text files.
The cache (raw uint8 .bin files and manifest.json with their SHA-256) lives in
$AUTORESEARCH_CACHE (default ~/.cache/autoresearch) and is verified on every load.

Metric: val_bpb = total nats over every scored validation byte / (ln 2 * bytes),
computed here in float32 from the model's logits on a fixed validation slice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import sysconfig
import time
import types
from pathlib import Path

# OpenMP threads sleep while they wait instead of spinning (much faster on a busy machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

# --- constants (fixed for every experiment) -----------------------------------

VOCAB_SIZE = 256  # byte-level tokens
MAX_SEQ_LEN = 512  # longest context the evaluator will feed a model
VAL_BYTES = 16384  # validation target bytes scored per evaluation
VAL_SEGMENTS = 8  # the slice is this many evenly spaced pieces of the validation split
VAL_PERCENT = 3  # share of files (by stable path hash) that go to validation
EVAL_BATCH = 16  # windows per forward pass during evaluation
MIN_TRAIN_BYTES = 2 * MAX_SEQ_LEN + 2  # smallest training split a loader can sample from
MANIFEST_FORMAT = 1
FIX = "run `autoresearch prepare --force` (or `python prepare.py --force`) to rebuild it"


def _pick_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _time_budget(device: str) -> float:
    raw = os.environ.get("AUTORESEARCH_TIME_BUDGET", "").strip()
    if not raw:
        return 300.0 if device == "cuda" else 60.0
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"AUTORESEARCH_TIME_BUDGET must be a number of seconds, not {raw!r}") from None
    if not value > 0:
        raise SystemExit(f"AUTORESEARCH_TIME_BUDGET must be positive, not {raw!r}")
    return value


DEVICE = _pick_device()
TIME_BUDGET = _time_budget(DEVICE)  # training seconds; warm-up steps do not count


class CacheError(Exception):
    """The data cache is missing, incomplete or does not match its manifest."""


class EvalError(Exception):
    """The model cannot be scored (bad checkpoint, wrong shape, NaN, not causal)."""


class UsageError(Exception):
    """Bad command-line input: one clear line and exit status 2."""


def cache_dir() -> Path:
    return Path(os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch").expanduser()


# --- building the cache --------------------------------------------------------


def _is_val(relpath: str) -> bool:
    """Stable split: the same path always lands in the same split, on any machine."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < VAL_PERCENT


def _stdlib_documents():
    """(relative name, bytes) for every stdlib module source, then the pydoc topics."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("."))
        paths.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    paths.sort(key=lambda p: p.relative_to(root).as_posix())
    docs = [(p.relative_to(root).as_posix(), p) for p in paths]
    try:
        from pydoc_data.topics import topics

        text = "".join(f"{key}\n{topics[key]}\n" for key in sorted(topics))
        docs.append(("pydoc_data/topics.txt", text.encode("utf-8")))
    except ImportError:  # some distributions strip pydoc_data
        pass
    return docs


def _is_text(data: bytes) -> bool:
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _source_documents(source: Path):
    """(relative name, path) for every UTF-8 text file under source (hidden ones skipped)."""
    if source.is_file():
        return [(source.name, source)]
    paths = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    paths.sort(key=lambda p: p.relative_to(source).as_posix())
    return [(p.relative_to(source).as_posix(), p) for p in paths]


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

    docs = _stdlib_documents() if src is None else _source_documents(src)
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
        for i, (name, item) in enumerate(docs, 1):
            data = item if isinstance(item, bytes) else item.read_bytes()
            if src is not None and not _is_text(data):
                skipped += 1
            elif data:
                split = "val" if _is_val(name) else "train"
                (val_f if split == "val" else train_f).write(data)
                counts[split] += 1
            progress.update(i)
    progress.close()
    total = (tmp / "train.bin").stat().st_size + (tmp / "val.bin").stat().st_size
    if counts["train"] + counts["val"] == 0 or total < 2 * MIN_TRAIN_BYTES:
        shutil.rmtree(tmp, ignore_errors=True)
        if counts["train"] + counts["val"] == 0:
            raise UsageError(f"--source {source}: no text files found (UTF-8, no NUL bytes)")
        raise UsageError(f"--source {source}: too little text ({total} bytes; at least {2 * MIN_TRAIN_BYTES} needed)")
    _ensure_both_splits(tmp, counts)

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
            "val_rule": f"sha256(relative path) % 100 < {VAL_PERCENT}",
        },
        "artifacts": artifacts,
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


def _ensure_both_splits(tmp: Path, counts: dict) -> None:
    """A small corpus may hash every file to one side: then split the bytes 90/10."""
    train, val = (tmp / "train.bin").read_bytes(), (tmp / "val.bin").read_bytes()
    if len(val) >= 2 and len(train) >= MIN_TRAIN_BYTES:
        return
    data = train + val
    cut = len(data) - max(len(data) // 10, 2)
    (tmp / "train.bin").write_bytes(data[:cut])
    (tmp / "val.bin").write_bytes(data[cut:])
    counts["split_by_bytes"] = True


# --- loading (verified every time) ----------------------------------------------


def verify_cache(path: Path | None = None) -> dict:
    """The manifest, after checking it and every artifact's SHA-256. Raises CacheError."""
    return _load_manifest_and(path, names=())[0]


def _load_manifest_and(path: Path | None, names) -> tuple[dict, dict[str, bytes], str]:
    """Manifest, the bytes of the named artifacts (each hash-checked), manifest file SHA-256."""
    root = path or cache_dir()
    mpath = root / "manifest.json"
    if not mpath.exists():
        raise CacheError(f"no data cache at {root} (manifest.json missing): {FIX}")
    raw = mpath.read_bytes()
    try:
        manifest = json.loads(raw)
        ok = (
            manifest.get("format") == MANIFEST_FORMAT
            and manifest.get("checksum") == _manifest_checksum(manifest)
            and set(manifest["artifacts"]) == {"train.bin", "val.bin"}
        )
    except (ValueError, AttributeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CacheError(f"the cache manifest {mpath} is corrupt or was edited: {FIX}")
    loaded = {}
    for name, meta in manifest["artifacts"].items():
        apath = root / name
        try:
            data = apath.read_bytes() if name in names else None
            digest = hashlib.sha256(data).hexdigest() if data is not None else _sha256_file(apath)
        except FileNotFoundError:
            raise CacheError(f"cache artifact {apath} is missing: {FIX}") from None
        if digest != meta.get("sha256"):
            raise CacheError(f"cache artifact {apath} does not match manifest.json (tampered or corrupt): {FIX}")
        if data is not None:
            loaded[name] = data
    return manifest, loaded, hashlib.sha256(raw).hexdigest()


def load_split(split: str) -> torch.Tensor:
    """The verified bytes of "train" or "val" as a uint8 tensor (never unpickled)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    name = f"{split}.bin"
    _, loaded, _ = _load_manifest_and(None, names=(name,))
    return torch.frombuffer(bytearray(loaded[name]), dtype=torch.uint8)


def make_loader(split: str, batch_size: int, seq_len: int, device: str | None = None, seed: int = 0):
    """Endless (x, y) batches of random windows: y is x shifted by one byte (int64)."""
    if not 1 <= seq_len <= MAX_SEQ_LEN:
        raise ValueError(f"seq_len must be between 1 and MAX_SEQ_LEN={MAX_SEQ_LEN}, not {seq_len}")
    device = device or DEVICE
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


# --- the evaluator ------------------------------------------------------------


def _val_windows(val: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed validation slice cut into windows of `context` bytes.

    The slice is VAL_SEGMENTS evenly spaced pieces of the validation split, each
    scored on its own (no context crosses a piece). Returns inputs, targets and a
    mask that is False on padding past the end of a piece; every real target byte
    is scored exactly once.
    """
    n_seg = VAL_SEGMENTS
    seg_len = min(VAL_BYTES // n_seg + 1, val.numel() // n_seg)
    if seg_len < 2:
        n_seg, seg_len = 1, val.numel()
    span = val.numel() - seg_len
    xs, ys, ms = [], [], []
    for i in range(n_seg):
        start = i * span // max(n_seg - 1, 1)
        seg = val[start : start + seg_len].long()
        n_targets = seg_len - 1
        n_win = -(-n_targets // context)
        padded = torch.zeros(n_win * context + 1, dtype=torch.long)
        padded[:seg_len] = seg
        mask = torch.zeros(n_win * context, dtype=torch.bool)
        mask[:n_targets] = True
        xs.append(padded[:-1].view(n_win, context))
        ys.append(padded[1:].view(n_win, context))
        ms.append(mask.view(n_win, context))
    return torch.cat(xs), torch.cat(ys), torch.cat(ms)


def nats_of(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, _log_softmax=torch.log_softmax):
    """(sum of nats over masked-in targets as a Python float, number of those targets).

    Log-softmax is taken here in float32 from raw logits; the model's own loss is never used.
    """
    logp = _log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    picked = picked.masked_select(mask)
    return float(-picked.double().sum()), int(mask.sum())


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    return total_nats / (math.log(2) * n_bytes)


def _context_of(model) -> int:
    """Windows are model.seq_len bytes long when the model says so (capped), else MAX_SEQ_LEN."""
    context = getattr(model, "seq_len", MAX_SEQ_LEN)
    if not isinstance(context, int) or isinstance(context, bool) or context < 1:
        raise EvalError(f"model.seq_len must be a positive int, not {context!r}")
    return min(context, MAX_SEQ_LEN)


def _forward(model, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    if not isinstance(logits, torch.Tensor):
        raise EvalError(f"forward(idx) must return a tensor of logits, not {type(logits).__name__}")
    if tuple(logits.shape) != (x.shape[0], x.shape[1], VOCAB_SIZE):
        raise EvalError(
            f"wrong shape: forward(idx) with idx {tuple(x.shape)} returned {tuple(logits.shape)}, "
            f"expected {(x.shape[0], x.shape[1], VOCAB_SIZE)}"
        )
    if not bool(torch.isfinite(logits).all()):
        raise EvalError("the model produced NaN or infinite logits")
    return logits


def check_causal(model, x: torch.Tensor, logits: torch.Tensor | None = None) -> None:
    """Changing inputs at and after position k must leave the logits before k unchanged."""
    x = x[:4]
    base = _forward(model, x) if logits is None else logits[:4]
    T = x.shape[1]
    gen = torch.Generator().manual_seed(1234)
    for k in sorted({1, T // 2, T - 1} - {0}):
        changed = x.clone()
        noise = torch.randint(1, VOCAB_SIZE, changed[:, k:].shape, generator=gen).to(x.device)
        changed[:, k:] = (changed[:, k:] + noise) % VOCAB_SIZE  # every later byte differs
        after = _forward(model, changed)
        if not torch.allclose(after[:, :k].float(), base[:, :k].float(), rtol=1e-4, atol=1e-4):
            raise EvalError(
                f"non-causal model: changing input positions >= {k} changed the logits at earlier "
                "positions (the model looks ahead)"
            )


def evaluate_model(model, device: str | None = None, _nats_of=nats_of) -> dict:
    """Score a model on the fixed validation slice. Deterministic; raises EvalError/CacheError."""
    t0 = time.time()
    device = device or DEVICE
    _, loaded, manifest_sha = _load_manifest_and(None, names=("val.bin",))
    val = torch.frombuffer(bytearray(loaded["val.bin"]), dtype=torch.uint8)
    context = _context_of(model)
    xs, ys, ms = _val_windows(val, context)
    was_training = model.training
    model.eval()
    total_nats, total_bytes = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, xs.shape[0], EVAL_BATCH):
                x, y, m = (t[i : i + EVAL_BATCH].to(device) for t in (xs, ys, ms))
                logits = _forward(model, x)
                if i == 0:
                    check_causal(model, x, logits)  # before any score counts
                nats, count = _nats_of(logits, y, m)
                total_nats += nats
                total_bytes += count
    finally:
        model.train(was_training)
    val_bpb = bits_per_byte(total_nats, total_bytes)
    if not math.isfinite(val_bpb):
        raise EvalError("val_bpb is not finite")
    return {
        "val_bpb": val_bpb,
        "val_bytes": total_bytes,
        "seconds": round(time.time() - t0, 3),
        "causal": True,
        "manifest_sha256": manifest_sha,
        "context": context,
        "device": str(device),
        "num_params": sum(p.numel() for p in model.parameters()),
    }


def _snapshot_evaluator() -> dict:
    """This module's functions rebound to a private copy of its globals.

    train.py runs code when imported; it could reassign names in this module (it is
    `__main__`, or `prepare` when imported). Scoring through the copy ignores that.
    """
    snapshot = dict(globals())
    for name, obj in list(snapshot.items()):
        if isinstance(obj, types.FunctionType) and obj.__module__ == __name__:
            snapshot[name] = types.FunctionType(obj.__code__, snapshot, name, obj.__defaults__, obj.__closure__)
    return snapshot


def _import_train(path: Path):
    """train.py as a module, imported from its own directory (so it can `import prepare`)."""
    import importlib.util

    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    return module


def evaluate_command(train_path: str, checkpoint: str, out: str) -> int:
    t0 = time.time()
    train_file, ckpt = Path(train_path), Path(checkpoint)
    if not train_file.is_file():
        raise UsageError(f"--train {train_path}: no such file")
    if not ckpt.is_file():
        raise UsageError(f"--checkpoint {checkpoint}: no such file")
    # Take what scoring needs before train.py runs any code of its own: the cache is
    # verified now (and again when scoring), and the evaluator runs from a private copy.
    verify_cache()
    trusted = _snapshot_evaluator()
    try:
        module = _import_train(train_file)
    except Exception as e:
        raise EvalError(f"could not import {train_path}: {type(e).__name__}: {e}") from None
    if not callable(getattr(module, "load_model", None)):
        raise EvalError(f"{train_path} has no load_model(path) function")
    try:
        model = module.load_model(str(ckpt))
    except Exception as e:
        raise EvalError(f"could not load checkpoint {checkpoint}: {type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise EvalError(f"load_model returned {type(model).__name__}, not an nn.Module")
    model.to(DEVICE)
    result = trusted["evaluate_model"](model, DEVICE)
    result["seconds"] = round(time.time() - t0, 3)
    result["checkpoint"] = str(ckpt.resolve())
    Path(out).write_text(trusted["json"].dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"val_bpb: {result['val_bpb']:.6f}", flush=True)
    print(f"val_bytes: {result['val_bytes']}", flush=True)
    print(f"eval_seconds: {result['seconds']:.2f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "evaluate":
            p = argparse.ArgumentParser(prog="prepare.py evaluate", description="score a checkpoint")
            p.add_argument("--train", required=True, help="path to train.py (provides load_model)")
            p.add_argument("--checkpoint", required=True)
            p.add_argument("--out", required=True, help="where to write eval.json")
            args = p.parse_args(argv[1:])
            return evaluate_command(args.train, args.checkpoint, args.out)
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
    sys.exit(main())
