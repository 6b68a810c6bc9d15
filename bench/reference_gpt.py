"""The plain reference GPT that the baseline train.py must beat (issue 2).

A textbook small GPT with none of the baseline's tuning: 3 layers, width 128,
4 heads, context 128, learned position embeddings, LayerNorm, GELU, an untied
output head, AdamW at a constant lr of 4e-3, float32, torch's default threading. It follows train.py's
contract (same budget accounting, summary block, checkpoint format and
load_model), so bench/baseline_quality.py trains it the same way and scores it
through the same evaluator:

    python bench/reference_gpt.py
    python prepare.py evaluate --train bench/reference_gpt.py --checkpoint checkpoint.pt --out eval.json
"""

import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for prepare.py
import prepare  # noqa: E402

DEPTH = 3  # transformer blocks
WIDTH = 128  # residual channels
HEADS = 4  # attention heads
SEQ_LEN = 128  # context in bytes
BATCH_SIZE = 32  # sequences per step
LR = 4e-3  # constant AdamW learning rate (no warm-up, no decay)


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class ReferenceGPT(nn.Module):
    def __init__(self, depth, width, heads, seq_len):
        super().__init__()
        self.seq_len = seq_len  # the evaluator feeds windows of this many bytes
        self.tok = nn.Embedding(prepare.VOCAB_SIZE, width)
        self.pos = nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, prepare.VOCAB_SIZE, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def model_config():
    return dict(depth=DEPTH, width=WIDTH, heads=HEADS, seq_len=SEQ_LEN)


def load_model(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = ReferenceGPT(**checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def train():
    t_start = time.time()
    torch.manual_seed(0)
    device, budget = prepare.DEVICE, prepare.TIME_BUDGET
    checkpoint_path = os.environ.get("AUTORESEARCH_CHECKPOINT") or "checkpoint.pt"
    batches = prepare.make_loader("train", BATCH_SIZE, SEQ_LEN, device)
    model = ReferenceGPT(**model_config()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"reference GPT: {num_params / 1e6:.2f}M params, budget {budget:.0f}s", flush=True)
    training_seconds, step, tokens = 0.0, 0, 0
    uncounted_steps, last_log = 1, 0.0  # the same warm-up accounting as train.py
    while training_seconds < budget:
        t0 = time.time()
        x, y = next(batches)
        loss = F.cross_entropy(model(x).view(-1, prepare.VOCAB_SIZE), y.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        step += 1
        if not math.isfinite(loss_value):
            print(f"FAIL loss is {loss_value} at step {step}", flush=True)
            sys.exit(1)
        if step > uncounted_steps:
            training_seconds += time.time() - t0
            tokens += BATCH_SIZE * SEQ_LEN
        if training_seconds - last_log >= max(1.0, budget / 30):
            last_log = training_seconds
            print(f"step {step:5d} | loss {loss_value:.4f} | remaining {max(0.0, budget - training_seconds):5.1f}s", flush=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": model_config(), "state_dict": state}, checkpoint_path)
    print("---")
    print(f"training_seconds: {training_seconds:.1f}")
    print(f"total_seconds: {time.time() - t_start:.1f}")
    print(f"tokens_per_sec: {tokens / max(training_seconds, 1e-9):.0f}")
    print(f"num_steps: {step}")
    print(f"num_params_M: {num_params / 1e6:.3f}")
    print(f"depth: {DEPTH}", flush=True)


if __name__ == "__main__":
    train()
