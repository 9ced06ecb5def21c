"""Attention patterns for FlexAttention, each written three ways.

FlexAttention (torch.nn.attention.flex_attention) lets a user change attention with two small
functions instead of a new kernel:

* a **mask_mod** `mask_mod(b, h, q_idx, kv_idx) -> bool`: may query q_idx of batch row b, head h
  attend to key kv_idx? (True = attend.) Masked pairs get S_ij = -inf, so P_ij = 0.
* a **score_mod** `score_mod(score, b, h, q_idx, kv_idx) -> score`: rewrites one scaled score
  S_ij = scale·q_i·k_j before the softmax (a bias, a soft-cap, ...).

Every pattern below is a `Pattern` that carries, side by side:

1. the **torch mods** for `flex_attention` and `create_block_mask` (`pattern.mask_mod`,
   `pattern.score_mod`);
2. a **dense reference** built over all (q, kv) pairs with ordinary tensor code that does not
   call the mods (`pattern.dense_mask(...)`, `pattern.dense_scores(S)`), and a materialised
   attention on top of them (`reference_attention`): the ground truth the tests compare with;
3. the **Triton counterparts** for the course's mini-Flex (kernels.mini_flex): `@triton.jit`
   functions with one fixed signature, so that the kernel can take any of them as a
   `tl.constexpr` argument:

       tl_mask_mod(b, h, q_idx, kv_idx, M0, M1, MBUF)         -> bool tile
       tl_score_mod(x, b, h, q_idx, kv_idx, S0, SF, SBUF)      -> score tile
       tl_score_grad(dS, x, b, h, q_idx, kv_idx, S0, SF, SBUF, DSBUF, WRITE_DBUF) -> dX tile

   `q_idx` is a column (B_r, 1) and `kv_idx` a row (1, B_c) of positions (or the transpose in a
   backward kernel that works on Sᵀ); `b` and `h` are scalars. The trailing arguments are the
   pattern's parameters, FlexAttention's "captured" values: two integers M0, M1 and a pointer
   MBUF for the mask; an integer S0, a float SF and a pointer SBUF for the score; each pattern
   says what it puts there. `tl_score_grad` returns dS·∂score_mod/∂x, the chain rule through
   the score_mod, and (when WRITE_DBUF) adds the gradient of a learnable SBUF into DSBUF.

Conventions: positions are 0-based; causal means key j is visible to query i when j <= i
(SDPA's top-left alignment); windows count positions on each side.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from .device import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - platforms without triton wheels
    triton = tl = None

__all__ = [
    "Pattern", "causal", "sliding_window", "causal_sliding_window", "prefix_lm", "document",
    "alibi", "alibi_slopes", "relative_bias", "softcap", "dilated_sliding_window", "global_local",
    "reference_attention", "example_patterns", "PATTERN_NAMES", "document_ids_from_lengths",
]


# ------------------------------------------------------------------------------------------------
# The Pattern record
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Pattern:
    """One attention pattern: its torch mods, its dense reference and its Triton counterparts.

    dense_mask_fn(B, H, Nq, Nk, device) -> bool (B|1, H|1, Nq, Nk) or None (attend everywhere).
    dense_scores_fn(S) -> S with the score_mod applied to every entry (S is (B, H, Nq, Nk)),
    or None (identity). Both are written without calling the mods.
    """

    name: str
    description: str
    mask_mod: Callable | None = None
    score_mod: Callable | None = None
    dense_mask_fn: Callable | None = None
    dense_scores_fn: Callable | None = None
    tl_mask_mod: object = None
    tl_score_mod: object = None
    tl_score_grad: object = None
    mask_ints: tuple = (0, 0)  # M0, M1
    mask_buffer: torch.Tensor | None = None  # MBUF
    score_int: int = 0  # S0
    score_float: float = 0.0  # SF
    score_buffer: torch.Tensor | None = None  # SBUF (a learnable one has requires_grad)
    seq_len: int | None = None  # patterns tied to a sequence length (documents) say so
    # A score_mod that gathers a value per (i, j) pair from memory (the relative bias table) makes
    # Triton's software pipeliner buffer a whole B_r × B_c fp32 tile of it in shared memory per
    # stage; the mini-Flex caps its pipeline stages at this so the kernels fit in the H100's SRAM.
    max_stages: int | None = None
    params: dict = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        def short(v):
            return f"tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else repr(v)

        args = ", ".join(f"{k}={short(v)}" for k, v in self.params.items() if k not in ("factory", "per_batch"))
        return f"Pattern({self.name}{': ' + args if args else ''})"

    @property
    def has_mask(self) -> bool:
        return self.mask_mod is not None

    @property
    def has_score_mod(self) -> bool:
        return self.score_mod is not None

    @property
    def learnable(self) -> bool:
        """True when the score_mod reads a tensor that wants a gradient (a learnable bias)."""
        return self.score_buffer is not None and self.score_buffer.requires_grad

    def dense_mask(self, B: int, H: int, Nq: int, Nk: int, device=None) -> torch.Tensor:
        """(B, H, Nq, Nk) bool, True = attend: the mask over every (q, kv) pair."""
        self._check_lengths(Nq, Nk)
        if self.dense_mask_fn is None:
            return torch.ones(1, 1, Nq, Nk, dtype=torch.bool, device=device).expand(B, H, Nq, Nk)
        return self.dense_mask_fn(B, H, Nq, Nk, device).expand(B, H, Nq, Nk)

    def dense_scores(self, S: torch.Tensor) -> torch.Tensor:
        """S (B, H, Nq, Nk) with the score_mod applied to every entry, materialised (autograd
        flows through it to S and to a learnable buffer)."""
        if self.dense_scores_fn is None:
            return S
        return self.dense_scores_fn(S)

    def block_mask(self, B, H, Nq, Nk, device=None, BLOCK_SIZE=128):
        """torch's BlockMask for this pattern (create_block_mask), or None when nothing is masked."""
        from torch.nn.attention.flex_attention import create_block_mask

        if self.mask_mod is None:
            return None
        self._check_lengths(Nq, Nk)
        Bm = B if self.params.get("per_batch") else None
        return create_block_mask(self.mask_mod, Bm, None, Nq, Nk, device=device, BLOCK_SIZE=BLOCK_SIZE)

    def to(self, device) -> "Pattern":
        """The same pattern with its buffers on `device` (the torch mods capture the buffers, so
        a pattern with buffers is rebuilt by its factory)."""
        bufs = [t for t in (self.mask_buffer, self.score_buffer) if t is not None]
        if all(_on(t, device) for t in bufs):
            return self
        args = {k: v for k, v in self.params.items() if k not in ("factory", "per_batch")}
        return _FACTORIES[self.params["factory"]](**args, device=device)

    def _check_lengths(self, Nq, Nk):
        if self.seq_len is not None and not (Nq == Nk == self.seq_len):
            raise ValueError(
                f"pattern {self.name} is built for sequences of length {self.seq_len}, "
                f"got Nq={Nq}, Nk={Nk}"
            )


# ------------------------------------------------------------------------------------------------
# Triton counterparts (the mini-Flex calls these; the default mask and score are here too)
# ------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def tl_no_mask(b, h, q_idx, kv_idx, M0, M1, MBUF):
        """Attend everywhere (the mini-Flex never calls a mask on a full block anyway)."""
        return (q_idx >= 0) & (kv_idx >= 0)

    @triton.jit
    def tl_identity_score(x, b, h, q_idx, kv_idx, S0, SF, SBUF):
        return x

    @triton.jit
    def tl_identity_grad(dS, x, b, h, q_idx, kv_idx, S0, SF, SBUF, DSBUF, WRITE_DBUF: tl.constexpr):
        return dS

    @triton.jit
    def tl_causal(b, h, q_idx, kv_idx, M0, M1, MBUF):
        return kv_idx <= q_idx

    @triton.jit
    def tl_sliding_window(b, h, q_idx, kv_idx, M0, M1, MBUF):
        # M0 = window: |i - j| <= window
        return (q_idx - kv_idx <= M0) & (kv_idx - q_idx <= M0)

    @triton.jit
    def tl_causal_sliding_window(b, h, q_idx, kv_idx, M0, M1, MBUF):
        # M0 = window: 0 <= i - j <= window
        return (kv_idx <= q_idx) & (q_idx - kv_idx <= M0)

    @triton.jit
    def tl_prefix_lm(b, h, q_idx, kv_idx, M0, M1, MBUF):
        # MBUF[b * M1] = prefix length of batch row b (M1 = 0 when every row shares one)
        prefix = tl.load(MBUF + b * M1)
        return (kv_idx <= q_idx) | (kv_idx < prefix)

    @triton.jit
    def tl_document(b, h, q_idx, kv_idx, M0, M1, MBUF):
        # MBUF[b * M0 + i] = document id of position i (M0 = 0 when every row shares them)
        doc_q = tl.load(MBUF + b * M0 + q_idx)
        doc_kv = tl.load(MBUF + b * M0 + kv_idx)
        return doc_q == doc_kv

    @triton.jit
    def tl_document_causal(b, h, q_idx, kv_idx, M0, M1, MBUF):
        doc_q = tl.load(MBUF + b * M0 + q_idx)
        doc_kv = tl.load(MBUF + b * M0 + kv_idx)
        return (doc_q == doc_kv) & (kv_idx <= q_idx)

    @triton.jit
    def tl_dilated_sliding_window(b, h, q_idx, kv_idx, M0, M1, MBUF):
        # M0 = window (in steps), M1 = dilation: i - j = t·dilation for t in [-window, window]
        diff = q_idx - kv_idx
        return (diff <= M0 * M1) & (-diff <= M0 * M1) & (diff % M1 == 0)

    @triton.jit
    def tl_global_local(b, h, q_idx, kv_idx, M0, M1, MBUF):
        # M0 = window, M1 = number of global tokens (the first M1 positions)
        local = (q_idx - kv_idx <= M0) & (kv_idx - q_idx <= M0)
        return local | (q_idx < M1) | (kv_idx < M1)

    @triton.jit
    def tl_alibi(x, b, h, q_idx, kv_idx, S0, SF, SBUF):
        # SBUF[h] = slope of head h
        slope = tl.load(SBUF + h)
        return x + slope * (kv_idx - q_idx).to(tl.float32)

    @triton.jit
    def _rel_index(q_idx, kv_idx, R):
        """Column of the bias table for the pair (i, j): clamp(i - j, -R, R) + R."""
        return tl.minimum(tl.maximum(q_idx - kv_idx, -R), R) + R

    @triton.jit
    def tl_relative_bias(x, b, h, q_idx, kv_idx, S0, SF, SBUF):
        # SBUF = bias table (H, 2R+1) in float32, S0 = R
        return x + tl.load(SBUF + h * (2 * S0 + 1) + _rel_index(q_idx, kv_idx, S0))

    @triton.jit
    def tl_relative_bias_grad(dS, x, b, h, q_idx, kv_idx, S0, SF, SBUF, DSBUF, WRITE_DBUF: tl.constexpr):
        # score = x + bias[h, r(i, j)]: ∂score/∂x = 1, and every pair adds its dS to dbias[h, r].
        if WRITE_DBUF:
            tl.atomic_add(DSBUF + h * (2 * S0 + 1) + _rel_index(q_idx, kv_idx, S0), dS)
        return dS

    @triton.jit
    def _tanh(x):
        """tanh from exp2 (libdevice's tanh does not run under the Triton interpreter)."""
        e = tl.exp2(-2.8853900817779268 * tl.abs(x))  # exp(-2|x|)
        t = (1.0 - e) / (1.0 + e)
        return tl.where(x < 0, -t, t)

    @triton.jit
    def tl_softcap(x, b, h, q_idx, kv_idx, S0, SF, SBUF):
        # SF = cap: score = cap · tanh(x / cap)
        return SF * _tanh(x / SF)

    @triton.jit
    def tl_softcap_grad(dS, x, b, h, q_idx, kv_idx, S0, SF, SBUF, DSBUF, WRITE_DBUF: tl.constexpr):
        # d/dx [cap · tanh(x / cap)] = 1 - tanh²(x / cap)
        t = _tanh(x / SF)
        return dS * (1.0 - t * t)

else:  # pragma: no cover
    tl_no_mask = tl_identity_score = tl_identity_grad = None
    tl_causal = tl_sliding_window = tl_causal_sliding_window = tl_prefix_lm = None
    tl_document = tl_document_causal = tl_dilated_sliding_window = tl_global_local = None
    tl_alibi = tl_relative_bias = tl_relative_bias_grad = tl_softcap = tl_softcap_grad = None


# ------------------------------------------------------------------------------------------------
# Helpers for the dense references
# ------------------------------------------------------------------------------------------------
def _ones(Nq, Nk, device):
    return torch.ones(Nq, Nk, dtype=torch.bool, device=device)


def _positions(Nq, Nk, device):
    """i (Nq, 1) and j (1, Nk): query and key positions."""
    return torch.arange(Nq, device=device)[:, None], torch.arange(Nk, device=device)[None, :]


def _on(t: torch.Tensor, device) -> bool:
    """t lives on `device` ("cuda" means the current CUDA device, as torch.device does)."""
    d = torch.device(device)
    if t.device.type != d.type:
        return False
    if d.index is None and d.type == "cuda":
        return t.device.index == torch.cuda.current_device()
    return d.index is None or t.device.index == d.index


def _check_int(name, value, low=0):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


# ------------------------------------------------------------------------------------------------
# Mask patterns
# ------------------------------------------------------------------------------------------------
def causal() -> Pattern:
    """Key j is visible to query i when j <= i (autoregressive decoding)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    def dense(B, H, Nq, Nk, device):
        return _ones(Nq, Nk, device).tril()[None, None]  # (1, 1, Nq, Nk)

    return Pattern("causal", "key j visible to query i when j <= i", mask_mod=mask_mod,
                   dense_mask_fn=dense, tl_mask_mod=tl_causal, params={"factory": "causal"})


def sliding_window(window: int) -> Pattern:
    """Local attention: query i sees keys j with |i - j| <= window (both sides)."""
    _check_int("window", window)

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx <= window) & (kv_idx - q_idx <= window)

    def dense(B, H, Nq, Nk, device):
        ones = _ones(Nq, Nk, device)
        return (ones.tril(window) & ones.triu(-window))[None, None]  # a band of diagonals

    return Pattern("sliding_window", f"|i - j| <= {window}", mask_mod=mask_mod, dense_mask_fn=dense,
                   tl_mask_mod=tl_sliding_window, mask_ints=(window, 0),
                   params={"factory": "sliding_window", "window": window})


def causal_sliding_window(window: int) -> Pattern:
    """Causal local attention (Mistral style): query i sees keys i - window .. i."""
    _check_int("window", window)

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx <= window)

    def dense(B, H, Nq, Nk, device):
        ones = _ones(Nq, Nk, device)
        return (ones.tril() & ones.triu(-window))[None, None]

    return Pattern("causal_sliding_window", f"0 <= i - j <= {window}", mask_mod=mask_mod,
                   dense_mask_fn=dense, tl_mask_mod=tl_causal_sliding_window, mask_ints=(window, 0),
                   params={"factory": "causal_sliding_window", "window": window})


def prefix_lm(prefix_len, device=None) -> Pattern:
    """Prefix-LM (T5/UL2 style): the first `prefix_len` positions (the prompt) are attended
    bidirectionally by everyone; the rest is causal. `prefix_len` is an int shared by every
    batch row, or a 1-D int tensor with one prefix length per batch row."""
    per_batch = isinstance(prefix_len, torch.Tensor)
    if per_batch:
        if prefix_len.dim() != 1 or prefix_len.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"prefix_len must be an int or a 1-D int tensor (B,), got {prefix_len!r}")
        if (prefix_len < 0).any():
            raise ValueError("prefix_len must be >= 0")
        prefix = prefix_len.to(device=device or prefix_len.device, dtype=torch.int32)
    else:
        _check_int("prefix_len", prefix_len)
        prefix = torch.tensor([prefix_len], dtype=torch.int32, device=device)

    if per_batch:
        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) | (kv_idx < prefix[b])
    else:
        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) | (kv_idx < prefix_len)

    def dense(B, H, Nq, Nk, device):
        lengths = prefix.to(device).long()
        if per_batch and lengths.numel() != B:
            raise ValueError(f"prefix_lm has {lengths.numel()} prefix lengths, the batch has B={B}")
        in_prefix = torch.arange(Nk, device=device)[None, :] < lengths[:, None]  # (B|1, Nk)
        return _ones(Nq, Nk, device).tril()[None, None] | in_prefix[:, None, None, :]

    desc = "per-row prefix" if per_batch else f"prefix {prefix_len}"
    return Pattern("prefix_lm", f"causal, plus the {desc} seen by all", mask_mod=mask_mod,
                   dense_mask_fn=dense, tl_mask_mod=tl_prefix_lm, mask_ints=(0, 1 if per_batch else 0),
                   mask_buffer=prefix,
                   params={"factory": "prefix_lm", "prefix_len": prefix_len, "per_batch": per_batch})


def document_ids_from_lengths(lengths, device=None) -> torch.Tensor:
    """Document id of every position of a packed sequence: lengths [3, 2] -> [0, 0, 0, 1, 1]."""
    lengths = torch.as_tensor(lengths, device=device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths).to(torch.int32)


def document(doc_ids: torch.Tensor, causal: bool = False, device=None) -> Pattern:
    """Document masking for packed sequences: several documents are packed into one row and a
    query only sees keys of its own document (and, with causal, only earlier ones).

    doc_ids: (N,) shared by every batch row, or (B, N), non-decreasing along each row (each
    document is one contiguous run of positions)."""
    if not isinstance(doc_ids, torch.Tensor) or doc_ids.dim() not in (1, 2) or doc_ids.is_floating_point():
        raise ValueError("doc_ids must be an int tensor (N,) or (B, N) of document ids")
    if doc_ids.shape[-1] > 1 and (doc_ids[..., 1:] < doc_ids[..., :-1]).any():
        raise ValueError("doc_ids must be non-decreasing: each document is one contiguous run of positions")
    ids = doc_ids.to(device=device or doc_ids.device, dtype=torch.int32).contiguous()
    N = ids.shape[-1]
    per_batch = ids.dim() == 2

    if per_batch:
        def same_doc(b, q_idx, kv_idx):
            return ids[b, q_idx] == ids[b, kv_idx]
    else:
        def same_doc(b, q_idx, kv_idx):
            return ids[q_idx] == ids[kv_idx]

    if causal:
        def mask_mod(b, h, q_idx, kv_idx):
            return same_doc(b, q_idx, kv_idx) & (kv_idx <= q_idx)
    else:
        def mask_mod(b, h, q_idx, kv_idx):
            return same_doc(b, q_idx, kv_idx)

    def dense(B, H, Nq, Nk, device):
        rows = ids.to(device).reshape(-1, N)
        if per_batch and rows.shape[0] != B:
            raise ValueError(f"document ids have {rows.shape[0]} rows, the batch has B={B}")
        masks = []
        for row in rows:  # block-diagonal: one square of ones per document
            _, lengths = torch.unique_consecutive(row, return_counts=True)
            masks.append(torch.block_diag(*[_ones(int(n), int(n), device) for n in lengths]))
        m = torch.stack(masks)[:, None]  # (B|1, 1, N, N)
        return m & _ones(N, N, device).tril() if causal else m

    name = "document_causal" if causal else "document"
    n_docs = int(ids.max() - ids.min() + 1) if ids.numel() else 0
    return Pattern(name, f"same document{' and j <= i' if causal else ''} ({n_docs} documents in {N} positions)",
                   mask_mod=mask_mod, dense_mask_fn=dense,
                   tl_mask_mod=tl_document_causal if causal else tl_document,
                   mask_ints=(N if per_batch else 0, 0), mask_buffer=ids, seq_len=N,
                   params={"factory": "document", "doc_ids": doc_ids, "causal": causal, "per_batch": per_batch})


def dilated_sliding_window(window: int, dilation: int) -> Pattern:
    """Dilated sliding window (Longformer): query i sees keys i + t·dilation, t = -window..window."""
    _check_int("window", window)
    _check_int("dilation", dilation, low=1)
    reach = window * dilation

    def mask_mod(b, h, q_idx, kv_idx):
        diff = q_idx - kv_idx
        return (diff.abs() <= reach) & (diff % dilation == 0)

    def dense(B, H, Nq, Nk, device):
        m = torch.zeros(Nq, Nk, dtype=torch.bool, device=device)
        ones = _ones(Nq, Nk, device)
        for t in range(-window, window + 1):  # one diagonal per step: j = i + t·dilation
            off = t * dilation
            m |= ones.tril(off) & ones.triu(off)
        return m[None, None]

    return Pattern("dilated_sliding_window", f"i - j in {{-{window}..{window}}}·{dilation}",
                   mask_mod=mask_mod, dense_mask_fn=dense, tl_mask_mod=tl_dilated_sliding_window,
                   mask_ints=(window, dilation),
                   params={"factory": "dilated_sliding_window", "window": window, "dilation": dilation})


def global_local(window: int, n_global: int) -> Pattern:
    """Global + local (Longformer): a sliding window |i - j| <= window, plus `n_global` global
    tokens (the first positions) that see every key and are seen by every query."""
    _check_int("window", window)
    _check_int("n_global", n_global)

    def mask_mod(b, h, q_idx, kv_idx):
        local = (q_idx - kv_idx).abs() <= window
        return local | (q_idx < n_global) | (kv_idx < n_global)

    def dense(B, H, Nq, Nk, device):
        ones = _ones(Nq, Nk, device)
        m = ones.tril(window) & ones.triu(-window)
        m[:n_global, :] = True  # global rows
        m[:, :n_global] = True  # global columns
        return m[None, None]

    return Pattern("global_local", f"|i - j| <= {window}, or i or j among the first {n_global}",
                   mask_mod=mask_mod, dense_mask_fn=dense, tl_mask_mod=tl_global_local,
                   mask_ints=(window, n_global),
                   params={"factory": "global_local", "window": window, "n_global": n_global})


# ------------------------------------------------------------------------------------------------
# Score patterns
# ------------------------------------------------------------------------------------------------
def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes m_h = 2^(-8(h+1)/H), h = 0..H-1: the geometric sequence of the
    paper (exactly the paper's for H a power of two). Head 0 gets the steepest slope."""
    _check_int("num_heads", num_heads, low=1)
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)], dtype=torch.float32)


def alibi(num_heads: int, causal: bool = True, device=None) -> Pattern:
    """ALiBi: score + m_h·(j - i), a linear penalty on distance that differs per head
    (with the causal mask by default, as in the paper, where j - i <= 0)."""
    slopes = alibi_slopes(num_heads).to(device)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    def dense_scores(S):
        _, H, Nq, Nk = S.shape
        if H != num_heads:
            raise ValueError(f"alibi was built for {num_heads} heads, the scores have H={H}")
        i, j = _positions(Nq, Nk, S.device)
        return S + slopes.to(S)[:, None, None] * (j - i).to(S.dtype)  # (B, H, Nq, Nk)

    mask = _causal_parts() if causal else {}
    return Pattern("alibi", f"score + m_h·(j - i), {num_heads} heads" + (", causal" if causal else ""),
                   score_mod=score_mod, dense_scores_fn=dense_scores, tl_score_mod=tl_alibi,
                   tl_score_grad=tl_identity_grad, score_buffer=slopes,
                   params={"factory": "alibi", "num_heads": num_heads, "causal": causal}, **mask)


def relative_bias(table: torch.Tensor, causal: bool = False, device=None) -> Pattern:
    """A learnable relative position bias (T5 style, without T5's log buckets): score +
    table[h, clamp(i - j, -R, R) + R] where table is (H, 2R+1). Distances beyond R share the
    last entry. Pass a table with requires_grad=True to learn it: its gradient is the sum of
    dS over all pairs at that distance."""
    if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[1] % 2 != 1:
        raise ValueError("table must be a tensor (H, 2R+1) of biases, one row per head")
    if table.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"table must be float32 (float64 for a ground-truth reference), got {table.dtype}")
    if device is not None and not _on(table, device):
        if table.requires_grad:
            raise ValueError(f"the learnable table is on {table.device}: create it on {device}")
        table = table.to(device)
    H, width = table.shape
    R = (width - 1) // 2

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + table[h, (q_idx - kv_idx).clamp(-R, R) + R]

    def dense_scores(S):
        _, Hs, Nq, Nk = S.shape
        if Hs != H:
            raise ValueError(f"relative_bias has a table for {H} heads, the scores have H={Hs}")
        i, j = _positions(Nq, Nk, S.device)
        return S + table.to(S.dtype)[:, (i - j).clamp(-R, R) + R]  # (H, Nq, Nk) gathered, broadcast over B

    mask = _causal_parts() if causal else {}
    return Pattern("relative_bias", f"score + table[h, clamp(i - j, ±{R})]" + (", causal" if causal else ""),
                   score_mod=score_mod, dense_scores_fn=dense_scores, tl_score_mod=tl_relative_bias,
                   tl_score_grad=tl_relative_bias_grad, score_int=R, score_buffer=table, max_stages=2,
                   params={"factory": "relative_bias", "table": table, "causal": causal}, **mask)


def softcap(cap: float, causal: bool = True, device=None) -> Pattern:
    """tanh soft-capping (Gemma 2, Grok): score -> cap·tanh(score / cap), which keeps every
    score in (-cap, cap) smoothly; with the causal mask by default."""
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not (cap > 0 and math.isfinite(cap)):
        raise ValueError(f"cap must be a positive finite number, got {cap!r}")
    cap = float(cap)

    def score_mod(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    def dense_scores(S):
        return cap * torch.tanh(S / cap)

    mask = _causal_parts() if causal else {}
    return Pattern("softcap", f"{cap:g}·tanh(score / {cap:g})" + (", causal" if causal else ""),
                   score_mod=score_mod, dense_scores_fn=dense_scores, tl_score_mod=tl_softcap,
                   tl_score_grad=tl_softcap_grad, score_float=cap,
                   params={"factory": "softcap", "cap": cap, "causal": causal}, **mask)


def _causal_parts() -> dict:
    c = causal()
    return {"mask_mod": c.mask_mod, "dense_mask_fn": c.dense_mask_fn, "tl_mask_mod": c.tl_mask_mod}


_FACTORIES = {
    "causal": causal, "sliding_window": sliding_window, "causal_sliding_window": causal_sliding_window,
    "prefix_lm": prefix_lm, "document": document, "dilated_sliding_window": dilated_sliding_window,
    "global_local": global_local, "alibi": alibi, "relative_bias": relative_bias, "softcap": softcap,
}


# ------------------------------------------------------------------------------------------------
# Materialised reference attention for a pattern
# ------------------------------------------------------------------------------------------------
def reference_attention(q, k, v, pattern: Pattern | None = None, scale: float | None = None,
                        return_lse: bool = False):
    """softmax(pattern(scale·QKᵀ))·V computed in full, in the inputs' dtype (float64 inputs give
    the ground truth). Autograd flows to q, k, v and to a learnable buffer of the pattern.
    Rows with every key masked give O = 0 and L = -inf, as in kernels.reference."""
    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    S = (q @ k.transpose(-2, -1)) * scale  # (B, H, Nq, Nk)
    if pattern is not None:
        S = pattern.dense_scores(S)
        if pattern.has_mask:
            S = S.masked_fill(~pattern.dense_mask(B, H, Nq, Nk, q.device), float("-inf"))
    m = S.amax(dim=-1, keepdim=True).detach()  # (B, H, Nq, 1)
    empty = torch.isneginf(m)
    m = torch.where(empty, torch.zeros_like(m), m)
    E = torch.exp(S - m)
    ell = E.sum(dim=-1, keepdim=True)
    P = E / torch.where(empty, torch.ones_like(ell), ell)
    O = P @ v  # (B, H, Nq, d)
    if not return_lse:
        return O
    L = torch.where(empty, torch.full_like(m, float("-inf")), m + torch.log(ell)).squeeze(-1)  # (B, H, Nq)
    return O, L


# ------------------------------------------------------------------------------------------------
# A catalogue of every pattern, sized for a sequence length
# ------------------------------------------------------------------------------------------------
PATTERN_NAMES = (
    "causal", "sliding_window", "causal_sliding_window", "prefix_lm", "document", "alibi",
    "relative_bias", "softcap", "dilated_sliding_window", "global_local",
)


def example_patterns(N: int, H: int = 2, device=None, *, names=PATTERN_NAMES, seed: int = 0,
                     learnable: bool = False) -> dict[str, Pattern]:
    """One instance of each pattern with parameters that suit a sequence of length N (windows of
    about N/8, a prefix of about N/4, documents of random lengths, ...). Deterministic in `seed`.
    With learnable=True the relative bias table wants a gradient."""
    g = torch.Generator().manual_seed(seed)
    w = max(1, N // 8)
    out = {}
    for name in names:
        if name == "causal":
            p = causal()
        elif name == "sliding_window":
            p = sliding_window(w)
        elif name == "causal_sliding_window":
            p = causal_sliding_window(w)
        elif name == "prefix_lm":
            p = prefix_lm(max(1, N // 4))
        elif name in ("document", "document_causal"):
            cuts = torch.randperm(max(N - 1, 1), generator=g)[: max(1, N // 64) + 2].add(1).sort().values
            cuts = [0] + [int(c) for c in cuts if 0 < c < N] + [N]
            lengths = [b - a for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
            p = document(document_ids_from_lengths(lengths), causal=(name == "document_causal"))
        elif name == "alibi":
            p = alibi(H)
        elif name == "relative_bias":
            R = max(2, N // 16)
            table = (0.5 * torch.randn(H, 2 * R + 1, generator=g)).to(device)
            p = relative_bias(table.requires_grad_(learnable))
        elif name == "softcap":
            p = softcap(2.0)
        elif name == "dilated_sliding_window":
            p = dilated_sliding_window(max(1, N // 32), 3)
        elif name == "global_local":
            p = global_local(max(1, N // 16), max(1, N // 32))
        else:
            raise ValueError(f"unknown pattern {name!r}; known: {', '.join(PATTERN_NAMES)}")
        out[name] = p.to(device) if device is not None else p
    return out
