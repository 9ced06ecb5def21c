"""Exercises of lesson 02: graders, reference solutions and mutants.

    02.merge_states              merge two running states (m, ℓ)
    02.online_softmax            one-pass online softmax over a stream of blocks
    02.online_attention_row      online-softmax attention for one query row, in blocks of keys
    02.worked_example_iteration2 one tile iteration of the worked example, as done by hand

Every grader draws fresh random inputs (the seed is in each case's description), and always
includes large logits (about 1e4, where exp overflows) and rows masked entirely with -inf.
"""

from __future__ import annotations

import math

import torch

from ..online_softmax import (
    LN2,
    LOG2E,
    SoftmaxState,
    attention_tile_step,
    merge_states,
    online_attention_row,
    online_attention_trace,
    online_softmax_stream,
    worked_example,
)
from ..reference import attention
from .core import CaseFailure, assert_close, case, fresh_generator, randint, randn, tolerance, unpack
from .registry import exercise

F64 = torch.float64
NEG_INF = float("-inf")


def _scalar_tensor(name: str, x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise CaseFailure(f"{name} should be one number (a 0-d tensor), got shape {tuple(x.shape)}")
        return x.reshape(())
    try:
        return torch.tensor(float(x), dtype=F64)
    except (TypeError, ValueError):
        raise CaseFailure(f"{name} should be a number or a 0-d tensor, got {type(x).__name__}") from None


def _safe(m):
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


# ============================================================================================
# 02.merge_states


def _mutant_merge_ell_not_rescaled(a, b):
    (m_a, l_a), (m_b, l_b) = a, b
    return torch.maximum(m_a, m_b), l_a + l_b


def _mutant_merge_average_of_maxima(a, b):
    (m_a, l_a), (m_b, l_b) = a, b
    m = (m_a + m_b) / 2  # not the max, and not associative: ((a, b), c) != (a, (b, c))
    return m, l_a * torch.exp(m_a - m) + l_b * torch.exp(m_b - m)


def _mutant_merge_rescale_inverted(a, b):
    (m_a, l_a), (m_b, l_b) = a, b
    m = torch.maximum(m_a, m_b)
    return m, l_a * torch.exp(m - m_a) + l_b * torch.exp(m - m_b)


def _mutant_merge_no_neg_inf_guard(a, b):
    (m_a, l_a), (m_b, l_b) = a, b
    m = torch.maximum(m_a, m_b)
    return m, l_a * torch.exp(m_a - m) + l_b * torch.exp(m_b - m)  # NaN when both are empty


def _mutant_merge_rescales_only_first(a, b):
    (m_a, l_a), (m_b, l_b) = a, b
    m = torch.maximum(m_a, m_b)
    return m, l_a * torch.exp(m_a - _safe(m)) + l_b  # not commutative


def _mutant_merge_min_instead_of_max(a, b):
    (m_a, l_a), (m_b, l_b) = a, b
    m = torch.minimum(m_a, m_b)
    ms = _safe(m)
    return m, l_a * torch.exp(m_a - ms) + l_b * torch.exp(m_b - ms)


def _random_cuts(g, N: int, k: int) -> list[int]:
    """k - 1 sorted distinct cut points in 1..N-1: k non-empty blocks."""
    cuts = torch.randperm(N - 1, generator=g)[: k - 1] + 1
    return [0] + sorted(int(c) for c in cuts) + [N]


@exercise(
    "02.merge_states",
    "Merge two running softmax states (m, ℓ)",
    solution=merge_states,
    mutants={
        "ell not rescaled": _mutant_merge_ell_not_rescaled,
        "average of the maxima (not associative)": _mutant_merge_average_of_maxima,
        "rescale factor inverted": _mutant_merge_rescale_inverted,
        "no -inf guard (NaN for empty states)": _mutant_merge_no_neg_inf_guard,
        "rescales only the first state (not commutative)": _mutant_merge_rescales_only_first,
        "min instead of max": _mutant_merge_min_instead_of_max,
    },
)
def grade_merge_states(candidate):
    """candidate(a, b) -> (m, ell): a, b are states (m, ell) of two parts of the same rows."""
    g, seed = fresh_generator()

    def expect(name, x_a, x_b, dtype=F64, a=None, b=None):
        a = SoftmaxState.of(x_a) if a is None else a
        b = SoftmaxState.of(x_b) if b is None else b
        want = SoftmaxState.of(torch.cat([x_a, x_b], dim=-1).to(F64))
        got = unpack("merge_states(a, b)", candidate(a, b), 2)
        naive = SoftmaxState.of(torch.cat([x_a, x_b], dim=-1)) if dtype != F64 else None
        for k, field in enumerate(("m", "ell")):
            want_k = want[k]
            tol = tolerance(want_k, None if naive is None else naive[k], dtype)
            assert_close(f"{name} {field}", got[k], want_k, tol, expect_dtype=dtype)

    R = 8
    with case(f"float64 states of two random blocks, rows of shape ({R},) (seed {seed})"):
        n_a, n_b = randint(g, 1, 9), randint(g, 1, 9)
        x_a, x_b = randn(g, R, n_a, scale=3.0), randn(g, R, n_b, scale=3.0)
        x_a[0::2] += 4.0  # even rows: a holds the max; odd rows: b does
        x_b[1::2] += 4.0
        expect("merge", x_a, x_b)

    with case(f"float64 states with leading dims (2, 3, 4) (seed {seed})"):
        x_a, x_b = randn(g, 2, 3, 4, 5, scale=3.0), randn(g, 2, 3, 4, 3, scale=3.0)
        expect("merge", x_a, x_b)

    with case(f"large logits (about 1e4: exp overflows) (seed {seed})"):
        x_a, x_b = randn(g, R, 6, scale=1e4), randn(g, R, 4, scale=1e4)
        expect("merge", x_a, x_b)

    with case(f"empty states (every logit -inf: m = -inf, ℓ = 0) on either side or both (seed {seed})"):
        x_a, x_b = randn(g, R, 5, scale=3.0), randn(g, R, 4, scale=3.0)
        x_a[0:2] = NEG_INF  # rows 0, 1: a empty
        x_b[2:4] = NEG_INF  # rows 2, 3: b empty
        x_a[4:6] = NEG_INF  # rows 4, 5: both empty
        x_b[4:6] = NEG_INF
        x_a[6, :2] = NEG_INF  # row 6: some masked logits
        expect("merge", x_a, x_b)

    with case(f"the empty state is the identity: merge(empty, a) == a (seed {seed})"):
        x = randn(g, R, 5, scale=3.0)
        empty = SoftmaxState.empty((R,), F64)
        expect("merge(empty, a)", x[:, :0], x, a=empty)

    with case(f"float32 states (seed {seed})"):
        x_a, x_b = randn(g, R, 7, dtype=torch.float32, scale=5.0), randn(g, R, 5, dtype=torch.float32, scale=5.0)
        expect("merge", x_a, x_b, dtype=torch.float32)

    with case(f"associative and commutative: 5 blocks merged in random orders and trees (seed {seed})"):
        N = 24
        x = randn(g, R, N, scale=4.0)
        x[0] = torch.sort(x[0]).values  # the max moves at every block
        cuts = _random_cuts(g, N, 5)
        want = SoftmaxState.of(x)
        for trial in range(4):
            parts = [SoftmaxState.of(x[:, cuts[k] : cuts[k + 1]]) for k in range(5)]
            order = torch.randperm(5, generator=g).tolist()
            pool = [parts[k] for k in order]
            while len(pool) > 1:  # merge a random adjacent pair, either way round
                k = randint(g, 0, len(pool) - 2)
                left, right = pool[k], pool[k + 1]
                if randint(g, 0, 1):
                    left, right = right, left
                merged = SoftmaxState(*unpack("merge_states(a, b)", candidate(left, right), 2))
                pool[k : k + 2] = [merged]
            for field, w in (("m", want.m), ("ell", want.ell)):
                assert_close(f"order {order}, trial {trial}: {field}", pool[0][0 if field == "m" else 1], w, tolerance(w, None, F64))


# ============================================================================================
# 02.online_softmax: one pass over a stream of blocks


def _one_pass_stream(x: torch.Tensor, cuts: list[int], poison: bool = True):
    """Yield x's blocks (copies) in order. When the next block is requested, the previous one is
    overwritten with NaN, like a tile in on-chip memory that the next load replaces: a candidate
    that keeps blocks to read them again reads NaN."""
    prev = None
    for k in range(len(cuts) - 1):
        if poison and prev is not None:
            prev.fill_(float("nan"))
        prev = x[..., cuts[k] : cuts[k + 1]].clone()  # (R, n_k)
        yield prev
    if poison and prev is not None:
        prev.fill_(float("nan"))


def _mutant_softmax_template(x_blocks, *, rescale_ell=True, rescale_y=True, guard=True, old_max=False,
                             exp_first=False, divide_early=False, max_frozen=False):
    m = ell = y = None
    for x in x_blocks:
        if m is None:
            m = torch.full(x.shape[:-1], NEG_INF, dtype=x.dtype)
            ell = torch.zeros(x.shape[:-1], dtype=x.dtype)
        if max_frozen and not torch.isneginf(m).all():
            m_new = m
        else:
            m_new = torch.maximum(m, x.amax(-1))
        ms = _safe(m_new) if guard else m_new
        alpha = torch.exp(m - ms)
        if old_max:
            p = torch.exp(x - m[..., None])
        elif exp_first:
            p = torch.exp(x) * torch.exp(-ms)[..., None]
        else:
            p = torch.exp(x - ms[..., None])
        ell_new = (alpha * ell if rescale_ell else ell) + p.sum(-1)
        if divide_early:
            p = p / ell_new[..., None]
        if y is None:
            y = p
        else:
            y = torch.cat([y * alpha[..., None] if rescale_y else y, p], -1)
        m, ell = m_new, ell_new
    if divide_early:
        return y
    return y / torch.where(ell > 0, ell, torch.ones_like(ell))[..., None]


def _mutant_softmax_reads_twice(x_blocks):
    x = torch.cat(list(x_blocks), dim=-1)  # keeps every block, then reads them again
    m = _safe(x.amax(-1, keepdim=True))
    e = torch.exp(x - m)
    return e / torch.where(e.sum(-1, keepdim=True) > 0, e.sum(-1, keepdim=True), 1.0)


@exercise(
    "02.online_softmax",
    "One-pass online softmax over a stream of blocks",
    solution=online_softmax_stream,
    mutants={
        "ell not rescaled": lambda xs: _mutant_softmax_template(xs, rescale_ell=False),
        "output not rescaled": lambda xs: _mutant_softmax_template(xs, rescale_y=False),
        "exp taken before the max is known": lambda xs: _mutant_softmax_template(xs, exp_first=True),
        "uses the old max": lambda xs: _mutant_softmax_template(xs, old_max=True),
        "divides by ℓ too early": lambda xs: _mutant_softmax_template(xs, divide_early=True),
        "no -inf guard": lambda xs: _mutant_softmax_template(xs, guard=False),
        "max never updated after the first block": lambda xs: _mutant_softmax_template(xs, max_frozen=True),
        "reads the stream twice": _mutant_softmax_reads_twice,
    },
)
def grade_online_softmax(candidate):
    """candidate(blocks) -> y (R, N): blocks is an iterator of logit blocks (R, n_k), read once."""
    g, seed = fresh_generator()

    def expect(x, cuts, dtype=F64):
        x = x.to(dtype)
        want = torch.softmax(x.to(F64), dim=-1).nan_to_num(0.0)  # rows of -inf: 0
        y = candidate(_one_pass_stream(x, cuts))
        if isinstance(y, torch.Tensor) and y.shape == want.shape and torch.isnan(y).any() and not torch.isnan(want).any():
            again = candidate(_one_pass_stream(x, cuts, poison=False))
            if isinstance(again, torch.Tensor) and not torch.isnan(again).any():
                raise CaseFailure(
                    "NaN in the output, which goes away when earlier blocks stay readable: the candidate reads "
                    "blocks again after the next one arrived (each is overwritten with NaN then, as on-chip "
                    "memory would be). Keep (m, ℓ) and the output so far, not the logits."
                )
        naive = torch.softmax(x, dim=-1).nan_to_num(0.0) if dtype != F64 else None
        assert_close("y", y, want, tolerance(want, naive, dtype), expect_dtype=dtype)

    R = 4
    with case(f"float64, N = 29 in blocks of random sizes (seed {seed})"):
        x = randn(g, R, 29, scale=3.0)
        expect(x, _random_cuts(g, 29, randint(g, 4, 9)))

    with case(f"the max arrives in the last block (logits sorted ascending) (seed {seed})"):
        x = torch.sort(randn(g, R, 24, scale=3.0), dim=-1).values
        expect(x, _random_cuts(g, 24, 6))

    with case(f"the max is in the first block (sorted descending), blocks of 1 (seed {seed})"):
        x = torch.sort(randn(g, R, 12, scale=3.0), dim=-1, descending=True).values
        expect(x, list(range(13)))

    with case(f"one block holding the whole row (seed {seed})"):
        x = randn(g, R, 9, scale=3.0)
        expect(x, [0, 9])

    with case(f"large logits (about 1e4: exp overflows) (seed {seed})"):
        x = randn(g, R, 30, scale=1e4)
        x[0] = torch.sort(x[0]).values
        expect(x, _random_cuts(g, 30, 6))

    with case(f"-inf: a fully masked row, a row whose first block is all -inf, scattered -inf (seed {seed})"):
        x = randn(g, R, 20, scale=3.0)
        cuts = _random_cuts(g, 20, 5)
        x[0] = NEG_INF
        x[1, : cuts[1]] = NEG_INF
        x[2, torch.randperm(20, generator=g)[:6]] = NEG_INF
        expect(x, cuts)

    with case(f"float32, N = 40 (seed {seed})"):
        x = randn(g, R, 40, scale=6.0)
        expect(x, _random_cuts(g, 40, 7), dtype=torch.float32)


# ============================================================================================
# 02.online_attention_row


def _mutant_row_template(q, K, V, block_size, mask=None, *, rescale_ell=True, rescale_o=True, use_scale=True,
                         bounds=lambda N, B: range(0, N, B), block_len=lambda B: B, old_max=False,
                         divide_early=False, guard=True, exp2_unfolded=False, L_kind="natural"):
    N, d = K.shape
    c = 1.0 / math.sqrt(d) if use_scale else 1.0
    exp = torch.exp2 if exp2_unfolded else torch.exp
    m = torch.tensor(NEG_INF, dtype=q.dtype)
    ell = torch.tensor(0.0, dtype=q.dtype)
    o = torch.zeros(V.shape[1], dtype=q.dtype)
    for j0 in bounds(N, block_size):
        j1 = min(j0 + block_len(block_size), N)
        s = (K[j0:j1] @ q) * c
        if mask is not None:
            s = s.masked_fill(~mask[j0:j1], NEG_INF)
        m_new = torch.maximum(m, s.amax())
        ms = _safe(m_new) if guard else m_new
        alpha = exp(m - ms)
        p = exp(s - m) if old_max else exp(s - ms)
        ell_new = (alpha * ell if rescale_ell else ell) + p.sum()
        if divide_early:
            o = (alpha * o + p @ V[j0:j1]) / ell_new
        else:
            o = (alpha * o if rescale_o else o) + p @ V[j0:j1]
        m, ell = m_new, ell_new
    if not divide_early:
        o = o / ell if ell > 0 else o
    if not ell > 0:
        return o, torch.tensor(NEG_INF, dtype=q.dtype)
    if L_kind == "base2":
        return o, m * LOG2E + torch.log2(ell)
    if L_kind == "no max":
        return o, torch.log(ell)
    return o, m + torch.log(ell)


def _mutant_row_exp2_unfolded(q, K, V, block_size, mask=None):
    return _mutant_row_template(q, K, V, block_size, mask, exp2_unfolded=True)


def _solution_row(q, K, V, block_size, mask=None):
    return online_attention_row(q, K, V, block_size=block_size, mask=mask)


@exercise(
    "02.online_attention_row",
    "Online-softmax attention for one query row",
    solution=_solution_row,
    mutants={
        "ell not rescaled": lambda *a, **k: _mutant_row_template(*a, **k, rescale_ell=False),
        "O not rescaled": lambda *a, **k: _mutant_row_template(*a, **k, rescale_o=False),
        "missing 1/sqrt(d)": lambda *a, **k: _mutant_row_template(*a, **k, use_scale=False),
        "off-by-one block bounds (loop stops at N - 1)": lambda *a, **k: _mutant_row_template(
            *a, **k, bounds=lambda N, B: range(0, N - 1, B)),
        "off-by-one block length (B - 1 keys per block)": lambda *a, **k: _mutant_row_template(
            *a, **k, block_len=lambda B: max(B - 1, 1)),
        "last partial block dropped": lambda *a, **k: _mutant_row_template(
            *a, **k, bounds=lambda N, B: range(0, N - B + 1, B)),
        "uses the old max": lambda *a, **k: _mutant_row_template(*a, **k, old_max=True),
        "divides by ℓ too early": lambda *a, **k: _mutant_row_template(*a, **k, divide_early=True),
        "no -inf guard": lambda *a, **k: _mutant_row_template(*a, **k, guard=False),
        "exp2 without log2(e) folded into the scale": _mutant_row_exp2_unfolded,
        "L in base 2": lambda *a, **k: _mutant_row_template(*a, **k, L_kind="base2"),
        "L without the max": lambda *a, **k: _mutant_row_template(*a, **k, L_kind="no max"),
    },
)
def grade_online_attention_row(candidate):
    """candidate(q, K, V, block_size, mask=None) -> (o, L): q (d,), K (N, d), V (N, d_v),
    mask (N,) bool (True = attend); o (d_v,) in q's dtype and L the row's log-sum-exp."""
    g, seed = fresh_generator()

    def expect(N, d, d_v, B, dtype=F64, qk_scale=1.0, mask=None, ascending=False):
        q = randn(g, d, dtype=dtype, scale=qk_scale)  # (d,)
        K = randn(g, N, d, dtype=dtype, scale=qk_scale)  # (N, d)
        if ascending:  # keys in order of increasing score: every block raises the running max
            K = K[torch.argsort(K.to(F64) @ q.to(F64))]
        V = randn(g, N, d_v, dtype=dtype)  # (N, d_v)
        kw = {} if mask is None else {"attn_mask": mask[None, None, None, :]}
        O64, L64 = attention(q.to(F64)[None, None, None], K.to(F64)[None, None], V.to(F64)[None, None], return_lse=True, **kw)
        want_o, want_L = O64[0, 0, 0], L64[0, 0, 0]  # (d_v,), ()
        if dtype != F64:
            O_n, L_n = attention(q[None, None, None], K[None, None], V[None, None], return_lse=True, **kw)
            tol_o, tol_L = tolerance(want_o, O_n[0, 0, 0], dtype), tolerance(want_L, L_n[0, 0, 0], dtype)
        else:
            tol_o, tol_L = tolerance(want_o, None, F64), tolerance(want_L, None, F64)
        out = candidate(q, K, V, B) if mask is None else candidate(q, K, V, B, mask=mask)
        o, L = unpack("online_attention_row(...)", out, 2)
        assert_close("o", o, want_o, tol_o, expect_dtype=dtype)
        assert_close("L", _scalar_tensor("L", L), want_L, tol_L)

    d, d_v = randint(g, 3, 9), randint(g, 1, 6)
    B = randint(g, 2, 5)
    with case(f"float64, N = 4·B + 3 = {4 * B + 3} keys in blocks of B = {B}, d = {d}, d_v = {d_v} (seed {seed})"):
        expect(4 * B + 3, d, d_v, B)
    with case(f"N = 3·B + 1 = {3 * B + 1}: the last block has one key (seed {seed})"):
        expect(3 * B + 1, d, d_v, B)
    with case(f"keys sorted by score, so every block raises the max, N = {4 * B + 3} (seed {seed})"):
        expect(4 * B + 3, d, d_v, B, ascending=True)
    with case(f"N = 5·B = {5 * B}: a multiple of the block (seed {seed})"):
        expect(5 * B, d, d_v, B)
    with case(f"N = 5 smaller than the block B = 8, then B = 1 (seed {seed})"):
        expect(5, d, d_v, 8)
        expect(7, d, d_v, 1)
    with case(f"d = 2, the worked example's head dim (seed {seed})"):
        expect(9, 2, 2, 2)
    with case(f"large logits (q and K scaled by 100: scores about 1e4) (seed {seed})"):
        expect(4 * B + 2, d, d_v, B, qk_scale=100.0)
    with case(f"a mask hiding some keys, and the whole first block (seed {seed})"):
        N = 4 * B + 3
        mask = torch.rand(N, generator=g) > 0.3
        mask[:B] = False
        mask[-1] = True
        expect(N, d, d_v, B, mask=mask)
    with case(f"every key masked: o = 0 and L = -inf, no NaN (seed {seed})"):
        expect(2 * B + 1, d, d_v, B, mask=torch.zeros(2 * B + 1, dtype=torch.bool))
    with case(f"float32 inputs, N = 37 in blocks of {B} (seed {seed})"):
        expect(37, d, d_v, B, dtype=torch.float32, qk_scale=2.0)


# ============================================================================================
# 02.worked_example_iteration2


def _mutant_step_template(Q_i, K_j, V_j, m_prev, ell_prev, O_prev, *, rescale_O=True, weight_by_ell=True,
                          rescale_ell=True, use_scale=True, old_max=False, invert=False, tile_max_only=False,
                          normalize=True):
    c = 1.0 / math.sqrt(Q_i.shape[1]) if use_scale else 1.0
    S = (Q_i @ K_j.T) * c
    m = S.amax(-1) if tile_max_only else torch.maximum(m_prev, S.amax(-1))
    rescale = torch.exp(m - m_prev) if invert else torch.exp(m_prev - m)
    P = torch.exp(S - m_prev[:, None]) if old_max else torch.exp(S - m[:, None])
    ell = (rescale * ell_prev if rescale_ell else ell_prev) + P.sum(-1)
    prev = O_prev * ell_prev[:, None] if weight_by_ell else O_prev
    O_acc = (rescale[:, None] * prev if rescale_O else prev) + P @ V_j
    return S, m, rescale, ell, (O_acc / ell[:, None] if normalize else O_acc)


@exercise(
    "02.worked_example_iteration2",
    "The worked example: iteration 2 of a query tile, by hand",
    solution=attention_tile_step,
    mutants={
        "O not rescaled": lambda *a: _mutant_step_template(*a, rescale_O=False),
        "divides by ℓ too early (O_prev not weighted by ℓ_prev)": lambda *a: _mutant_step_template(*a, weight_by_ell=False),
        "ell not rescaled": lambda *a: _mutant_step_template(*a, rescale_ell=False),
        "missing 1/sqrt(d)": lambda *a: _mutant_step_template(*a, use_scale=False),
        "uses the old max": lambda *a: _mutant_step_template(*a, old_max=True),
        "rescale factor inverted": lambda *a: _mutant_step_template(*a, invert=True),
        "tile max instead of the running max": lambda *a: _mutant_step_template(*a, tile_max_only=True),
        "O left unnormalized": lambda *a: _mutant_step_template(*a, normalize=False),
    },
)
def grade_worked_example_iteration2(candidate):
    """candidate(Q_i, K_j, V_j, m_prev, ell_prev, O_prev) -> (S, m, rescale, ell, O):
    one iteration for a query tile, from the state after the previous key tiles; O normalized."""
    g, seed = fresh_generator()
    names = ("S", "m", "rescale", "ell", "O")

    def expect(Q_i, K_j, V_j, m_prev, ell_prev, O_prev):
        want = attention_tile_step(Q_i, K_j, V_j, m_prev, ell_prev, O_prev)
        got = unpack("iteration2(...)", candidate(Q_i.clone(), K_j.clone(), V_j.clone(), m_prev.clone(), ell_prev.clone(), O_prev.clone()), 5)
        for name, x, w in zip(names, got, want):
            assert_close(name, x, w, tolerance(w, None, F64), expect_dtype=F64)

    Q, K, V = worked_example()
    steps = online_attention_trace(Q, K, V, 2, 2)
    first = {s.i: s for s in steps if s.j == 0}
    for i in (0, 1):
        with case(f"the worked example (seed 003), query tile {i + 1}, iteration 2"):
            s = first[i]
            r = slice(s.rows.start, s.rows.stop)
            expect(Q[r], K[2:4], V[2:4], s.m, s.ell, s.O)
    with case("the worked example, query tile 1, iteration 1 from the empty state (m = -inf, ℓ = 0, O = 0)"):
        expect(Q[0:2], K[0:2], V[0:2], torch.full((2,), NEG_INF, dtype=F64), torch.zeros(2, dtype=F64), torch.zeros(2, 2, dtype=F64))

    def random_case(B_r, B_c, d, d_v, scale):
        Q_i = randn(g, B_r, d, scale=scale)  # (B_r, d)
        K_0, K_j = randn(g, B_c, d, scale=scale), randn(g, B_c, d, scale=scale)
        V_0, V_j = randn(g, B_c, d_v), randn(g, B_c, d_v)
        # the previous tile: its scores are pushed up on even rows, down on odd rows, so that the
        # running max comes from the old tile in some rows and from the new one in others
        shift = torch.tensor([4.0 if r % 2 == 0 else -4.0 for r in range(B_r)], dtype=F64) * scale * scale
        K_0_scores = (Q_i @ K_0.T) / math.sqrt(d) + shift[:, None]
        m_prev = K_0_scores.amax(-1)
        P0 = torch.exp(K_0_scores - m_prev[:, None])
        ell_prev = P0.sum(-1)
        O_prev = (P0 @ V_0) / ell_prev[:, None]
        expect(Q_i, K_j, V_j, m_prev, ell_prev, O_prev)

    B_r, B_c, d, d_v = randint(g, 2, 5), randint(g, 2, 5), randint(g, 3, 8), randint(g, 2, 4)
    with case(f"random tiles B_r = {B_r}, B_c = {B_c}, d = {d}, d_v = {d_v} (seed {seed})"):
        random_case(B_r, B_c, d, d_v, 1.0)
    with case(f"random tiles, large logits (scores about 1e4) (seed {seed})"):
        random_case(B_r, B_c, d, d_v, 100.0)
