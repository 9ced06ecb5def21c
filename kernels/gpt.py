"""A small GPT-style, character-level language model whose attention is pluggable.

It is the capstone of lesson 04: the course's own attention kernels, forward *and* backward,
trained end to end inside a transformer, against the same model with torch's
scaled_dot_product_attention. Same initial weights, same batches: if the kernels are right the
two loss curves agree to rounding noise.

    attention="course"  kernels.tiled_backward.tiled_attention on the CPU (the tiled algorithm in
                        PyTorch, forward and backward), kernels.triton_backward.flash_attention on
                        a GPU (the Triton kernels)
    attention="tiled" / "triton"   one of those two explicitly
    attention="sdpa"    torch.nn.functional.scaled_dot_product_attention (is_causal=True)

The model is nanoGPT's shape in miniature: token and position embeddings, n_layer pre-norm
blocks (causal self-attention, then a 4× MLP), a final LayerNorm and a head tied to the token
embedding.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import device

ATTENTIONS = ("course", "tiled", "triton", "sdpa")


@dataclasses.dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 64  # context length N
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64  # d_model; head dim d = n_embd / n_head
    attention: str = "course"
    tile: int = 32  # B_r = B_c of the tiled path (CPU)

    def __post_init__(self):
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")


class CharTokenizer:
    """Characters <-> integer ids, the vocabulary being the characters of the text."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> torch.Tensor:
        return torch.tensor([self.stoi[c] for c in s], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def attention_fn(kind: str, dev: torch.device):
    """The attention (q, k, v) -> O, causal, for `kind` on device `dev`."""
    if kind == "course":
        kind = "triton" if dev.type == "cuda" else "tiled"
    if kind == "sdpa":
        return lambda q, k, v, tile: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if kind == "tiled":
        from .tiled_backward import tiled_attention

        return lambda q, k, v, tile: tiled_attention(q, k, v, is_causal=True, B_r=tile, B_c=tile)
    if kind == "triton":
        from .triton_backward import flash_attention

        return lambda q, k, v, tile: flash_attention(q, k, v, is_causal=True)
    raise ValueError(f"unknown attention {kind!r}; one of {ATTENTIONS}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.kind, self.tile = cfg.attention, cfg.tile
        self._fn = None

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, N, C) each
        q, k, v = (t.view(B, N, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, N, d)
        if self._fn is None:
            self._fn = attention_fn(self.kind, x.device)
        y = self._fn(q, k, v, self.tile)  # (B, H, N, d)
        y = y.transpose(1, 2).contiguous().view(B, N, C)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # weight tying
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx, targets=None):
        B, N = idx.shape
        if N > self.cfg.block_size:
            raise ValueError(f"sequence of length {N} is longer than block_size={self.cfg.block_size}")
        x = self.tok(idx) + self.pos(torch.arange(N, device=idx.device))  # (B, N, C)
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.ln_f(x))  # (B, N, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, n_new: int, temperature: float = 1.0, generator=None):
        for _ in range(n_new):
            logits, _ = self(idx[:, -self.cfg.block_size:])
            probs = torch.softmax(logits[:, -1].float() / temperature, dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
        return idx


def get_batch(data: torch.Tensor, block_size: int, batch_size: int, g: torch.Generator):
    """Random windows of the token stream: inputs x and next-character targets y, (B, N) each."""
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=g)
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix])
    return x, y


def train(cfg: GPTConfig, data: torch.Tensor, *, steps: int = 200, batch_size: int = 16, lr: float = 3e-3,
          seed: int = 0, dev=None, amp_dtype=None, log_every: int = 0, time_budget_s: float | None = None):
    """Train a fresh GPT(cfg) on `data` (a 1-D tensor of token ids); returns a dict with the model,
    the loss of every step, and the wall time. The same seed gives the same initial weights and
    the same batches whatever the attention, so loss curves can be compared step by step.

    amp_dtype: torch.bfloat16 / torch.float16 to run the model under autocast (GPU).
    time_budget_s: stop early (and say so) when training takes longer than this.
    """
    dev = torch.device(dev) if dev is not None else device.default_device()
    torch.manual_seed(seed)
    model = GPT(cfg).to(dev)
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))  # short warm-up
    losses, t0 = [], time.perf_counter()
    stopped_early = False
    for step in range(steps):
        x, y = get_batch(data, cfg.block_size, batch_size, g)
        x, y = x.to(dev), y.to(dev)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"  [{cfg.attention}] step {step:4d}  loss {losses[-1]:.4f}  ({time.perf_counter() - t0:.1f} s)")
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            stopped_early = True
            print(f"  [{cfg.attention}] time budget of {time_budget_s:.0f} s reached after {step + 1} steps")
            break
    return dict(model=model, losses=losses, seconds=time.perf_counter() - t0, stopped_early=stopped_early)
