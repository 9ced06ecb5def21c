"""kernels.online_softmax against direct computation: softmax three ways, the state (m, ℓ), its
merge (associative and commutative over random splits and orders), partial outputs, online
attention for a row, the worked example's trace; -inf rows, large logits, input validation."""

import math

import pytest
import torch

from kernels import online_softmax as osm
from kernels.reference import attention

F64 = torch.float64
TOL = 1e-12


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def direct_state(x):
    """(m, ℓ) of x (..., N) straight from the definition, in float64."""
    x = x.to(F64)
    m = x.amax(-1)
    ell = torch.exp(x - m[..., None]).sum(-1)
    return m, ell


def close(got, want, tol=TOL, rel=True):
    got, want = got.to(F64), want.to(F64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.equal(torch.isneginf(got), torch.isneginf(want)), (got, want)
    assert not torch.isnan(got).any(), got
    fin = torch.isfinite(want)
    scale = max(1.0, float(want[fin].abs().max())) if rel and fin.any() else 1.0
    err = float((got[fin] - want[fin]).abs().max()) if fin.any() else 0.0
    assert err <= tol * scale, f"max error {err:.3g} > {tol * scale:.3g}"


# ---------------------------------------------------------------------------------------------
# softmax


SOFTMAXES = {
    "safe (three passes)": lambda x, B: osm.safe_softmax(x),
    "online, two passes": lambda x, B: osm.online_softmax_two_pass(x, B),
    "online, one pass": lambda x, B: osm.online_softmax(x, B),
}


@pytest.mark.parametrize("name", list(SOFTMAXES))
@pytest.mark.parametrize("N,B", [(1, 1), (7, 1), (29, 4), (32, 8), (5, 16)])
def test_softmax_matches_torch(name, N, B):
    x = torch.randn(3, N, generator=gen(N * 31 + B), dtype=F64) * 4  # (R, N)
    close(SOFTMAXES[name](x, B), torch.softmax(x, -1))


@pytest.mark.parametrize("name", list(SOFTMAXES))
def test_softmax_large_logits(name):
    x = torch.randn(2, 40, generator=gen(1), dtype=F64) * 1e4
    assert torch.isnan(osm.naive_softmax(x)).any(), "the naive formula should overflow at logits of 1e4"
    close(SOFTMAXES[name](x, 6), torch.softmax(x, -1))


@pytest.mark.parametrize("name", list(SOFTMAXES))
def test_softmax_rows_of_neg_inf(name):
    x = torch.randn(3, 12, generator=gen(2), dtype=F64)
    x[0] = float("-inf")  # every logit masked
    x[1, :5] = float("-inf")  # the first blocks masked
    want = torch.softmax(x, -1)
    want[0] = 0.0
    y = SOFTMAXES[name](x, 4)
    assert not torch.isnan(y).any()
    close(y, want)


def test_naive_softmax_overflows_where_finfo_says():
    for dtype in (torch.float16, torch.float32):
        limit = math.log(torch.finfo(dtype).max)  # largest x with exp(x) finite
        x = torch.tensor([[limit - 1.0, 0.0], [limit + 1.0, 0.0]], dtype=dtype)
        y = osm.naive_softmax(x)
        assert torch.isfinite(y[0]).all() and torch.isnan(y[1]).any()
        close(osm.safe_softmax(x), torch.softmax(x.double(), -1), tol=1e-3)


def test_stream_reads_each_block_once():
    """Each block is overwritten with NaN once the next one is requested: the result must not change."""
    x = torch.randn(2, 23, generator=gen(3), dtype=F64) * 3

    def stream(cuts):
        prev = None
        for a, b in zip(cuts[:-1], cuts[1:]):
            if prev is not None:
                prev.fill_(float("nan"))
            prev = x[:, a:b].clone()
            yield prev
        prev.fill_(float("nan"))

    y, state = osm.online_softmax_stream(stream([0, 3, 4, 11, 20, 23]), return_state=True)
    close(y, torch.softmax(x, -1))
    m, ell = direct_state(x)
    close(state.m, m)
    close(state.ell, ell)


def test_half_inputs_accumulate_in_float32_by_default():
    x = (torch.randn(1, 4096, generator=gen(4)) * 2).half()
    want = torch.softmax(x.double(), -1)
    err32 = float((osm.online_softmax_two_pass(x, 64).double() - want).abs().max())
    err16 = float((osm.online_softmax_two_pass(x, 64, acc_dtype=torch.float16).double() - want).abs().max())
    assert osm.online_softmax_two_pass(x, 64).dtype == torch.float16
    assert err32 < err16, (err32, err16)
    ell16 = osm.online_normalizer(x, 1, acc_dtype=torch.float16).ell.double()
    ell64 = direct_state(x)[1]
    assert float((ell16 - ell64).abs() / ell64) > 1e-3  # a float16 running sum of 4096 terms drifts


# ---------------------------------------------------------------------------------------------
# the state and its merge


def test_state_of_update_normalizer_and_lse():
    x = torch.randn(2, 3, 17, generator=gen(5), dtype=F64) * 5  # leading dims are rows
    m, ell = direct_state(x)
    for s in (osm.SoftmaxState.of(x), osm.online_normalizer(x, 1), osm.online_normalizer(x, 5)):
        assert torch.equal(s.m, m)  # the max is exact
        close(s.ell, ell)
        close(s.lse(), torch.logsumexp(x, -1))
    L = torch.logsumexp(x, -1)
    back = osm.SoftmaxState.from_lse(L)
    close(back.lse(), L)


def test_empty_state_is_the_identity():
    x = torch.randn(4, 6, generator=gen(6), dtype=F64)
    s = osm.SoftmaxState.of(x)
    for merged in (osm.merge_states(osm.SoftmaxState.empty((4,)), s), osm.merge_states(s, osm.SoftmaxState.empty((4,)))):
        assert torch.equal(merged.m, s.m)
        close(merged.ell, s.ell)


def random_tree_merge(states, g):
    pool = list(states)
    while len(pool) > 1:
        k = int(torch.randint(0, len(pool) - 1, (1,), generator=g))
        a, b = pool[k], pool[k + 1]
        if torch.rand(1, generator=g) < 0.5:
            a, b = b, a
        pool[k : k + 2] = [osm.merge_states(a, b)]
    return pool[0]


@pytest.mark.parametrize("seed", range(5))
def test_merge_is_associative_and_commutative(seed):
    g = gen(100 + seed)
    N = 50
    x = torch.randn(6, N, generator=g, dtype=F64) * 6
    x[0] = torch.sort(x[0]).values
    x[1] *= 1e4  # large logits
    x[2, : N // 2] = float("-inf")
    x[3] = float("-inf")  # an empty row
    m, ell = direct_state(x)
    m[3], ell[3] = float("-inf"), 0.0
    for _ in range(4):
        k = int(torch.randint(2, 9, (1,), generator=g))
        cuts = [0] + sorted((torch.randperm(N - 1, generator=g)[: k - 1] + 1).tolist()) + [N]
        parts = [osm.SoftmaxState.of(x[:, a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
        order = torch.randperm(len(parts), generator=g).tolist()
        s = random_tree_merge([parts[i] for i in order], g)
        assert torch.equal(s.m, m)
        close(s.ell, ell)
        L = parts[order[0]].lse()
        for i in order[1:]:
            L = osm.merge_lse(L, parts[i].lse())
        close(L, torch.logsumexp(x, -1))


def test_merge_outputs_and_lse_form_give_attention():
    g = gen(7)
    M, N, d, d_v = 5, 21, 4, 3
    Q = torch.randn(M, d, generator=g, dtype=F64)
    K = torch.randn(N, d, generator=g, dtype=F64)
    V = torch.randn(N, d_v, generator=g, dtype=F64)
    S = Q @ K.T / math.sqrt(d)  # (M, N)
    S[0, :8] = float("-inf")  # row 0: the first part fully masked
    S[1] = float("-inf")  # row 1: every key masked
    want = torch.softmax(S, -1).nan_to_num(0.0) @ V
    parts = [(0, 8), (8, 9), (9, 21)]
    O = st = None
    O_l = L = None
    for a, b in reversed(parts):  # any order
        Sp = S[:, a:b]
        sp = osm.SoftmaxState.of(Sp)
        Op = osm.safe_softmax(Sp) @ V[a:b]  # (M, d_v) normalized partial output
        if O is None:
            O, st, O_l, L = Op, sp, Op, sp.lse()
        else:
            O, st = osm.merge_outputs(O, st, Op, sp)
            O_l, L = osm.merge_outputs_lse(O_l, L, Op, sp.lse())
    close(O, want)
    close(O_l, want)
    close(L, torch.logsumexp(S, -1))
    assert float(st.ell[1]) == 0.0 and torch.isneginf(st.m[1])


# ---------------------------------------------------------------------------------------------
# online attention for one row


def reference_row(q, K, V, mask=None, scale=None):
    kw = {} if mask is None else {"attn_mask": mask}
    O, L = attention(q.double()[None, None, None], K.double()[None, None], V.double()[None, None], scale=scale, return_lse=True, **kw)
    return O[0, 0, 0], L[0, 0, 0]


@pytest.mark.parametrize("use_exp2", [False, True])
@pytest.mark.parametrize("N,B,d", [(1, 4, 3), (13, 4, 5), (16, 4, 2), (9, 1, 8), (7, 32, 4)])
def test_online_attention_row_matches_reference(N, B, d, use_exp2):
    g = gen(N * 7 + B)
    q, K, V = torch.randn(d, generator=g, dtype=F64), torch.randn(N, d, generator=g, dtype=F64), torch.randn(N, 3, generator=g, dtype=F64)
    o, L = osm.online_attention_row(q, K, V, B, use_exp2=use_exp2)
    want_o, want_L = reference_row(q, K, V)
    close(o, want_o)
    close(L, want_L)
    o, L = osm.online_attention_row(q, K, V, B, scale=0.3, use_exp2=use_exp2)
    want_o, want_L = reference_row(q, K, V, scale=0.3)
    close(o, want_o)
    close(L, want_L)


@pytest.mark.parametrize("use_exp2", [False, True])
def test_online_attention_row_large_logits_and_masks(use_exp2):
    g = gen(8)
    N, d = 19, 4
    q, K, V = torch.randn(d, generator=g, dtype=F64) * 100, torch.randn(N, d, generator=g, dtype=F64) * 100, torch.randn(N, 2, generator=g, dtype=F64)
    close(osm.online_attention_row(q, K, V, 4, use_exp2=use_exp2)[0], reference_row(q, K, V)[0])
    mask = torch.rand(N, generator=g) > 0.4
    mask[:8] = False  # the first two blocks fully masked
    mask[-1] = True
    o, L = osm.online_attention_row(q, K, V, 4, mask=mask, use_exp2=use_exp2)
    want_o, want_L = reference_row(q, K, V, mask=mask)
    close(o, want_o)
    close(L, want_L)
    o, L = osm.online_attention_row(q, K, V, 4, mask=torch.zeros(N, dtype=torch.bool), use_exp2=use_exp2)
    assert torch.equal(o, torch.zeros(2, dtype=F64)) and torch.isneginf(L)


def test_online_attention_row_float32_close_to_naive_error():
    g = gen(9)
    q, K, V = torch.randn(8, generator=g), torch.randn(40, 8, generator=g) * 3, torch.randn(40, 4, generator=g)
    o, L = osm.online_attention_row(q, K, V, 8, use_exp2=True)
    assert o.dtype == torch.float32
    want_o, _ = reference_row(q, K, V)
    naive = attention(q[None, None, None], K[None, None], V[None, None])[0, 0, 0]
    naive_err = float((naive.double() - want_o).abs().max())
    assert float((o.double() - want_o).abs().max()) <= 2 * naive_err + 16 * torch.finfo(torch.float32).eps


# ---------------------------------------------------------------------------------------------
# the worked example


def test_worked_example_trace_matches_direct_computation():
    Q, K, V = osm.worked_example()
    steps = osm.online_attention_trace(Q, K, V, 2, 2)
    assert [(s.i, s.j) for s in steps] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    S_full = Q @ K.T / math.sqrt(2)  # (4, 4)
    prev_O = None
    for s in steps:
        r, c = slice(s.rows.start, s.rows.stop), slice(s.cols.start, s.cols.stop)
        close(s.S, S_full[r, c])
        seen = S_full[r, : s.cols.stop]  # every key column up to this tile
        m, ell = direct_state(seen)
        close(s.m, m)
        close(s.ell, ell)
        close(s.m_tile, S_full[r, c].amax(-1))
        close(s.rescale, torch.exp(s.m_prev - s.m))
        close(s.P, torch.exp(S_full[r, c] - m[:, None]))
        close(s.O, torch.softmax(seen, -1) @ V[: s.cols.stop])
        close(s.O_acc, s.O * s.ell[:, None])
        O_prev = prev_O if s.j else torch.zeros_like(s.O)  # the step from the state of the tiles before
        got = osm.attention_tile_step(Q[r], K[c], V[c], s.m_prev, s.ell_prev, O_prev)
        for a, b in zip(got, (s.S, s.m, s.rescale, s.ell, s.O)):
            close(a, b)
        prev_O = s.O
    final = torch.cat([s.O for s in steps if s.j == 1])
    close(final, attention(Q[None, None], K[None, None], V[None, None])[0, 0])


# ---------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "call,err,match",
    [
        (lambda: osm.safe_softmax([1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
        (lambda: osm.safe_softmax(torch.arange(3)), TypeError, "floating-point"),
        (lambda: osm.safe_softmax(torch.zeros(2, 0)), ValueError, "at least one logit"),
        (lambda: osm.online_softmax(torch.zeros(2, 3), 0), ValueError, "block_size must be a positive int"),
        (lambda: osm.online_softmax(torch.zeros(2, 3), 1.5), TypeError, "block_size"),
        (lambda: osm.online_normalizer(torch.zeros(3), True), TypeError, "block_size"),
        (lambda: osm.online_softmax(torch.zeros(2, 3), 1, acc_dtype=torch.int32), TypeError, "acc_dtype"),
        (lambda: osm.online_softmax_stream([]), ValueError, "at least one block"),
        (lambda: osm.online_softmax_stream([torch.zeros(2, 3), torch.zeros(3, 3)]), ValueError, "block 1"),
        (lambda: osm.merge_states((torch.zeros(2), torch.ones(2)), (torch.zeros(3), torch.ones(3))), ValueError, "broadcastable"),
        (lambda: osm.merge_states((torch.zeros(2), torch.ones(3)), (torch.zeros(2), torch.ones(2))), ValueError, "a.m and a.ell"),
        (lambda: osm.merge_states(torch.zeros(2), (torch.zeros(2), torch.ones(2))), TypeError, "pair"),
        (lambda: osm.online_attention_row(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(4, 3)), ValueError, "q must be 1-D"),
        (lambda: osm.online_attention_row(torch.zeros(3), torch.zeros(4, 2), torch.zeros(4, 3)), ValueError, "K must be"),
        (lambda: osm.online_attention_row(torch.zeros(3), torch.zeros(4, 3), torch.zeros(5, 3)), ValueError, "V must have as many rows"),
        (lambda: osm.online_attention_row(torch.zeros(3), torch.zeros(4, 3), torch.zeros(4, 3).double()), TypeError, "one dtype"),
        (lambda: osm.online_attention_row(torch.zeros(3), torch.zeros(4, 3), torch.zeros(4, 3), mask=torch.ones(4)), TypeError, "mask"),
        (lambda: osm.online_attention_row(torch.zeros(3), torch.zeros(4, 3), torch.zeros(4, 3), mask=torch.ones(5, dtype=torch.bool)), ValueError, "mask must have shape"),
        (lambda: osm.online_attention_row(torch.zeros(3), torch.zeros(4, 3), torch.zeros(4, 3), scale=-1.0), ValueError, "scale"),
        (lambda: osm.online_attention_row(torch.zeros(3), torch.zeros(4, 3), torch.zeros(4, 3), block_size=0), ValueError, "block_size"),
        (lambda: osm.attention_tile_step(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(3), torch.zeros(2), torch.zeros(2, 2)), ValueError, "m_prev"),
        (lambda: osm.attention_tile_step(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2), torch.zeros(2), torch.zeros(2, 3)), ValueError, "O_prev"),
        (lambda: osm.online_attention_trace(torch.zeros(4, 2), torch.zeros(4, 3), torch.zeros(4, 2), 2, 2), ValueError, "need Q"),
    ],
)
def test_validation_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()
