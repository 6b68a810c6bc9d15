"""The evaluator's arithmetic, its causality probe and its refusal of broken models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import prepare

from .util import small_config


class Uniform(nn.Module):
    """Equal logits for every byte: exactly log2(256) = 8 bits per byte."""

    seq_len = 64

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        return torch.zeros(idx.shape[0], idx.shape[1], 256) + 0 * self.dummy


class PeeksAhead(Uniform):
    """Predicts byte t+1 by reading it from the input: perfect score, but not causal."""

    def forward(self, idx):
        nxt = torch.roll(idx, shifts=-1, dims=1)
        return torch.nn.functional.one_hot(nxt, 256).float() * 50


class ReturnsNaN(Uniform):
    def forward(self, idx):
        return torch.full((idx.shape[0], idx.shape[1], 256), float("nan"))


class WrongVocab(Uniform):
    def forward(self, idx):
        return torch.zeros(idx.shape[0], idx.shape[1], 255)


def test_uniform_logits_score_exactly_eight_bits():
    targets = torch.randint(0, 256, (3, 17))
    nats, count = prepare.nats_of(torch.zeros(3, 17, 256), targets, torch.ones(3, 17, dtype=torch.bool))
    assert count == 51
    assert prepare.bits_per_byte(nats, count) == pytest.approx(8.0, abs=1e-6)


def test_all_mass_on_the_right_byte_scores_about_zero():
    targets = torch.randint(0, 256, (2, 40))
    logits = torch.nn.functional.one_hot(targets, 256).float() * 100
    nats, count = prepare.nats_of(logits, targets, torch.ones(2, 40, dtype=torch.bool))
    assert prepare.bits_per_byte(nats, count) < 1e-6


def test_masked_positions_are_not_counted():
    targets = torch.randint(0, 256, (2, 10))
    logits = torch.nn.functional.one_hot(targets, 256).float() * 100  # perfect ...
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[:, 6:] = False
    logits[:, 6:] = -torch.nn.functional.one_hot(targets[:, 6:], 256).float() * 100  # ... except padding
    nats, count = prepare.nats_of(logits, targets, mask)
    assert count == 12
    assert prepare.bits_per_byte(nats, count) < 1e-6


def test_validation_windows_score_every_slice_byte_once_and_pad_the_rest():
    val = torch.arange(100_000, dtype=torch.int64).remainder(251).to(torch.uint8)
    for context in (64, 300, prepare.MAX_SEQ_LEN):
        xs, ys, ms = prepare._val_windows(val, context)
        assert xs.shape == ys.shape == ms.shape and xs.shape[1] == context
        assert int(ms.sum()) == prepare.VAL_BYTES
        # Within a window, each real target is the byte after its input.
        assert torch.equal(((xs + 1) % 251)[ms], ys[ms])
    xs, ys, ms = prepare._val_windows(val, 300)  # 2048 targets per piece: 7 windows, 52 pads
    assert int((~ms).sum()) == prepare.VAL_SEGMENTS * (7 * 300 - prepare.VAL_BYTES // prepare.VAL_SEGMENTS)


def test_uniform_model_scores_eight_on_the_real_slice(cache):
    result = prepare.evaluate_model(Uniform())
    assert result["val_bpb"] == pytest.approx(8.0, abs=1e-6)
    assert result["causal"] is True
    assert result["context"] == 64
    assert result["val_bytes"] > 1000
    assert len(result["manifest_sha256"]) == 64


def test_causality_probe_rejects_a_model_that_looks_ahead(cache):
    with pytest.raises(prepare.EvalError, match="non-causal"):
        prepare.evaluate_model(PeeksAhead())


def test_causality_probe_accepts_the_baseline(cache):
    import train

    model = train.GPT(**small_config(depth=2, width=64, seq_len=64))
    for p in model.parameters():  # no all-zero tables: every input must be able to matter
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randint(0, 256, (4, 64))
    prepare.check_causal(model.eval(), x)  # raises if it were not causal
    result = prepare.evaluate_model(model)
    assert 7.0 < result["val_bpb"] < 10.0 and math.isfinite(result["val_bpb"])


def test_nan_logits_and_wrong_shapes_are_refused(cache):
    with pytest.raises(prepare.EvalError, match="NaN"):
        prepare.evaluate_model(ReturnsNaN())
    with pytest.raises(prepare.EvalError, match="wrong shape"):
        prepare.evaluate_model(WrongVocab())


def test_evaluation_is_deterministic(cache):
    import train

    torch.manual_seed(3)
    model = train.GPT(**small_config())
    first, second = prepare.evaluate_model(model), prepare.evaluate_model(model)
    assert first["val_bpb"] == second["val_bpb"]
