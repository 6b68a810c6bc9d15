"""Building the data cache, and refusing one that was tampered with."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import prepare

from .util import small_config

ROOT = Path(__file__).resolve().parents[2]


def run_prepare(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, str(ROOT / "prepare.py"), *args], cwd=cwd, capture_output=True, text=True, env=dict(os.environ)
    )


def test_source_directory_builds_a_cache_whose_manifest_names_it(corpus):
    result = run_prepare("--source", str(corpus))
    assert result.returncode == 0, result.stderr
    assert "%" in result.stdout and "\r" not in result.stdout  # plain progress lines when piped
    cache = Path(os.environ["AUTORESEARCH_CACHE"])
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["corpus"]["kind"] == "source"
    assert manifest["corpus"]["source"] == str(corpus.resolve())
    assert str(corpus.resolve()) in manifest["corpus"]["description"]
    assert manifest["python_version"] == sys.version.split()[0]
    total = sum(p.stat().st_size for p in corpus.rglob("*.txt"))
    assert sum(a["bytes"] for a in manifest["artifacts"].values()) == total
    assert manifest["artifacts"]["val.bin"]["bytes"] > 0
    assert manifest["format"] == prepare.MANIFEST_FORMAT
    assert manifest["hidden"] == [str(corpus.resolve())]  # the sandbox hides the whole source
    prepare.verify_cache(cache)



def test_second_build_only_verifies(corpus, capsys):
    assert prepare.main(["--source", str(corpus)]) == 0
    capsys.readouterr()
    assert prepare.main(["--source", str(corpus)]) == 0  # idempotent: verifies, says so, exits 0
    assert "already built and verified" in capsys.readouterr().out


def test_build_is_deterministic(corpus):
    first = json.loads((prepare.build_cache(str(corpus)) / "manifest.json").read_text())
    second = json.loads((prepare.build_cache(str(corpus), force=True) / "manifest.json").read_text())
    assert first == second


def test_bad_source_is_one_clear_line_and_exit_2(tmp_path, capsys):
    assert prepare.main(["--source", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no such file or directory" in err

    binaries = tmp_path / "binaries"
    binaries.mkdir()
    (binaries / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    assert prepare.main(["--source", str(binaries)]) == 2
    assert "no text files found" in capsys.readouterr().err

    tiny = tmp_path / "tiny.txt"
    tiny.write_text("too short\n")
    assert prepare.main(["--source", str(tiny)]) == 2
    assert "too little text" in capsys.readouterr().err
    assert not (Path(os.environ["AUTORESEARCH_CACHE"]) / "manifest.json").exists()


def test_bad_source_leaves_the_existing_cache_alone(cache, tmp_path):
    before = (cache / "manifest.json").read_bytes()
    binaries = tmp_path / "binaries"
    binaries.mkdir()
    (binaries / "blob.bin").write_bytes(b"\x00" * 5000)
    with pytest.raises(prepare.UsageError):
        prepare.build_cache(str(binaries), force=True)
    assert (cache / "manifest.json").read_bytes() == before
    prepare.verify_cache()


def test_a_different_source_needs_force(cache, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("hello world\n" * 500)
    with pytest.raises(prepare.UsageError, match="--force"):
        prepare.build_cache(str(other))
    prepare.build_cache(str(other), force=True)
    assert prepare.verify_cache()["corpus"]["source"] == str(other.resolve())


def test_tampered_artifact_is_refused_with_the_fix(cache):
    val = cache / "val.bin"
    data = bytearray(val.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    val.write_bytes(bytes(data))
    for check in (lambda: prepare.load_split("val"), prepare.verify_cache):
        with pytest.raises(prepare.CacheError, match="autoresearch prepare --force") as err:
            check()
        assert "val.bin" in str(err.value)
    assert prepare.load_split("train").numel() > 0  # a load checks what it reads, and only that


def test_sandbox_view_with_only_the_manifest_and_train_bin(cache, tmp_path, monkeypatch):
    view = tmp_path / "view"
    view.mkdir()
    for name in ("manifest.json", "train.bin"):
        shutil.copy(cache / name, view / name)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(view))
    assert bytes(prepare.load_split("train").numpy()) == (cache / "train.bin").read_bytes()
    x, y = next(prepare.make_loader("train", batch_size=2, seq_len=16, device="cpu"))
    assert x.shape == (2, 16)
    with pytest.raises(prepare.CacheError, match="val.bin is missing"):
        prepare.load_split("val")
    with pytest.raises(prepare.CacheError):
        prepare.verify_cache()
    (view / "train.bin").write_bytes(b"x" + (cache / "train.bin").read_bytes()[1:])
    with pytest.raises(prepare.CacheError, match="train.bin does not match"):
        prepare.load_split("train")


def test_a_model_server_never_gets_the_validation_split(cache, monkeypatch):
    monkeypatch.setattr(prepare, "_SERVING", True)
    with pytest.raises(prepare.CacheError, match="not available to a model server"):
        prepare.load_split("val")
    assert prepare.load_split("train").numel() > 0


def test_a_cache_from_an_older_prepare_is_rebuilt_with_a_clear_message(cache, capsys):
    path = cache / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format"] = 1
    del manifest["hidden"]
    manifest["checksum"] = prepare._manifest_checksum(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(prepare.CacheError, match=r"format 1.*older prepare.py.*autoresearch prepare --force"):
        prepare.load_split("train")
    capsys.readouterr()
    prepare.build_cache(manifest["corpus"]["source"])
    said = capsys.readouterr().out
    assert "format 1" in said and "rebuilding" in said
    assert prepare.verify_cache()["format"] == prepare.MANIFEST_FORMAT


def test_tampered_manifest_is_refused_with_the_fix(cache):
    path = cache / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["artifacts"]["train.bin"]["bytes"] += 1
    path.write_text(json.dumps(manifest, indent=2))
    with pytest.raises(prepare.CacheError, match="autoresearch prepare --force"):
        prepare.verify_cache()
    path.write_text("{ not json")
    with pytest.raises(prepare.CacheError, match="autoresearch prepare --force"):
        prepare.verify_cache()


def test_missing_cache_names_the_fix():
    with pytest.raises(prepare.CacheError, match="autoresearch prepare --force"):
        prepare.load_split("val")


def test_tampered_cache_fails_isolated_evaluation(cache, tmp_path):
    import torch

    import train

    config = small_config()
    ckpt = tmp_path / "c.pt"
    torch.save({"config": config, "state_dict": train.GPT(**config).state_dict()}, ckpt)
    (cache / "train.bin").write_bytes((cache / "train.bin").read_bytes() + b"x")
    out = tmp_path / "eval.json"
    result = run_prepare("evaluate", "--train", str(ROOT / "train.py"), "--checkpoint", str(ckpt), "--out", str(out))
    assert result.returncode == 1
    assert "autoresearch prepare --force" in result.stderr and "train.bin" in result.stderr
    assert not out.exists()


def test_loader_batches_are_shifted_windows(cache):
    x, y = next(prepare.make_loader("train", batch_size=4, seq_len=32, device="cpu", seed=1))
    assert x.shape == y.shape == (4, 32)
    assert x.dtype == y.dtype == __import__("torch").long
    assert (x[:, 1:] == y[:, :-1]).all()
