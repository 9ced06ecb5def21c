"""The tiled backward pass in PyTorch: gradients of attention without the N×N matrices.

The forward kept only O (B, H, Nq, d) and the log-sum-exp L (B, H, Nq). The backward rebuilds
each tile of P from L (P_ij = exp(S_ij - L_i): no running max, no rescaling, the tile is final
at once) and pushes the output gradient dO through O = PV and P = softmax(S):

    D_i  = rowsum(dO_i ∘ O_i)          one number per query row (= rowsum(P_i ∘ dP_i))
    dV_j = Σ_i P_ijᵀ dO_i
    dP_ij = dO_i V_jᵀ
    dS_ij = P_ij ∘ (dP_ij − D_i)       the softmax Jacobian, applied row by row
    dQ_i = scale · Σ_j dS_ij K_j
    dK_j = scale · Σ_i dS_ijᵀ Q_i

Loop order (FlashAttention-2's backward): key/value blocks K_j, V_j of B_c rows outside, query
blocks of B_r rows inside. dK_j and dV_j stay "on chip" for the whole inner loop and are written
once; dQ_i collects one contribution per outer step. With causal masking (top-left, key j
visible to query i when j <= i) query blocks wholly above the diagonal are skipped.

Rows whose every key is masked (L_i = -inf) have P_i = 0, so their gradients are zero, not NaN.

Reference path: kernels.reference.attention_backward (autograd through naive attention).
Fast path: kernels.triton_backward.
"""

from __future__ import annotations

import math

import torch

from .validation import check_qkv, check_scale, check_tensor

__all__ = [
    "compute_D", "recompute_P", "tile_gradients", "backward_fa2", "TiledAttention", "tiled_attention",
]


def compute_D(O: torch.Tensor, dO: torch.Tensor) -> torch.Tensor:
    """D = rowsum(dO ∘ O): (B, H, N, d) × 2 -> (B, H, N).

    D_i equals Σ_j P_ij dP_ij, the term the softmax Jacobian subtracts; computing it from O and
    dO costs O(N d) instead of O(N²) and needs no P.
    """
    return (dO * O).sum(dim=-1)  # (B, H, N)


def recompute_P(S: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """P tile from scores S (…, B_r, B_c) (already scaled and masked) and L (…, B_r).

    Rows with L = -inf (every key masked) give P = 0 instead of exp(-inf + inf) = NaN.
    """
    L_safe = torch.where(torch.isneginf(L), torch.full_like(L, float("inf")), L)
    return torch.exp(S - L_safe[..., None])  # (…, B_r, B_c)


def tile_gradients(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask=None):
    """Gradient contributions of one (query block i, key block j) tile.

    Q_i, dO_i (…, B_r, d); K_j, V_j (…, B_c, d); L_i, D_i (…, B_r); mask (B_r, B_c) bool, True =
    attend, or None. Returns (dV_j, dP_ij, dS_ij, dQ_i, dK_j): the tile's additions to dV_j,
    dQ_i, dK_j, and its dP, dS tiles.
    """
    S = scale * (Q_i @ K_j.transpose(-2, -1))  # (…, B_r, B_c)
    if mask is not None:
        S = S.masked_fill(~mask, float("-inf"))
    P = recompute_P(S, L_i)  # (…, B_r, B_c), exp(-inf) = 0 where masked
    dV = P.transpose(-2, -1) @ dO_i  # (…, B_c, d)
    dP = dO_i @ V_j.transpose(-2, -1)  # (…, B_r, B_c)
    dS = P * (dP - D_i[..., None])  # (…, B_r, B_c)
    dQ = scale * (dS @ K_j)  # (…, B_r, d)
    dK = scale * (dS.transpose(-2, -1) @ Q_i)  # (…, B_c, d)
    return dV, dP, dS, dQ, dK


def _check_block(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (rows per block), got {value!r}")


def _check_backward_inputs(Q, K, V, O, L, dO):
    check_qkv(Q, K, V)
    B, H, Nq, _ = Q.shape
    d_v = V.shape[-1]
    check_tensor("O", O)
    check_tensor("dO", dO)
    check_tensor("L", L, ndim=3)
    if tuple(O.shape) != (B, H, Nq, d_v):
        raise ValueError(f"O must have shape (B, H, Nq, d_v) = {(B, H, Nq, d_v)}, got {tuple(O.shape)}")
    if tuple(dO.shape) != tuple(O.shape):
        raise ValueError(f"dO must have O's shape {tuple(O.shape)}, got {tuple(dO.shape)}")
    if tuple(L.shape) != (B, H, Nq):
        raise ValueError(f"L must have shape (B, H, Nq) = {(B, H, Nq)}, got {tuple(L.shape)}")


def backward_fa2(Q, K, V, O, L, dO, *, is_causal=False, scale=None, B_r=64, B_c=64):
    """(dQ, dK, dV) of attention from the saved Q, K, V, O, L and the incoming dO.

    Q (B, H, Nq, d), K (B, H, Nk, d), V (B, H, Nk, d_v), O and dO (B, H, Nq, d_v), L (B, H, Nq) the
    natural-log log-sum-exp of the scaled, masked scores. Any Nq, Nk (not multiples of the
    blocks), causal top-left. The work is done in float64 for float64 inputs (exact to rounding)
    and in float32 otherwise, like kernels.tiled; gradients come back in the inputs' dtype.
    """
    _check_backward_inputs(Q, K, V, O, L, dO)
    check_scale(scale)
    _check_block("B_r", B_r)
    _check_block("B_c", B_c)
    Nq, d = Q.shape[2], Q.shape[3]
    Nk = K.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    dtype = Q.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    Q, K, V, O, L, dO = (t.to(acc) for t in (Q, K, V, O, L, dO))

    D = compute_D(O, dO)  # (B, H, Nq)
    dQ = torch.zeros_like(Q)  # (B, H, Nq, d)
    dK = torch.zeros_like(K)  # (B, H, Nk, d)
    dV = torch.zeros_like(V)  # (B, H, Nk, d_v)

    for j0 in range(0, Nk, B_c):  # outer loop: key/value block j
        j1 = min(j0 + B_c, Nk)
        K_j, V_j = K[:, :, j0:j1], V[:, :, j0:j1]  # (B, H, B_c, d)
        dK_j = torch.zeros_like(K_j)  # (B, H, B_c, d), accumulated across the inner loop
        dV_j = torch.zeros_like(V_j)  # (B, H, B_c, d_v)
        # Causal: query rows i < j0 see none of these keys; start at the block holding row j0.
        i_start = (j0 // B_r) * B_r if is_causal else 0
        for i0 in range(i_start, Nq, B_r):  # inner loop: query block i
            i1 = min(i0 + B_r, Nq)
            mask = None
            if is_causal and i0 < j1 - 1:  # some key j > some query i: a diagonal tile
                rows = torch.arange(i0, i1, device=Q.device)[:, None]
                cols = torch.arange(j0, j1, device=Q.device)[None, :]
                mask = cols <= rows  # (B_r, B_c)
            dV_t, _, _, dQ_t, dK_t = tile_gradients(
                Q[:, :, i0:i1], K_j, V_j, dO[:, :, i0:i1], L[:, :, i0:i1], D[:, :, i0:i1], scale, mask
            )
            dV_j += dV_t
            dK_j += dK_t
            dQ[:, :, i0:i1] += dQ_t
        dK[:, :, j0:j1] = dK_j
        dV[:, :, j0:j1] = dV_j
    return dQ.to(dtype), dK.to(dtype), dV.to(dtype)


class TiledAttention(torch.autograd.Function):
    """Attention whose forward is kernels.tiled.forward_fa2 and backward is backward_fa2.

    It saves exactly Q, K, V, O and L for the backward: O(N d) memory, nothing N×N.
    """

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, B_r, B_c):
        from .tiled import forward_fa2  # lesson 03's tiled forward

        O, L = forward_fa2(q, k, v, is_causal=is_causal, scale=scale, B_r=B_r, B_c=B_c)
        ctx.save_for_backward(q, k, v, O, L)
        ctx.is_causal, ctx.scale, ctx.B_r, ctx.B_c = is_causal, scale, B_r, B_c
        return O

    @staticmethod
    def backward(ctx, dO):
        q, k, v, O, L = ctx.saved_tensors
        dQ, dK, dV = backward_fa2(
            q, k, v, O, L, dO.contiguous(), is_causal=ctx.is_causal, scale=ctx.scale, B_r=ctx.B_r, B_c=ctx.B_c
        )
        return dQ, dK, dV, None, None, None, None


def tiled_attention(q, k, v, is_causal=False, scale=None, *, B_r=64, B_c=64):
    """Differentiable tiled attention (B, H, N, d) -> (B, H, Nq, d_v), in the inputs' dtype."""
    check_qkv(q, k, v)
    check_scale(scale)
    _check_block("B_r", B_r)
    _check_block("B_c", B_c)
    return TiledAttention.apply(q, k, v, bool(is_causal), scale, B_r, B_c)
