"""Exercises of lesson 05: graders, reference solutions and mutants.

    05.sliding_window   a mask_mod factory: |i - j| <= window
    05.document_mask    a mask_mod factory for packed documents (causal within each document)
    05.prefix_lm        a mask_mod factory: a bidirectional prefix, then causal
    05.alibi            a score_mod factory: ALiBi's per-head linear distance bias
    05.softcap          a score_mod factory: tanh soft-capping (values and gradient)
    05.block_counts     a block mask's kv_num_blocks and full_kv_num_blocks, by hand

Every mask_mod and score_mod is graded the way FlexAttention uses it: evaluated by torch's own
create_mask (vmap over b, h, q_idx, kv_idx) or inside flex_attention, and compared with the
dense reference of kernels.flex_patterns over every (q, kv) pair, for sizes that are not
multiples of any block, Nq != Nk, and parameters drawn fresh each run (the seed is in the case).
"""

from __future__ import annotations

import warnings

import torch

from .. import flex_patterns as fp
from ..mini_flex import block_mask_from_dense
from .core import CaseFailure, assert_close, case, fresh_generator, randint
from .registry import exercise

F64 = torch.float64


def _flex():
    from torch.nn.attention import flex_attention as flex

    return flex


def _evaluate_mask_mod(mask_mod, B, H, Nq, Nk) -> torch.Tensor:
    """The candidate's mask over all pairs, exactly as FlexAttention evaluates it."""
    if not callable(mask_mod):
        raise CaseFailure(f"the factory should return a mask_mod function, got {type(mask_mod).__name__}")
    got = _flex().create_mask(mask_mod, B, H, Nq, Nk, device="cpu")
    if not isinstance(got, torch.Tensor) or got.dtype != torch.bool:
        raise CaseFailure("mask_mod should return a bool tensor (True = attend)")
    return got


def _assert_same_mask(name, got, want):
    if tuple(got.shape) != tuple(want.shape):
        raise CaseFailure(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    bad = got != want
    if bad.any():
        b, h, i, j = (int(x) for x in bad.nonzero()[0])
        raise CaseFailure(
            f"{name}: {int(bad.sum())} of {bad.numel()} pairs wrong; first at (b={b}, h={h}, q_idx={i}, "
            f"kv_idx={j}): got {bool(got[b, h, i, j])}, expected {bool(want[b, h, i, j])}"
        )


def _sizes(g):
    """(Nq, Nk) pairs: tiny, odd, a multiple of a block, and Nq != Nk."""
    return [(1, 1), (randint(g, 17, 47), None), (64, 64), (randint(g, 60, 100), None), (randint(g, 10, 30), randint(g, 50, 90))]


# ============================================================================================
# 05.sliding_window


def _solution_sliding_window(window):
    return fp.sliding_window(window).mask_mod


def _mutant_window_strict(window):
    return lambda b, h, q_idx, kv_idx: (q_idx - kv_idx).abs() < window


def _mutant_window_one_sided(window):
    return lambda b, h, q_idx, kv_idx: q_idx - kv_idx <= window


def _mutant_window_causal(window):
    return lambda b, h, q_idx, kv_idx: (q_idx - kv_idx <= window) & (kv_idx <= q_idx)


def _mutant_window_plus_one(window):
    return lambda b, h, q_idx, kv_idx: (q_idx - kv_idx).abs() <= window + 1


@exercise(
    "05.sliding_window",
    "mask_mod: sliding window |i - j| <= window",
    solution=_solution_sliding_window,
    mutants={
        "strict < window (off by one)": _mutant_window_strict,
        "one-sided: forgets the keys after i": _mutant_window_one_sided,
        "causal sliding window instead of two-sided": _mutant_window_causal,
        "window + 1 (off by one)": _mutant_window_plus_one,
    },
)
def grade_sliding_window(make_sliding_window):
    g, seed = fresh_generator()
    for Nq, Nk in _sizes(g):
        Nk = Nk or Nq
        window = randint(g, 0, 1) if max(Nq, Nk) < 4 else randint(g, 1, max(1, min(Nq, Nk) // 3))
        with case(f"Nq={Nq}, Nk={Nk}, window={window} (seed {seed})"):
            got = _evaluate_mask_mod(make_sliding_window(window), 1, 1, Nq, Nk)
            _assert_same_mask("mask", got, fp.sliding_window(window).dense_mask(1, 1, Nq, Nk))


# ============================================================================================
# 05.document_mask


def _solution_document_mask(lengths):
    ids = fp.document_ids_from_lengths(lengths)
    return fp.document(ids, causal=True).mask_mod


def _mutant_document_not_causal(lengths):
    ids = fp.document_ids_from_lengths(lengths)
    return lambda b, h, q_idx, kv_idx: ids[q_idx] == ids[kv_idx]


def _mutant_document_ignored(lengths):
    return lambda b, h, q_idx, kv_idx: kv_idx <= q_idx


def _mutant_document_boundary(lengths):
    # searchsorted on the document starts without right=True: the first token of each
    # document is counted in the previous one
    starts = torch.cumsum(torch.as_tensor([0] + list(lengths)[:-1]), 0)
    ids = torch.searchsorted(starts, torch.arange(int(sum(lengths)))) - 1
    ids = ids.clamp(min=0)
    return lambda b, h, q_idx, kv_idx: (ids[q_idx] == ids[kv_idx]) & (kv_idx <= q_idx)


def _mutant_document_sees_earlier_documents(lengths):
    ids = fp.document_ids_from_lengths(lengths)
    return lambda b, h, q_idx, kv_idx: (ids[q_idx] >= ids[kv_idx]) & (kv_idx <= q_idx)


@exercise(
    "05.document_mask",
    "mask_mod: packed documents, causal within each document",
    solution=_solution_document_mask,
    mutants={
        "not causal within the document": _mutant_document_not_causal,
        "plain causal: documents ignored": _mutant_document_ignored,
        "wrong document boundary (first token in the previous document)": _mutant_document_boundary,
        "sees earlier documents too": _mutant_document_sees_earlier_documents,
    },
)
def grade_document_mask(make_document_mask):
    g, seed = fresh_generator()
    for n_docs, max_len in ((1, 9), (3, 12), (randint(g, 4, 7), 20), (randint(g, 2, 4), 40)):
        lengths = [randint(g, 1, max_len) for _ in range(n_docs)]
        if n_docs >= 3:
            lengths[randint(g, 0, n_docs - 1)] = 1  # a one-token document
        N = sum(lengths)
        with case(f"document lengths {lengths} (N={N}, seed {seed})"):
            got = _evaluate_mask_mod(make_document_mask(list(lengths)), 1, 1, N, N)
            want = fp.document(fp.document_ids_from_lengths(lengths), causal=True).dense_mask(1, 1, N, N)
            _assert_same_mask("mask", got, want)


# ============================================================================================
# 05.prefix_lm


def _solution_prefix_lm(prefix_len):
    return fp.prefix_lm(prefix_len).mask_mod


def _mutant_prefix_causal_only(prefix_len):
    return lambda b, h, q_idx, kv_idx: kv_idx <= q_idx


def _mutant_prefix_wrong_axis(prefix_len):
    return lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) | (q_idx < prefix_len)


def _mutant_prefix_off_by_one(prefix_len):
    return lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) | (kv_idx <= prefix_len)


def _mutant_prefix_and(prefix_len):
    return lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) & (kv_idx < prefix_len)


@exercise(
    "05.prefix_lm",
    "mask_mod: prefix-LM (bidirectional prefix, causal after it)",
    solution=_solution_prefix_lm,
    mutants={
        "prefix not bidirectional (plain causal)": _mutant_prefix_causal_only,
        "prefix queries see the whole sequence (q_idx < prefix)": _mutant_prefix_wrong_axis,
        "kv_idx <= prefix_len (off by one)": _mutant_prefix_off_by_one,
        "& instead of |": _mutant_prefix_and,
    },
)
def grade_prefix_lm(make_prefix_lm):
    g, seed = fresh_generator()
    for Nq, Nk in _sizes(g)[1:]:
        Nk = Nk or Nq
        P = randint(g, 1, min(Nq, Nk) - 1)
        with case(f"Nq={Nq}, Nk={Nk}, prefix_len={P} (seed {seed})"):
            got = _evaluate_mask_mod(make_prefix_lm(P), 1, 1, Nq, Nk)
            _assert_same_mask("mask", got, fp.prefix_lm(P).dense_mask(1, 1, Nq, Nk))


# ============================================================================================
# score_mods: evaluated on every pair by broadcasting, and inside flex_attention


def _grids(B, H, Nq, Nk):
    return (torch.arange(B)[:, None, None, None], torch.arange(H)[None, :, None, None],
            torch.arange(Nq)[None, None, :, None], torch.arange(Nk)[None, None, None, :])


def _evaluate_score_mod(score_mod, S):
    if not callable(score_mod):
        raise CaseFailure(f"the factory should return a score_mod function, got {type(score_mod).__name__}")
    B, H, Nq, Nk = S.shape
    out = score_mod(S, *_grids(B, H, Nq, Nk))
    if not isinstance(out, torch.Tensor):
        raise CaseFailure(f"score_mod should return a tensor, got {type(out).__name__}")
    return out.expand(B, H, Nq, Nk) if out.dim() == 4 else out


def _inside_flex(score_mod, pattern, g, B, H, Nq, Nk, d=8):
    """O of flex_attention (eager) with the candidate's score_mod, against the reference."""
    q = torch.randn(B, H, Nq, d, generator=g, dtype=F64)
    k = torch.randn(B, H, Nk, d, generator=g, dtype=F64)
    v = torch.randn(B, H, Nk, d, generator=g, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = _flex().flex_attention(q, k, v, score_mod=score_mod)
    assert_close("O = flex_attention(q, k, v, score_mod=yours)", got, fp.reference_attention(q, k, v, pattern), 1e-6)


# 05.alibi


def _solution_alibi(num_heads):
    return fp.alibi(num_heads, causal=False).score_mod


def _mutant_alibi_sign(num_heads):
    slopes = fp.alibi_slopes(num_heads)
    return lambda score, b, h, q_idx, kv_idx: score + slopes[h] * (q_idx - kv_idx)


def _mutant_alibi_head_order(num_heads):
    slopes = fp.alibi_slopes(num_heads).flip(0)
    return lambda score, b, h, q_idx, kv_idx: score + slopes[h] * (kv_idx - q_idx)


def _mutant_alibi_exponent(num_heads):
    slopes = torch.tensor([2.0 ** (-8.0 * h / num_heads) for h in range(num_heads)])
    return lambda score, b, h, q_idx, kv_idx: score + slopes[h] * (kv_idx - q_idx)


def _mutant_alibi_one_slope(num_heads):
    return lambda score, b, h, q_idx, kv_idx: score + 2.0 ** (-8.0 / num_heads) * (kv_idx - q_idx)


@exercise(
    "05.alibi",
    "score_mod: ALiBi, score + m_h·(kv_idx - q_idx) with m_h = 2^(-8(h+1)/H)",
    solution=_solution_alibi,
    mutants={
        "slope sign flipped (rewards distance)": _mutant_alibi_sign,
        "head order reversed": _mutant_alibi_head_order,
        "exponent uses h instead of h + 1": _mutant_alibi_exponent,
        "one slope for every head": _mutant_alibi_one_slope,
    },
)
def grade_alibi(make_alibi):
    g, seed = fresh_generator()
    for H, Nq, Nk in ((2, 5, 5), (8, randint(g, 20, 40), randint(g, 20, 40)), (randint(g, 3, 6), 33, 17)):
        with case(f"H={H}, Nq={Nq}, Nk={Nk}: every score (seed {seed})"):
            S = 4 * torch.randn(2, H, Nq, Nk, generator=g, dtype=F64)
            got = _evaluate_score_mod(make_alibi(H), S)
            assert_close("score_mod(score, b, h, q_idx, kv_idx)", got, fp.alibi(H, causal=False).dense_scores(S), 1e-6)
    with case(f"inside flex_attention, H=4, N=23 (seed {seed})"):
        _inside_flex(make_alibi(4), fp.alibi(4, causal=False), g, 1, 4, 23, 23)


# 05.softcap


def _solution_softcap(cap):
    return fp.softcap(cap, causal=False).score_mod


def _mutant_softcap_clamp(cap):
    return lambda score, b, h, q_idx, kv_idx: score.clamp(-cap, cap)


def _mutant_softcap_twice(cap):
    return lambda score, b, h, q_idx, kv_idx: cap * torch.tanh(cap * torch.tanh(score / cap) / cap)


def _mutant_softcap_no_divide(cap):
    return lambda score, b, h, q_idx, kv_idx: cap * torch.tanh(score)


def _mutant_softcap_no_multiply(cap):
    return lambda score, b, h, q_idx, kv_idx: torch.tanh(score / cap)


def _mutant_softcap_detached(cap):
    return lambda score, b, h, q_idx, kv_idx: cap * torch.tanh(score.detach() / cap)


@exercise(
    "05.softcap",
    "score_mod: tanh soft-capping, cap·tanh(score / cap)",
    solution=_solution_softcap,
    mutants={
        "clamp instead of tanh": _mutant_softcap_clamp,
        "cap applied twice": _mutant_softcap_twice,
        "forgets to divide by cap": _mutant_softcap_no_divide,
        "forgets to multiply by cap": _mutant_softcap_no_multiply,
        "right values, no gradient (detached)": _mutant_softcap_detached,
    },
)
def grade_softcap(make_softcap):
    g, seed = fresh_generator()
    for cap in (1.0, 1.0 + 9.0 * float(torch.rand(1, generator=g)), 30.0):
        with case(f"cap={cap:.3g}: values and gradient on scores up to ±{4 * cap:.3g} (seed {seed})"):
            S = (2 * cap * torch.randn(2, 3, 19, 27, generator=g, dtype=F64)).requires_grad_()
            got = _evaluate_score_mod(make_softcap(cap), S)
            want = fp.softcap(cap, causal=False).dense_scores(S)
            assert_close("score_mod(score, ...)", got, want, 1e-9)
            if not got.requires_grad:
                raise CaseFailure("the score_mod's output does not depend on score for autograd (detached?)")
            up = torch.randn(S.shape, generator=g, dtype=F64)
            (dS,) = torch.autograd.grad(got, S, up)
            assert_close("d score_mod / d score (autograd)", dS, up * (1 - torch.tanh(S.detach() / cap) ** 2), 1e-9)
    with case(f"inside flex_attention, cap=2 (seed {seed})"):
        _inside_flex(make_softcap(2.0), fp.softcap(2.0, causal=False), g, 1, 2, 21, 30)


# ============================================================================================
# 05.block_counts


def _solution_block_counts(mask, BLOCK_SIZE):
    bm = block_mask_from_dense(mask, BLOCK_SIZE)
    return bm.kv_num_blocks[0, 0], bm.full_kv_num_blocks[0, 0]


def _tile_counts(mask, BLOCK_SIZE, pad_value=False, ceil=True):
    B_r, B_c = BLOCK_SIZE
    Nq, Nk = mask.shape
    T_r = -(-Nq // B_r) if ceil else Nq // B_r
    T_c = -(-Nk // B_c) if ceil else Nk // B_c
    padded = torch.full((max(T_r * B_r, Nq), max(T_c * B_c, Nk)), pad_value, dtype=torch.bool)
    padded[:Nq, :Nk] = mask
    padded = padded[: T_r * B_r, : T_c * B_c]
    return padded.view(T_r, B_r, T_c, B_c).sum(dim=(1, 3)), B_r * B_c


def _mutant_blocks_padding_true(mask, BLOCK_SIZE):
    count, area = _tile_counts(mask, BLOCK_SIZE, pad_value=True)
    return ((count > 0) & (count < area)).sum(-1), (count == area).sum(-1)


def _mutant_blocks_floor(mask, BLOCK_SIZE):
    count, area = _tile_counts(mask, BLOCK_SIZE, ceil=False)
    return ((count > 0) & (count < area)).sum(-1), (count == area).sum(-1)


def _mutant_blocks_full_counted_twice(mask, BLOCK_SIZE):
    count, area = _tile_counts(mask, BLOCK_SIZE)
    return (count > 0).sum(-1), (count == area).sum(-1)


def _mutant_blocks_partial_as_empty(mask, BLOCK_SIZE):
    count, area = _tile_counts(mask, BLOCK_SIZE)
    return torch.zeros_like((count > 0).sum(-1)), (count == area).sum(-1)


def _mutant_blocks_corner_sample(mask, BLOCK_SIZE):
    B_r, B_c = BLOCK_SIZE
    count, area = _tile_counts(mask, BLOCK_SIZE)
    corner = mask[::B_r, ::B_c]  # each tile judged full from its top-left pair alone
    full = corner & (count > 0)
    return ((count > 0) & ~full).sum(-1), full.sum(-1)


def _torch_counts(mask, BLOCK_SIZE):
    """torch's own create_block_mask, on a mask_mod that reads the dense mask."""
    Nq, Nk = mask.shape
    bm = _flex().create_block_mask(lambda b, h, q, kv: mask[q, kv], None, None, Nq, Nk, device="cpu",
                                   BLOCK_SIZE=BLOCK_SIZE)
    return bm.kv_num_blocks[0, 0], bm.full_kv_num_blocks[0, 0]


@exercise(
    "05.block_counts",
    "block mask by hand: kv_num_blocks (partial) and full_kv_num_blocks per query block",
    solution=_solution_block_counts,
    mutants={
        "padding counted as attended (edge blocks called full)": _mutant_blocks_padding_true,
        "floor instead of ceil: the ragged last block dropped": _mutant_blocks_floor,
        "full blocks counted among the partial ones too": _mutant_blocks_full_counted_twice,
        "partial blocks counted as empty": _mutant_blocks_partial_as_empty,
        "tile decided from its top-left pair": _mutant_blocks_corner_sample,
    },
)
def grade_block_counts(block_counts):
    g, seed = fresh_generator()
    N1, N2 = randint(g, 40, 90), randint(g, 20, 60)
    masks = [
        ("causal", fp.causal(), 64, 64, (16, 16)),
        ("causal", fp.causal(), N1, N1, (16, 16)),
        ("sliding window", fp.sliding_window(randint(g, 3, 12)), N1, N1, (16, 16)),
        ("documents", fp.document(fp.document_ids_from_lengths([randint(g, 5, 30) for _ in range(4)])), None, None, (16, 16)),
        ("prefix-LM", fp.prefix_lm(randint(g, 10, 30)), N1, N2, (32, 16)),
        ("global + local", fp.global_local(4, 3), 8, 8, (16, 16)),
    ]
    for label, p, Nq, Nk, block in masks:
        if Nq is None:
            Nq = Nk = p.seq_len
        mask = p.dense_mask(1, 1, Nq, Nk)[0, 0].clone()
        with case(f"{label}, Nq={Nq}, Nk={Nk}, BLOCK_SIZE={block} (seed {seed})"):
            got = block_counts(mask.clone(), block)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise CaseFailure("block_counts should return (kv_num_blocks, full_kv_num_blocks)")
            want = _torch_counts(mask, block)
            T_r = -(-Nq // block[0])
            for name, a, w in zip(("kv_num_blocks", "full_kv_num_blocks"), got, want):
                a = torch.as_tensor(a)
                if tuple(a.shape) != (T_r,):
                    raise CaseFailure(f"{name} has shape {tuple(a.shape)}, expected ({T_r},): one count per query block")
                if not torch.equal(a.long(), w.long()):
                    raise CaseFailure(f"{name} is {a.tolist()}, expected {w.tolist()}")
    with case(f"random mask, Nq=50, Nk=35, BLOCK_SIZE=(16, 16) (seed {seed})"):
        mask = torch.rand(50, 35, generator=g) < 0.03
        mask[:16, :16] = True  # one full tile
        got = block_counts(mask.clone(), (16, 16))
        want = _torch_counts(mask, (16, 16))
        for name, a, w in zip(("kv_num_blocks", "full_kv_num_blocks"), got, want):
            if not torch.equal(torch.as_tensor(a).long(), w.long()):
                raise CaseFailure(f"{name} is {torch.as_tensor(a).tolist()}, expected {w.tolist()}")

