"""The FlashAttention backward pass in Triton, and `flash_attention`, a differentiable attention.

Three kernels, FlashAttention-2's split of the work, with no atomics (so results are
deterministic, bit for bit, run after run):

1. `_bwd_preprocess_kernel`: D_i = rowsum(dO_i ∘ O_i), and L in base 2 (L·log2 e), one pass over
   O and dO. Rows whose L is -inf (every key masked) get +inf, so that P = exp2(s - inf) = 0.
2. `_bwd_dkdv_kernel`: one program per block of B_c keys (K_j, V_j stay in registers); it walks
   the query blocks i, rebuilds Pᵀ_ij = exp2(log2e·scale·K_j Q_iᵀ − L_i) and accumulates
   dV_j += Pᵀ dO_i and dK_j += dSᵀ Q_i, written once at the end. It works with the transposed
   tile Sᵀ (B_c, B_r) so that every matrix product has the key block as its left operand.
3. `_bwd_dq_kernel`: one program per block of B_r queries; it walks the key blocks j and
   accumulates dQ_i += dS_ij K_j.

Kernels 2 and 3 both recompute S, P and dP (7 matrix products per tile instead of 5): that is the
price of writing dQ without atomic additions from many programs.

Causal masking (top-left: key j visible to query i when j <= i): tiles wholly above the diagonal
are skipped, tiles wholly below run without any mask, and only the diagonal tiles and the
ragged tail (N not a multiple of the block) pay for masks: the `MASK` constexpr of the inner loops.

exp2 instead of exp: scale·log2(e) is folded into one multiplier (qk_scale) and L is converted to
base 2 once, so each score costs one fused multiply-add and one exp2.

The kernels' bodies are @triton.jit functions (`_dkdv_program`, `_dq_program`) so that they can be
compiled two ways: `_bwd_dkdv_kernel` and `_bwd_dq_kernel` take the lengths and strides as run-time
arguments (one binary serves every length), `_bwd_static_kernel` takes them as compile-time
constants (one binary per shape, as torch.compile does for FlexAttention). The second is faster on
long sequences at d = 64 and 128 (H100); `static_by_default` says where it is used and `STATIC_TILES`
with which tiles.

Reference path: kernels.tiled_backward.backward_fa2 (the same algorithm in PyTorch) and
kernels.reference.attention_backward (autograd through naive attention).
"""

from __future__ import annotations

import math
import os

import torch

from . import device
from .validation import check_qkv, check_scale, check_tensor

if device.HAS_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - platforms without triton wheels
    triton = tl = None

__all__ = ["attention_backward", "flash_attention", "FlashAttention", "BackwardConfig", "FORWARDS"]

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x · log2 e)

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


# ------------------------------------------------------------------------------------------------
# Triton kernels
# ------------------------------------------------------------------------------------------------
if device.HAS_TRITON:

    @triton.jit
    def _load_tile(ptrs, offs_rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   CHECK_ROWS: tl.constexpr):
        """Load a (rows, BLOCK_D) tile; masked only where it can run past an edge: the rows (when
        CHECK_ROWS) and the head dim (when BLOCK_D pads it to a power of two). Masked lanes read 0."""
        if CHECK_ROWS:
            if BLOCK_D == HEAD_DIM:
                tile = tl.load(ptrs, mask=offs_rows[:, None] < n_rows, other=0.0)
            else:
                tile = tl.load(ptrs, mask=(offs_rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        else:
            if BLOCK_D == HEAD_DIM:
                tile = tl.load(ptrs)
            else:
                tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        return tile

    @triton.jit
    def _bwd_preprocess_kernel(
        O, dO, L, D, Lg,
        stride_ob, stride_oh, stride_om,
        stride_dob, stride_doh, stride_dom,
        stride_lb, stride_lh, stride_lm,
        H, Nq,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """D = rowsum(dO ∘ O) in float32 and Lg = L · log2(e) (with -inf -> +inf), both (B·H, Nq)."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)  # int64 offsets: B·H·N·d may pass 2³¹
        h = (bh % H).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        o = _load_tile(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                       offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, True)
        do = _load_tile(dO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                        offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, True)
        Di = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)  # (BLOCK_M,)
        rows = offs_m < Nq
        tl.store(D + bh * Nq + offs_m, Di, mask=rows)
        l = tl.load(L + b * stride_lb + h * stride_lh + offs_m * stride_lm, mask=rows, other=0.0).to(tl.float32)
        lg = tl.where(l == float("-inf"), float("inf"), l * 1.4426950408889634)
        tl.store(Lg + bh * Nq + offs_m, lg, mask=rows)

    @triton.jit
    def _dkdv_inner(
        dk, dv, k, v,
        Q, dO, Lg, D, q_desc, do_desc,
        stride_qm, stride_dom,
        offs_n, offs_d, lo, hi, Nq, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
        MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr, USE_TMA: tl.constexpr,
    ):
        """Accumulate dK_j, dV_j over the query blocks starting at lo, lo + B_r, ... < hi.

        Works on transposed tiles (B_c, B_r): Sᵀ = K_j Q_iᵀ. MASK: check query rows against Nq
        (padded rows get L = +inf, hence P = 0) and, when causal, hide keys above the diagonal.
        USE_TMA: Q_i and dO_i come through TMA descriptors (zero-filled past Nq and d), not pointers.
        """
        offs_m0 = tl.arange(0, BLOCK_M)
        for start_m in range(lo, hi, BLOCK_M):
            start_m = tl.multiple_of(start_m, BLOCK_M)
            offs_m = start_m + offs_m0
            if USE_TMA:
                q = q_desc.load([start_m, 0])  # (B_r, BLOCK_D)
                do = do_desc.load([start_m, 0])
            else:
                q = _load_tile(Q + offs_m[:, None] * stride_qm + offs_d[None, :], offs_m, Nq, offs_d,
                               HEAD_DIM, BLOCK_D, MASK)  # (B_r, d)
                do = _load_tile(dO + offs_m[:, None] * stride_dom + offs_d[None, :], offs_m, Nq, offs_d,
                                HEAD_DIM, BLOCK_D, MASK)  # (B_r, d)
            if MASK:
                lg = tl.load(Lg + offs_m, mask=offs_m < Nq, other=float("inf"))  # (B_r,)
                Di = tl.load(D + offs_m, mask=offs_m < Nq, other=0.0)
            else:
                lg = tl.load(Lg + offs_m)
                Di = tl.load(D + offs_m)
            sT = tl.dot(k, tl.trans(q), input_precision=PREC)  # (B_c, B_r) = (K_j Q_iᵀ)
            pT = tl.math.exp2(sT * qk_scale - lg[None, :])  # Pᵀ, rebuilt from L: final at once
            if MASK:
                if IS_CAUSAL:
                    pT = tl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
            dv += tl.dot(pT.to(do.dtype), do, input_precision=PREC)  # dV_j += Pᵀ dO_i
            dpT = tl.dot(v, tl.trans(do), input_precision=PREC)  # dPᵀ = V_j dO_iᵀ
            dsT = pT * (dpT - Di[None, :])  # dSᵀ = Pᵀ ∘ (dPᵀ − D)
            dk += tl.dot(dsT.to(q.dtype), q, input_precision=PREC)  # dK_j += dSᵀ Q_i (scale later)
        return dk, dv

    @triton.jit
    def _dq_block(dq, q, do, lg, Di, k, v, offs_m, offs_n, Nk, qk_scale,
                  MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr):
        """One step of the dQ loop: fold key block j (k = K_j, v = V_j, columns offs_n) into dQ_i."""
        s = tl.dot(q, tl.trans(k), input_precision=PREC)  # (B_r, B_c) = Q_i K_jᵀ
        p = tl.math.exp2(s * qk_scale - lg[:, None])  # P_ij = exp(scale·s − L_i)
        if MASK:
            visible = offs_n[None, :] < Nk
            if IS_CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # dP = dO_i V_jᵀ
        ds = p * (dp - Di[:, None])  # dS = P ∘ (dP − D)
        return dq + tl.dot(ds.to(k.dtype), k, input_precision=PREC)  # dQ_i += dS K_j

    @triton.jit
    def _dq_inner(
        dq, q, do, lg, Di,
        K, V, stride_kn, stride_vn,
        offs_m, offs_d, lo, hi, Nk, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr,
    ):
        """Accumulate dQ_i (without the final ·scale) over key blocks lo, lo + B_c, ... < hi.

        dq (B_r, BLOCK_D) float32; q, do (B_r, BLOCK_D); lg = L_i·log2 e and Di (B_r,). K, V point at
        row 0 of this (batch, head); rows are stride_kn / stride_vn apart, the head dim is
        contiguous and HEAD_DIM wide (BLOCK_D >= HEAD_DIM, padded lanes must read 0).
        MASK: keys j >= Nk (and, when IS_CAUSAL, keys j > i) must get P = 0; when MASK is False every
        key of every block is in bounds and visible. (Lesson 04's exercise writes this loop.)
        """
        offs_n0 = tl.arange(0, BLOCK_N)
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            offs_n = start_n + offs_n0
            k = _load_tile(K + offs_n[:, None] * stride_kn + offs_d[None, :], offs_n, Nk, offs_d,
                           HEAD_DIM, BLOCK_D, MASK)  # (B_c, d)
            v = _load_tile(V + offs_n[:, None] * stride_vn + offs_d[None, :], offs_n, Nk, offs_d,
                           HEAD_DIM, BLOCK_D, MASK)  # (B_c, d)
            dq = _dq_block(dq, q, do, lg, Di, k, v, offs_m, offs_n, Nk, qk_scale, MASK, IS_CAUSAL, PREC)
        return dq

    @triton.jit
    def _dq_inner_tma(dq, q, do, lg, Di, k_desc, v_desc, offs_m, lo, hi, Nk, qk_scale,
                      BLOCK_N: tl.constexpr, MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr):
        """_dq_inner with K_j, V_j moved by TMA descriptors (zero-filled past Nk and d)."""
        offs_n0 = tl.arange(0, BLOCK_N)
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            k = k_desc.load([start_n, 0])  # (B_c, BLOCK_D)
            v = v_desc.load([start_n, 0])
            dq = _dq_block(dq, q, do, lg, Di, k, v, offs_m, start_n + offs_n0, Nk, qk_scale, MASK, IS_CAUSAL, PREC)
        return dq

    @triton.jit
    def _dq_range(
        dq, q, do, lg, Di,
        K, V, k_desc, v_desc, stride_kn, stride_vn,
        offs_m, offs_d, lo, hi, Nk, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr, USE_TMA: tl.constexpr,
    ):
        """The dQ kernel's loop over key blocks [lo, hi): by TMA or by pointers."""
        if USE_TMA:
            dq = _dq_inner_tma(dq, q, do, lg, Di, k_desc, v_desc, offs_m, lo, hi, Nk, qk_scale,
                               BLOCK_N, MASK, IS_CAUSAL, PREC)
        else:
            dq = _dq_inner(dq, q, do, lg, Di, K, V, stride_kn, stride_vn, offs_m, offs_d, lo, hi, Nk, qk_scale,
                           HEAD_DIM, BLOCK_N, BLOCK_D, MASK, IS_CAUSAL, PREC)
        return dq

    @triton.jit
    def _dkdv_program(
        Q, K, V, dO, Lg, D, dK, dV,
        stride_qb, stride_qh, stride_qm,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_dob, stride_doh, stride_dom,
        H, Nq, Nk, qk_scale, scale, pid_n, bh,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr,
    ):
        """dK_j, dV_j for keys [pid_n·B_c, (pid_n + 1)·B_c) of (batch, head) bh (int64). Needs B_c % B_r == 0."""
        b = bh // H
        h = bh % H
        start_n = pid_n * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        Q += b * stride_qb + h * stride_qh
        dO += b * stride_dob + h * stride_doh
        Lg += bh * Nq
        D += bh * Nq
        if USE_TMA:  # this head's (Nq, d) matrices, moved by the TMA engine in (B_r, BLOCK_D) tiles
            q_desc = tl.make_tensor_descriptor(Q, shape=[Nq, HEAD_DIM], strides=[stride_qm, 1],
                                               block_shape=[BLOCK_M, BLOCK_D])
            do_desc = tl.make_tensor_descriptor(dO, shape=[Nq, HEAD_DIM], strides=[stride_dom, 1],
                                                block_shape=[BLOCK_M, BLOCK_D])
        else:
            q_desc, do_desc = Q, dO
        k = _load_tile(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                       offs_n, Nk, offs_d, HEAD_DIM, BLOCK_D, True)  # (B_c, d), stays on chip
        v = _load_tile(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                       offs_n, Nk, offs_d, HEAD_DIM, BLOCK_D, True)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        Nq_full = (Nq // BLOCK_M) * BLOCK_M  # query blocks below this need no row check
        if IS_CAUSAL:
            # rows i < start_n see none of these keys: start at the diagonal.
            diag_hi = tl.minimum(start_n + BLOCK_N, Nq)
            dk, dv = _dkdv_inner(dk, dv, k, v, Q, dO, Lg, D, q_desc, do_desc, stride_qm, stride_dom, offs_n, offs_d,
                                 start_n, diag_hi, Nq, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_D, True, True, PREC, USE_TMA)
            below_lo = start_n + BLOCK_N  # every row of these blocks sees every key of this block
            dk, dv = _dkdv_inner(dk, dv, k, v, Q, dO, Lg, D, q_desc, do_desc, stride_qm, stride_dom, offs_n, offs_d,
                                 below_lo, Nq_full, Nq, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_D, False, True, PREC, USE_TMA)
            dk, dv = _dkdv_inner(dk, dv, k, v, Q, dO, Lg, D, q_desc, do_desc, stride_qm, stride_dom, offs_n, offs_d,
                                 tl.maximum(below_lo, Nq_full), Nq, Nq, qk_scale,
                                 HEAD_DIM, BLOCK_M, BLOCK_D, True, True, PREC, USE_TMA)
        else:
            dk, dv = _dkdv_inner(dk, dv, k, v, Q, dO, Lg, D, q_desc, do_desc, stride_qm, stride_dom, offs_n, offs_d,
                                 0, Nq_full, Nq, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_D, False, False, PREC, USE_TMA)
            dk, dv = _dkdv_inner(dk, dv, k, v, Q, dO, Lg, D, q_desc, do_desc, stride_qm, stride_dom, offs_n, offs_d,
                                 Nq_full, Nq, Nq, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_D, True, False, PREC, USE_TMA)
        dk = dk * scale
        out = bh * Nk * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]  # dK, dV contiguous
        ok = (offs_n[:, None] < Nk) & (offs_d[None, :] < HEAD_DIM)
        tl.store(dK + out, dk.to(dK.dtype.element_ty), mask=ok)
        tl.store(dV + out, dv.to(dV.dtype.element_ty), mask=ok)

    @triton.jit
    def _dq_program(
        Q, K, V, dO, Lg, D, dQ,
        stride_qb, stride_qh, stride_qm,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_dob, stride_doh, stride_dom,
        H, Nq, Nk, qk_scale, scale, pid_m, bh,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr,
    ):
        """dQ_i for queries [pid_m·B_r, (pid_m + 1)·B_r) of (batch, head) bh (int64). Needs B_r % B_c == 0."""
        b = bh // H
        h = bh % H
        start_m = pid_m * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        q = _load_tile(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                       offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, True)  # (B_r, d)
        do = _load_tile(dO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                        offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, True)
        lg = tl.load(Lg + bh * Nq + offs_m, mask=offs_m < Nq, other=float("inf"))  # (B_r,)
        Di = tl.load(D + bh * Nq + offs_m, mask=offs_m < Nq, other=0.0)
        K += b * stride_kb + h * stride_kh
        V += b * stride_vb + h * stride_vh
        if USE_TMA:
            k_desc = tl.make_tensor_descriptor(K, shape=[Nk, HEAD_DIM], strides=[stride_kn, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])
            v_desc = tl.make_tensor_descriptor(V, shape=[Nk, HEAD_DIM], strides=[stride_vn, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])
        else:
            k_desc, v_desc = K, V
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        Nk_full = (Nk // BLOCK_N) * BLOCK_N  # key blocks below this need no bounds check
        if IS_CAUSAL:
            below_hi = tl.minimum(start_m, Nk_full)  # keys j < start_m <= i: all visible
            dq = _dq_range(dq, q, do, lg, Di, K, V, k_desc, v_desc, stride_kn, stride_vn, offs_m, offs_d, 0, below_hi, Nk,
                           qk_scale, HEAD_DIM, BLOCK_N, BLOCK_D, False, True, PREC, USE_TMA)
            dq = _dq_range(dq, q, do, lg, Di, K, V, k_desc, v_desc, stride_kn, stride_vn, offs_m, offs_d, below_hi,
                           tl.minimum(start_m + BLOCK_M, Nk), Nk, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_D,
                           True, True, PREC, USE_TMA)
        else:
            dq = _dq_range(dq, q, do, lg, Di, K, V, k_desc, v_desc, stride_kn, stride_vn, offs_m, offs_d, 0, Nk_full, Nk,
                           qk_scale, HEAD_DIM, BLOCK_N, BLOCK_D, False, False, PREC, USE_TMA)
            dq = _dq_range(dq, q, do, lg, Di, K, V, k_desc, v_desc, stride_kn, stride_vn, offs_m, offs_d, Nk_full, Nk, Nk,
                           qk_scale, HEAD_DIM, BLOCK_N, BLOCK_D, True, False, PREC, USE_TMA)
        dq = dq * scale
        out = bh * Nq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]  # dQ contiguous
        tl.store(dQ + out, dq.to(dQ.dtype.element_ty), mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < HEAD_DIM))

    @triton.jit(do_not_specialize=["Nq", "Nk", "N_KEY"])
    def _bwd_dkdv_kernel(
        Q, K, V, dO, Lg, D, dK, dV,
        stride_qb, stride_qh, stride_qm,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_dob, stride_doh, stride_dom,
        H, Nq, Nk, qk_scale, scale, N_KEY,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr = False,
    ):
        """Grid (cdiv(Nk, B_c), B·H): one program per key block."""
        _dkdv_program(Q, K, V, dO, Lg, D, dK, dV,
                      stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                      stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                      H, Nq, Nk, qk_scale, scale, tl.program_id(0), tl.program_id(1).to(tl.int64),
                      HEAD_DIM, BLOCK_D, IS_CAUSAL, PREC, BLOCK_M, BLOCK_N, USE_TMA)

    @triton.jit(do_not_specialize=["Nq", "Nk", "N_KEY"])
    def _bwd_dq_kernel(
        Q, K, V, dO, Lg, D, dQ,
        stride_qb, stride_qh, stride_qm,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_dob, stride_doh, stride_dom,
        H, Nq, Nk, qk_scale, scale, N_KEY,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr = False,
    ):
        """Grid (cdiv(Nq, B_r), B·H): one program per query block."""
        pid_m = tl.program_id(0)
        if IS_CAUSAL:  # the last query blocks do the most work: launch them first
            pid_m = tl.num_programs(0) - 1 - pid_m
        _dq_program(Q, K, V, dO, Lg, D, dQ,
                    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                    stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                    H, Nq, Nk, qk_scale, scale, pid_m, tl.program_id(1).to(tl.int64),
                    HEAD_DIM, BLOCK_D, IS_CAUSAL, PREC, BLOCK_M, BLOCK_N, USE_TMA)

    @triton.jit
    def _bwd_static_kernel(
        Q, K, V, dO, Lg, D, dQ, dK, dV,
        stride_qb: tl.constexpr, stride_qh: tl.constexpr, stride_qm: tl.constexpr,
        stride_kb: tl.constexpr, stride_kh: tl.constexpr, stride_kn: tl.constexpr,
        stride_vb: tl.constexpr, stride_vh: tl.constexpr, stride_vn: tl.constexpr,
        stride_dob: tl.constexpr, stride_doh: tl.constexpr, stride_dom: tl.constexpr,
        H: tl.constexpr, Nq: tl.constexpr, Nk: tl.constexpr, qk_scale, scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
        USE_TMA: tl.constexpr, KIND: tl.constexpr,
    ):
        """The same two programs with every length and stride a compile-time constant, as in the code
        torch.compile generates for FlexAttention: one compilation per shape. The loop bounds are then
        constants, the diagonal and ragged-tail splits are resolved at compile time, and the address
        arithmetic folds into immediates. Same tiles, same run: +8 to +15 % at d = 128, +0 to +3 % at
        d = 64 causal (benchmarks/PERFORMANCE_backward.md, section 8).
        KIND 0: the dK/dV programs, grid (cdiv(Nk, B_c1), B·H); KIND 1: the dQ programs, grid
        (cdiv(Nq, B_r2), B·H); KIND 2: both in one launch, FlexAttention's layout, grid
        (cdiv(Nk, B_c1) + cdiv(Nq, B_r2), B·H), the key-block programs first."""
        pid = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        n_kv: tl.constexpr = (Nk + BLOCK_N1 - 1) // BLOCK_N1
        n_q: tl.constexpr = (Nq + BLOCK_M2 - 1) // BLOCK_M2
        if KIND == 1:  # (resolved at compile time: a KIND 0 or 1 binary holds one program only)
            is_dkdv = False
        elif KIND == 0:
            is_dkdv = True
        else:
            is_dkdv = pid < n_kv
        if is_dkdv:
            _dkdv_program(Q, K, V, dO, Lg, D, dK, dV,
                          stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                          H, Nq, Nk, qk_scale, scale, pid, bh,
                          HEAD_DIM, BLOCK_D, IS_CAUSAL, PREC, BLOCK_M1, BLOCK_N1, USE_TMA)
        else:
            pid_m = pid if KIND == 1 else pid - n_kv
            if IS_CAUSAL:  # heaviest query blocks first
                pid_m = n_q - 1 - pid_m
            _dq_program(Q, K, V, dO, Lg, D, dQ,
                        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                        stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                        H, Nq, Nk, qk_scale, scale, pid_m, bh,
                        HEAD_DIM, BLOCK_D, IS_CAUSAL, PREC, BLOCK_M2, BLOCK_N2, USE_TMA)


# ------------------------------------------------------------------------------------------------
# Configurations: one on the CPU (the interpreter), a tuned list on the GPU
# ------------------------------------------------------------------------------------------------
class BackwardConfig:
    """Block sizes and launch parameters of the two main kernels.

    dK/dV kernel: B_c = BLOCK_N1 keys per program, B_r = BLOCK_M1 queries per step (BLOCK_N1 %
    BLOCK_M1 == 0). dQ kernel: B_r = BLOCK_M2 queries per program, B_c = BLOCK_N2 keys per step
    (BLOCK_M2 % BLOCK_N2 == 0). fused: both programs in one launch (the static kernels only; they
    then share warps and stages).
    """

    def __init__(self, BLOCK_M1, BLOCK_N1, warps1, stages1, BLOCK_M2, BLOCK_N2, warps2, stages2, fused=False):
        if BLOCK_N1 % BLOCK_M1 or BLOCK_M2 % BLOCK_N2:
            raise ValueError("need BLOCK_N1 % BLOCK_M1 == 0 and BLOCK_M2 % BLOCK_N2 == 0 (diagonal blocks align)")
        for b in (BLOCK_M1, BLOCK_N1, BLOCK_M2, BLOCK_N2):
            if b < 16 or b & (b - 1):
                raise ValueError(f"block sizes must be powers of two >= 16 (tl.dot on a GPU), got {b}")
        if fused and (warps1, stages1) != (warps2, stages2):
            raise ValueError(f"fused=True runs both programs in one launch: warps and stages must match, got "
                             f"({warps1}, {stages1}) for dK/dV and ({warps2}, {stages2}) for dQ")
        self.dkdv = (BLOCK_M1, BLOCK_N1, warps1, stages1)
        self.dq = (BLOCK_M2, BLOCK_N2, warps2, stages2)
        self.fused = bool(fused)

    def __repr__(self):
        return f"BackwardConfig(dkdv={self.dkdv}, dq={self.dq}{', fused=True' if self.fused else ''})"

    def __eq__(self, other):
        return isinstance(other, BackwardConfig) and (self.dkdv, self.dq, self.fused) == (other.dkdv, other.dq, other.fused)

    def __hash__(self):
        return hash((self.dkdv, self.dq, self.fused))


#: The one configuration used under the interpreter.
CPU_CONFIG = BackwardConfig(16, 32, 4, 1, 32, 16, 4, 1)

#: Candidates (B_r, B_c, warps, stages) for each kernel on the H100, best first, per padded head dim
#: and causality (fp16/bf16). Chosen by `benchmarks/bench_backward.py --sweep`, which times each
#: kernel alone at N = 8192; the figures are in benchmarks/results/backward_h100.json and the
#: reasoning in benchmarks/PERFORMANCE_backward.md. The autotuner picks among them per length bucket.
TUNED = {
    (64, False): dict(dkdv=[(64, 128, 4, 3), (128, 128, 8, 3)], dq=[(128, 64, 8, 3), (128, 64, 8, 4)]),
    (64, True): dict(dkdv=[(64, 64, 4, 3), (32, 128, 4, 3)], dq=[(64, 32, 4, 3), (64, 64, 4, 3)]),
    (128, False): dict(dkdv=[(64, 128, 8, 3), (64, 128, 8, 4)], dq=[(128, 64, 8, 3), (128, 64, 8, 4)]),
    (128, True): dict(dkdv=[(64, 128, 8, 4), (64, 128, 8, 3)], dq=[(128, 64, 8, 4), (128, 64, 8, 3)]),
    # d up to 256: K_j, V_j and the two accumulators no longer fit large tiles
    (256, False): dict(dkdv=[(32, 64, 4, 2), (16, 32, 4, 2)], dq=[(64, 32, 4, 2), (32, 16, 4, 2)]),
    (256, True): dict(dkdv=[(32, 64, 4, 2), (16, 32, 4, 2)], dq=[(64, 32, 4, 2), (32, 16, 4, 2)]),
}
#: fp32 inputs use IEEE fp32 products (no tensor-core wgmma) and twice the bytes per element.
TUNED_FP32 = dict(dkdv=[(32, 64, 4, 2), (16, 32, 4, 2)], dq=[(64, 32, 4, 2), (32, 16, 4, 2)])


def _size_class(block_d: int) -> int:
    return 64 if block_d <= 64 else (128 if block_d <= 128 else 256)


def _padded_head_dim(d: int) -> int:
    """BLOCK_D: d rounded up to a power of two, at least 16 (tl.arange and tl.dot need one)."""
    return max(16, 1 << (max(d, 1) - 1).bit_length())


def candidates(kind: str, block_d: int, is_causal: bool, dtype: torch.dtype) -> list:
    """The tuned (B_r, B_c, warps, stages) list of kernel `kind` ("dkdv" or "dq")."""
    if dtype == torch.float32:
        return TUNED_FP32[kind]
    return TUNED[(_size_class(block_d), bool(is_causal))][kind]


def default_config(d: int, is_causal: bool = False, dtype: torch.dtype = torch.float16) -> BackwardConfig:
    """The configuration used without autotuning: CPU_CONFIG under the interpreter, else the first
    tuned candidate of each kernel."""
    if device.TRITON_INTERPRET:
        return CPU_CONFIG
    return _first_candidates(_padded_head_dim(d), is_causal, dtype)


def _first_candidates(block_d: int, is_causal: bool, dtype: torch.dtype = torch.float16) -> BackwardConfig:
    """The first tuned candidate of each kernel."""
    return BackwardConfig(*candidates("dkdv", block_d, is_causal, dtype)[0], *candidates("dq", block_d, is_causal, dtype)[0])


def _autotuning() -> bool:
    return device.HAS_TRITON and not device.TRITON_INTERPRET and os.environ.get("KERNELS_AUTOTUNE", "1") != "0"


_tuners: dict = {}


def _tuned_kernel(kind: str, block_d: int, is_causal: bool, dtype: torch.dtype):
    """One autotuner per (kernel, head-dim class, causality, fp32 or not), over its short list."""
    key = (kind, _size_class(block_d), bool(is_causal), dtype == torch.float32)
    if key not in _tuners:
        configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                   for m, n, w, s in candidates(kind, block_d, is_causal, dtype)]
        kernel = _bwd_dkdv_kernel if kind == "dkdv" else _bwd_dq_kernel
        _tuners[key] = triton.autotune(configs, key=["N_KEY", "HEAD_DIM", "USE_TMA"])(kernel)
    return _tuners[key]


# ------------------------------------------------------------------------------------------------
# Python entry points
# ------------------------------------------------------------------------------------------------
def _check_inputs(q, k, v, O, L, dO, scale):
    check_qkv(q, k, v, dtypes=_SUPPORTED)
    check_scale(scale)
    B, H, Nq, d = q.shape
    if v.shape[-1] != d:
        raise ValueError(f"value head dim must equal the query's d={d} for the Triton kernels, got value shape {tuple(v.shape)}")
    check_tensor("O", O, dtypes=_SUPPORTED)
    check_tensor("dO", dO, dtypes=_SUPPORTED)
    check_tensor("L", L, ndim=3)
    if tuple(O.shape) != (B, H, Nq, d):
        raise ValueError(f"O must have shape (B, H, Nq, d) = {(B, H, Nq, d)}, got {tuple(O.shape)}")
    if tuple(dO.shape) != tuple(O.shape):
        raise ValueError(f"dO must have O's shape {tuple(O.shape)}, got {tuple(dO.shape)}")
    if tuple(L.shape) != (B, H, Nq):
        raise ValueError(f"L must have shape (B, H, Nq) = {(B, H, Nq)}, got {tuple(L.shape)}")
    if O.dtype != q.dtype or dO.dtype != q.dtype:
        raise TypeError(f"O and dO must have the inputs' dtype {q.dtype}, got O {O.dtype} and dO {dO.dtype}")
    for name, t in (("O", O), ("dO", dO), ("L", L)):
        if t.device != q.device:
            raise ValueError(f"{name} must be on {q.device} like query, got {t.device}")
    if q.device.type == "cpu" and not device.TRITON_INTERPRET:
        raise ValueError("CPU tensors need the Triton interpreter (TRITON_INTERPRET=1, set by importing kernels first)")
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"tensors must be on cuda (or cpu under the interpreter), got {q.device}")


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels take any batch/head/row strides but need the head dim contiguous."""
    return t if t.stride(-1) == 1 else t.contiguous()


class _Problem:
    """Everything the two main kernels need, prepared once: the gradient buffers, D and L·log2 e
    from the preprocessing kernel, the strides and the compile-time constants."""

    def __init__(self, q, k, v, O, L, dO, is_causal, scale, use_tma=None):
        B, H, Nq, d = q.shape
        Nk = k.shape[2]
        self.B, self.H, self.Nq, self.Nk, self.d, self.dtype = B, H, Nq, Nk, d, q.dtype
        self.scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
        self.dQ = torch.empty((B, H, Nq, d), dtype=q.dtype, device=q.device)  # (B, H, Nq, d)
        self.dK = torch.empty((B, H, Nk, d), dtype=q.dtype, device=q.device)  # (B, H, Nk, d)
        self.dV = torch.empty((B, H, Nk, d), dtype=q.dtype, device=q.device)  # (B, H, Nk, d)
        self.empty = B * H == 0 or Nq == 0 or Nk == 0
        if self.empty:
            return
        q, k, v, O, dO = (_rows_contiguous(t) for t in (q, k, v, O, dO))
        self.q, self.k, self.v, self.dO = q, k, v, dO
        self.BLOCK_D = _padded_head_dim(d)
        self.D = torch.empty((B * H, Nq), dtype=torch.float32, device=q.device)  # (B·H, Nq)
        self.Lg = torch.empty((B * H, Nq), dtype=torch.float32, device=q.device)  # (B·H, Nq), L in base 2
        PRE_M = 64 if self.BLOCK_D <= 64 else 32
        _bwd_preprocess_kernel[(triton.cdiv(Nq, PRE_M), B * H)](
            O, dO, L, self.D, self.Lg,
            O.stride(0), O.stride(1), O.stride(2),
            dO.stride(0), dO.stride(1), dO.stride(2),
            L.stride(0), L.stride(1), L.stride(2),
            H, Nq, HEAD_DIM=d, BLOCK_M=PRE_M, BLOCK_D=self.BLOCK_D,
        )
        self.args = (
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            dO.stride(0), dO.stride(1), dO.stride(2),
            H, Nq, Nk, self.scale * LOG2E, self.scale, triton.next_power_of_2(max(Nq, Nk, 1024)),
        )
        prec = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 inputs: full-precision products
        # TMA (Hopper): the loop's tiles (Q_i, dO_i; K_j, V_j) by descriptor, as in the forward
        from .triton_forward import _resolve_tma

        self.meta = dict(HEAD_DIM=d, BLOCK_D=self.BLOCK_D, IS_CAUSAL=bool(is_causal), PREC=prec,
                         USE_TMA=_resolve_tma(use_tma, q, k, v, dO))

    def run_dkdv(self, cfg=None):
        """The dK/dV kernel; cfg (B_r, B_c, warps, stages), or None for the autotuned one."""
        B, H = self.B, self.H
        tensors = (self.q, self.k, self.v, self.dO, self.Lg, self.D, self.dK, self.dV)
        if cfg is None:
            grid = lambda META: (triton.cdiv(self.Nk, META["BLOCK_N"]), B * H)  # noqa: E731
            return _tuned_kernel("dkdv", self.BLOCK_D, self.meta["IS_CAUSAL"], self.dtype)[grid](
                *tensors, *self.args, **self.meta)
        m, n, w, st = cfg
        return _bwd_dkdv_kernel[(triton.cdiv(self.Nk, n), B * H)](
            *tensors, *self.args, **self.meta, BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=st
        )

    def run_dq(self, cfg=None):
        """The dQ kernel; cfg (B_r, B_c, warps, stages), or None for the autotuned one."""
        B, H = self.B, self.H
        tensors = (self.q, self.k, self.v, self.dO, self.Lg, self.D, self.dQ)
        if cfg is None:
            grid = lambda META: (triton.cdiv(self.Nq, META["BLOCK_M"]), B * H)  # noqa: E731
            return _tuned_kernel("dq", self.BLOCK_D, self.meta["IS_CAUSAL"], self.dtype)[grid](
                *tensors, *self.args, **self.meta)
        m, n, w, st = cfg
        return _bwd_dq_kernel[(triton.cdiv(self.Nq, m), B * H)](
            *tensors, *self.args, **self.meta, BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=st
        )

    def run_static(self, dkdv_cfg, dq_cfg, fused=False):
        """_bwd_static_kernel: lengths and strides compiled in; two launches, or one when fused."""
        (m1, n1, w1, st1), (m2, n2, w2, st2) = dkdv_cfg, dq_cfg
        strides, (H, Nq, Nk, qk_scale, scale, _) = self.args[:12], self.args[12:]
        names = ["stride_qb", "stride_qh", "stride_qm", "stride_kb", "stride_kh", "stride_kn",
                 "stride_vb", "stride_vh", "stride_vn", "stride_dob", "stride_doh", "stride_dom"]
        const = dict(zip(names, strides), H=H, Nq=Nq, Nk=Nk, **self.meta, BLOCK_M1=m1, BLOCK_N1=n1, BLOCK_M2=m2, BLOCK_N2=n2)
        tensors = (self.q, self.k, self.v, self.dO, self.Lg, self.D, self.dQ, self.dK, self.dV)
        n_kv, n_q = triton.cdiv(Nk, n1), triton.cdiv(Nq, m2)
        if fused:
            if (w1, st1) != (w2, st2):
                raise ValueError(f"a fused launch needs the same warps and stages for both kernels, got dkdv_cfg "
                                 f"{dkdv_cfg} and dq_cfg {dq_cfg}")
            _bwd_static_kernel[(n_kv + n_q, self.B * H)](*tensors, qk_scale=qk_scale, scale=scale, **const, KIND=2,
                                                         num_warps=w1, num_stages=st1)
            return
        _bwd_static_kernel[(n_kv, self.B * H)](*tensors, qk_scale=qk_scale, scale=scale, **const, KIND=0,
                                               num_warps=w1, num_stages=st1)
        _bwd_static_kernel[(n_q, self.B * H)](*tensors, qk_scale=qk_scale, scale=scale, **const, KIND=1,
                                              num_warps=w2, num_stages=st2)


#: From this length on (max(Nq, Nk)), the GPU path compiles one binary per shape (_bwd_static_kernel)
#: for the head-dim classes and causality where that was measured faster: the first call at a new
#: length pays a compilation (seconds), every later call runs faster. Elsewhere one binary serves every
#: length, autotuned per length bucket.
STATIC_MIN_N = 2048
#: (padded head-dim class, causal) -> the tiles the static kernels use there: where they won
#: (benchmarks/results/backward_static_ab.json, same tiles, same run, fp16, H100 unless the run says
#: otherwise): d = 128 +8 to +15 % and d = 64 causal +0 to +3 % with the first tuned tiles; d = 64
#: non-causal +6 to +8 % over the autotuned dynamic kernels with 64 x 64 tiles, 4 warps, for both
#: kernels. The tuned dynamic dK/dV tile there (64 x 128, 4 warps) must not be compiled static: it
#: spills (568 bytes of stack with triton 3.6) and ran at a third of its dynamic speed. d = 128, causal
#: or not: the first tuned tiles with 3 stages, both programs in one launch: +2 to +7 % over two
#: launches of the same tiles, 1.06-1.10x FlexAttention (benchmarks/results/backward_tile_sweep_h100.json).
STATIC_TILES = {
    (64, True): _first_candidates(64, True),
    (64, False): BackwardConfig(64, 64, 4, 3, 64, 64, 4, 3),
    **{(128, causal): BackwardConfig(64, 128, 8, 3, 128, 64, 8, 3, fused=True) for causal in (False, True)},
}


def _static_key(d: int, is_causal: bool) -> tuple:
    """(padded head-dim class, causal): the key of STATIC_TILES."""
    return _size_class(_padded_head_dim(d)), bool(is_causal)


def static_by_default(d: int, Nq: int, Nk: int, is_causal: bool, dtype: torch.dtype) -> bool:
    """Whether attention_backward compiles the shape in (static=None) for these inputs on a GPU
    (measured on Hopper: H100 and H200)."""
    return dtype != torch.float32 and max(Nq, Nk) >= STATIC_MIN_N and _static_key(d, is_causal) in STATIC_TILES


def static_config(d: int, is_causal: bool = False, dtype: torch.dtype = torch.float16) -> BackwardConfig:
    """The tiles of the static kernels: STATIC_TILES where measured, else default_config."""
    measured = not device.TRITON_INTERPRET and dtype != torch.float32
    return (measured and STATIC_TILES.get(_static_key(d, is_causal))) or default_config(d, is_causal, dtype)


def attention_backward(q, k, v, O, L, dO, *, is_causal=False, scale=None, config: BackwardConfig | None = None,
                       use_tma: bool | None = None, static: bool | None = None):
    """(dQ, dK, dV) of O = attention(q, k, v) given the forward's O and L and the gradient dO.

    q (B, H, Nq, d), k and v (B, H, Nk, d), O and dO (B, H, Nq, d) in float16, bfloat16 or float32;
    L (B, H, Nq) the natural-log log-sum-exp from the forward (float32 preferred). Causal is
    top-left (key j visible to query i when j <= i). Any Nq, Nk, any d (the kernels pad it to a
    power of two). `config` pins the block sizes (else: autotuned on a GPU, CPU_CONFIG on the CPU).
    use_tma: None picks TMA loads where the GPU and the layout allow (Hopper, fp16/bf16); True
    forces them (the interpreter runs them too), False the pointer loads.
    static: compile the lengths and strides into the kernels (one binary per shape, no autotuning:
    `config` or `static_config`'s tiles). None: on a GPU where `static_by_default` says so
    (long sequences, the head dims and causality where it was measured faster).
    Returns contiguous gradients in the inputs' dtype.
    """
    device.require_triton("attention_backward")
    _check_inputs(q, k, v, O, L, dO, scale)
    p = _Problem(q, k, v, O, L, dO, is_causal, scale, use_tma)
    if p.empty:  # no query, or no key: every row is fully masked, every gradient is zero
        return p.dQ.zero_(), p.dK.zero_(), p.dV.zero_()
    if static is None:
        static = not device.TRITON_INTERPRET and static_by_default(p.d, p.Nq, p.Nk, is_causal, q.dtype)
    if static:
        config = config or static_config(p.d, is_causal, q.dtype)
        p.run_static(config.dkdv, config.dq, fused=config.fused)
    elif config is not None and config.fused:
        raise ValueError(f"config {config} has fused=True, which only the static kernels offer: pass static=True, "
                         f"or a config without fused")
    elif config is None and _autotuning():
        p.run_dkdv()
        p.run_dq()
    else:
        config = config or default_config(p.d, is_causal, q.dtype)
        p.run_dkdv(config.dkdv)
        p.run_dq(config.dq)
    return p.dQ, p.dK, p.dV


def tuned_configs() -> dict:
    """The configurations the autotuner picked so far, per key (for benchmarks and notes)."""
    if not _autotuning():
        return {}
    return {str(key): {str(k): str(v) for k, v in tuner.cache.items()} for key, tuner in _tuners.items()}


#: The forward kernels flash_attention can run: "triton" is lesson 03's kernel (any GPU, the
#: interpreter, any d); "gluon" is kernels.gluon_forward's warp-specialised kernel (Hopper, fp16/bf16,
#: d = 64 or 128, N_q == N_k, contiguous); "auto" takes "gluon" where it measured faster
#: (gluon_forward.DEFAULT_HEAD_DIMS: d = 64 and 128) and the inputs suit it, else "triton".
FORWARDS = ("auto", "triton", "gluon")


def gluon_by_default(q, k, v) -> bool:
    """Whether forward="auto" runs the Gluon kernel for these inputs."""
    if device.TRITON_INTERPRET:
        return False
    try:
        from . import gluon_forward
    except ImportError:  # a triton without Gluon's Hopper ops
        return False
    return gluon_forward.usable(q, k, v) and q.shape[-1] in gluon_forward.DEFAULT_HEAD_DIMS


def _forward_kernel(q, k, v, forward: str):
    """The forward function (q, k, v, *, is_causal, scale) -> (O, L) that `forward` names for these inputs."""
    if forward == "gluon" or (forward == "auto" and gluon_by_default(q, k, v)):
        from .gluon_forward import attention_forward_gluon  # checks its inputs, names what it cannot take

        return attention_forward_gluon
    from .triton_forward import attention_forward  # lesson 03's Triton forward

    return attention_forward


class FlashAttention(torch.autograd.Function):
    """Attention with the course's forward (see FORWARDS) and Triton backward.

    Saves exactly Q, K, V, O and L for the backward: O(N·d) memory per head, nothing N×N.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, forward="auto"):
        O, L = _forward_kernel(q, k, v, forward)(q, k, v, is_causal=is_causal, scale=scale)
        ctx.save_for_backward(q, k, v, O, L)
        ctx.is_causal, ctx.scale = is_causal, scale
        return O

    @staticmethod
    def backward(ctx, dO):
        q, k, v, O, L = ctx.saved_tensors
        dQ, dK, dV = attention_backward(q, k, v, O, L, dO, is_causal=ctx.is_causal, scale=ctx.scale)
        return dQ, dK, dV, None, None, None


def flash_attention(q, k, v, is_causal=False, scale=None, forward="auto"):
    """Differentiable attention (B, H, N, d) -> (B, H, Nq, d) with the course's kernels: the forward
    named by `forward` (FORWARDS: "auto" picks the fastest measured for the inputs), Triton backward."""
    device.require_triton("flash_attention")
    check_qkv(q, k, v, dtypes=_SUPPORTED)
    check_scale(scale)
    if forward not in FORWARDS:
        raise ValueError(f"forward must be one of {FORWARDS}, got {forward!r}")
    return FlashAttention.apply(q, k, v, bool(is_causal), scale, forward)
