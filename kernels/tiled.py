"""The tiled forward pass in PyTorch: FlashAttention's algorithm with the loops written out.

Q is cut into T_r = ceil(N_q / B_r) row blocks Q_i, K and V into T_c = ceil(N_k / B_c) blocks
K_j, V_j. For one pair (i, j) the kernel computes the score tile S_ij = scale · Q_i K_jᵀ
(B_r × B_c) and folds it into the running state of the rows of block i with the online softmax:

    m_new = max(m, rowmax(S_ij))                   running maximum
    P̃     = exp(S_ij − m_new)                      unnormalised probabilities of this tile
    ℓ_new = exp(m − m_new) · ℓ + rowsum(P̃)         running denominator
    O     ← exp(m − m_new) · O + P̃ V_j             (FA2 keeps O unnormalised until the end)

and at the end L = m + log ℓ, the log-sum-exp that the backward pass recomputes P from.
Nothing of size N_q × N_k is ever made: the largest temporary is one B_r × B_c tile.

Two loop orders compute the same numbers:

* forward_fa1 (FlashAttention-1, Algorithm 1): K/V blocks outer, Q blocks inner. Each inner
  step reads O_i, m_i, ℓ_i from "HBM" (full-size tensors) and writes them back, so O, m and ℓ
  make T_c round trips through memory.
* forward_fa2 (FlashAttention-2, Algorithm 1): Q blocks outer, one pass over K/V inner. The
  state of block i stays "on chip" (local variables) and O_i is written once, normalised once.
  Different Q blocks are independent, which is what lets a GPU give each one its own program.

Both take SDPA's layout (B, H, N, d), any N (the last block may be partial), N_q != N_k, and
causal masking in SDPA's top-left convention (query i sees key j when j <= i). With causal, the
blocks entirely above the diagonal are skipped, not computed and masked. Rows that see no key
at all (only possible when N_k = 0) give O = 0 and L = -inf, as kernels.reference does.

The computation runs in float64 for float64 inputs (exact to ~1e-15 against naive attention)
and in float32 otherwise; O comes back in the inputs' dtype, L in the accumulation dtype.
"""

from __future__ import annotations

import math

import torch

from .validation import check_qkv, check_scale

__all__ = ["forward_fa1", "forward_fa2", "causal_block_range", "check_block_sizes"]


def check_block_sizes(B_r, B_c) -> None:
    """B_r and B_c are positive integers."""
    for name, value in (("B_r", B_r), ("B_c", B_c)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int (a block size in rows), got {value!r}")


def causal_block_range(i: int, B_r: int, B_c: int, N_q: int, N_k: int, is_causal: bool = True) -> tuple[int, int]:
    """Which K/V blocks query block i must visit, and which of those need a mask.

    Returns (n_full, n_visit): visit blocks j = 0 .. n_visit-1; blocks j < n_full need no
    mask at all (every key is in bounds and, with causal, at or left of every query row of the
    block); blocks n_full .. n_visit-1 are the "diagonal" ones that need the causal and/or
    bounds mask. Blocks j >= n_visit are never touched (entirely above the diagonal, or past N_k).

    The rows of block i are r_first = i·B_r .. r_last = min((i+1)·B_r, N_q) - 1 (real rows only).
    Key block j holds keys j·B_c .. (j+1)·B_c - 1.
    """
    T_c = -(-N_k // B_c)  # ceil: number of K/V blocks, the last one maybe partial
    T_c_whole = N_k // B_c  # K/V blocks with no key past N_k
    if not is_causal:
        return T_c_whole, T_c
    r_first = i * B_r
    r_last = min((i + 1) * B_r, N_q) - 1
    # block j is visited when its first key j·B_c is at or left of the last row: j·B_c <= r_last
    n_visit = min(r_last // B_c + 1, T_c) if r_last >= 0 else 0
    # block j needs no causal mask when its last key (j+1)·B_c - 1 is <= the first row
    n_full = min((r_first + 1) // B_c, T_c_whole, n_visit)
    return n_full, n_visit


def _prepare(Q, K, V, scale, B_r, B_c):
    check_qkv(Q, K, V)
    check_scale(scale)
    check_block_sizes(B_r, B_c)
    d = Q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    acc = torch.float64 if Q.dtype == torch.float64 else torch.float32  # accumulation dtype
    return Q.to(acc), K.to(acc), V.to(acc), scale, acc


def _score_tile(Q_i, K_j, scale, rows, cols, is_causal):
    """S_ij = scale · Q_i K_jᵀ with the causal mask applied: (B, H, B_r, B_c)."""
    S = scale * (Q_i @ K_j.transpose(-2, -1))  # (B, H, B_r, B_c)
    if is_causal:
        allowed = cols[None, :] <= rows[:, None]  # (B_r, B_c), top-left: key j <= query i
        S = S.masked_fill(~allowed, float("-inf"))
    return S


def _safe(m: torch.Tensor) -> torch.Tensor:
    """m with -inf replaced by 0, for the exponent's offset: a row that has seen only masked
    keys has m = -inf, and exp(-inf - (-inf)) would be NaN; with offset 0 it is exp(-inf) = 0."""
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def forward_fa2(Q, K, V, *, is_causal: bool = False, scale=None, B_r: int = 64, B_c: int = 64):
    """FlashAttention-2 loop order: for each Q block (outer), one pass over the K/V blocks.

    Q (B, H, N_q, d), K (B, H, N_k, d), V (B, H, N_k, d_v). Returns O (B, H, N_q, d_v) in the
    inputs' dtype and L (B, H, N_q), L_i = log Σ_j exp(S_ij).
    """
    dtype = Q.dtype
    Q, K, V, scale, acc = _prepare(Q, K, V, scale, B_r, B_c)
    B, H, N_q, _ = Q.shape
    N_k, d_v = K.shape[2], V.shape[3]
    O = torch.empty(B, H, N_q, d_v, dtype=acc, device=Q.device)  # (B, H, N_q, d_v) in "HBM"
    L = torch.empty(B, H, N_q, dtype=acc, device=Q.device)  # (B, H, N_q)
    T_r = -(-N_q // B_r)
    for i in range(T_r):
        r0, r1 = i * B_r, min((i + 1) * B_r, N_q)
        rows = torch.arange(r0, r1, device=Q.device)
        Q_i = Q[:, :, r0:r1]  # (B, H, B_r, d): loaded once, stays "on chip"
        m = torch.full((B, H, r1 - r0, 1), float("-inf"), dtype=acc, device=Q.device)  # running max
        ell = torch.zeros(B, H, r1 - r0, 1, dtype=acc, device=Q.device)  # running denominator ℓ
        O_i = torch.zeros(B, H, r1 - r0, d_v, dtype=acc, device=Q.device)  # unnormalised output
        _, n_visit = causal_block_range(i, B_r, B_c, N_q, N_k, is_causal)
        for j in range(n_visit):  # blocks above the diagonal (j >= n_visit) are skipped
            c0, c1 = j * B_c, min((j + 1) * B_c, N_k)
            cols = torch.arange(c0, c1, device=Q.device)
            S = _score_tile(Q_i, K[:, :, c0:c1], scale, rows, cols, is_causal)  # (B, H, B_r, B_c)
            m_new = torch.maximum(m, S.amax(dim=-1, keepdim=True))
            P = torch.exp(S - _safe(m_new))  # P̃_ij, (B, H, B_r, B_c)
            alpha = torch.exp(m - _safe(m_new))  # rescales what was accumulated so far
            ell = alpha * ell + P.sum(dim=-1, keepdim=True)
            O_i = alpha * O_i + P @ V[:, :, c0:c1]
            m = m_new
        empty = ell == 0  # rows that saw no key
        O[:, :, r0:r1] = torch.where(empty, torch.zeros_like(O_i), O_i / torch.where(empty, 1.0, ell))
        L[:, :, r0:r1] = torch.where(empty, float("-inf"), m + torch.log(ell)).squeeze(-1)
    return O.to(dtype), L


def forward_fa1(Q, K, V, *, is_causal: bool = False, scale=None, B_r: int = 64, B_c: int = 64):
    """FlashAttention-1 loop order: K/V blocks outer, Q blocks inner.

    O, m and ℓ live in full-size tensors (the "HBM") and every inner step reads block i's
    slice, updates it and writes it back. O is kept normalised after every step (Algorithm 1
    of the FlashAttention paper). Same inputs and outputs as forward_fa2.
    """
    dtype = Q.dtype
    Q, K, V, scale, acc = _prepare(Q, K, V, scale, B_r, B_c)
    B, H, N_q, _ = Q.shape
    N_k, d_v = K.shape[2], V.shape[3]
    O = torch.zeros(B, H, N_q, d_v, dtype=acc, device=Q.device)  # (B, H, N_q, d_v) in "HBM"
    m = torch.full((B, H, N_q, 1), float("-inf"), dtype=acc, device=Q.device)  # (B, H, N_q, 1)
    ell = torch.zeros(B, H, N_q, 1, dtype=acc, device=Q.device)  # (B, H, N_q, 1)
    T_r, T_c = -(-N_q // B_r), -(-N_k // B_c)
    for j in range(T_c):
        c0, c1 = j * B_c, min((j + 1) * B_c, N_k)
        cols = torch.arange(c0, c1, device=Q.device)
        K_j, V_j = K[:, :, c0:c1], V[:, :, c0:c1]  # (B, H, B_c, d): loaded once per outer step
        # with causal, the first query block that sees key c0 is the one holding row c0
        i_first = c0 // B_r if is_causal else 0
        for i in range(i_first, T_r):
            r0, r1 = i * B_r, min((i + 1) * B_r, N_q)
            rows = torch.arange(r0, r1, device=Q.device)
            # read block i's state from "HBM"
            O_i, m_i, ell_i = O[:, :, r0:r1], m[:, :, r0:r1], ell[:, :, r0:r1]
            S = _score_tile(Q[:, :, r0:r1], K_j, scale, rows, cols, is_causal)  # (B, H, B_r, B_c)
            m_tilde = S.amax(dim=-1, keepdim=True)  # rowmax of this tile
            P = torch.exp(S - _safe(m_tilde))  # P̃_ij
            ell_tilde = P.sum(dim=-1, keepdim=True)
            m_new = torch.maximum(m_i, m_tilde)
            a = torch.exp(m_i - _safe(m_new))  # weight of the old state
            b = torch.exp(m_tilde - _safe(m_new))  # weight of this tile
            ell_new = a * ell_i + b * ell_tilde
            denom = torch.where(ell_new == 0, 1.0, ell_new)
            # write block i's state back to "HBM", O normalised
            O[:, :, r0:r1] = (a * ell_i * O_i + b * (P @ V_j)) / denom
            m[:, :, r0:r1] = m_new
            ell[:, :, r0:r1] = ell_new
    L = torch.where(ell == 0, float("-inf"), m + torch.log(ell)).squeeze(-1)  # (B, H, N_q)
    return O.to(dtype), L
