"""Exercises of lesson 04 (the backward pass): graders, reference solutions and mutants.

    04.D                 D = rowsum(dO ∘ O)
    04.tile_grads        dV, dP, dS, dQ, dK of one (query block, key block) tile
    04.tiled_backward    the whole tiled backward, recomputing P from L
    04.triton_dq_loop    the dQ inner loop of the Triton backward, as a @triton.jit function
    04.find_the_bug      fix a backward that is only right when causal

Every grader draws fresh random inputs (the seed is in each case's description) and compares
with float64 autograd through naive attention (kernels.reference.attention_backward).
"""

from __future__ import annotations

import inspect
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .. import device
from ..reference import attention, attention_backward
from ..tiled_backward import backward_fa2, compute_D, recompute_P, tile_gradients
from .core import CaseFailure, assert_close, case, fresh_generator, randint, randn, tolerance, unpack
from .registry import exercise

F64 = torch.float64


def _problem(g, B, H, Nq, Nk, d, *, is_causal=False, scale=None, logit_scale=1.0, dtype=F64):
    """Random Q, K, V, dO; the forward's O and L; the float64 gradients. A dict."""
    q = randn(g, B, H, Nq, d, scale=logit_scale)
    k = randn(g, B, H, Nk, d, scale=logit_scale)
    v = randn(g, B, H, Nk, d)
    dO = randn(g, B, H, Nq, d)
    O, L = attention(q, k, v, is_causal=is_causal, scale=scale, return_lse=True)  # float64
    dQ, dK, dV = attention_backward(q, k, v, dO, is_causal=is_causal, scale=scale)
    low = lambda t: t.to(dtype)
    return dict(Q=low(q), K=low(k), V=low(v), O=low(O), L=L.to(torch.float32 if dtype != F64 else F64),
                dO=low(dO), want=(dQ, dK, dV), is_causal=is_causal, scale=scale)


# ============================================================================================
# 04.D


def _mutant_D_rowsum_dO(O, dO):
    return dO.sum(dim=-1)  # forgot O: D = rowsum(dO)


def _mutant_D_keepdim(O, dO):
    return (dO * O).sum(dim=-1, keepdim=True)  # (B, H, N, 1)


def _mutant_D_sum_over_rows(O, dO):
    return (dO * O).sum(dim=-2)  # summed over the queries instead of the head dim


def _mutant_D_matmul(O, dO):
    return (dO @ O.transpose(-2, -1)).sum(dim=-1)  # rowsum of dO Oᵀ: every pair of rows


def _mutant_D_norm(O, dO):
    return (dO * O).sum(dim=-1).abs()


@exercise(
    "04.D",
    "D = rowsum(dO ∘ O), one number per query row",
    solution=compute_D,
    mutants={
        "rowsum(dO), O forgotten": _mutant_D_rowsum_dO,
        "keepdim: shape (B, H, N, 1)": _mutant_D_keepdim,
        "summed over rows, not the head dim": _mutant_D_sum_over_rows,
        "rowsum of dO Oᵀ": _mutant_D_matmul,
        "absolute value": _mutant_D_norm,
    },
)
def grade_D(candidate):
    """candidate(O, dO) -> D (B, H, N)."""
    g, seed = fresh_generator()
    with case(f"float64 O, dO of shape (2, 3, 11, 8) (seed {seed})"):
        O, dO = randn(g, 2, 3, 11, 8), randn(g, 2, 3, 11, 8)
        assert_close("D", candidate(O, dO), (dO * O).sum(-1), 1e-10, expect_dtype=F64)
    with case(f"D equals rowsum(P ∘ dP) for real attention, N=9, d=5 (seed {seed})"):
        p = _problem(g, 1, 2, 9, 13, 5)
        P = torch.softmax(p["Q"] @ p["K"].transpose(-2, -1) / math.sqrt(5), dim=-1)
        dP = p["dO"] @ p["V"].transpose(-2, -1)
        assert_close("D", candidate(p["O"], p["dO"]), (P * dP).sum(-1), 1e-10, expect_dtype=F64)
    with case(f"one row, d=1 (seed {seed})"):
        O, dO = randn(g, 1, 1, 1, 1), randn(g, 1, 1, 1, 1)
        assert_close("D", candidate(O, dO), (dO * O).sum(-1), 1e-10)


# ============================================================================================
# 04.tile_grads


def _tile_parts(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask):
    S = scale * (Q_i @ K_j.transpose(-2, -1))
    if mask is not None:
        S = S.masked_fill(~mask, float("-inf"))
    return S


def _mutant_tile_local_softmax(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask=None):
    S = _tile_parts(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask)
    P = torch.nan_to_num(torch.softmax(S, dim=-1))  # normalised within the tile, L ignored
    dP = dO_i @ V_j.transpose(-2, -1)
    dS = P * (dP - D_i[..., None])
    return P.transpose(-2, -1) @ dO_i, dP, dS, scale * dS @ K_j, scale * dS.transpose(-2, -1) @ Q_i


def _mutant_tile_no_D(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask=None):
    P = recompute_P(_tile_parts(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask), L_i)
    dP = dO_i @ V_j.transpose(-2, -1)
    dS = P * dP
    return P.transpose(-2, -1) @ dO_i, dP, dS, scale * dS @ K_j, scale * dS.transpose(-2, -1) @ Q_i


def _mutant_tile_no_scale_dQ(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask=None):
    dV, dP, dS, dQ, dK = tile_gradients(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask)
    return dV, dP, dS, dQ / scale, dK


def _mutant_tile_no_scale_dK(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask=None):
    dV, dP, dS, dQ, dK = tile_gradients(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask)
    return dV, dP, dS, dQ, dK / scale


def _mutant_tile_unscaled_S(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask=None):
    return tile_gradients(Q_i, K_j, V_j, dO_i, L_i, D_i, 1.0, mask)  # 1/sqrt(d) forgotten everywhere


def _mutant_tile_mask_ignored(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask=None):
    return tile_gradients(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, None)


def _mutant_tile_dS_wrong_order(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask=None):
    P = recompute_P(_tile_parts(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask), L_i)
    dP = dO_i @ V_j.transpose(-2, -1)
    dS = P * dP - D_i[..., None]  # parentheses lost
    return P.transpose(-2, -1) @ dO_i, dP, dS, scale * dS @ K_j, scale * dS.transpose(-2, -1) @ Q_i


def _mutant_tile_dK_uses_dP(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask=None):
    dV, dP, dS, dQ, dK = tile_gradients(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask)
    return dV, dP, dS, dQ, scale * dP.transpose(-2, -1) @ Q_i


def _mutant_tile_nan_on_empty_rows(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask=None):
    S = _tile_parts(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask)
    P = torch.exp(S - L_i[..., None])  # -inf - (-inf) = NaN on rows with no key
    dP = dO_i @ V_j.transpose(-2, -1)
    dS = P * (dP - D_i[..., None])
    return P.transpose(-2, -1) @ dO_i, dP, dS, scale * dS @ K_j, scale * dS.transpose(-2, -1) @ Q_i


@exercise(
    "04.tile_grads",
    "dV, dP, dS, dQ, dK of one tile, P rebuilt from L",
    solution=tile_gradients,
    mutants={
        "P normalised within the tile (L ignored)": _mutant_tile_local_softmax,
        "D left out of dS": _mutant_tile_no_D,
        "dS = P∘dP − D (parentheses)": _mutant_tile_dS_wrong_order,
        "scale missing in dQ": _mutant_tile_no_scale_dQ,
        "scale missing in dK": _mutant_tile_no_scale_dK,
        "S not scaled": _mutant_tile_unscaled_S,
        "mask ignored": _mutant_tile_mask_ignored,
        "dK from dP instead of dS": _mutant_tile_dK_uses_dP,
        "NaN on rows that see no key": _mutant_tile_nan_on_empty_rows,
    },
)
def grade_tile_grads(candidate):
    """candidate(Q_i, K_j, V_j, dO_i, L_i, D_i, scale, mask=None) -> (dV_j, dP_ij, dS_ij, dQ_i, dK_j)."""
    g, seed = fresh_generator()

    def check_tile(p, i0, i1, j0, j1, with_mask):
        Q, K, V, dO, O, L = p["Q"], p["K"], p["V"], p["dO"], p["O"], p["L"]
        scale = p["scale"] if p["scale"] is not None else 1.0 / math.sqrt(Q.shape[-1])
        D = (dO * O).sum(-1)
        S = scale * Q @ K.transpose(-2, -1)  # the full matrices, to cut the tile out of
        mask_full = None
        if p["is_causal"]:
            mask_full = torch.arange(K.shape[2])[None, :] <= torch.arange(Q.shape[2])[:, None]
            S = S.masked_fill(~mask_full, float("-inf"))
        Lsafe = torch.where(torch.isneginf(L), torch.full_like(L, float("inf")), L)
        P = torch.exp(S - Lsafe[..., None])
        dP = dO @ V.transpose(-2, -1)
        dS = P * (dP - D[..., None])
        r, c = slice(i0, i1), slice(j0, j1)
        want = (
            P[..., r, c].transpose(-2, -1) @ dO[..., r, :],
            dP[..., r, c],
            dS[..., r, c],
            scale * dS[..., r, c] @ K[..., c, :],
            scale * dS[..., r, c].transpose(-2, -1) @ Q[..., r, :],
        )
        mask = mask_full[r, c] if with_mask else None
        got = unpack("tile_grads", candidate(Q[..., r, :], K[..., c, :], V[..., c, :], dO[..., r, :],
                                               L[..., r], D[..., r], scale, mask), 5)
        for name, gt, w in zip(("dV_j", "dP_ij", "dS_ij", "dQ_i", "dK_j"), got, want):
            assert_close(name, gt, w, tolerance(w, None, F64), expect_dtype=F64)

    with case(f"interior tile (rows 4:12, keys 6:11) of N_q=15, N_k=23, d=8 (seed {seed})"):
        p = _problem(g, 2, 2, 15, 23, 8)
        check_tile(p, 4, 12, 6, 11, False)
    with case(f"causal diagonal tile with its mask, rows 8:16, keys 4:16 (seed {seed})"):
        p = _problem(g, 1, 2, 16, 20, 6, is_causal=True)
        check_tile(p, 8, 16, 4, 16, True)
    with case(f"scale=0.3 given explicitly, large logits (seed {seed})"):
        p = _problem(g, 1, 1, 9, 12, 4, scale=0.3, logit_scale=6.0)
        check_tile(p, 0, 9, 3, 9, False)
    with case(f"rows that see no key: L = -inf, mask all False (seed {seed})"):
        Q_i, K_j, V_j, dO_i = randn(g, 1, 1, 4, 3), randn(g, 1, 1, 5, 3), randn(g, 1, 1, 5, 3), randn(g, 1, 1, 4, 3)
        L_i = torch.full((1, 1, 4), float("-inf"), dtype=F64)
        D_i = torch.zeros(1, 1, 4, dtype=F64)
        mask = torch.zeros(4, 5, dtype=torch.bool)
        got = unpack("tile_grads", candidate(Q_i, K_j, V_j, dO_i, L_i, D_i, 0.5, mask), 5)
        zero = lambda *s: torch.zeros(*s, dtype=F64)
        want = (zero(1, 1, 5, 3), dO_i @ V_j.transpose(-2, -1), zero(1, 1, 4, 5), zero(1, 1, 4, 3), zero(1, 1, 5, 3))
        for name, gt, w in zip(("dV_j", "dP_ij", "dS_ij", "dQ_i", "dK_j"), got, want):
            assert_close(name, gt, w, 1e-12)


# ============================================================================================
# 04.tiled_backward and 04.find_the_bug


class _LargestTensor(TorchDispatchMode):
    """Watches every tensor an operator makes and remembers the largest (to catch N×N)."""

    def __init__(self):
        super().__init__()
        self.numel, self.shape, self.op = 0, None, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.shape, self.op = t.numel(), tuple(t.shape), str(func)
        return out


def _buggy_start_at_diagonal(Q, K, V, O, L, dO, is_causal=False, scale=None, B_r=16, B_c=16):
    """The backward of the find-the-bug exercise: it is right when causal and wrong otherwise."""
    Nq, d = Q.shape[2], Q.shape[3]
    Nk = K.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    D = (dO * O).sum(dim=-1)  # (B, H, Nq)
    dQ, dK, dV = torch.zeros_like(Q), torch.zeros_like(K), torch.zeros_like(V)
    for j0 in range(0, Nk, B_c):
        j1 = min(j0 + B_c, Nk)
        K_j, V_j = K[:, :, j0:j1], V[:, :, j0:j1]
        dK_j, dV_j = torch.zeros_like(K_j), torch.zeros_like(V_j)
        for i0 in range((j0 // B_r) * B_r, Nq, B_r):  # query blocks that can see key block j
            i1 = min(i0 + B_r, Nq)
            S = scale * Q[:, :, i0:i1] @ K_j.transpose(-2, -1)  # (B, H, B_r, B_c)
            if is_causal:
                rows = torch.arange(i0, i1)[:, None]
                cols = torch.arange(j0, j1)[None, :]
                S = S.masked_fill(cols > rows, float("-inf"))
            P = torch.exp(S - L[:, :, i0:i1, None])
            dV_j += P.transpose(-2, -1) @ dO[:, :, i0:i1]
            dP = dO[:, :, i0:i1] @ V_j.transpose(-2, -1)
            dS = P * (dP - D[:, :, i0:i1, None])
            dQ[:, :, i0:i1] += scale * dS @ K_j
            dK_j += scale * dS.transpose(-2, -1) @ Q[:, :, i0:i1]
        dK[:, :, j0:j1], dV[:, :, j0:j1] = dK_j, dV_j
    return dQ, dK, dV


#: The code the learner is given in the find-the-bug exercise (the notebook prints its source).
buggy_backward = _buggy_start_at_diagonal


def _mutant_bw_wrong_D(Q, K, V, O, L, dO, is_causal=False, scale=None, B_r=16, B_c=16):
    return backward_fa2(Q, K, V, O.new_ones(O.shape), L, dO, is_causal=is_causal, scale=scale, B_r=B_r, B_c=B_c)  # D = rowsum(dO)


def _mutant_bw_no_scale_dQ(Q, K, V, O, L, dO, is_causal=False, scale=None, B_r=16, B_c=16):
    s = 1.0 / math.sqrt(Q.shape[-1]) if scale is None else scale
    dQ, dK, dV = backward_fa2(Q, K, V, O, L, dO, is_causal=is_causal, scale=scale, B_r=B_r, B_c=B_c)
    return dQ / s, dK, dV


def _mutant_bw_skip_partial_block(Q, K, V, O, L, dO, is_causal=False, scale=None, B_r=16, B_c=16):
    Nk = K.shape[2]
    full = (Nk // B_c) * B_c  # off by one block: the ragged last key block is dropped
    Kc, Vc = K[:, :, :full], V[:, :, :full]
    dQ, dK, dV = backward_fa2(Q, Kc, Vc, O, L, dO, is_causal=is_causal, scale=scale, B_r=B_r, B_c=B_c)
    pad = lambda t: torch.cat([t, t.new_zeros(t.shape[0], t.shape[1], Nk - full, t.shape[3])], dim=2)
    return dQ, pad(dK), pad(dV)


def _mutant_bw_causal_diagonal_excluded(Q, K, V, O, L, dO, is_causal=False, scale=None, B_r=16, B_c=16):
    if not is_causal:
        return backward_fa2(Q, K, V, O, L, dO, scale=scale, B_r=B_r, B_c=B_c)
    Nq, Nk = Q.shape[2], K.shape[2]
    strict = torch.arange(Nk)[None, :] < torch.arange(Nq)[:, None]  # j < i: the diagonal lost
    return attention_backward(Q, K, V, dO, attn_mask=strict, scale=scale)


def _mutant_bw_local_softmax(Q, K, V, O, L, dO, is_causal=False, scale=None, B_r=16, B_c=16):
    # P rebuilt per tile with its own normaliser instead of from L
    Nq, d = Q.shape[2], Q.shape[3]
    Nk = K.shape[2]
    s = 1.0 / math.sqrt(d) if scale is None else scale
    D = compute_D(O, dO)
    dQ, dK, dV = torch.zeros_like(Q), torch.zeros_like(K), torch.zeros_like(V)
    for j0 in range(0, Nk, B_c):
        j1 = min(j0 + B_c, Nk)
        for i0 in range(0, Nq, B_r):
            i1 = min(i0 + B_r, Nq)
            mask = None
            if is_causal:
                mask = torch.arange(j0, j1)[None, :] <= torch.arange(i0, i1)[:, None]
            S = s * Q[:, :, i0:i1] @ K[:, :, j0:j1].transpose(-2, -1)
            if mask is not None:
                S = S.masked_fill(~mask, float("-inf"))
            m = S.amax(-1)
            fake_L = torch.where(torch.isneginf(m), m, torch.logsumexp(S, -1))
            dV_t, _, _, dQ_t, dK_t = tile_gradients(Q[:, :, i0:i1], K[:, :, j0:j1], V[:, :, j0:j1], dO[:, :, i0:i1],
                                                    fake_L, D[:, :, i0:i1], s, mask)
            dQ[:, :, i0:i1] += dQ_t
            dK[:, :, j0:j1] += dK_t
            dV[:, :, j0:j1] += dV_t
    return dQ, dK, dV


def _mutant_bw_materialises_P(Q, K, V, O, L, dO, is_causal=False, scale=None, B_r=16, B_c=16):
    return attention_backward(Q, K, V, dO, is_causal=is_causal, scale=scale)  # builds the N×N P


def _mutant_bw_nan_empty_rows(Q, K, V, O, L, dO, is_causal=False, scale=None, B_r=16, B_c=16):
    if K.shape[2] == 0:
        nan = lambda t: torch.full_like(t, float("nan"))
        return nan(Q), K.clone(), V.clone()
    return backward_fa2(Q, K, V, O, L, dO, is_causal=is_causal, scale=scale, B_r=B_r, B_c=B_c)


def _mutant_bw_causal_skips_too_much(Q, K, V, O, L, dO, is_causal=False, scale=None, B_r=16, B_c=16):
    if not is_causal:
        return backward_fa2(Q, K, V, O, L, dO, scale=scale, B_r=B_r, B_c=B_c)
    # starts the inner loop one block late: the diagonal block's queries are skipped
    Nq, Nk = Q.shape[2], K.shape[2]
    allowed = torch.zeros(Nq, Nk, dtype=torch.bool)
    for j0 in range(0, Nk, B_c):
        i_start = (j0 // B_r + 1) * B_r
        allowed[i_start:, j0:j0 + B_c] = True
    allowed &= torch.arange(Nk)[None, :] <= torch.arange(Nq)[:, None]
    dQ, dK, dV = attention_backward(Q, K, V, dO, attn_mask=allowed, scale=scale)
    return dQ, dK, dV


def _grade_backward(candidate, *, focus: str):
    """Shared by 04.tiled_backward and 04.find_the_bug: candidate(Q, K, V, O, L, dO, is_causal,
    scale, B_r, B_c) -> (dQ, dK, dV), float64, against autograd through naive attention."""
    g, seed = fresh_generator()

    def run(p, B_r, B_c, name):
        got = unpack(name, candidate(p["Q"], p["K"], p["V"], p["O"], p["L"], p["dO"], is_causal=p["is_causal"],
                                       scale=p["scale"], B_r=B_r, B_c=B_c), 3)
        for gname, gt, w in zip(("dQ", "dK", "dV"), got, p["want"]):
            assert_close(gname, gt, w, tolerance(w, None, F64), expect_dtype=F64)
        return got

    for label, causal in (("not causal", False), ("causal", True)):
        Nq, Nk = randint(g, 33, 47), randint(g, 33, 47)
        with case(f"{label}, N_q={Nq}, N_k={Nk} (not multiples of B_r=16, B_c=8), d=8 (seed {seed})"):
            run(_problem(g, 1, 2, Nq, Nk, 8, is_causal=causal), 16, 8, "backward")
    with case(f"causal with N_q=20 > N_k=13 and N_q=9 < N_k=30, B_r=8, B_c=16 (seed {seed})"):
        run(_problem(g, 1, 1, 20, 13, 4, is_causal=True), 8, 16, "backward")
        run(_problem(g, 1, 1, 9, 30, 4, is_causal=True), 8, 16, "backward")
    with case(f"N smaller than one block (N_q=5, N_k=7, B_r=B_c=16), scale=0.7, large logits (seed {seed})"):
        run(_problem(g, 2, 1, 5, 7, 3, scale=0.7, logit_scale=5.0), 16, 16, "backward")
    if focus == "find_the_bug":
        return
    with case(f"the answer does not depend on the block size (B_r, B_c) = (4, 8) and (16, 4) (seed {seed})"):
        p = _problem(g, 1, 1, 19, 23, 4, is_causal=True)
        a = run(p, 4, 8, "backward")
        b = run(p, 16, 4, "backward")
        for gname, x, y in zip(("dQ", "dK", "dV"), a, b):
            assert_close(f"{gname} with (16, 4) vs (4, 8)", y, x.detach().to(F64), 1e-12)
    with case(f"nothing N×N is made: N_q=N_k=256, B_r=B_c=32 (seed {seed})"):
        p = _problem(g, 1, 1, 256, 256, 4, is_causal=False)
        watch = _LargestTensor()
        with watch:
            got = candidate(p["Q"], p["K"], p["V"], p["O"], p["L"], p["dO"], is_causal=False, scale=None, B_r=32, B_c=32)
        if watch.numel >= 256 * 256 // 4:
            raise CaseFailure(
                f"an intermediate of shape {watch.shape} ({watch.numel} elements, from {watch.op}) was made: "
                "the tiled backward must keep to B_r × B_c tiles (largest allowed: under N²/4 elements)"
            )
        for gname, gt, w in zip(("dQ", "dK", "dV"), unpack("backward", got, 3), p["want"]):
            assert_close(gname, gt, w, tolerance(w, None, F64))
    with case(f"no keys at all (N_k = 0): L = -inf, zero gradients, no NaN (seed {seed})"):
        Q, dO = randn(g, 1, 1, 6, 4), randn(g, 1, 1, 6, 4)
        K, V = torch.zeros(1, 1, 0, 4, dtype=F64), torch.zeros(1, 1, 0, 4, dtype=F64)
        O, L = torch.zeros_like(Q), torch.full((1, 1, 6), float("-inf"), dtype=F64)
        got = unpack("backward", candidate(Q, K, V, O, L, dO, is_causal=False, scale=None, B_r=4, B_c=4), 3)
        assert_close("dQ", got[0], torch.zeros_like(Q), 0.0)
        assert_close("dK", got[1], K, 0.0)
        assert_close("dV", got[2], V, 0.0)


@exercise(
    "04.tiled_backward",
    "The tiled backward: P recomputed from L, K/V blocks outside, Q blocks inside",
    solution=backward_fa2,
    mutants={
        "wrong D: rowsum(dO) instead of rowsum(dO ∘ O)": _mutant_bw_wrong_D,
        "scale missing in dQ": _mutant_bw_no_scale_dQ,
        "last partial key block dropped (off-by-one tile bounds)": _mutant_bw_skip_partial_block,
        "causal diagonal excluded (j < i)": _mutant_bw_causal_diagonal_excluded,
        "P normalised per tile instead of from L": _mutant_bw_local_softmax,
        "materialises the N×N matrix P": _mutant_bw_materialises_P,
        "NaN gradients when no key is visible": _mutant_bw_nan_empty_rows,
        "causal loop starts one block late": _mutant_bw_causal_skips_too_much,
        "starts at the diagonal even when not causal": _buggy_start_at_diagonal,
    },
)
def grade_tiled_backward(candidate):
    """candidate(Q, K, V, O, L, dO, is_causal=False, scale=None, B_r=.., B_c=..) -> (dQ, dK, dV)."""
    _grade_backward(candidate, focus="tiled")


@exercise(
    "04.find_the_bug",
    "Find and fix the bug of a backward that is only right when causal",
    solution=backward_fa2,
    mutants={
        "the given buggy backward, unchanged": _buggy_start_at_diagonal,
        "wrong D: rowsum(dO)": _mutant_bw_wrong_D,
        "causal loop starts one block late": _mutant_bw_causal_skips_too_much,
    },
)
def grade_find_the_bug(candidate):
    """candidate has the buggy backward's signature; it must be right causal and not."""
    _grade_backward(candidate, focus="find_the_bug")


# ============================================================================================
# 04.triton_dq_loop (the Triton interpreter on a CPU, or a GPU)

if device.HAS_TRITON:
    import triton
    import triton.language as tl

    from ..triton_backward import LOG2E, _bwd_preprocess_kernel, _dq_inner, _load_tile

    @triton.jit
    def _dq_harness_kernel(
        Q, K, V, dO, Lg, D, dQ,
        stride_qm, stride_kn, stride_vn, stride_dom,
        Nq, Nk, qk_scale, scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INNER: tl.constexpr,
    ):
        """kernels.triton_backward's dQ kernel (one batch·head) with the inner loop passed in."""
        start_m = tl.program_id(0) * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        q = _load_tile(Q + offs_m[:, None] * stride_qm + offs_d[None, :], offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, True)
        do = _load_tile(dO + offs_m[:, None] * stride_dom + offs_d[None, :], offs_m, Nq, offs_d, HEAD_DIM, BLOCK_D, True)
        lg = tl.load(Lg + offs_m, mask=offs_m < Nq, other=float("inf"))
        Di = tl.load(D + offs_m, mask=offs_m < Nq, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        Nk_full = (Nk // BLOCK_N) * BLOCK_N
        if IS_CAUSAL:
            below_hi = tl.minimum(start_m, Nk_full)
            dq = INNER(dq, q, do, lg, Di, K, V, stride_kn, stride_vn, offs_m, offs_d, 0, below_hi, Nk, qk_scale,
                       HEAD_DIM, BLOCK_N, BLOCK_D, False, True, PREC)
            dq = INNER(dq, q, do, lg, Di, K, V, stride_kn, stride_vn, offs_m, offs_d, below_hi,
                       tl.minimum(start_m + BLOCK_M, Nk), Nk, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_D, True, True, PREC)
        else:
            dq = INNER(dq, q, do, lg, Di, K, V, stride_kn, stride_vn, offs_m, offs_d, 0, Nk_full, Nk, qk_scale,
                       HEAD_DIM, BLOCK_N, BLOCK_D, False, False, PREC)
            dq = INNER(dq, q, do, lg, Di, K, V, stride_kn, stride_vn, offs_m, offs_d, Nk_full, Nk, Nk, qk_scale,
                       HEAD_DIM, BLOCK_N, BLOCK_D, True, False, PREC)
        dq = dq * scale
        tl.store(dQ + offs_m[:, None] * HEAD_DIM + offs_d[None, :], dq,
                 mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < HEAD_DIM))

    def run_dq_loop(inner, q, k, v, O, L, dO, *, is_causal=False, scale=None, BLOCK_M=32, BLOCK_N=16):
        """dQ for one (batch, head): q, O, dO (Nq, d), k, v (Nk, d) float32, L (Nq,), with the
        inner loop `inner` (a @triton.jit function with _dq_inner's signature)."""
        Nq, d = q.shape
        Nk = k.shape[0]
        scale = 1.0 / math.sqrt(d) if scale is None else scale
        BLOCK_D = max(16, triton.next_power_of_2(d))
        D = torch.empty(1, Nq, dtype=torch.float32, device=q.device)
        Lg = torch.empty(1, Nq, dtype=torch.float32, device=q.device)
        L3 = L.reshape(1, 1, Nq)
        _bwd_preprocess_kernel[(triton.cdiv(Nq, 32), 1)](
            O, dO, L3, D, Lg, 0, 0, O.stride(0), 0, 0, dO.stride(0), 0, 0, L3.stride(2), 1, Nq,
            HEAD_DIM=d, BLOCK_M=32, BLOCK_D=BLOCK_D,
        )
        dQ = torch.full((Nq, d), float("nan"), dtype=torch.float32, device=q.device)
        _dq_harness_kernel[(triton.cdiv(Nq, BLOCK_M),)](
            q, k, v, dO, Lg, D, dQ, q.stride(0), k.stride(0), v.stride(0), dO.stride(0),
            Nq, Nk, scale * LOG2E, scale,
            HEAD_DIM=d, BLOCK_D=BLOCK_D, IS_CAUSAL=bool(is_causal), PREC="ieee",
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, INNER=inner,
        )
        return dQ

    # ---- mutants: plausible wrong inner loops ---------------------------------------------

    @triton.jit
    def _dq_mutant_no_bounds_mask(dq, q, do, lg, Di, K, V, stride_kn, stride_vn, offs_m, offs_d, lo, hi, Nk,
                                  qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                                  MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr):
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :])  # reads past N_k and d
            v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :])
            p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale - lg[:, None])
            if MASK:
                if IS_CAUSAL:
                    p = tl.where(offs_n[None, :] <= offs_m[:, None], p, 0.0)
            ds = p * (tl.dot(do, tl.trans(v), input_precision=PREC) - Di[:, None])
            dq += tl.dot(ds, k, input_precision=PREC)
        return dq

    @triton.jit
    def _dq_mutant_no_causal_mask(dq, q, do, lg, Di, K, V, stride_kn, stride_vn, offs_m, offs_d, lo, hi, Nk,
                                  qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                                  MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr):
        return _dq_inner(dq, q, do, lg, Di, K, V, stride_kn, stride_vn, offs_m, offs_d, lo, hi, Nk, qk_scale,
                         HEAD_DIM, BLOCK_N, BLOCK_D, MASK, False, PREC)

    @triton.jit
    def _dq_mutant_strict_diagonal(dq, q, do, lg, Di, K, V, stride_kn, stride_vn, offs_m, offs_d, lo, hi, Nk,
                                   qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                                   MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr):
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            ok = (offs_n[:, None] < Nk) & (offs_d[None, :] < HEAD_DIM)
            k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=ok, other=0.0)
            v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=ok, other=0.0)
            p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale - lg[:, None])
            visible = offs_n[None, :] < Nk
            if IS_CAUSAL:
                visible = visible & (offs_n[None, :] < offs_m[:, None])  # j < i: the diagonal lost
            p = tl.where(visible, p, 0.0)
            ds = p * (tl.dot(do, tl.trans(v), input_precision=PREC) - Di[:, None])
            dq += tl.dot(ds, k, input_precision=PREC)
        return dq

    @triton.jit
    def _dq_mutant_exp_not_exp2(dq, q, do, lg, Di, K, V, stride_kn, stride_vn, offs_m, offs_d, lo, hi, Nk,
                                qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                                MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr):
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            ok = (offs_n[:, None] < Nk) & (offs_d[None, :] < HEAD_DIM)
            k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=ok, other=0.0)
            v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=ok, other=0.0)
            p = tl.exp(tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale - lg[:, None])  # base mixed up
            visible = offs_n[None, :] < Nk
            if IS_CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(visible, p, 0.0)
            ds = p * (tl.dot(do, tl.trans(v), input_precision=PREC) - Di[:, None])
            dq += tl.dot(ds, k, input_precision=PREC)
        return dq

    @triton.jit
    def _dq_mutant_no_D(dq, q, do, lg, Di, K, V, stride_kn, stride_vn, offs_m, offs_d, lo, hi, Nk,
                        qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr):
        return _dq_inner(dq, q, do, lg, Di * 0.0, K, V, stride_kn, stride_vn, offs_m, offs_d, lo, hi, Nk, qk_scale,
                         HEAD_DIM, BLOCK_N, BLOCK_D, MASK, IS_CAUSAL, PREC)

    @triton.jit
    def _dq_mutant_ds_times_v(dq, q, do, lg, Di, K, V, stride_kn, stride_vn, offs_m, offs_d, lo, hi, Nk,
                              qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                              MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, PREC: tl.constexpr):
        return _dq_inner(dq, q, do, lg, Di, V, K, stride_vn, stride_kn, offs_m, offs_d, lo, hi, Nk, qk_scale,
                         HEAD_DIM, BLOCK_N, BLOCK_D, MASK, IS_CAUSAL, PREC)  # K and V swapped

    _DQ_MUTANTS = {
        "loads not masked (reads the poisoned padding)": _dq_mutant_no_bounds_mask,
        "causal mask missing on diagonal blocks": _dq_mutant_no_causal_mask,
        "causal diagonal excluded (j < i)": _dq_mutant_strict_diagonal,
        "exp instead of exp2 (L is in base 2)": _dq_mutant_exp_not_exp2,
        "D left out of dS": _dq_mutant_no_D,
        "K and V swapped": _dq_mutant_ds_times_v,
    }
    _DQ_SOLUTION = _dq_inner
else:  # pragma: no cover
    _DQ_MUTANTS = {"(triton not installed)": None}
    _DQ_SOLUTION = None


def _jit_source(fn) -> str:
    """The Python source of a @triton.jit function (a JITFunction has .src; under the
    interpreter an InterpretedFunction wraps the plain function in .fn)."""
    src = getattr(fn, "src", None)
    if src:
        return src
    try:
        return inspect.getsource(getattr(fn, "fn", fn))
    except (OSError, TypeError):
        return ""


def _poisoned(g, n, d, pad_rows, pad_cols, dev):
    """An (n, d) float32 view into a buffer whose extra rows and columns hold NaN."""
    buf = torch.full((n + pad_rows, d + pad_cols), float("nan"), dtype=torch.float32)
    buf[:n, :d] = randn(g, n, d, dtype=torch.float32)
    return buf.to(dev)[:n, :d]


@exercise(
    "04.triton_dq_loop",
    "The dQ inner loop of the Triton backward (@triton.jit), graded with poisoned padding",
    solution=_DQ_SOLUTION,
    mutants=_DQ_MUTANTS,
    needs="triton",
)
def grade_triton_dq_loop(candidate):
    """candidate: a @triton.jit function with the signature of kernels.triton_backward._dq_inner."""
    device.require_triton("04.triton_dq_loop")
    g, seed = fresh_generator()
    dev = device.default_device()
    if not hasattr(candidate, "fn"):
        raise CaseFailure(f"dq_inner should be a @triton.jit function, got {type(candidate).__name__}")
    # An unanswered stub (`raise NotImplementedError` inside the @triton.jit function) cannot run:
    # the interpreter wraps the exception and a GPU compiler rejects `raise`. Say "not attempted".
    if "NotImplementedError" in _jit_source(candidate):
        raise NotImplementedError("04.triton_dq_loop is not answered yet")

    def check(Nq, Nk, d, causal, pad_cols):
        q = _poisoned(g, Nq, d, 0, 0, dev)
        k = _poisoned(g, Nk, d, 8, pad_cols, dev)  # NaN past row N_k and past column d
        v = _poisoned(g, Nk, d, 8, pad_cols, dev)
        dO = _poisoned(g, Nq, d, 0, 0, dev)
        O, L = attention(q[None, None], k[None, None], v[None, None], is_causal=causal, return_lse=True)
        O, L = O[0, 0].contiguous(), L[0, 0].contiguous()
        q64, k64, v64, dO64 = (t.to(F64)[None, None] for t in (q, k, v, dO))
        want = attention_backward(q64, k64, v64, dO64, is_causal=causal)[0][0, 0]
        naive = attention_backward(q[None, None], k[None, None], v[None, None], dO[None, None], is_causal=causal)[0][0, 0]
        got = run_dq_loop(candidate, q, k, v, O, L, dO, is_causal=causal)
        assert_close("dQ", got, want, tolerance(want, naive, torch.float32, factor=4.0))

    with case(f"not causal, N_q=37, N_k=45 (not multiples of B_r=32, B_c=16), d=32, float32 (seed {seed})"):
        check(37, 45, 32, False, 0)
    with case(f"causal, N_q=50, N_k=40, d=32 (diagonal blocks, ragged tail) (seed {seed})"):
        check(50, 40, 32, True, 0)
    with case(f"not causal, d=24 padded to BLOCK_D=32: lanes past d hold NaN (seed {seed})"):
        check(20, 21, 24, False, 8)
    with case(f"causal, N_q=23 < N_k=60, d=24 padded (seed {seed})"):
        check(23, 60, 24, True, 8)
