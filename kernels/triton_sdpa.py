"""The general Triton attention kernels behind kernels.scaled_dot_product_attention.

They are lesson 03's forward kernel and lesson 04's backward kernels (FlashAttention-2's
algorithm: online softmax over key blocks, P rebuilt from the log-sum-exp L in the backward)
with the features PyTorch's SDPA offers added on top:

* attn_mask, boolean (True = attend) or additive (added to the scaled scores), of any shape
  broadcastable to (B, H, Nq, Nk). The kernel reads the mask tile it needs through the mask's
  four strides; a broadcast dimension has stride 0, so a (B, 1, 1, Nk) key-padding mask or a
  (Nq, Nk) mask shared by every head is never expanded to (B, H, Nq, Nk) in memory.
* is_causal, top-left like SDPA (query i sees key j when j <= i, also when Nq != Nk); it may be
  combined with attn_mask (a pair is attended when both allow it). Key blocks wholly right of
  the diagonal are skipped.
* dropout on P inside the fused kernel. The keep decision of element (b, h, i, j) is
  tl.rand(seed, offset) >= p with offset = ((b·H + h)·Nq + i)·Nk + j, Philox, a counter-based
  generator: the backward draws the same numbers again from (seed, offset), so the N×N keep-mask
  is never stored. `dropout_keep_mask` returns the mask the kernel draws (for tests and the
  reference path); `philox_uniform` computes the same numbers with NumPy, no GPU needed.
* GQA / MQA: query head h reads key/value head h // (H / H_kv) through the strides, no copy.
  The dK/dV kernel sums the contributions of the H / H_kv query heads of a group itself.
* rows whose every key is masked give O = 0 and L = -inf in the forward and zero gradients in
  the backward, never NaN.
* float16, bfloat16, float32; any head dim up to 256 (padded to a power of two with masks;
  the value head dim d_v may differ from d); any strides with a contiguous head dim.

Notation (FlashAttention papers): B_r = BLOCK_M query rows per block, B_c = BLOCK_N keys per
block, S = scale·QKᵀ (+ additive mask), m the running row max, ℓ (ell) the running row sum,
L = m + log ℓ, D = rowsum(dO ∘ O). As in the lesson kernels the exponentials are exp2 with
log2(e) folded into the scale.

Reference path: kernels.reference.attention with dropout_mask=dropout_keep_mask(...).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import device as kdev  # (named kdev: `device` is an argument below)
from .validation import check_dropout_p, check_mask, check_qkv, check_scale

if kdev.HAS_TRITON:
    import triton
    import triton.language as tl

    # lesson 04's tile loader: masks rows past the edge and the padded head-dim lanes
    from .triton_backward import _bwd_preprocess_kernel, _load_tile
else:  # pragma: no cover - platforms without triton wheels
    triton = tl = None

__all__ = [
    "sdpa_forward", "sdpa_backward", "SDPAFunction", "sdpa",
    "dropout_keep_mask", "philox_uniform", "MAX_HEAD_DIM", "SUPPORTED_DTYPES", "KernelBlocks",
]

LOG2E = 1.4426950408889634  # exp(x) = exp2(x · log2 e)
MAX_HEAD_DIM = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# What kind of attn_mask the kernel reads (a constexpr: each kind compiles its own kernel).
MASK_NONE, MASK_BOOL, MASK_ADD = 0, 1, 2


# ------------------------------------------------------------------------------------------------
# Triton kernels
# ------------------------------------------------------------------------------------------------
if kdev.HAS_TRITON:

    @triton.jit
    def _keep_tile(seed, bh, Nq, Nk, rows, cols, p_drop):
        """Dropout keep decisions for a tile of (batch·head) bh: uniform(seed, offset) >= p with
        offset = ((b·H + h)·Nq + i)·Nk + j. rows (query indices i) and cols (key indices j) are 2-D
        index grids, offs_m[:, None] and offs_n[None, :] for a (B_r, B_c) tile or transposed for a
        (B_c, B_r) one: the numbers belong to the elements, not to the tile's orientation.
        int64 offsets: B·H·Nq·Nk passes 2³¹ quickly."""
        offset = (bh.to(tl.int64) * Nq + rows.to(tl.int64)) * Nk + cols.to(tl.int64)
        return tl.rand(seed, offset) >= p_drop

    @triton.jit
    def _visible_and_scores(s, Mask, b, h, rows, cols, Nq, Nk,
                            stride_mb, stride_mh, stride_mm, stride_mn,
                            IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr):
        """Apply every mask to a score tile s that is already in the log2 domain.

        rows / cols are the tile's query / key index grids (see _keep_tile), so the same code
        serves S (B_r, B_c) and Sᵀ (B_c, B_r). Returns s with -inf where query i may not see
        key j: keys past Nk, keys right of the diagonal (causal), False entries of a boolean
        mask; an additive mask is added (· log2 e). The mask tile is read through its strides
        (0 on broadcast dims), never materialised.
        """
        in_bounds = (cols < Nk) & (rows < Nq)
        visible = in_bounds
        if IS_CAUSAL:
            visible = visible & (cols <= rows)
        if MASK_KIND != 0:
            m_ptrs = (Mask + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh
                      + rows.to(tl.int64) * stride_mm + cols.to(tl.int64) * stride_mn)
            if MASK_KIND == 1:  # boolean, stored as uint8: 1 = attend
                allowed = tl.load(m_ptrs, mask=in_bounds, other=0)
                visible = visible & (allowed != 0)
            else:  # additive: S + mask (its -inf entries mask as well)
                bias = tl.load(m_ptrs, mask=in_bounds, other=0.0).to(tl.float32)
                s = s + bias * 1.4426950408889634
        return tl.where(visible, s, float("-inf"))

    @triton.jit
    def _sdpa_fwd_kernel(
        Q, K, V, Mask, O, L,
        stride_qb, stride_qh, stride_qm,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_mb, stride_mh, stride_mm, stride_mn,
        stride_ob, stride_oh, stride_om,
        H, GROUP, Nq, Nk, qk_scale, p_drop, seed,
        HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One program: B_r query rows of one (batch, head); one pass over the key blocks."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        h_kv = h // GROUP  # GQA: GROUP query heads share one K/V head
        start_m = pid_m * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)

        q = _load_tile(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                       offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, True)  # (B_r, d), stays on chip
        K += b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
        V += b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 domain)
        ell = tl.zeros([BLOCK_M], dtype=tl.float32)  # running ℓ, of P before dropout
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)  # unnormalised O

        hi = Nk
        if IS_CAUSAL:  # keys j > the block's last row are invisible to every row: skip them
            hi = tl.minimum(Nk, start_m + BLOCK_M)
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + offs_n0
            k = _load_tile(K + offs_n[:, None] * stride_kn + offs_d[None, :], offs_n, Nk, offs_d,
                           HEAD_DIM, BLOCK_D, True)  # (B_c, d)
            v = _load_tile(V + offs_n[:, None] * stride_vn + offs_dv[None, :], offs_n, Nk, offs_dv,
                           HEAD_DIM_V, BLOCK_DV, True)  # (B_c, d_v)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # (B_r, B_c), S · log2 e
            s = _visible_and_scores(s, Mask, b, h, offs_m[:, None], offs_n[None, :], Nq, Nk,
                                    stride_mb, stride_mh, stride_mm, stride_mn, IS_CAUSAL, MASK_KIND)
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            # a row that has seen only masked keys has m = -inf: exponentiate against 0 instead,
            # so exp2(-inf - 0) = 0 rather than exp2(-inf + inf) = NaN
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_safe[:, None])  # P̃ (B_r, B_c)
            alpha = tl.math.exp2(m_i - m_safe)  # rescales what was accumulated so far
            ell = ell * alpha + tl.sum(p, axis=1)  # ℓ counts every key, dropped or not
            if DROPOUT:  # drop after the row sum: dropout acts on the normalised P
                p = tl.where(_keep_tile(seed, bh, Nq, Nk, offs_m[:, None], offs_n[None, :], p_drop), p, 0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
            m_i = m_new

        empty = ell == 0.0  # every key masked: O = 0, L = -inf
        inv = tl.where(empty, 0.0, 1.0 / tl.where(empty, 1.0, ell))
        if DROPOUT:
            inv = inv * (1.0 / (1.0 - p_drop))  # the kept entries are scaled by 1/(1-p)
        acc = acc * inv[:, None]
        lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, ell))) * 0.6931471805599453)
        rows = offs_m < Nq
        tl.store(L + bh.to(tl.int64) * Nq + offs_m, lse, mask=rows)  # natural-log L, (B·H, Nq)
        o_ptrs = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_om + offs_dv[None, :]
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=rows[:, None] & (offs_dv[None, :] < HEAD_DIM_V))

    @triton.jit
    def _sdpa_dkdv_kernel(
        Q, K, V, Mask, dO, Lg, D, dK, dV,
        stride_qb, stride_qh, stride_qm,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_mb, stride_mh, stride_mm, stride_mn,
        stride_dob, stride_doh, stride_dom,
        H, H_KV, GROUP, Nq, Nk, qk_scale, scale, p_drop, seed,
        HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One program: B_c keys of one (batch, K/V head). It walks the query blocks of every
        query head of the group and accumulates dV_j = Σ Pᵀ dO and dK_j = scale · Σ dSᵀ Q on chip.

        It works on the transposed tile (B_c, B_r); the mask, causal and dropout helpers take
        index grids, so they read the same elements as in the forward kernel.
        """
        pid_n = tl.program_id(0)
        bhk = tl.program_id(1)
        b = bhk // H_KV
        h_kv = bhk % H_KV
        start_n = pid_n * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_m0 = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        k = _load_tile(K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                       offs_n, Nk, offs_d, HEAD_DIM, BLOCK_D, True)  # (B_c, d), stays on chip
        v = _load_tile(V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh + offs_n[:, None] * stride_vn + offs_dv[None, :],
                       offs_n, Nk, offs_dv, HEAD_DIM_V, BLOCK_DV, True)  # (B_c, d_v)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)

        lo = 0
        if IS_CAUSAL:  # rows i < start_n see none of these keys: start at the diagonal block
            lo = (start_n // BLOCK_M) * BLOCK_M
        for g in range(0, GROUP):  # the query heads that read this K/V head
            h = h_kv * GROUP + g
            bh = b * H + h
            Qh = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
            dOh = dO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
            for start_m in range(lo, Nq, BLOCK_M):
                offs_m = start_m + offs_m0
                q = _load_tile(Qh + offs_m[:, None] * stride_qm + offs_d[None, :], offs_m, Nq, offs_d,
                               HEAD_DIM, BLOCK_D, True)  # (B_r, d)
                do = _load_tile(dOh + offs_m[:, None] * stride_dom + offs_dv[None, :], offs_m, Nq, offs_dv,
                                HEAD_DIM_V, BLOCK_DV, True)  # (B_r, d_v)
                lg = tl.load(Lg + bh * Nq + offs_m, mask=offs_m < Nq, other=float("inf"))  # L·log2 e
                Di = tl.load(D + bh * Nq + offs_m, mask=offs_m < Nq, other=0.0)
                # the transposed tile Sᵀ = K_j Q_iᵀ (B_c, B_r): every product below has the key
                # block on the left, so no computed tile needs a transpose (as in lesson 04)
                sT = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # (B_c, B_r)
                sT = _visible_and_scores(sT, Mask, b, h, offs_m[None, :], offs_n[:, None], Nq, Nk,
                                         stride_mb, stride_mh, stride_mm, stride_mn, IS_CAUSAL, MASK_KIND)
                pT = tl.math.exp2(sT - lg[None, :])  # Pᵀ = exp(S − L)ᵀ, final at once; 0 where masked
                dpT = tl.dot(v, tl.trans(do), input_precision=PREC)  # dP̂ᵀ = V_j dO_iᵀ, of the dropped P̂
                if DROPOUT:  # P̂ = P ∘ Z/(1-p): the same Z as the forward, drawn again
                    keepT = _keep_tile(seed, bh, Nq, Nk, offs_m[None, :], offs_n[:, None], p_drop)
                    p_hatT = tl.where(keepT, pT, 0.0) * (1.0 / (1.0 - p_drop))
                    dpT = tl.where(keepT, dpT, 0.0) * (1.0 / (1.0 - p_drop))  # dP = dP̂ ∘ Z/(1-p)
                else:
                    p_hatT = pT
                dv += tl.dot(p_hatT.to(do.dtype), do, input_precision=PREC)  # dV_j += P̂ᵀ dO_i
                dsT = pT * (dpT - Di[None, :])  # dSᵀ = Pᵀ ∘ (dPᵀ − D)
                dk += tl.dot(dsT.to(q.dtype), q, input_precision=PREC)  # dK_j += dSᵀ Q_i
        dk = dk * scale
        rows = offs_n[:, None] < Nk
        out_k = bhk.to(tl.int64) * Nk * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]  # dK contiguous
        tl.store(dK + out_k, dk.to(dK.dtype.element_ty), mask=rows & (offs_d[None, :] < HEAD_DIM))
        out_v = bhk.to(tl.int64) * Nk * HEAD_DIM_V + offs_n[:, None] * HEAD_DIM_V + offs_dv[None, :]
        tl.store(dV + out_v, dv.to(dV.dtype.element_ty), mask=rows & (offs_dv[None, :] < HEAD_DIM_V))

    @triton.jit
    def _sdpa_dq_kernel(
        Q, K, V, Mask, dO, Lg, D, dQ,
        stride_qb, stride_qh, stride_qm,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_mb, stride_mh, stride_mm, stride_mn,
        stride_dob, stride_doh, stride_dom,
        H, GROUP, Nq, Nk, qk_scale, scale, p_drop, seed,
        HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One program: B_r query rows of one (batch, head); dQ_i = scale · Σ_j dS_ij K_j."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        h_kv = h // GROUP
        start_m = pid_m * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        q = _load_tile(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                       offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, True)  # (B_r, d)
        do = _load_tile(dO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh + offs_m[:, None] * stride_dom + offs_dv[None, :],
                        offs_m, Nq, offs_dv, HEAD_DIM_V, BLOCK_DV, True)  # (B_r, d_v)
        lg = tl.load(Lg + bh * Nq + offs_m, mask=offs_m < Nq, other=float("inf"))  # (B_r,)
        Di = tl.load(D + bh * Nq + offs_m, mask=offs_m < Nq, other=0.0)
        K += b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
        V += b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        hi = Nk
        if IS_CAUSAL:
            hi = tl.minimum(Nk, start_m + BLOCK_M)
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + offs_n0
            k = _load_tile(K + offs_n[:, None] * stride_kn + offs_d[None, :], offs_n, Nk, offs_d,
                           HEAD_DIM, BLOCK_D, True)  # (B_c, d)
            v = _load_tile(V + offs_n[:, None] * stride_vn + offs_dv[None, :], offs_n, Nk, offs_dv,
                           HEAD_DIM_V, BLOCK_DV, True)  # (B_c, d_v)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            s = _visible_and_scores(s, Mask, b, h, offs_m[:, None], offs_n[None, :], Nq, Nk,
                                    stride_mb, stride_mh, stride_mm, stride_mn, IS_CAUSAL, MASK_KIND)
            p = tl.math.exp2(s - lg[:, None])  # P (B_r, B_c)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # dP̂ = dO Vᵀ
            if DROPOUT:
                keep = _keep_tile(seed, bh, Nq, Nk, offs_m[:, None], offs_n[None, :], p_drop)
                dp = tl.where(keep, dp, 0.0) * (1.0 / (1.0 - p_drop))
            ds = p * (dp - Di[:, None])  # dS = P ∘ (dP − D)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)  # dQ_i += dS K_j
        dq = dq * scale
        out = bh.to(tl.int64) * Nq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]  # dQ contiguous
        tl.store(dQ + out, dq.to(dQ.dtype.element_ty), mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < HEAD_DIM))

    @triton.jit
    def _keep_mask_kernel(Out, Nq, Nk, p_drop, seed, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Write the keep-mask the attention kernels draw, (B·H, Nq, Nk) uint8: for tests only."""
        bh = tl.program_id(2)
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        keep = _keep_tile(seed, bh, Nq, Nk, offs_m[:, None], offs_n[None, :], p_drop)
        ptrs = Out + (bh.to(tl.int64) * Nq + offs_m[:, None]) * Nk + offs_n[None, :]
        tl.store(ptrs, keep.to(tl.uint8), mask=(offs_m[:, None] < Nq) & (offs_n[None, :] < Nk))


# ------------------------------------------------------------------------------------------------
# The dropout random numbers without a GPU: Philox 4x32-10, as tl.rand computes it
# ------------------------------------------------------------------------------------------------
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_M32 = np.uint64(0xFFFFFFFF)


def philox_uniform(seed: int, offsets) -> np.ndarray:
    """tl.rand(seed, offsets) in NumPy: float32 uniforms in [0, 1), bit for bit.

    Philox is counter based: the number at `offset` is a fixed function of (seed, offset), 10
    rounds of multiply-and-xor on a 4×32-bit counter (offset_lo, offset_hi, 0, 0) under the key
    (seed_lo, seed_hi). uint64 holds every 32×32-bit product exactly, so hi/lo halves are exact.
    """
    offsets = np.asarray(offsets, dtype=np.int64).astype(np.uint64)
    c0 = offsets & _M32
    c1 = offsets >> np.uint64(32)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0 = np.uint64(seed & 0xFFFFFFFF)
    k1 = np.uint64((seed >> 32) & 0xFFFFFFFF)
    A, B = np.uint64(_PHILOX_ROUND_A), np.uint64(_PHILOX_ROUND_B)
    for _ in range(10):
        prod_b = B * c2  # < 2⁶⁴: exact
        prod_a = A * c0
        c0, c1, c2, c3 = (
            (prod_b >> np.uint64(32)) ^ c1 ^ k0,
            prod_b & _M32,
            (prod_a >> np.uint64(32)) ^ c3 ^ k1,
            prod_a & _M32,
        )
        k0 = (k0 + np.uint64(_PHILOX_KEY_A)) & _M32
        k1 = (k1 + np.uint64(_PHILOX_KEY_B)) & _M32
    # uint_to_uniform_float: read as int32, fold negatives with ~x, scale into [0, 1) in float32
    x = c0.astype(np.int64)
    x = np.where(x >= 2**31, (2**32 - 1) - x, x)
    return x.astype(np.float32) * np.float32(4.6566127342e-10)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (0 <= int(seed) < 2**63):
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return int(seed)


def dropout_keep_mask(seed: int, shape, dropout_p: float, device=None, *, method: str | None = None) -> torch.Tensor:
    """The keep-mask (True = keep) that the kernels draw for `seed`, shape (B, H, Nq, Nk).

    method "triton" runs the kernels' own random-number code (GPU, or the interpreter on CPU);
    "numpy" computes the same Philox numbers on the CPU (philox_uniform). Default: triton on a
    CUDA device, numpy elsewhere. Element (b, h, i, j) is kept when
    uniform(seed, ((b·H + h)·Nq + i)·Nk + j) >= dropout_p.
    """
    seed = _check_seed(seed)
    check_dropout_p(dropout_p)
    if len(shape) != 4:
        raise ValueError(f"shape must be (B, H, Nq, Nk), got {tuple(shape)}")
    B, H, Nq, Nk = (int(s) for s in shape)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if method is None:
        method = "triton" if dev.type == "cuda" else "numpy"
    if method == "numpy":
        idx = np.arange(B * H * Nq * Nk, dtype=np.int64)
        keep = philox_uniform(seed, idx) >= np.float32(dropout_p)
        return torch.from_numpy(keep.reshape(B, H, Nq, Nk)).to(dev)
    if method != "triton":
        raise ValueError(f"method must be 'triton' or 'numpy', got {method!r}")
    kdev.require_triton("dropout_keep_mask(method='triton')")
    out = torch.empty((B, H, Nq, Nk), dtype=torch.uint8, device=dev)
    if out.numel():
        BM = BN = 16 if kdev.TRITON_INTERPRET else 64
        grid = (triton.cdiv(Nq, BM), triton.cdiv(Nk, BN), B * H)
        _keep_mask_kernel[grid](out, Nq, Nk, float(dropout_p), seed, BLOCK_M=BM, BLOCK_N=BN)
    return out.bool()


# ------------------------------------------------------------------------------------------------
# Python entry points
# ------------------------------------------------------------------------------------------------
class KernelBlocks:
    """Block sizes and launch parameters: (B_r, B_c, num_warps, num_stages) per kernel.

    Defaults depend on the head dim (the accumulator tile is B_r × d floats in registers) and on
    where the kernels run (under the interpreter small tiles keep tiny tests fast).
    """

    def __init__(self, fwd=None, dkdv=None, dq=None):
        self.fwd, self.dkdv, self.dq = fwd, dkdv, dq

    @staticmethod
    def default(block_d: int, dtype: torch.dtype = torch.float16) -> "KernelBlocks":
        """Launch parameters for a padded head dim and dtype. Shared memory bounds them: with
        num_stages = s the kernel keeps s copies of the streamed tiles, and fp32 tiles are twice
        the bytes (the H100 has 228 KB per SM)."""
        if kdev.TRITON_INTERPRET:
            return KernelBlocks((16, 16, 4, 1), (16, 16, 4, 1), (16, 16, 4, 1))
        if dtype == torch.float32:
            if block_d <= 64:
                return KernelBlocks((64, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2))
            if block_d <= 128:
                return KernelBlocks((64, 32, 4, 2), (32, 32, 4, 2), (32, 32, 4, 2))
            return KernelBlocks((32, 32, 4, 1), (32, 32, 4, 1), (32, 32, 4, 1))
        if block_d <= 64:
            return KernelBlocks((128, 64, 4, 3), (32, 64, 4, 3), (64, 32, 4, 3))
        if block_d <= 128:
            return KernelBlocks((128, 64, 8, 3), (32, 64, 4, 2), (64, 32, 4, 2))
        return KernelBlocks((64, 32, 4, 2), (32, 32, 4, 1), (32, 32, 4, 1))

    def with_blocks(self, B_r=None, B_c=None) -> "KernelBlocks":
        """The same launch with B_r / B_c pinned for every kernel (AttentionConfig's block sizes)."""
        def pin(cfg):
            m, n, w, s = cfg
            return (B_r or m, B_c or n, w, s)
        return KernelBlocks(pin(self.fwd), pin(self.dkdv), pin(self.dq))

    def __repr__(self):
        return f"KernelBlocks(fwd={self.fwd}, dkdv={self.dkdv}, dq={self.dq})"


def _check_block(name, b):
    if isinstance(b, bool) or not isinstance(b, int) or b < 16 or b & (b - 1):
        raise ValueError(f"{name} must be a power of two >= 16 for the Triton kernels (tl.dot on a GPU), got {b!r}")


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels take any batch/head/row strides but need the head dim contiguous."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _mask_view(attn_mask, B, H, Nq, Nk):
    """(kind, view, strides): the mask as a (B, H, Nq, Nk) view with stride 0 on broadcast dims.

    `expand` makes a view, not a copy: memory stays the mask's own. Booleans are viewed as uint8
    (the same bytes), because the kernels load bytes.
    """
    if attn_mask is None:
        return MASK_NONE, None, (0, 0, 0, 0)
    m = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    m = m.expand(B, H, Nq, Nk)
    strides = tuple(0 if m.shape[i] == 1 else m.stride(i) for i in range(4))
    if attn_mask.dtype == torch.bool:
        return MASK_BOOL, m.view(torch.uint8), strides
    return MASK_ADD, m, strides


def _check_launch(q, k, v):
    kdev.require_triton("the Triton attention kernels")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the Triton kernels take float16, bfloat16 or float32, got {q.dtype} (use backend='reference')")
    if q.device.type == "cpu":
        if not kdev.TRITON_INTERPRET:
            raise ValueError("CPU tensors need the Triton interpreter (TRITON_INTERPRET=1, set by importing kernels first)")
        if q.dtype == torch.bfloat16:
            raise TypeError("bfloat16 is computed wrongly by the Triton interpreter: on the CPU use float16 or float32")
    elif q.device.type != "cuda":
        raise ValueError(f"the Triton kernels need tensors on cuda (or cpu under the interpreter), got {q.device}")
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.shape[-1] > MAX_HEAD_DIM:
            raise ValueError(f"{name} head dim {t.shape[-1]} is not supported by the Triton kernels (at most {MAX_HEAD_DIM})")


def sdpa_forward(q, k, v, attn_mask=None, *, is_causal=False, scale=None, dropout_p=0.0, seed=0,
                 blocks: KernelBlocks | None = None):
    """O (B, H, Nq, d_v) in the inputs' dtype and L (B, H, Nq) float32 (natural log).

    q (B, H, Nq, d), k (B, H_kv, Nk, d), v (B, H_kv, Nk, d_v) with H % H_kv == 0; attn_mask bool
    or additive, broadcastable to (B, H, Nq, Nk); dropout with keep-mask dropout_keep_mask(seed).
    """
    check_qkv(q, k, v, enable_gqa=True)
    check_scale(scale)
    check_dropout_p(dropout_p)
    B, H, Nq, d = q.shape
    H_kv, Nk, d_v = k.shape[1], k.shape[2], v.shape[3]
    check_mask("attn_mask", attn_mask, (B, H, Nq, Nk), q.device)
    _check_launch(q, k, v)
    seed = _check_seed(seed)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    O = torch.empty((B, H, Nq, d_v), dtype=q.dtype, device=q.device)  # (B, H, Nq, d_v)
    L = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device)  # (B, H, Nq)
    if O.numel() == 0 or L.numel() == 0 or Nk == 0:
        return O.zero_(), L.fill_(float("-inf"))  # no key at all: every row is fully masked
    q, k, v = (_rows_contiguous(t) for t in (q, k, v))
    kind, mask, ms = _mask_view(attn_mask, B, H, Nq, Nk)
    BLOCK_D = max(16, triton.next_power_of_2(d))
    BLOCK_DV = max(16, triton.next_power_of_2(d_v))
    blocks = blocks or KernelBlocks.default(max(BLOCK_D, BLOCK_DV), q.dtype)
    BM, BN, warps, stages = blocks.fwd
    _check_block("B_r", BM)
    _check_block("B_c", BN)
    _sdpa_fwd_kernel[(triton.cdiv(Nq, BM), B * H)](
        q, k, v, mask if mask is not None else q, O, L,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        *ms,
        O.stride(0), O.stride(1), O.stride(2),
        H, H // H_kv, Nq, Nk, scale * LOG2E, float(dropout_p), seed,
        HEAD_DIM=d, HEAD_DIM_V=d_v, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV,
        IS_CAUSAL=bool(is_causal), MASK_KIND=kind, DROPOUT=dropout_p > 0.0,
        PREC="ieee" if q.dtype == torch.float32 else "tf32",
        BLOCK_M=BM, BLOCK_N=BN, num_warps=warps, num_stages=stages,
    )
    return O, L


def sdpa_backward(q, k, v, O, L, dO, attn_mask=None, *, is_causal=False, scale=None, dropout_p=0.0, seed=0,
                  blocks: KernelBlocks | None = None):
    """(dQ, dK, dV) of sdpa_forward given its O, L and the gradient dO; dK, dV have K/V's heads."""
    B, H, Nq, d = q.shape
    H_kv, Nk, d_v = k.shape[1], k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    dQ = torch.zeros((B, H, Nq, d), dtype=q.dtype, device=q.device)  # (B, H, Nq, d)
    dK = torch.zeros((B, H_kv, Nk, d), dtype=k.dtype, device=q.device)  # (B, H_kv, Nk, d)
    dV = torch.zeros((B, H_kv, Nk, d_v), dtype=v.dtype, device=q.device)  # (B, H_kv, Nk, d_v)
    if B * H == 0 or Nq == 0 or Nk == 0:
        return dQ, dK, dV
    q, k, v, O, dO = (_rows_contiguous(t) for t in (q, k, v, O, dO))
    kind, mask, ms = _mask_view(attn_mask, B, H, Nq, Nk)
    BLOCK_D = max(16, triton.next_power_of_2(d))
    BLOCK_DV = max(16, triton.next_power_of_2(d_v))
    blocks = blocks or KernelBlocks.default(max(BLOCK_D, BLOCK_DV), q.dtype)

    # D = rowsum(dO ∘ O) and L·log2 e (-inf -> +inf), (B·H, Nq): lesson 04's preprocessing kernel.
    # With dropout O is the dropped output, and rowsum(dO ∘ O) still equals rowsum(P ∘ dP).
    D = torch.empty((B * H, Nq), dtype=torch.float32, device=q.device)  # (B·H, Nq)
    Lg = torch.empty((B * H, Nq), dtype=torch.float32, device=q.device)  # (B·H, Nq)
    PRE_M = 16 if kdev.TRITON_INTERPRET else (64 if BLOCK_DV <= 64 else 32)
    _bwd_preprocess_kernel[(triton.cdiv(Nq, PRE_M), B * H)](
        O, dO, L, D, Lg,
        O.stride(0), O.stride(1), O.stride(2),
        dO.stride(0), dO.stride(1), dO.stride(2),
        L.stride(0), L.stride(1), L.stride(2),
        H, Nq, HEAD_DIM=d_v, BLOCK_M=PRE_M, BLOCK_D=BLOCK_DV,
    )
    args = (
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        *ms,
        dO.stride(0), dO.stride(1), dO.stride(2),
    )
    meta = dict(HEAD_DIM=d, HEAD_DIM_V=d_v, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV,
                IS_CAUSAL=bool(is_causal), MASK_KIND=kind, DROPOUT=dropout_p > 0.0,
                PREC="ieee" if q.dtype == torch.float32 else "tf32")
    mask_arg = mask if mask is not None else q
    qk_scale, p, G = scale * LOG2E, float(dropout_p), H // H_kv
    m1, n1, w1, s1 = blocks.dkdv
    _sdpa_dkdv_kernel[(triton.cdiv(Nk, n1), B * H_kv)](
        q, k, v, mask_arg, dO, Lg, D, dK, dV, *args, H, H_kv, G, Nq, Nk, qk_scale, scale, p, seed,
        **meta, BLOCK_M=m1, BLOCK_N=n1, num_warps=w1, num_stages=s1,
    )
    m2, n2, w2, s2 = blocks.dq
    _sdpa_dq_kernel[(triton.cdiv(Nq, m2), B * H)](
        q, k, v, mask_arg, dO, Lg, D, dQ, *args, H, G, Nq, Nk, qk_scale, scale, p, seed,
        **meta, BLOCK_M=m2, BLOCK_N=n2, num_warps=w2, num_stages=s2,
    )
    return dQ, dK, dV


class SDPAFunction(torch.autograd.Function):
    """Attention with the general Triton forward and backward.

    Saves Q, K, V, O, L, the mask as given (not expanded) and the dropout seed: O(N·d) memory
    per head beyond the mask the caller already holds; the keep-mask is drawn again, not saved.
    """

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, is_causal, scale, dropout_p, seed, blocks):
        O, L = sdpa_forward(q, k, v, attn_mask, is_causal=is_causal, scale=scale, dropout_p=dropout_p,
                            seed=seed, blocks=blocks)
        ctx.save_for_backward(q, k, v, O, L, attn_mask)
        ctx.opts = dict(is_causal=is_causal, scale=scale, dropout_p=dropout_p, seed=seed, blocks=blocks)
        ctx.mark_non_differentiable(L)
        return O, L

    @staticmethod
    def backward(ctx, dO, dL):
        q, k, v, O, L, attn_mask = ctx.saved_tensors
        dQ, dK, dV = sdpa_backward(q, k, v, O, L, dO, attn_mask, **ctx.opts)
        return dQ, dK, dV, None, None, None, None, None, None


def sdpa(q, k, v, attn_mask=None, *, is_causal=False, scale=None, dropout_p=0.0, seed=0,
         blocks: KernelBlocks | None = None, return_lse=False):
    """Differentiable attention (B, H, N, d) with the general Triton kernels (no gradient to the mask)."""
    if attn_mask is not None and attn_mask.requires_grad and torch.is_grad_enabled():
        raise ValueError("attn_mask requires grad, but the Triton kernels give no gradient for the mask "
                         "(use backend='reference')")
    O, L = SDPAFunction.apply(q, k, v, attn_mask, bool(is_causal), scale, float(dropout_p), seed, blocks)
    return (O, L) if return_lse else O
