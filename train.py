"""train.py: the model, the optimizer and the training loop. The agent's file.

A small byte-level GPT trained for a fixed wall-clock budget (prepare.TIME_BUDGET):
pre-norm blocks (RMSNorm, rotary attention with QK-norm, ReLU^2 MLP), a byte
embedding tied to the output head, and hashed n-gram embeddings of the last few
bytes added to the input, which give a small model the local statistics of the
text almost for free. Muon trains the weight matrices, Adam the tables, with a
short warm-up and a linear warm-down. Tuned for a 2-core CPU and a 60 s budget
(bf16 autocast where the CPU has native bf16); on CUDA it compiles and runs bf16.
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

started_at = time.time()  # for total_seconds: includes importing torch

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare

# --- hyperparameters (plain literals, one per line: tools edit them in place) ---

DEPTH = 2  # number of transformer blocks
WIDTH = 128  # model width: channels of the residual stream
HEADS = 4  # attention heads; WIDTH must be divisible by HEADS
MLP_MULT = 4  # MLP hidden units per residual channel
SEQ_LEN = 128  # context length in bytes (at most prepare.MAX_SEQ_LEN)
BATCH_SIZE = 32  # sequences per optimizer step
MATRIX_LR = 0.04  # peak Muon learning rate of the transformer's weight matrices
MUON_MOMENTUM = 0.95  # Muon (Nesterov) momentum
EMBED_LR = 2e-2  # peak Adam learning rate of the byte embedding (shared with the output head)
WEIGHT_DECAY = 0.0  # decoupled weight decay on weight matrices, per unit of learning rate
ADAM_BETA1 = 0.9  # Adam first-moment decay (embedding)
ADAM_BETA2 = 0.95  # Adam second-moment decay (embedding)
GRAD_CLIP = 1.0  # clip the global gradient norm to this (0 turns clipping off)
WARMUP_FRAC = 0.02  # share of the budget spent ramping the learning rate up from zero
WARMDOWN_FRAC = 0.4  # share of the budget at the end spent ramping it down to zero
ROPE_BASE = 10000  # base period of the rotary position embedding
NGRAM_ORDER = 5  # the last 2..N bytes, hashed, each get an embedding added to the input (1: off, 7: most)
NGRAM_BUCKETS = 8192  # rows of each hashed n-gram embedding table
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
        future = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
        self.register_buffer("mask", torch.zeros(seq_len, seq_len).masked_fill(future, -math.inf), persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))  # QK-norm keeps logits tame
        q, k = self.rotary(q), self.rotary(k)
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            # Plain matmuls beat the fused kernel for bf16 on CPU (its backward is slow there).
            scores = (q @ k.transpose(-2, -1)).float() * self.head_dim**-0.5 + self.mask[:T, :T]
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
    """Byte-level decoder: forward(idx) -> logits of shape batch x time x 256.

    Causal by construction: attention is masked, and the n-gram hash at a position uses
    that byte and the ones before it (zeros stand in before the window starts)."""

    def __init__(self, depth, width, heads, mlp_mult, seq_len, rope_base, logit_softcap, ngram_order, ngram_buckets):
        super().__init__()
        self.seq_len = seq_len  # the evaluator feeds windows of this many bytes
        self.logit_softcap = logit_softcap
        self.embed = nn.Embedding(prepare.VOCAB_SIZE, width)
        self.ngrams = nn.ModuleList(nn.Embedding(ngram_buckets, width) for _ in range(2, ngram_order + 1))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_mult, seq_len, rope_base) for _ in range(depth))
        self.reset_parameters(depth)

    def reset_parameters(self, depth):
        nn.init.normal_(self.embed.weight, std=0.5)  # tied head: logits = x @ embed.T
        for name, p in self.named_parameters():
            if name.startswith("ngrams."):
                nn.init.zeros_(p)
            elif p.dim() == 2 and name != "embed.weight":
                fan_in = p.shape[1]
                std = fan_in**-0.5
                if name.endswith(("proj.weight", "down.weight")):  # residual branches start small
                    std /= math.sqrt(2 * depth)
                nn.init.normal_(p, std=std)

    def forward(self, idx):
        x = self.embed(idx)
        h = idx  # hash of this byte and the n before it (zeros before the window starts)
        for n, table in enumerate(self.ngrams, start=1):
            h = F.pad(idx, (n, 0))[:, : idx.shape[1]] * 263**n + h
            x = x + table(h % table.num_embeddings)
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
        ngram_order=NGRAM_ORDER,
        ngram_buckets=NGRAM_BUCKETS,
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
    if not 1 <= NGRAM_ORDER <= 7 or not isinstance(NGRAM_ORDER, int):
        fail(f"NGRAM_ORDER must be an integer from 1 to 7, not {NGRAM_ORDER!r}")
    if NGRAM_ORDER > 1 and (not isinstance(NGRAM_BUCKETS, int) or NGRAM_BUCKETS < 1):
        fail(f"NGRAM_BUCKETS must be a positive integer, not {NGRAM_BUCKETS!r}")
    if WARMUP_FRAC + WARMDOWN_FRAC > 1:
        fail("WARMUP_FRAC + WARMDOWN_FRAC must not exceed 1")


def lr_scale(progress):
    """Learning-rate multiplier at a point of the budget (0..1): warm-up, plateau, linear warm-down."""
    if WARMUP_FRAC > 0 and progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if WARMDOWN_FRAC > 0 and progress > 1 - WARMDOWN_FRAC:
        return max(0.0, (1 - progress) / WARMDOWN_FRAC)
    return 1.0


def orthogonalize(g, steps=5):
    """Newton-Schulz iteration: the nearest semi-orthogonal matrix to g (Muon's update)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x.T if tall else x).float()


# The optimizers are written out here rather than taken from torch.optim: they stay readable,
# and torch.optim imports torch._dynamo, which costs 1-2 s of start-up on a CPU.


class Muon:
    """Momentum SGD whose update for each weight matrix is orthogonalized (Keller Jordan's Muon)."""

    def __init__(self, params, lr, momentum, weight_decay):
        self.params, self.lr, self.momentum, self.weight_decay = list(params), lr, momentum, weight_decay
        self.buffers = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        for p, buf in zip(self.params, self.buffers):
            buf.lerp_(p.grad, 1 - self.momentum)
            update = orthogonalize(p.grad.lerp(buf, self.momentum))  # Nesterov momentum
            p.mul_(1 - self.lr * self.weight_decay)
            p.add_(update.to(p.dtype), alpha=-self.lr * max(1.0, p.shape[0] / p.shape[1]) ** 0.5)


class Adam:
    """Adam with bias correction, for the byte embedding (and any vector parameters)."""

    def __init__(self, params, lr, betas, eps=1e-8):
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def step(self):
        self.steps += 1
        beta1, beta2 = self.betas
        correction1, correction2 = 1 - beta1**self.steps, 1 - beta2**self.steps
        for p, (m, v) in zip(self.params, self.moments):
            m.lerp_(p.grad, 1 - beta1)
            v.lerp_(p.grad.square(), 1 - beta2)
            denominator = (v / correction2).sqrt_().add_(self.eps)
            p.addcdiv_(m, denominator, value=-self.lr / correction1)


def make_optimizers(model):
    """Muon for the weight matrices of the blocks; Adam for the embedding tables (and any vectors)."""
    tables = {"embed.weight"} | {n for n, _ in model.named_parameters() if n.startswith("ngrams.")}
    matrices = [p for n, p in model.named_parameters() if p.dim() >= 2 and n not in tables]
    others = [p for n, p in model.named_parameters() if p.dim() < 2 or n in tables]
    optimizers = [
        Adam(others, lr=EMBED_LR, betas=(ADAM_BETA1, ADAM_BETA2)),
        Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY),
    ]
    for opt in optimizers:
        opt.base_lr = opt.lr
    return optimizers


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


class ThreadChooser:
    """Times a few CPU steps with all threads and with one, keeps the faster, and asks again
    every `period` seconds. On an idle machine all threads win; when other processes compete
    for the cores, OpenMP threads waiting on each other can make a step several times slower
    than a single thread."""

    def __init__(self, period=10.0, probe_steps=3):
        most = torch.get_num_threads()
        self.options = [most, 1] if most > 1 else []
        self.period, self.probe_steps = period, probe_steps
        self.trial, self.next_probe = None, 0.0

    def step_done(self, dt, elapsed):
        if not self.options:
            return
        if self.trial is None:
            if elapsed >= self.next_probe:  # start a probe with the first option
                self.trial = {n: [] for n in self.options}
                torch.set_num_threads(self.options[0])
            return
        times = self.trial[torch.get_num_threads()]
        times.append(dt)
        if len(times) < self.probe_steps:
            return
        untried = [n for n in self.options if len(self.trial[n]) < self.probe_steps]
        if untried:
            torch.set_num_threads(untried[0])
        else:
            median = {n: sorted(t)[len(t) // 2] for n, t in self.trial.items()}
            torch.set_num_threads(min(median, key=median.get))
            self.trial, self.next_probe = None, elapsed + self.period


def gpu_peak_flops():
    """Dense bf16 peak of the GPU, for MFU; 0 when the model is not in this short table."""
    name = torch.cuda.get_device_name().lower()
    for key, flops in (("h200", 989e12), ("h100", 989e12), ("a100", 312e12), ("l40", 181e12), ("4090", 165e12)):
        if key in name:
            return flops
    return 0.0


def train():
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
    optimizers = make_optimizers(model)
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
    threads = ThreadChooser() if device == "cpu" else None
    log_every = max(1.0, budget / 30)
    training_seconds, step, tokens_seen, last_log = 0.0, 0, 0, 0.0
    smooth_loss, loss_value = None, float("nan")
    while True:
        t0 = time.time()
        progress = min(training_seconds / budget, 1.0)
        for opt in optimizers:
            opt.lr = opt.base_lr * lr_scale(progress)
        with autocast:
            logits = step_fn(x)
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        if GRAD_CLIP > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
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
            if threads is not None:
                threads.step_done(dt, training_seconds)
            tokens_seen += BATCH_SIZE * SEQ_LEN
        smooth_loss = loss_value if smooth_loss is None else 0.9 * smooth_loss + 0.1 * loss_value
        if step == 1 or training_seconds - last_log >= log_every or training_seconds >= budget:
            last_log = training_seconds
            tok_s = tokens_seen / training_seconds if training_seconds > 0 else 0.0
            remaining = max(0.0, budget - training_seconds)
            print(
                f"step {step:5d} | loss {smooth_loss:.4f} | {tok_s:9,.0f} tok/s | "
                f"lr x{lr_scale(progress):.2f} | remaining {remaining:5.1f}s | threads {torch.get_num_threads()}",
                flush=True,
            )
        if training_seconds >= budget:
            break

    os.makedirs(os.path.dirname(os.path.abspath(checkpoint_path)), exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": model_config(), "state_dict": state}, checkpoint_path)

    tokens_per_sec = tokens_seen / max(training_seconds, 1e-9)
    # 6 FLOPs per token for each weight used in a matmul (the blocks and the tied output head;
    # n-gram tables are lookups), plus attention scores and values.
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks."))
    flops_per_token = 6 * (matmul_params + model.embed.weight.numel()) + 12 * DEPTH * WIDTH * SEQ_LEN
    print("---")
    print(f"training_seconds: {training_seconds:.1f}")
    print(f"total_seconds: {time.time() - started_at:.1f}")
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
