"""The scorer's arithmetic, its windows and probes, and its handling of a model server that
breaks the protocol (a torch-free fake server, so these run fast)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import prepare

from .util import ROOT, read_eval, run_evaluate

FAKE = Path(__file__).with_name("fake_server.py")


def fake_cmd(mode: str) -> str:
    return json.dumps([sys.executable, str(FAKE), mode])


# --- arithmetic ------------------------------------------------------------------------


def test_uniform_logits_score_exactly_eight_bits():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 256, (3, 17)).astype(np.uint8)
    logp = prepare.log_softmax(np.zeros((3, 17, 256), dtype=np.float32))
    assert logp.dtype == np.float32
    nats, count = prepare.nats_of(logp, targets, np.ones((3, 17), dtype=bool))
    assert count == 51
    assert prepare.bits_per_byte(nats, count) == pytest.approx(8.0, abs=1e-6)


def test_all_mass_on_the_right_byte_scores_about_zero():
    targets = np.random.default_rng(1).integers(0, 256, (2, 40)).astype(np.uint8)
    logits = np.eye(256, dtype=np.float32)[targets] * 100
    nats, count = prepare.nats_of(prepare.log_softmax(logits), targets, np.ones((2, 40), dtype=bool))
    assert prepare.bits_per_byte(nats, count) < 1e-6


def test_masked_positions_are_not_counted():
    targets = np.random.default_rng(2).integers(0, 256, (2, 10)).astype(np.uint8)
    logits = np.eye(256, dtype=np.float32)[targets] * 100  # perfect ...
    logits[:, 6:] *= -1  # ... except on padding
    mask = np.ones((2, 10), dtype=bool)
    mask[:, 6:] = False
    nats, count = prepare.nats_of(prepare.log_softmax(logits), targets, mask)
    assert count == 12
    assert prepare.bits_per_byte(nats, count) < 1e-6


def test_log_softmax_matches_torch_in_float32():
    import torch

    logits = np.random.default_rng(3).normal(0, 5, (4, 9, 256)).astype(np.float32)
    ours = prepare.log_softmax(logits)
    theirs = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    assert np.abs(ours - theirs).max() < 1e-5


# --- windows and probes ----------------------------------------------------------------


def test_windows_score_every_slice_byte_once_and_the_slices_never_touch():
    val = (np.arange(100_000) % 251).astype(np.uint8)
    for context in (64, 300, prepare.MAX_SEQ_LEN):
        w = prepare.validation_windows(val, context, holdout=True)
        S, W, T = w.x.shape
        assert S == 2 * prepare.VAL_SEGMENTS and T == context and w.holdout.sum() == prepare.VAL_SEGMENTS
        for rows in (~w.holdout, w.holdout):
            assert int(w.mask[rows].sum()) == prepare.VAL_BYTES
        # Within a window, each real target is the byte after its input.
        assert np.array_equal(((w.x.astype(int) + 1) % 251)[w.mask], w.y[w.mask])
    # Without --holdout the decision slice is the same, alone.
    alone = prepare.validation_windows(val, 300)
    both = prepare.validation_windows(val, 300, holdout=True)
    assert np.array_equal(alone.x, both.x[~both.holdout]) and not alone.holdout.any()
    # Interleaved pieces, never touching: ranges of byte offsets with a gap between them.
    region = len(val) // (2 * prepare.VAL_SEGMENTS)
    seg_len = prepare.VAL_BYTES // prepare.VAL_SEGMENTS + 1
    assert seg_len < region  # at least one byte between a piece and the next region's


def test_small_validation_split_shrinks_the_pieces_and_a_tiny_one_is_refused():
    w = prepare.validation_windows(np.arange(3300, dtype=np.uint8), 32, holdout=True)
    assert 0 < int(w.mask.sum()) < 2 * prepare.VAL_BYTES
    with pytest.raises(prepare.CacheError, match="too few"):
        prepare.validation_windows(np.zeros(40, dtype=np.uint8), 32)


def test_probes_cut_a_scored_window_at_a_random_position():
    val = np.random.default_rng(4).integers(0, 256, 60_000).astype(np.uint8)
    w = prepare.validation_windows(val, 100, holdout=True)
    probes = prepare.make_probes(w, 300)
    assert len(probes) == 300
    for p in probes:
        original = w.x[p.segment, p.window]
        real = int(w.mask[p.segment, p.window].sum())
        assert 1 <= p.cut < real <= 100
        assert np.array_equal(p.x[: p.cut], original[: p.cut]) and p.x[p.cut] != original[p.cut]
    assert len({p.cut for p in probes}) > 40  # spread over the positions
    assert {bool(w.holdout[p.segment]) for p in probes} == {False, True}  # from both slices
    again = prepare.make_probes(w, 300)  # fresh randomness every time
    assert [(p.segment, p.window, p.cut) for p in probes] != [(p.segment, p.window, p.cut) for p in again]


# --- the protocol, against a fake server ---------------------------------------------------


@pytest.fixture
def paths(tmp_path):
    train_py, ckpt = tmp_path / "train.py", tmp_path / "ckpt.pt"
    train_py.write_text("# the fake server never reads this\n")
    ckpt.write_bytes(b"unused")
    return train_py, ckpt, tmp_path / "eval.json"


def test_scorer_never_imports_torch_and_scores_uniform_logits_at_eight_bits(cache, paths):
    train_py, ckpt, out = paths
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "prepare.py"), "evaluate", "--train", str(train_py),
         "--checkpoint", str(ckpt), "--out", str(out), "--holdout", "--server-cmd", fake_cmd("uniform")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "numpy" in imported and not [m for m in imported if m.split(".")[0] == "torch"]
    report = read_eval(out)
    assert report["val_bpb"] == pytest.approx(8.0, abs=1e-6) and report["holdout_bpb"] == pytest.approx(8.0, abs=1e-6)
    assert report["causal"] is True and report["probe_rows"] >= prepare.PROBE_ROWS
    assert report["context"] == 32 and report["num_params"] == 1234
    assert "val_bpb: 8.000000" in result.stdout and "holdout_bpb: 8.000000" in result.stdout


@pytest.mark.parametrize(
    "mode, message",
    [
        ("garbage", "broke the protocol"),
        ("wrong_shape", "wrong shape"),
        ("wrong_rows", "wrong shape"),
        ("nan", "NaN or infinite"),
        ("huge_header", "wrong shape"),
        ("huge_failure", "broke the protocol"),
        ("exit_at_start", "exited early (exit status 3"),
        ("exit_early", "exited early"),
        ("short", "exited early"),
        ("hang", "did not answer within 1 s"),
        ("hang_after_two", "did not answer within 1 s"),
        ("fail", "failed: could not load checkpoint"),
    ],
)
def test_a_server_that_breaks_the_protocol_is_refused(cache, paths, mode, message):
    train_py, ckpt, out = paths
    out.write_text('{"val_bpb": 0.001}')  # a forged file left by an earlier process
    result = run_evaluate(train_py, ckpt, out, "--server-cmd", fake_cmd(mode), "--timeout", "1", timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    fail = [line for line in result.stderr.splitlines() if line.startswith("FAIL evaluate:")]
    assert len(fail) == 1 and message in fail[0], result.stderr
    assert "\x1b" not in fail[0] and "\x07" not in fail[0]  # the server's text is made printable
    assert not out.exists()
    assert "val_bpb" not in result.stdout


def test_bad_server_command_is_a_usage_error(cache, paths):
    train_py, ckpt, out = paths
    for bad in ("not json", "[]", '["python", 3]', '"python"'):
        result = run_evaluate(train_py, ckpt, out, "--server-cmd", bad)
        assert result.returncode == 2 and "--server-cmd" in result.stderr
    result = run_evaluate(train_py, ckpt, out, "--server-cmd", json.dumps(["/nonexistent/server"]))
    assert result.returncode == 1 and "could not start the model server" in result.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_servers_die_with_the_scorer_even_when_it_is_killed(cache, paths):
    import psutil

    train_py, ckpt, out = paths
    scorer = subprocess.Popen(
        [sys.executable, str(ROOT / "prepare.py"), "evaluate", "--train", str(train_py), "--checkpoint", str(ckpt),
         "--out", str(out), "--server-cmd", fake_cmd("hang"), "--timeout", "60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        servers = []
        for _ in range(200):
            servers = psutil.Process(scorer.pid).children()
            if len(servers) == 2:
                break
            time.sleep(0.05)
        assert len(servers) == 2
        time.sleep(0.5)  # the scoring server is now stuck in its first request
    finally:
        scorer.kill()
        scorer.wait()
    _, alive = psutil.wait_procs(servers, timeout=10)
    assert not alive
