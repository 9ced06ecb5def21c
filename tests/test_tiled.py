"""The tiled forward in PyTorch (FA1 and FA2 loop orders) is exact: in float64 it matches naive
attention to 1e-10 on random shapes, any N, N_q != N_k, causal, and any block sizes."""

import os

import pytest
import torch

from kernels import reference
from kernels.tiled import causal_block_range, forward_fa1, forward_fa2

FORWARDS = [forward_fa1, forward_fa2]
SEED = int.from_bytes(os.urandom(4), "little")  # fresh inputs every run; the seed is in the test ids' failure output


def _inputs(B, H, N_q, N_k, d, d_v, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, N_q, d, generator=g, dtype=dtype),  # (B, H, N_q, d)
            torch.randn(B, H, N_k, d, generator=g, dtype=dtype),  # (B, H, N_k, d)
            torch.randn(B, H, N_k, d_v, generator=g, dtype=dtype))  # (B, H, N_k, d_v)


def _check_exact(fwd, q, k, v, causal, B_r, B_c, scale=None):
    O, L = fwd(q, k, v, is_causal=causal, scale=scale, B_r=B_r, B_c=B_c)
    want_O, want_L = reference.attention(q, k, v, is_causal=causal, scale=scale, return_lse=True)
    assert O.shape == want_O.shape and L.shape == want_L.shape == q.shape[:3]
    err_O = float((O - want_O).abs().max()) if O.numel() else 0.0
    err_L = float((L - want_L).abs().max()) if L.numel() else 0.0
    assert err_O < 1e-10 and err_L < 1e-10, f"seed {SEED}: errors O {err_O:.3g}, L {err_L:.3g}"


@pytest.mark.parametrize("fwd", FORWARDS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("N", [1, 17, 100, 257])
@pytest.mark.parametrize("blocks", [(16, 16), (64, 32), (32, 64), (7, 13)], ids=lambda b: f"Br{b[0]}_Bc{b[1]}")
def test_exact_square(fwd, causal, N, blocks):
    q, k, v = _inputs(2, 2, N, N, 16, 16, seed=SEED + N)
    _check_exact(fwd, q, k, v, causal, *blocks)


@pytest.mark.parametrize("fwd", FORWARDS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("N_q,N_k", [(1, 100), (100, 1), (17, 257), (257, 17), (100, 64)])
def test_exact_rectangular(fwd, causal, N_q, N_k):
    q, k, v = _inputs(1, 3, N_q, N_k, 8, 12, seed=SEED + 7 * N_q + N_k)  # d_v != d too
    _check_exact(fwd, q, k, v, causal, 16, 32, scale=0.3)


@pytest.mark.parametrize("fwd", FORWARDS, ids=lambda f: f.__name__)
def test_random_shapes(fwd):
    g = torch.Generator().manual_seed(SEED)
    for _ in range(6):
        N_q, N_k = (int(x) for x in torch.randint(1, 130, (2,), generator=g))
        B_r, B_c = (int(x) for x in torch.randint(1, 70, (2,), generator=g))
        causal = bool(torch.randint(0, 2, (1,), generator=g))
        q, k, v = _inputs(1, 2, N_q, N_k, 16, 16, seed=SEED + N_q * 131 + N_k)
        _check_exact(fwd, q, k, v, causal, B_r, B_c)


@pytest.mark.parametrize("fwd", FORWARDS, ids=lambda f: f.__name__)
def test_large_logits(fwd):
    q, k, v = _inputs(1, 1, 50, 50, 16, 16, seed=SEED)
    _check_exact(fwd, q * 40, k, v, True, 16, 16)


@pytest.mark.parametrize("fwd", FORWARDS, ids=lambda f: f.__name__)
def test_lower_precision_inputs(fwd):
    """fp16 in, fp16 out, accumulated in fp32: closer to the truth than naive fp16 attention."""
    q, k, v = _inputs(1, 2, 70, 70, 32, 32, seed=SEED, dtype=torch.float16)
    O, L = fwd(q, k, v, is_causal=True, B_r=16, B_c=16)
    assert O.dtype == torch.float16
    want = reference.ground_truth(q, k, v, is_causal=True)
    naive = reference.attention(q, k, v, is_causal=True)
    assert float((O.double() - want).abs().max()) <= 2 * float((naive.double() - want).abs().max()) + 1e-3


@pytest.mark.parametrize("fwd", FORWARDS, ids=lambda f: f.__name__)
def test_no_keys(fwd):
    q = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    k = torch.randn(1, 2, 0, 8, dtype=torch.float64)
    O, L = fwd(q, k, k, is_causal=True)
    assert torch.equal(O, torch.zeros_like(O)) and torch.isneginf(L).all()


def test_bad_block_sizes():
    q = torch.randn(1, 1, 4, 8)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="B_r"):
            forward_fa2(q, q, q, B_r=bad)
        with pytest.raises(ValueError, match="B_c"):
            forward_fa1(q, q, q, B_c=bad)


def _brute_force_range(i, B_r, B_c, N_q, N_k, causal):
    """(n_full, n_visit) by testing every (row, key) pair of every block."""
    rows = torch.arange(i * B_r, min((i + 1) * B_r, N_q))
    T_c = -(-N_k // B_c)
    visit, full = [], []
    for j in range(T_c):
        cols = torch.arange(j * B_c, (j + 1) * B_c)  # a whole block, keys past N_k included
        in_bounds = cols < N_k
        allowed = in_bounds[None, :] & ((cols[None, :] <= rows[:, None]) if causal else True)
        visit.append(bool(allowed.any()))
        full.append(bool(allowed.all()))
    n_visit = sum(visit)
    n_full = sum(full)
    assert visit == [True] * n_visit + [False] * (T_c - n_visit)  # a prefix
    assert full == [True] * n_full + [False] * (T_c - n_full)
    return n_full, n_visit


def test_causal_block_range_against_brute_force():
    g = torch.Generator().manual_seed(SEED)
    for _ in range(150):
        N_q, N_k = (int(x) for x in torch.randint(1, 90, (2,), generator=g))
        B_r, B_c = (int(x) for x in torch.randint(1, 40, (2,), generator=g))
        causal = bool(torch.randint(0, 2, (1,), generator=g))
        for i in range(-(-N_q // B_r)):
            got = causal_block_range(i, B_r, B_c, N_q, N_k, causal)
            assert got == _brute_force_range(i, B_r, B_c, N_q, N_k, causal), (i, B_r, B_c, N_q, N_k, causal, SEED)
