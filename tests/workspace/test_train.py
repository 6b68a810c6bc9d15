"""train.py end to end on CPU: progress, summary, checkpoint, and isolated evaluation."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import prepare

from .util import reference_scores

ROOT = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = ("training_seconds", "total_seconds", "peak_mem_mb", "tokens_per_sec", "num_steps", "num_params_M", "depth")


def workspace(tmp_path: Path, edits: dict[str, str] | None = None) -> Path:
    """A copy of train.py and prepare.py, as the engine's worktree holds them; edits
    replace a hyperparameter's value the way the offline agent does."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "prepare.py", work / "prepare.py")
    source = (ROOT / "train.py").read_text()
    for name, value in (edits or {}).items():
        source, n = re.subn(rf"^{name} = \S+", f"{name} = {value}", source, flags=re.M)
        assert n == 1, name
    (work / "train.py").write_text(source)
    return work


def run_train(work: Path, budget: str = "3"):
    env = dict(os.environ, AUTORESEARCH_TIME_BUDGET=budget, AUTORESEARCH_CHECKPOINT=str(work / "ckpt" / "model.pt"))
    return subprocess.run([sys.executable, "train.py"], cwd=work, env=env, capture_output=True, text=True, timeout=120)


def test_three_second_run_then_isolated_evaluation_matches_a_reference(cache, tmp_path):
    work = workspace(tmp_path)
    result = run_train(work)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "\r" not in out

    progress = [line for line in out.splitlines() if line.startswith("step ")]
    assert progress, out
    for line in progress:
        assert re.search(r"step +\d+ \| loss \d+\.\d+ \| +[\d,]+ tok/s .*remaining +\d+\.\d+s", line), line

    head, summary = out.split("\n---\n", 1)
    values = dict(line.split(": ", 1) for line in summary.strip().splitlines())
    for key in SUMMARY_KEYS:
        assert key in values, key
    assert float(values["training_seconds"]) >= 3.0
    assert int(values["num_steps"]) >= 2
    assert ("mfu_percent" in values) == (prepare.DEVICE == "cuda")  # MFU is measured on CUDA only
    ckpt = work / "ckpt" / "model.pt"
    assert ckpt.is_file()

    eval_json = work / "eval.json"
    isolated = subprocess.run(
        [sys.executable, "prepare.py", "evaluate", "--train", "train.py", "--checkpoint", str(ckpt), "--out", str(eval_json)],
        cwd=work, capture_output=True, text=True, timeout=120,
    )
    assert isolated.returncode == 0, isolated.stderr
    report = json.loads(eval_json.read_text())
    assert re.search(r"^val_bpb: \d+\.\d+$", isolated.stdout, flags=re.M)
    assert report["causal"] is True and report["val_bytes"] > 0 and report["seconds"] > 0
    assert report["manifest_sha256"] == __import__("hashlib").sha256((cache / "manifest.json").read_bytes()).hexdigest()

    spec = importlib.util.spec_from_file_location("train_under_test", work / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = reference_scores(module.load_model(str(ckpt)))
    assert abs(reference["val"] - report["val_bpb"]) < 1e-6
    assert report["val_bpb"] < 8.5  # it learned something, or at least did not blow up


def test_nan_fails_fast_with_a_fail_line(cache, tmp_path):
    work = workspace(tmp_path, {"MATRIX_LR": 'float("nan")'})
    result = run_train(work, budget="30")
    assert result.returncode == 1
    fail_lines = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert fail_lines and "nan" in fail_lines[0]
    assert "\n---\n" not in result.stdout
    assert not (work / "ckpt" / "model.pt").exists()


def test_shape_mismatch_is_a_clear_fail_not_a_traceback(cache, tmp_path):
    work = workspace(tmp_path, {"WIDTH": "100", "HEADS": "3"})
    result = run_train(work)
    assert result.returncode == 1
    assert "FAIL WIDTH (100) must be divisible by HEADS (3)" in result.stdout
    assert "Traceback" not in result.stderr


def test_train_py_imports_without_training_and_keeps_its_constants_plain():
    import ast

    import train  # would train for a minute if the loop ran at import time

    assert callable(train.load_model) and train.SEQ_LEN <= prepare.MAX_SEQ_LEN
    tree = ast.parse((ROOT / "train.py").read_text())
    constants = [
        n for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and n.targets[0].id.isupper()
    ]
    assert len(constants) >= 10
    for node in constants:  # plain numeric literals, one per line, each with a comment
        assert isinstance(node.value, ast.Constant) and type(node.value.value) in (int, float), node.targets[0].id
    lines = (ROOT / "train.py").read_text().splitlines()
    for node in constants:
        assert "#" in lines[node.lineno - 1], node.targets[0].id
    for name in ("DEPTH", "WIDTH", "HEADS", "BATCH_SIZE", "SEQ_LEN", "WEIGHT_DECAY", "WARMUP_FRAC", "WARMDOWN_FRAC"):
        assert hasattr(train, name), name
    for name in ("DEPTH", "WIDTH", "HEADS", "BATCH_SIZE", "SEQ_LEN"):
        assert isinstance(getattr(train, name), int), name
    assert all(0 <= getattr(train, n) <= 1 for n in dir(train) if n.endswith("_FRAC"))


def test_bad_checkpoint_fails_evaluation_clearly(cache, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = subprocess.run(
        [sys.executable, "prepare.py", "evaluate", "--train", "train.py", "--checkpoint", str(bad), "--out", str(tmp_path / "e.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "could not load checkpoint" in result.stderr
    assert not (tmp_path / "e.json").exists()


def test_prepare_imports_torch_only_for_the_device(monkeypatch):
    """The scorer must start fast: importing prepare and reading the budget needs no torch."""
    code = "import sys, prepare; budget = prepare.TIME_BUDGET; print(budget, 'torch' in sys.modules)"
    env = dict(os.environ, AUTORESEARCH_TIME_BUDGET="7")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.stdout.split() == ["7.0", "False"], result.stderr
    assert prepare.DEVICE in ("cpu", "cuda", "mps")  # train.py's prepare.DEVICE, computed on first use
    monkeypatch.delenv("AUTORESEARCH_TIME_BUDGET", raising=False)
    assert prepare._time_budget() == (300.0 if prepare.DEVICE == "cuda" else 60.0)  # by hand
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "soon")
    with pytest.raises(SystemExit, match="number of seconds"):
        prepare._time_budget()
