"""The split scorer end to end, with the real train.py model: its val_bpb and holdout_bpb
equal a reference computed here, and eval.json says what was measured."""

from __future__ import annotations

import hashlib

import torch

import prepare

from .util import ROOT, read_eval, reference_scores, run_evaluate, small_config


def test_honest_model_scores_what_a_reference_computes(cache, tmp_path):
    import train

    torch.manual_seed(0)
    config = small_config(depth=2, width=64)
    model = train.GPT(**config)
    for p in model.parameters():  # no all-zero tables: every input must be able to matter
        torch.nn.init.normal_(p, std=0.2)
    ckpt, out = tmp_path / "checkpoint.pt", tmp_path / "eval.json"
    torch.save({"config": config, "state_dict": model.state_dict()}, ckpt)

    result = run_evaluate(ROOT / "train.py", ckpt, out, "--holdout")
    assert result.returncode == 0, result.stderr
    report = read_eval(out)
    reference = reference_scores(train.load_model(str(ckpt)), holdout=True)
    assert abs(report["val_bpb"] - reference["val"]) < 1e-6
    assert abs(report["holdout_bpb"] - reference["holdout"]) < 1e-6
    assert report["val_bpb"] != report["holdout_bpb"]  # two different slices
    assert 6.0 < report["val_bpb"] < 12.0

    assert report["causal"] is True and report["probe_max_diff"] <= prepare.PROBE_TOLERANCE
    assert report["probe_rows"] == prepare.PROBE_ROWS  # 16 rows a request divide 256
    assert report["context"] == config["seq_len"]
    assert report["num_params"] == sum(p.numel() for p in model.parameters())
    assert report["manifest_sha256"] == hashlib.sha256((cache / "manifest.json").read_bytes()).hexdigest()
    assert report["val_bytes"] == report["holdout_bytes"] > 1000
    assert report["seconds"] > 0 and set(report["timings"]) == {"ready", "scoring", "probing"}
    lines = result.stdout.splitlines()
    assert f"val_bpb: {report['val_bpb']:.6f}" in lines and f"holdout_bpb: {report['holdout_bpb']:.6f}" in lines
    assert not list(tmp_path.glob(".eval.json.*"))  # the temporary file was renamed into place
