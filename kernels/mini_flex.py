"""A mini-FlexAttention: the course's Triton FlashAttention kernels, plus three additions.

The forward and backward kernels here are the FlashAttention-2 kernels of lessons 03 and 04
(Q outer in the forward; one program per key block for dK, dV and one per query block for dQ in
the backward; online softmax in base 2; L saved for the backward) with three additions, each
marked `# [flex 1]`, `# [flex 2]`, `# [flex 3]` in the code so a learner can diff them:

1. **score_mod**: a `@triton.jit` function passed as a `tl.constexpr` argument rewrites every
   tile of scores, S = score_mod(scale·Q Kᵀ, b, h, i, j). In the backward, the chain rule goes
   through it: dX = dS · ∂score_mod/∂x (`tl_score_grad`), and a learnable tensor the score_mod
   reads (a relative-position bias table) gets its gradient by atomic additions in the dQ kernel.
2. **mask_mod**: a second `@triton.jit` function, also a `tl.constexpr` argument, says which
   (i, j) pairs are attended; the others get S = -inf, so P = 0.
3. **block sparsity**: a block mask lists, for each block row of queries, which key blocks have
   any attended pair (`kv_num_blocks`, `kv_indices`), and among them which are *full*
   (`full_kv_num_blocks`, `full_kv_indices`). The kernel loops over the listed blocks only: an
   empty block is never loaded, its QKᵀ never computed. On a full block the mask_mod is not
   even evaluated. The backward reads the transposed lists (`q_num_blocks`, `q_indices`, ...)
   to find, for a key block, the query blocks that see it. The work, and so the time, scales
   with the number of listed blocks instead of T_r·T_c: that is where FlexAttention's speed on
   sparse masks comes from.

The block mask follows torch's BlockMask exactly (the same eight tensors, built the same way:
blocks are B_r × B_c, the mask is padded with False to whole blocks, so a block that runs past
the sequence end is never "full"). `mini_flex_attention` accepts torch's BlockMask from
`create_block_mask`, or builds its own (`block_mask_from_dense`) from the pattern's dense mask.

The patterns (torch mods, dense references, Triton counterparts) are in kernels.flex_patterns.
Reference path: kernels.flex_patterns.reference_attention (materialised, autograd) and
torch.nn.attention.flex_attention.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import torch

from . import device as _device
from . import flex_patterns as fp
from .validation import check_qkv, check_scale

if _device.HAS_TRITON:
    import triton
    import triton.language as tl

    # lesson 04's tile loader (masks compiled in only where a tile can run past an edge)
    from .triton_backward import _load_tile
else:  # pragma: no cover - platforms without triton wheels
    triton = tl = None

__all__ = [
    "mini_flex_attention", "MiniBlockMask", "block_mask_from_dense", "build_block_mask",
    "ForwardConfig", "BackwardConfig", "default_configs",
]

LOG2E = 1.4426950408889634  # exp(x) = exp2(x · log2 e)
LN2 = 0.6931471805599453
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


# ------------------------------------------------------------------------------------------------
# The block mask: which (query block, key block) tiles have work, and which need the mask_mod
# ------------------------------------------------------------------------------------------------
def _ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From a (…, rows, cols) 0/1 block map to (num (…, rows), indices (…, rows, cols)): for each
    row, how many blocks are set and their column indices first, in increasing order."""
    dense = dense.to(torch.int32)
    num = dense.sum(dim=-1).to(torch.int32)
    idx = torch.argsort(dense, dim=-1, descending=True, stable=True).to(torch.int32)
    return num.contiguous(), idx.contiguous()


@dataclasses.dataclass
class MiniBlockMask:
    """The eight tensors of a block mask (torch's BlockMask names), int32, contiguous.

    kv_num_blocks (Bm, Hm, T_r), kv_indices (Bm, Hm, T_r, T_c): partial key blocks per query
    block row (the mask_mod must be applied there); full_kv_*: blocks where every pair is
    attended. q_* / full_q_*: the same lists transposed (per key block, its query blocks) for the
    backward. Bm is 1 or B and Hm is 1 or H (a mask that does not depend on b or h is shared).
    """

    BLOCK_SIZE: tuple[int, int]  # (B_r, B_c) of the sparse blocks
    seq_lengths: tuple[int, int]  # (Nq, Nk)
    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    full_kv_num_blocks: torch.Tensor
    full_kv_indices: torch.Tensor
    q_num_blocks: torch.Tensor
    q_indices: torch.Tensor
    full_q_num_blocks: torch.Tensor
    full_q_indices: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(Bm, Hm, T_r, T_c)."""
        Bm, Hm, T_r, T_c = self.kv_indices.shape
        return Bm, Hm, T_r, T_c

    def block_map(self) -> torch.Tensor:
        """(Bm, Hm, T_r, T_c) int8 map of the tiles: 0 empty (skipped), 1 partial, 2 full."""
        Bm, Hm, T_r, T_c = self.shape
        out = torch.zeros(Bm, Hm, T_r, T_c + 1, dtype=torch.int8, device=self.kv_indices.device)
        cols = torch.arange(T_c, device=out.device)
        for num, idx, val in ((self.kv_num_blocks, self.kv_indices, 1), (self.full_kv_num_blocks, self.full_kv_indices, 2)):
            live = cols < num[..., None].long()  # (Bm, Hm, T_r, T_c): entries in use
            target = torch.where(live, idx.long(), T_c)  # unused entries go to a spare column
            out.scatter_(-1, target, torch.full_like(target, val, dtype=torch.int8))
        return out[..., :T_c]

    def sparsity(self) -> float:
        """Fraction of the T_r·T_c tiles (per (b, h)) that are skipped."""
        _, _, T_r, T_c = self.shape
        computed = (self.kv_num_blocks.sum() + self.full_kv_num_blocks.sum()).item()
        return 1.0 - computed / (self.kv_num_blocks.shape[0] * self.kv_num_blocks.shape[1] * T_r * T_c)

    def to(self, device) -> "MiniBlockMask":
        return dataclasses.replace(self, **{
            f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        })

    @staticmethod
    def from_torch(bm) -> "MiniBlockMask":
        """Read torch's BlockMask (from create_block_mask) into the mini-Flex's record."""
        T_r, T_c = bm.kv_indices.shape[-2], bm.kv_indices.shape[-1]
        lead = bm.kv_num_blocks.shape[:-1]

        def zeros_num(rows):
            return torch.zeros(*lead, rows, dtype=torch.int32, device=bm.kv_indices.device)

        def zeros_idx(rows, cols):
            return torch.zeros(*lead, rows, cols, dtype=torch.int32, device=bm.kv_indices.device)

        def c(t, fallback):
            return fallback if t is None else t.to(torch.int32).contiguous()

        return MiniBlockMask(
            BLOCK_SIZE=tuple(bm.BLOCK_SIZE), seq_lengths=tuple(bm.seq_lengths),
            kv_num_blocks=c(bm.kv_num_blocks, None), kv_indices=c(bm.kv_indices, None),
            full_kv_num_blocks=c(bm.full_kv_num_blocks, zeros_num(T_r)),
            full_kv_indices=c(bm.full_kv_indices, zeros_idx(T_r, T_c)),
            q_num_blocks=c(bm.q_num_blocks, None), q_indices=c(bm.q_indices, None),
            full_q_num_blocks=c(bm.full_q_num_blocks, zeros_num(T_c)),
            full_q_indices=c(bm.full_q_indices, zeros_idx(T_c, T_r)),
        )


def block_mask_from_dense(mask: torch.Tensor, BLOCK_SIZE=128) -> MiniBlockMask:
    """Build a block mask from a dense boolean mask (…, Nq, Nk), True = attend, the way torch's
    create_block_mask does: pad with False to whole blocks, count the attended pairs of every
    B_r × B_c tile; a tile with none is empty, with all B_r·B_c is full, otherwise partial."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool (True = attend), got {mask.dtype}")
    while mask.dim() < 4:
        mask = mask[None]
    B_r, B_c = (BLOCK_SIZE, BLOCK_SIZE) if isinstance(BLOCK_SIZE, int) else tuple(BLOCK_SIZE)
    Bm, Hm, Nq, Nk = mask.shape
    T_r, T_c = triton_cdiv(Nq, B_r), triton_cdiv(Nk, B_c)
    padded = torch.zeros(Bm, Hm, T_r * B_r, T_c * B_c, dtype=torch.bool, device=mask.device)
    padded[..., :Nq, :Nk] = mask
    count = padded.view(Bm, Hm, T_r, B_r, T_c, B_c).sum(dim=(3, 5))  # (Bm, Hm, T_r, T_c) attended pairs
    full = count == B_r * B_c
    partial = (count > 0) & ~full
    kv_num, kv_idx = _ordered(partial)
    full_kv_num, full_kv_idx = _ordered(full)
    q_num, q_idx = _ordered(partial.transpose(-2, -1))
    full_q_num, full_q_idx = _ordered(full.transpose(-2, -1))
    return MiniBlockMask((B_r, B_c), (Nq, Nk), kv_num, kv_idx, full_kv_num, full_kv_idx,
                         q_num, q_idx, full_q_num, full_q_idx)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


_BLOCK_MASK_CACHE: OrderedDict = OrderedDict()


def build_block_mask(pattern, B, H, Nq, Nk, BLOCK_SIZE=128, device=None) -> MiniBlockMask:
    """The block mask of `pattern` (from its dense reference mask; a pattern without a mask_mod
    has only full blocks, and partial ones at the ragged edges). Cached per pattern and shape."""
    B_r, B_c = (BLOCK_SIZE, BLOCK_SIZE) if isinstance(BLOCK_SIZE, int) else tuple(BLOCK_SIZE)
    key = (id(pattern), B, H, Nq, Nk, B_r, B_c, str(device))
    hit = _BLOCK_MASK_CACHE.get(key)
    if hit is not None and hit[0] is pattern:
        _BLOCK_MASK_CACHE.move_to_end(key)
        return hit[1]
    if pattern is None or pattern.dense_mask_fn is None:
        dense = torch.ones(1, 1, Nq, Nk, dtype=torch.bool, device=device)
    else:
        pattern._check_lengths(Nq, Nk)
        dense = pattern.dense_mask_fn(B, H, Nq, Nk, device)  # (B|1, H|1, Nq, Nk)
    bm = block_mask_from_dense(dense, (B_r, B_c))
    _BLOCK_MASK_CACHE[key] = (pattern, bm)
    while len(_BLOCK_MASK_CACHE) > 32:
        _BLOCK_MASK_CACHE.popitem(last=False)
    return bm


# ------------------------------------------------------------------------------------------------
# Tile sizes
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ForwardConfig:
    """Forward tiles: each program owns BLOCK_M = B_r query rows and steps over the listed key
    blocks BLOCK_N = B_c keys at a time (BLOCK_M divides the block mask's B_r, BLOCK_N its B_c)."""

    BLOCK_M: int
    BLOCK_N: int
    num_warps: int = 4
    num_stages: int = 1


@dataclasses.dataclass(frozen=True)
class BackwardConfig:
    """Backward tiles: the dK/dV kernel owns BLOCK_N1 keys and steps BLOCK_M1 queries at a time;
    the dQ kernel owns BLOCK_M2 queries and steps BLOCK_N2 keys at a time."""

    BLOCK_M1: int
    BLOCK_N1: int
    BLOCK_M2: int
    BLOCK_N2: int
    num_warps: int = 4
    num_stages: int = 1


def default_configs(head_dim: int, on_gpu: bool):
    """(block mask size, ForwardConfig, BackwardConfig). On the GPU: 128 × 128 sparse blocks (as
    FlexAttention's default) and FlexAttention's own H100 tile choices for fp16; under the
    interpreter, 32 × 32 sparse blocks walked in 16-wide tiles (small and quick, and the tiles are
    smaller than the sparse blocks, so the sub-block stepping is exercised too)."""
    if not on_gpu:
        return (32, 32), ForwardConfig(16, 16), BackwardConfig(16, 32, 32, 16)
    if head_dim <= 64:
        fwd = ForwardConfig(128, 128, num_warps=4, num_stages=3)
    else:
        fwd = ForwardConfig(128, 64, num_warps=8, num_stages=3)
    bwd = BackwardConfig(64, 128, 128, 64, num_warps=8, num_stages=3)
    return (128, 128), fwd, bwd


# ------------------------------------------------------------------------------------------------
# Triton kernels
# ------------------------------------------------------------------------------------------------
if _device.HAS_TRITON:

    @triton.jit
    def _fwd_inner(
        acc, l_i, m_i, q, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
        kv_list, n_listed, b, h, q_idx, Nk, scale,
        M0, M1, MBUF, S0, SF, SBUF,
        MASK_MOD: tl.constexpr, SCORE_MOD: tl.constexpr, IS_FULL: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
        SPARSE_KV: tl.constexpr, RAGGED: tl.constexpr, DOT_PRECISION: tl.constexpr,
        PLAIN: tl.constexpr,
    ):
        """The forward's inner loop over the key blocks listed in kv_list (n_listed of them).

        PLAIN: there is no score_mod (a mask-only pattern). The scores are then never needed in
        natural units, so scale and log2(e) fold into one multiplier, applied inside the row max
        and then as one fused multiply-add per score (as kernels.triton_forward does); on a full
        block the running max is finite, so the guard for rows that have seen nothing goes too."""
        MULT: tl.constexpr = SPARSE_KV // BLOCK_N  # tiles per sparse block
        offs_d = tl.arange(0, BLOCK_D)
        for it in range(0, n_listed * MULT):
            # [flex 3] the next listed key block, and which BLOCK_N slice of it
            start_n = tl.load(kv_list + it // MULT) * SPARSE_KV + (it % MULT) * BLOCK_N
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k = _load_tile(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                           offs_n, Nk, offs_d, HEAD_DIM, BLOCK_D, RAGGED)  # (BLOCK_N, BLOCK_D)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N), unscaled
            kv_idx = offs_n[None, :]
            if RAGGED:
                kv_idx = tl.minimum(kv_idx, Nk - 1)  # mods only ever see in-range positions
            if PLAIN and IS_FULL and not RAGGED:
                # fast path: s = qk·scale·log2(e) − m, one FMA per score; m_new is finite here
                qk_scale = scale * 1.4426950408889634
                m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                m_use = m_new
                s = qk * qk_scale - m_use[:, None]
            else:
                if PLAIN:
                    s = qk * (scale * 1.4426950408889634)  # base-2 scores directly
                else:
                    s = SCORE_MOD(qk * scale, b, h, q_idx, kv_idx, S0, SF, SBUF)  # [flex 1]
                    s = s * 1.4426950408889634
                if not IS_FULL:
                    s = tl.where(MASK_MOD(b, h, q_idx, kv_idx, M0, M1, MBUF), s, float("-inf"))  # [flex 2]
                if RAGGED:
                    s = tl.where(offs_n[None, :] < Nk, s, float("-inf"))
                # online softmax in base 2 (lesson 02): m is the running max, l the running sum
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing seen yet
                s = s - m_use[:, None]
            alpha = tl.exp2(m_i - m_use)
            p = tl.exp2(s)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = _load_tile(V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                           offs_n, Nk, offs_d, HEAD_DIM, BLOCK_D, RAGGED)
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
            m_i = m_new
        return acc, l_i, m_i

    @triton.jit
    def _mini_flex_fwd_kernel(
        Q, K, V, O, L,
        stride_qb, stride_qh, stride_qn, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_ob, stride_oh, stride_on, stride_od,
        H, Nq, Nk, scale,
        KV_NUM, KV_IDX, FULL_KV_NUM, FULL_KV_IDX, BM_B, BM_H, BM_ROWS, BM_COLS,
        M0, M1, MBUF, S0, SF, SBUF,
        MASK_MOD: tl.constexpr, SCORE_MOD: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        SPARSE_Q: tl.constexpr, SPARSE_KV: tl.constexpr, RAGGED: tl.constexpr, DOT_PRECISION: tl.constexpr,
        PLAIN: tl.constexpr = False,
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        K += b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
        V += b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
        O += b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        q = _load_tile(Q + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                       offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, RAGGED)  # (BLOCK_M, BLOCK_D), stays in SRAM
        q_idx = offs_m[:, None]
        if RAGGED:
            q_idx = tl.minimum(q_idx, Nq - 1)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        # [flex 3] this program's row of the block mask (shared over b or h when broadcast)
        row = ((b % BM_B) * BM_H + (h % BM_H)) * BM_ROWS + (pid_m * BLOCK_M) // SPARSE_Q
        # partial blocks: score_mod and mask_mod
        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
            KV_IDX + row * BM_COLS, tl.load(KV_NUM + row), b, h, q_idx, Nk, scale,
            M0, M1, MBUF, S0, SF, SBUF, MASK_MOD, SCORE_MOD, False,
            HEAD_DIM, BLOCK_D, BLOCK_N, SPARSE_KV, RAGGED, DOT_PRECISION, PLAIN)
        # full blocks: score_mod only, no mask_mod
        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
            FULL_KV_IDX + row * BM_COLS, tl.load(FULL_KV_NUM + row), b, h, q_idx, Nk, scale,
            M0, M1, MBUF, S0, SF, SBUF, MASK_MOD, SCORE_MOD, True,
            HEAD_DIM, BLOCK_D, BLOCK_N, SPARSE_KV, RAGGED, DOT_PRECISION, PLAIN)

        # O = acc / l; L = m + log l (natural log). Rows with every key masked: O = 0, L = -inf.
        empty = l_i == 0.0
        l_safe = tl.where(empty, 1.0, l_i)
        out = acc / l_safe[:, None]
        lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
        o_ptrs = O + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od
        if RAGGED:
            tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < HEAD_DIM))
            tl.store(L + bh.to(tl.int64) * Nq + offs_m, lse, mask=offs_m < Nq)
        else:
            if BLOCK_D == HEAD_DIM:
                tl.store(o_ptrs, out.to(O.dtype.element_ty))
            else:
                tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_d[None, :] < HEAD_DIM)
            tl.store(L + bh.to(tl.int64) * Nq + offs_m, lse)

    @triton.jit
    def _bwd_preprocess_kernel(
        O, DO, L, DELTA, L2,
        stride_ob, stride_oh, stride_on, stride_od,
        stride_dob, stride_doh, stride_don, stride_dod,
        H, Nq,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """D_i = rowsum(dO_i ∘ O_i) and L in base 2 (L·log2 e; +inf where L = -inf, so that
        P = exp2(s - L2) = 0 on a row with every key masked)."""
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_m = pid * BLOCK + tl.arange(0, BLOCK)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_m[:, None] < Nq) & (offs_d[None, :] < HEAD_DIM)
        o = tl.load(O + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None] * stride_on
                    + offs_d[None, :] * stride_od, mask=mask, other=0.0).to(tl.float32)
        do = tl.load(DO + b.to(tl.int64) * stride_dob + h * stride_doh + offs_m[:, None] * stride_don
                     + offs_d[None, :] * stride_dod, mask=mask, other=0.0).to(tl.float32)
        row = bh.to(tl.int64) * Nq + offs_m
        tl.store(DELTA + row, tl.sum(o * do, 1), mask=offs_m < Nq)
        lse = tl.load(L + row, mask=offs_m < Nq, other=0.0)
        tl.store(L2 + row, tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634), mask=offs_m < Nq)

    @triton.jit
    def _dkdv_inner(
        dk, dv, k, v, Q, DO, L2, DELTA, stride_qn, stride_qd, stride_don, stride_dod,
        q_list, n_listed, b, h, kv_idx, Nq, scale,
        M0, M1, MBUF, S0, SF, SBUF,
        MASK_MOD: tl.constexpr, SCORE_MOD: tl.constexpr, SCORE_GRAD: tl.constexpr, IS_FULL: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M1: tl.constexpr,
        SPARSE_Q: tl.constexpr, RAGGED: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        """dK_j, dV_j over the query blocks listed in q_list; works on the transposed tile Sᵀ
        (BLOCK_N1, BLOCK_M1) so every product has the key block as its left operand."""
        MULT: tl.constexpr = SPARSE_Q // BLOCK_M1
        offs_d = tl.arange(0, BLOCK_D)
        for it in range(0, n_listed * MULT):
            start_m = tl.load(q_list + it // MULT) * SPARSE_Q + (it % MULT) * BLOCK_M1  # [flex 3]
            offs_m = start_m + tl.arange(0, BLOCK_M1)
            q = _load_tile(Q + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                           offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, RAGGED)  # (BLOCK_M1, BLOCK_D)
            do = _load_tile(DO + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod,
                            offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, RAGGED)
            if RAGGED:
                l2 = tl.load(L2 + offs_m, mask=offs_m < Nq, other=float("inf"))
                Di = tl.load(DELTA + offs_m, mask=offs_m < Nq, other=0.0)
            else:
                l2 = tl.load(L2 + offs_m)
                Di = tl.load(DELTA + offs_m)
            xT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * scale  # (BLOCK_N1, BLOCK_M1)
            q_idx = offs_m[None, :]
            if RAGGED:
                q_idx = tl.minimum(q_idx, Nq - 1)
            sT = SCORE_MOD(xT, b, h, q_idx, kv_idx, S0, SF, SBUF)  # [flex 1]
            if not IS_FULL:
                sT = tl.where(MASK_MOD(b, h, q_idx, kv_idx, M0, M1, MBUF), sT, float("-inf"))  # [flex 2]
            if RAGGED:
                sT = tl.where(offs_m[None, :] < Nq, sT, float("-inf"))
            pT = tl.exp2(sT * 1.4426950408889634 - l2[None, :])  # Pᵀ rebuilt from L
            dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # dV += Pᵀ dO
            dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # dPᵀ = V dOᵀ
            dsT = pT * (dpT - Di[None, :])  # dSᵀ = Pᵀ ∘ (dPᵀ - D)
            dxT = SCORE_GRAD(dsT, xT, b, h, q_idx, kv_idx, S0, SF, SBUF, SBUF, False)  # [flex 1] chain rule
            dk = tl.dot(dxT.to(q.dtype), q, dk, input_precision=DOT_PRECISION)  # dK += dXᵀ Q (× scale later)
        return dk, dv

    @triton.jit
    def _mini_flex_bwd_dkdv_kernel(
        Q, K, V, DO, DK, DV, L2, DELTA,
        stride_qb, stride_qh, stride_qn, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_dob, stride_doh, stride_don, stride_dod,
        H, Nq, Nk, scale,
        Q_NUM, Q_IDX, FULL_Q_NUM, FULL_Q_IDX, BM_B, BM_H, BM_ROWS, BM_COLS,
        M0, M1, MBUF, S0, SF, SBUF,
        MASK_MOD: tl.constexpr, SCORE_MOD: tl.constexpr, SCORE_GRAD: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr,
        SPARSE_Q: tl.constexpr, SPARSE_KV: tl.constexpr, RAGGED: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        K += b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
        V += b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
        DO += b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
        L2 += bh.to(tl.int64) * Nq
        DELTA += bh.to(tl.int64) * Nq

        offs_n = pid_n * BLOCK_N1 + tl.arange(0, BLOCK_N1)
        offs_d = tl.arange(0, BLOCK_D)
        k = _load_tile(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                       offs_n, Nk, offs_d, HEAD_DIM, BLOCK_D, RAGGED)  # (BLOCK_N1, BLOCK_D), stays in SRAM
        v = _load_tile(V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                       offs_n, Nk, offs_d, HEAD_DIM, BLOCK_D, RAGGED)
        kv_idx = offs_n[:, None]
        if RAGGED:
            kv_idx = tl.minimum(kv_idx, Nk - 1)
        dk = tl.zeros([BLOCK_N1, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N1, BLOCK_D], dtype=tl.float32)

        # [flex 3] this key block's row of the transposed block mask
        row = ((b % BM_B) * BM_H + (h % BM_H)) * BM_ROWS + (pid_n * BLOCK_N1) // SPARSE_KV
        dk, dv = _dkdv_inner(
            dk, dv, k, v, Q, DO, L2, DELTA, stride_qn, stride_qd, stride_don, stride_dod,
            Q_IDX + row * BM_COLS, tl.load(Q_NUM + row), b, h, kv_idx, Nq, scale,
            M0, M1, MBUF, S0, SF, SBUF, MASK_MOD, SCORE_MOD, SCORE_GRAD, False,
            HEAD_DIM, BLOCK_D, BLOCK_M1, SPARSE_Q, RAGGED, DOT_PRECISION)
        dk, dv = _dkdv_inner(
            dk, dv, k, v, Q, DO, L2, DELTA, stride_qn, stride_qd, stride_don, stride_dod,
            FULL_Q_IDX + row * BM_COLS, tl.load(FULL_Q_NUM + row), b, h, kv_idx, Nq, scale,
            M0, M1, MBUF, S0, SF, SBUF, MASK_MOD, SCORE_MOD, SCORE_GRAD, True,
            HEAD_DIM, BLOCK_D, BLOCK_M1, SPARSE_Q, RAGGED, DOT_PRECISION)
        dk = dk * scale

        # dK, dV are contiguous (B, H, Nk, d)
        out = bh.to(tl.int64) * Nk * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        mask = (offs_n[:, None] < Nk) & (offs_d[None, :] < HEAD_DIM)
        tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=mask)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=mask)

    @triton.jit
    def _dq_inner(
        dq, q, do, l2, Di, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
        kv_list, n_listed, b, h, q_idx, Nk, scale,
        M0, M1, MBUF, S0, SF, SBUF, DSBUF,
        MASK_MOD: tl.constexpr, SCORE_MOD: tl.constexpr, SCORE_GRAD: tl.constexpr,
        WRITE_DBUF: tl.constexpr, IS_FULL: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N2: tl.constexpr,
        SPARSE_KV: tl.constexpr, RAGGED: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        """dQ_i over the key blocks listed in kv_list."""
        MULT: tl.constexpr = SPARSE_KV // BLOCK_N2
        offs_d = tl.arange(0, BLOCK_D)
        for it in range(0, n_listed * MULT):
            start_n = tl.load(kv_list + it // MULT) * SPARSE_KV + (it % MULT) * BLOCK_N2  # [flex 3]
            offs_n = start_n + tl.arange(0, BLOCK_N2)
            k = _load_tile(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                           offs_n, Nk, offs_d, HEAD_DIM, BLOCK_D, RAGGED)
            v = _load_tile(V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                           offs_n, Nk, offs_d, HEAD_DIM, BLOCK_D, RAGGED)
            x = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale  # (BLOCK_M2, BLOCK_N2)
            kv_idx = offs_n[None, :]
            if RAGGED:
                kv_idx = tl.minimum(kv_idx, Nk - 1)
            s = SCORE_MOD(x, b, h, q_idx, kv_idx, S0, SF, SBUF)  # [flex 1]
            if not IS_FULL:
                s = tl.where(MASK_MOD(b, h, q_idx, kv_idx, M0, M1, MBUF), s, float("-inf"))  # [flex 2]
            if RAGGED:
                s = tl.where(offs_n[None, :] < Nk, s, float("-inf"))
            p = tl.exp2(s * 1.4426950408889634 - l2[:, None])
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - Di[:, None])
            # [flex 1] chain rule through the score_mod; a learnable buffer gets its gradient here
            dx = SCORE_GRAD(ds, x, b, h, q_idx, kv_idx, S0, SF, SBUF, DSBUF, WRITE_DBUF)
            dq = tl.dot(dx.to(k.dtype), k, dq, input_precision=DOT_PRECISION)  # dQ += dX K (× scale later)
        return dq

    @triton.jit
    def _mini_flex_bwd_dq_kernel(
        Q, K, V, DO, DQ, L2, DELTA,
        stride_qb, stride_qh, stride_qn, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_dob, stride_doh, stride_don, stride_dod,
        H, Nq, Nk, scale,
        KV_NUM, KV_IDX, FULL_KV_NUM, FULL_KV_IDX, BM_B, BM_H, BM_ROWS, BM_COLS,
        M0, M1, MBUF, S0, SF, SBUF, DSBUF,
        MASK_MOD: tl.constexpr, SCORE_MOD: tl.constexpr, SCORE_GRAD: tl.constexpr, WRITE_DBUF: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
        SPARSE_Q: tl.constexpr, SPARSE_KV: tl.constexpr, RAGGED: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        K += b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
        V += b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
        DO += b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh

        offs_m = pid_m * BLOCK_M2 + tl.arange(0, BLOCK_M2)
        offs_d = tl.arange(0, BLOCK_D)
        q = _load_tile(Q + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                       offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, RAGGED)
        do = _load_tile(DO + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod,
                        offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, RAGGED)
        if RAGGED:
            l2 = tl.load(L2 + bh.to(tl.int64) * Nq + offs_m, mask=offs_m < Nq, other=float("inf"))
            Di = tl.load(DELTA + bh.to(tl.int64) * Nq + offs_m, mask=offs_m < Nq, other=0.0)
        else:
            l2 = tl.load(L2 + bh.to(tl.int64) * Nq + offs_m)
            Di = tl.load(DELTA + bh.to(tl.int64) * Nq + offs_m)
        q_idx = offs_m[:, None]
        if RAGGED:
            q_idx = tl.minimum(q_idx, Nq - 1)
        dq = tl.zeros([BLOCK_M2, BLOCK_D], dtype=tl.float32)

        row = ((b % BM_B) * BM_H + (h % BM_H)) * BM_ROWS + (pid_m * BLOCK_M2) // SPARSE_Q  # [flex 3]
        dq = _dq_inner(
            dq, q, do, l2, Di, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
            KV_IDX + row * BM_COLS, tl.load(KV_NUM + row), b, h, q_idx, Nk, scale,
            M0, M1, MBUF, S0, SF, SBUF, DSBUF, MASK_MOD, SCORE_MOD, SCORE_GRAD, WRITE_DBUF, False,
            HEAD_DIM, BLOCK_D, BLOCK_N2, SPARSE_KV, RAGGED, DOT_PRECISION)
        dq = _dq_inner(
            dq, q, do, l2, Di, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
            FULL_KV_IDX + row * BM_COLS, tl.load(FULL_KV_NUM + row), b, h, q_idx, Nk, scale,
            M0, M1, MBUF, S0, SF, SBUF, DSBUF, MASK_MOD, SCORE_MOD, SCORE_GRAD, WRITE_DBUF, True,
            HEAD_DIM, BLOCK_D, BLOCK_N2, SPARSE_KV, RAGGED, DOT_PRECISION)
        dq = dq * scale

        out = bh.to(tl.int64) * Nq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(DQ + out, dq.to(DQ.dtype.element_ty), mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < HEAD_DIM))


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Plan:
    """Everything a launch needs besides the tensors, worked out once per (pattern, block mask,
    shape) and cached: the pattern's Triton functions and captured values, the block mask, the
    tiles."""

    bm: MiniBlockMask
    scale: float
    fwd: ForwardConfig
    bwd: BackwardConfig
    mask_fn: object  # tl_mask_mod
    score_fn: object  # tl_score_mod
    grad_fn: object  # tl_score_grad
    mod_args: tuple  # M0, M1, MBUF, S0, SF, SBUF: the pattern's captured values
    ragged: bool  # N not a multiple of the sparse blocks: bounds checks compiled in

    def mask_dims(self, transposed: bool):
        Bm, Hm, T_r, T_c = self.bm.shape
        return (Bm, Hm, T_c, T_r) if transposed else (Bm, Hm, T_r, T_c)


_DUMMY: dict = {}


def _dummy(dev) -> torch.Tensor:
    """A one-element tensor to pass where a pattern has no buffer."""
    t = _DUMMY.get(dev)
    if t is None:
        t = _DUMMY[dev] = torch.zeros(1, device=dev, dtype=torch.int32)
    return t


def _dot_precision(dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _launch_forward(q, k, v, plan: _Plan):
    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    cfg = plan.fwd
    O = torch.empty_like(q, memory_format=torch.contiguous_format)  # (B, H, Nq, d)
    L = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32)  # (B, H, Nq)
    bm = plan.bm
    grid = (triton.cdiv(Nq, cfg.BLOCK_M), B * H)
    _mini_flex_fwd_kernel[grid](
        q, k, v, O, L, *q.stride(), *k.stride(), *v.stride(), *O.stride(),
        H, Nq, Nk, plan.scale,
        bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices, *plan.mask_dims(False),
        *plan.mod_args,
        MASK_MOD=plan.mask_fn, SCORE_MOD=plan.score_fn, PLAIN=plan.score_fn is fp.tl_identity_score,
        HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N,
        SPARSE_Q=bm.BLOCK_SIZE[0], SPARSE_KV=bm.BLOCK_SIZE[1], RAGGED=plan.ragged,
        DOT_PRECISION=_dot_precision(q.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return O, L


def _launch_backward(q, k, v, O, L, dO, plan: _Plan, want_dbuf: bool):
    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    cfg = plan.bwd
    bm = plan.bm
    BLOCK_D = max(16, triton.next_power_of_2(d))
    dO = dO.contiguous()
    Delta = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32)  # D_i = rowsum(dO ∘ O)
    L2 = torch.empty_like(Delta)  # L in base 2
    PRE = 64 if q.is_cuda else 16
    _bwd_preprocess_kernel[(triton.cdiv(Nq, PRE), B * H)](
        O, dO, L, Delta, L2, *O.stride(), *dO.stride(), H, Nq,
        HEAD_DIM=d, BLOCK_D=BLOCK_D, BLOCK=PRE,
    )
    dQ = torch.empty(B, H, Nq, d, device=q.device, dtype=q.dtype)
    dK = torch.empty(B, H, Nk, d, device=q.device, dtype=k.dtype)
    dV = torch.empty(B, H, Nk, d, device=q.device, dtype=v.dtype)
    M0, M1, MBUF, S0, SF, SBUF = plan.mod_args
    dbuf = torch.zeros(SBUF.shape, device=q.device, dtype=torch.float32) if want_dbuf else SBUF
    common = dict(
        MASK_MOD=plan.mask_fn, SCORE_MOD=plan.score_fn, SCORE_GRAD=plan.grad_fn,
        HEAD_DIM=d, BLOCK_D=BLOCK_D, SPARSE_Q=bm.BLOCK_SIZE[0], SPARSE_KV=bm.BLOCK_SIZE[1],
        RAGGED=plan.ragged, DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    _mini_flex_bwd_dkdv_kernel[(triton.cdiv(Nk, cfg.BLOCK_N1), B * H)](
        q, k, v, dO, dK, dV, L2, Delta, *q.stride(), *k.stride(), *v.stride(), *dO.stride(),
        H, Nq, Nk, plan.scale,
        bm.q_num_blocks, bm.q_indices, bm.full_q_num_blocks, bm.full_q_indices, *plan.mask_dims(True),
        M0, M1, MBUF, S0, SF, SBUF, BLOCK_M1=cfg.BLOCK_M1, BLOCK_N1=cfg.BLOCK_N1, **common,
    )
    _mini_flex_bwd_dq_kernel[(triton.cdiv(Nq, cfg.BLOCK_M2), B * H)](
        q, k, v, dO, dQ, L2, Delta, *q.stride(), *k.stride(), *v.stride(), *dO.stride(),
        H, Nq, Nk, plan.scale,
        bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices, *plan.mask_dims(False),
        M0, M1, MBUF, S0, SF, SBUF, dbuf, WRITE_DBUF=want_dbuf,
        BLOCK_M2=cfg.BLOCK_M2, BLOCK_N2=cfg.BLOCK_N2, **common,
    )
    return dQ, dK, dV, (dbuf if want_dbuf else None)


class _MiniFlexAttention(torch.autograd.Function):
    """O, L = mini-Flex forward; the backward runs the dK/dV and dQ kernels. Saves Q, K, V, O and
    L (B, H, N): nothing of size N×N."""

    @staticmethod
    def forward(ctx, q, k, v, score_buffer, plan):
        O, L = _launch_forward(q, k, v, plan)
        ctx.save_for_backward(q, k, v, O, L)
        ctx.plan = plan
        ctx.want_dbuf = score_buffer is not None and score_buffer.requires_grad
        ctx.buffer_dtype = score_buffer.dtype if score_buffer is not None else None
        ctx.mark_non_differentiable(L)
        return O, L

    @staticmethod
    def backward(ctx, dO, dL):
        q, k, v, O, L = ctx.saved_tensors
        dQ, dK, dV, dbuf = _launch_backward(q, k, v, O, L, dO, ctx.plan, ctx.want_dbuf)
        if dbuf is not None:
            dbuf = dbuf.to(ctx.buffer_dtype)
        return dQ, dK, dV, dbuf, None


# ------------------------------------------------------------------------------------------------
# Public entry
# ------------------------------------------------------------------------------------------------
def _check_config(fwd: ForwardConfig, bwd: BackwardConfig, block: tuple[int, int]):
    B_r, B_c = block
    for name, tile, sparse in (("BLOCK_M", fwd.BLOCK_M, B_r), ("BLOCK_N", fwd.BLOCK_N, B_c),
                               ("BLOCK_M1", bwd.BLOCK_M1, B_r), ("BLOCK_N1", bwd.BLOCK_N1, B_c),
                               ("BLOCK_M2", bwd.BLOCK_M2, B_r), ("BLOCK_N2", bwd.BLOCK_N2, B_c)):
        if tile < 16 or tile & (tile - 1) or sparse % tile:
            raise ValueError(
                f"{name}={tile} must be a power of two >= 16 that divides the block mask's block size "
                f"{sparse} (BLOCK_SIZE={block})"
            )


def mini_flex_attention(query, key, value, pattern=None, *, block_mask=None, scale=None,
                        return_lse=False, config=None, bwd_config=None):
    """Attention with a FlexAttention pattern, on the course's Triton kernels.

    query (B, H, Nq, d), key and value (B, H, Nk, d), float16/bfloat16/float32 on a CUDA GPU, or
    float16/float32 on the CPU under the Triton interpreter (small shapes). `pattern` is a
    kernels.flex_patterns.Pattern (None: plain attention). `block_mask`: torch's BlockMask from
    create_block_mask, a MiniBlockMask, or None to build it from the pattern (cached).
    `config`, `bwd_config`: tile sizes (ForwardConfig, BackwardConfig); default: default_configs.
    Differentiable in query, key, value and a learnable buffer of the pattern.

    Returns O (B, H, Nq, d), or (O, L) with the log-sum-exp L (B, H, Nq) (natural log, -inf on
    rows with every key masked, where O = 0).
    """
    _device.require_triton("mini_flex_attention")
    check_qkv(query, key, value, dtypes=_SUPPORTED)
    # the checks below and the block mask depend only on these: done once, then cached
    cache_key = (id(pattern), id(block_mask), tuple(query.shape), key.shape[2], query.dtype, query.device,
                 scale, config, bwd_config)
    hit = _PLAN_CACHE.get(cache_key)
    if hit is not None and hit[0] is pattern and hit[1] is block_mask:
        plan = hit[2]
    else:
        plan = _make_plan(query, key, pattern, block_mask, scale, config, bwd_config)
        _PLAN_CACHE[cache_key] = (pattern, block_mask, plan)
        while len(_PLAN_CACHE) > 64:
            _PLAN_CACHE.pop(next(iter(_PLAN_CACHE)))
    sbuf = pattern.score_buffer if pattern is not None and pattern.learnable else None
    O, L = _MiniFlexAttention.apply(query, key, value, sbuf, plan)
    return (O, L) if return_lse else O


_PLAN_CACHE: dict = {}


def _make_plan(query, key, pattern, block_mask, scale, config, bwd_config) -> _Plan:
    """Validate everything but the tensors' shapes (check_qkv did those), pick the block mask and
    the tiles."""
    check_scale(scale)
    if pattern is not None and not isinstance(pattern, fp.Pattern):
        raise TypeError(f"pattern must be a kernels.flex_patterns.Pattern or None, got {type(pattern).__name__}")
    on_gpu = query.is_cuda
    if not on_gpu:
        if not _device.TRITON_INTERPRET:
            raise ValueError(
                "mini_flex_attention on CPU tensors needs the Triton interpreter (TRITON_INTERPRET=1, "
                "set by importing kernels first); move the tensors to a CUDA device otherwise"
            )
        if query.dtype == torch.bfloat16:
            raise TypeError("bfloat16 is computed wrongly by the Triton interpreter: use float16 or float32 on CPU")
    B, H, Nq, d = query.shape
    Nk = key.shape[2]
    if d > 256:
        raise ValueError(f"head dim d must be <= 256, got query shape {tuple(query.shape)}")
    if Nq == 0 or Nk == 0:
        raise ValueError(f"sequence lengths must be positive, got Nq={Nq}, Nk={Nk}")
    dev = query.device
    if pattern is not None:
        pattern._check_lengths(Nq, Nk)
        for buf in (pattern.mask_buffer, pattern.score_buffer):
            if buf is not None and buf.dtype not in (torch.int32, torch.float32):
                raise TypeError(f"pattern {pattern.name}: the kernel reads int32 or float32 buffers, got {buf.dtype}")
        if pattern.learnable and pattern.score_buffer.device != dev:
            raise ValueError(
                f"pattern {pattern.name}: its learnable buffer is on {pattern.score_buffer.device}, the query on {dev}"
            )
    block, default_fwd, default_bwd = default_configs(d, on_gpu)

    if block_mask is None:
        bm = build_block_mask(pattern, B, H, Nq, Nk, block, dev)
    elif isinstance(block_mask, MiniBlockMask):
        bm = block_mask
    elif hasattr(block_mask, "kv_num_blocks") and hasattr(block_mask, "BLOCK_SIZE"):
        bm = MiniBlockMask.from_torch(block_mask)
    else:
        raise TypeError(f"block_mask must be torch's BlockMask, a MiniBlockMask or None, got {type(block_mask).__name__}")
    if tuple(bm.seq_lengths) != (Nq, Nk):
        raise ValueError(f"block_mask was built for (Nq, Nk) = {tuple(bm.seq_lengths)}, the inputs have ({Nq}, {Nk})")
    Bm, Hm, T_r, T_c = bm.shape
    if Bm not in (1, B) or Hm not in (1, H):
        raise ValueError(f"block_mask has (B, H) = ({Bm}, {Hm}); expected 1 or {B} and 1 or {H}")
    if (T_r, T_c) != (triton_cdiv(Nq, bm.BLOCK_SIZE[0]), triton_cdiv(Nk, bm.BLOCK_SIZE[1])):
        raise ValueError(f"block_mask has {T_r} x {T_c} blocks of {bm.BLOCK_SIZE}, which does not cover ({Nq}, {Nk})")
    if bm.kv_indices.device != dev:
        raise ValueError(f"block_mask is on {bm.kv_indices.device}, the query on {dev}")
    # the default tiles shrink to fit a block mask with smaller blocks than the default
    fit_fwd, fit_bwd = _fit_tiles(default_fwd, default_bwd, bm.BLOCK_SIZE)
    fwd, bwd = config or fit_fwd, bwd_config or fit_bwd
    _check_config(fwd, bwd, bm.BLOCK_SIZE)
    if pattern is not None and pattern.max_stages is not None:  # see Pattern.max_stages
        fwd = dataclasses.replace(fwd, num_stages=min(fwd.num_stages, pattern.max_stages))
        bwd = dataclasses.replace(bwd, num_stages=min(bwd.num_stages, pattern.max_stages))

    if scale is None:
        scale = 1.0 / math.sqrt(d)
    dummy = _dummy(dev)
    p = pattern
    if p is None:
        mod_args = (0, 0, dummy, 0, 1.0, dummy)
    else:
        mbuf = p.mask_buffer.to(dev) if p.mask_buffer is not None else dummy
        sbuf = p.score_buffer.detach().to(dev) if p.score_buffer is not None else dummy
        mod_args = (int(p.mask_ints[0]), int(p.mask_ints[1]), mbuf, int(p.score_int), float(p.score_float) or 1.0, sbuf)
    return _Plan(
        bm=bm, scale=float(scale), fwd=fwd, bwd=bwd,
        mask_fn=(p.tl_mask_mod if p is not None and p.tl_mask_mod is not None else fp.tl_no_mask),
        score_fn=(p.tl_score_mod if p is not None and p.tl_score_mod is not None else fp.tl_identity_score),
        grad_fn=(p.tl_score_grad if p is not None and p.tl_score_grad is not None else fp.tl_identity_grad),
        mod_args=mod_args,
        ragged=not (Nq % bm.BLOCK_SIZE[0] == 0 and Nk % bm.BLOCK_SIZE[1] == 0),
    )


def _fit_tiles(fwd: ForwardConfig, bwd: BackwardConfig, block) -> tuple[ForwardConfig, BackwardConfig]:
    B_r, B_c = block

    def fit(tile, sparse):
        while tile > 16 and (tile > sparse or sparse % tile):
            tile //= 2
        return tile

    return (dataclasses.replace(fwd, BLOCK_M=fit(fwd.BLOCK_M, B_r), BLOCK_N=fit(fwd.BLOCK_N, B_c)),
            dataclasses.replace(bwd, BLOCK_M1=fit(bwd.BLOCK_M1, B_r), BLOCK_N1=fit(bwd.BLOCK_N1, B_c),
                                BLOCK_M2=fit(bwd.BLOCK_M2, B_r), BLOCK_N2=fit(bwd.BLOCK_N2, B_c)))
