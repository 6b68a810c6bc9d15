"""train.py: the model, the optimizer and the training loop. The agent's file.

A small byte-level GPT trained for a fixed wall-clock budget (prepare.TIME_BUDGET).
Run from the directory that holds train.py and prepare.py:

    python train.py

Environment: AUTORESEARCH_TIME_BUDGET (seconds), AUTORESEARCH_CHECKPOINT (where the
checkpoint goes, default ./checkpoint.pt), AUTORESEARCH_CACHE (the data cache).
The engine scores the checkpoint with `python prepare.py evaluate`, which rebuilds
the model through load_model() below; this file never evaluates itself.

Output: one progress line per interval, `FAIL ...` and exit 1 on NaN or
explosion, then `---` and a `key: value` summary block.
"""

import math
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare

# --- hyperparameters (plain literals, one per line: tools edit them in place) ---

DEPTH = 4  # number of transformer blocks
WIDTH = 256  # model width: channels of the residual stream
HEADS = 4  # attention heads; WIDTH must be divisible by HEADS
MLP_MULT = 4  # MLP hidden units per residual channel
SEQ_LEN = 256  # context length in bytes (at most prepare.MAX_SEQ_LEN)
BATCH_SIZE = 32  # sequences per optimizer step
MATRIX_LR = 3e-3  # peak AdamW learning rate of the transformer's weight matrices
EMBED_LR = 1e-2  # peak AdamW learning rate of the byte embedding (shared with the output head)
WEIGHT_DECAY = 0.1  # decoupled weight decay on weight matrices
ADAM_BETA1 = 0.9  # AdamW first-moment decay
ADAM_BETA2 = 0.95  # AdamW second-moment decay
GRAD_CLIP = 1.0  # clip the global gradient norm to this (0 turns clipping off)
WARMUP_FRAC = 0.02  # share of the budget spent ramping the learning rate up from zero
WARMDOWN_FRAC = 0.4  # share of the budget at the end spent ramping it down to zero
ROPE_BASE = 10000  # base period of the rotary position embedding
LOGIT_SOFTCAP = 15  # output logits are squashed to (-cap, cap) by tanh (0 turns it off)
SEED = 0  # random seed for initialization and batch sampling

# --- model --------------------------------------------------------------------


class Rotary(nn.Module):
    """Rotary position embedding: rotates query/key channel pairs by position-dependent angles."""

    def __init__(self, head_dim, seq_len, base):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(seq_len).float(), inv_freq)
        self.register_buffer("cos", angles.cos()[None, None], persistent=False)
        self.register_buffer("sin", angles.sin()[None, None], persistent=False)

    def forward(self, x):  # x: batch, heads, time, head_dim
        T = x.shape[-2]
        x1, x2 = x.chunk(2, dim=-1)
        cos, sin = self.cos[:, :, :T].to(x.dtype), self.sin[:, :, :T].to(x.dtype)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, width, heads, seq_len, rope_base):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.rotary = Rotary(self.head_dim, seq_len, rope_base)
        self.register_buffer("future", torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))  # QK-norm keeps logits tame
        q, k = self.rotary(q), self.rotary(k)
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            # Plain matmuls beat the fused kernel for bf16 on CPU (its backward is slow there).
            scores = (q @ k.transpose(-2, -1)).float() * self.head_dim**-0.5
            scores = scores.masked_fill(self.future[:T, :T], float("-inf"))
            y = scores.softmax(dim=-1).to(v.dtype) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, width, mult):
        super().__init__()
        self.up = nn.Linear(width, mult * width, bias=False)
        self.down = nn.Linear(mult * width, width, bias=False)

    def forward(self, x):
        return self.down(F.relu(self.up(x)).square())  # ReLU^2: cheap and strong in small models


class Block(nn.Module):
    def __init__(self, width, heads, mlp_mult, seq_len, rope_base):
        super().__init__()
        self.attn = Attention(width, heads, seq_len, rope_base)
        self.mlp = MLP(width, mlp_mult)

    def forward(self, x):
        x = x + self.attn(F.rms_norm(x, (x.shape[-1],)))
        return x + self.mlp(F.rms_norm(x, (x.shape[-1],)))


class GPT(nn.Module):
    """Byte-level decoder: forward(idx) -> logits of shape batch x time x 256."""

    def __init__(self, depth, width, heads, mlp_mult, seq_len, rope_base, logit_softcap):
        super().__init__()
        self.seq_len = seq_len  # the evaluator feeds windows of this many bytes
        self.logit_softcap = logit_softcap
        self.embed = nn.Embedding(prepare.VOCAB_SIZE, width)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_mult, seq_len, rope_base) for _ in range(depth))
        self.reset_parameters(depth)

    def reset_parameters(self, depth):
        nn.init.normal_(self.embed.weight, std=0.5)  # tied head: logits = x @ embed.T
        for name, p in self.named_parameters():
            if p.dim() == 2 and name != "embed.weight":
                fan_in = p.shape[1]
                std = fan_in**-0.5
                if name.endswith(("proj.weight", "down.weight")):  # residual branches start small
                    std /= math.sqrt(2 * depth)
                nn.init.normal_(p, std=std)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        x = F.rms_norm(x, (x.shape[-1],))
        logits = F.linear(x, self.embed.weight) * x.shape[-1] ** -0.5
        if self.logit_softcap:
            logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        return logits


def model_config():
    """Everything load_model needs to rebuild the network (saved in the checkpoint)."""
    return dict(
        depth=DEPTH,
        width=WIDTH,
        heads=HEADS,
        mlp_mult=MLP_MULT,
        seq_len=SEQ_LEN,
        rope_base=ROPE_BASE,
        logit_softcap=LOGIT_SOFTCAP,
    )


def load_model(path):
    """Rebuild the model from a checkpoint (plain config + state_dict; nothing unpickled)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = GPT(**checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


# --- training -----------------------------------------------------------------


def fail(message):
    print(f"FAIL {message}", flush=True)
    sys.exit(1)


def check_hyperparameters():
    for name in ("DEPTH", "WIDTH", "HEADS", "MLP_MULT", "SEQ_LEN", "BATCH_SIZE"):
        value = globals()[name]
        if not isinstance(value, int) or value < 1:
            fail(f"{name} must be a positive integer, not {value!r}")
    if WIDTH % HEADS:
        fail(f"WIDTH ({WIDTH}) must be divisible by HEADS ({HEADS})")
    if (WIDTH // HEADS) % 2:
        fail(f"the head size WIDTH/HEADS ({WIDTH // HEADS}) must be even for rotary embeddings")
    if SEQ_LEN > prepare.MAX_SEQ_LEN:
        fail(f"SEQ_LEN ({SEQ_LEN}) must be at most prepare.MAX_SEQ_LEN ({prepare.MAX_SEQ_LEN})")
    if WARMUP_FRAC + WARMDOWN_FRAC > 1:
        fail("WARMUP_FRAC + WARMDOWN_FRAC must not exceed 1")


def lr_scale(progress):
    """Learning-rate multiplier at a point of the budget (0..1): warm-up, plateau, linear warm-down."""
    if WARMUP_FRAC > 0 and progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if WARMDOWN_FRAC > 0 and progress > 1 - WARMDOWN_FRAC:
        return max(0.0, (1 - progress) / WARMDOWN_FRAC)
    return 1.0


def make_optimizer(model, fused):
    matrices = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "embed.weight"]
    others = [p for n, p in model.named_parameters() if p.dim() < 2 and n != "embed.weight"]
    groups = [
        dict(params=[model.embed.weight], lr=EMBED_LR, weight_decay=0.0),
        dict(params=matrices, lr=MATRIX_LR, weight_decay=WEIGHT_DECAY),
    ]
    if others:
        groups.append(dict(params=others, lr=MATRIX_LR, weight_decay=0.0))
    for g in groups:
        g["base_lr"] = g["lr"]
    return torch.optim.AdamW(groups, betas=(ADAM_BETA1, ADAM_BETA2), fused=fused or None)


def peak_memory_mb(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def use_bf16(device):
    """bf16 autocast on CUDA, and on CPUs with native bf16 matmuls (2-3x faster there than
    float32); float32 elsewhere, where emulated bf16 would be slower."""
    if device == "cuda":
        return True
    if device == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def gpu_peak_flops():
    """Dense bf16 peak of the GPU, for MFU; 0 when the model is not in this short table."""
    name = torch.cuda.get_device_name().lower()
    for key, flops in (("h200", 989e12), ("h100", 989e12), ("a100", 312e12), ("l40", 181e12), ("4090", 165e12)):
        if key in name:
            return flops
    return 0.0


def train():
    t_start = time.time()
    check_hyperparameters()
    torch.manual_seed(SEED)
    device = prepare.DEVICE
    budget = prepare.TIME_BUDGET
    checkpoint_path = os.environ.get("AUTORESEARCH_CHECKPOINT") or "checkpoint.pt"
    try:
        batches = prepare.make_loader("train", BATCH_SIZE, SEQ_LEN, device, seed=SEED)
        x, y = next(batches)
    except prepare.CacheError as e:
        fail(str(e))

    model = GPT(**model_config()).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(model, fused=device == "cuda")
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=use_bf16(device))
    step_fn = torch.compile(model) if device == "cuda" else model
    print(
        f"device: {device}  bf16: {use_bf16(device)}  params: {num_params / 1e6:.2f}M  "
        f"budget: {budget:.0f}s  threads: {torch.get_num_threads()}"
    )
    print(f"depth {DEPTH}  width {WIDTH}  heads {HEADS}  seq_len {SEQ_LEN}  batch {BATCH_SIZE}", flush=True)

    # Steps before `uncounted_steps` are warm-up (allocation, compilation): they train the
    # model but their time does not count toward the budget.
    uncounted_steps = 10 if device == "cuda" else 1
    log_every = max(1.0, budget / 30)
    training_seconds, step, tokens_seen, last_log = 0.0, 0, 0, 0.0
    smooth_loss, loss_value = None, float("nan")
    while True:
        t0 = time.time()
        progress = min(training_seconds / budget, 1.0)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr_scale(progress)
        with autocast:
            logits = step_fn(x)
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        if GRAD_CLIP > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        x, y = next(batches)  # fetch the next batch while the device finishes this step
        loss_value = loss.item()
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        step += 1
        if not math.isfinite(loss_value) or loss_value > 100:
            fail(f"loss is {loss_value} at step {step}: training diverged")
        if step > uncounted_steps:
            training_seconds += dt
            tokens_seen += BATCH_SIZE * SEQ_LEN
        smooth_loss = loss_value if smooth_loss is None else 0.9 * smooth_loss + 0.1 * loss_value
        if step == 1 or training_seconds - last_log >= log_every or training_seconds >= budget:
            last_log = training_seconds
            tok_s = tokens_seen / training_seconds if training_seconds > 0 else 0.0
            remaining = max(0.0, budget - training_seconds)
            print(
                f"step {step:5d} | loss {smooth_loss:.4f} | {tok_s:9,.0f} tok/s | "
                f"lr x{lr_scale(progress):.2f} | remaining {remaining:5.1f}s",
                flush=True,
            )
        if training_seconds >= budget:
            break

    os.makedirs(os.path.dirname(os.path.abspath(checkpoint_path)), exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": model_config(), "state_dict": state}, checkpoint_path)

    tokens_per_sec = tokens_seen / max(training_seconds, 1e-9)
    # 6 FLOPs per parameter per token, plus attention scores and values.
    flops_per_token = 6 * num_params + 12 * DEPTH * WIDTH * SEQ_LEN
    print("---")
    print(f"training_seconds: {training_seconds:.1f}")
    print(f"total_seconds: {time.time() - t_start:.1f}")
    print(f"peak_mem_mb: {peak_memory_mb(device):.1f}")
    print(f"tokens_per_sec: {tokens_per_sec:.0f}")
    if device == "cuda" and gpu_peak_flops() > 0:
        print(f"mfu_percent: {100 * flops_per_token * tokens_per_sec / gpu_peak_flops():.2f}")
    print(f"num_steps: {step}")
    print(f"num_params_M: {num_params / 1e6:.3f}")
    print(f"depth: {DEPTH}")
    print(f"final_loss: {smooth_loss:.4f}")
    print(f"checkpoint: {checkpoint_path}", flush=True)


if __name__ == "__main__":
    train()
