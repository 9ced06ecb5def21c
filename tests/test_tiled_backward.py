"""The tiled backward in PyTorch: exact in float64 against autograd through naive attention,
passes gradcheck, saves only Q, K, V, O, L, and gives zero (not NaN) gradients for rows that
see no key."""

import pytest
import torch

from kernels import reference
from kernels.tiled import forward_fa2
from kernels.tiled_backward import backward_fa2, compute_D, tiled_attention

f64 = torch.float64


def problem(B, H, Nq, Nk, d, causal, g, scale=None):
    q, k, v = (torch.randn(B, H, n, d, dtype=f64, generator=g) for n in (Nq, Nk, Nk))
    dO = torch.randn(B, H, Nq, d, dtype=f64, generator=g)
    O, L = reference.attention(q, k, v, is_causal=causal, scale=scale, return_lse=True)
    return q, k, v, O, L, dO


@pytest.mark.parametrize(
    "Nq,Nk,B_r,B_c",
    [(1, 1, 16, 16), (37, 53, 16, 8), (53, 37, 8, 16), (5, 70, 4, 32), (64, 64, 16, 16), (70, 5, 32, 4)],
)
@pytest.mark.parametrize("causal", [False, True])
def test_exact_in_float64(Nq, Nk, B_r, B_c, causal):
    g = torch.Generator().manual_seed(Nq * 1000 + Nk)
    q, k, v, O, L, dO = problem(2, 2, Nq, Nk, 8, causal, g)
    want = reference.attention_backward(q, k, v, dO, is_causal=causal)
    got = backward_fa2(q, k, v, O, L, dO, is_causal=causal, B_r=B_r, B_c=B_c)
    for name, a, b in zip(("dQ", "dK", "dV"), got, want):
        err = (a - b).abs().max().item()
        assert err < 1e-10, f"{name}: max error {err:.3g}"


def test_scale_and_large_logits():
    g = torch.Generator().manual_seed(1)
    q, k, v, O, L, dO = problem(1, 2, 19, 23, 4, True, g, scale=2.5)
    want = reference.attention_backward(q, k, v, dO, is_causal=True, scale=2.5)
    got = backward_fa2(q, k, v, O, L, dO, is_causal=True, scale=2.5, B_r=8, B_c=8)
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() < 1e-10 * max(1.0, b.abs().max().item())


def test_D_is_rowsum_of_P_times_dP():
    g = torch.Generator().manual_seed(2)
    q, k, v, O, L, dO = problem(1, 1, 6, 9, 4, False, g)
    P = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1)
    torch.testing.assert_close(compute_D(O, dO), (P * (dO @ v.transpose(-2, -1))).sum(-1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("Nq,Nk,causal,B_r,B_c", [(7, 11, False, 4, 3), (11, 7, True, 3, 4), (9, 9, True, 4, 4)])
def test_gradcheck_float64(Nq, Nk, causal, B_r, B_c):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, 5, dtype=f64, generator=g, requires_grad=True) for n in (Nq, Nk, Nk))
    fn = lambda q, k, v: tiled_attention(q, k, v, is_causal=causal, B_r=B_r, B_c=B_c)
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_saves_exactly_Q_K_V_O_L():
    g = torch.Generator().manual_seed(4)
    N, d = 96, 8
    q, k, v = (torch.randn(1, 2, N, d, dtype=f64, generator=g, requires_grad=True) for _ in range(3))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        O = tiled_attention(q, k, v, is_causal=True, B_r=32, B_c=32)
    assert len(saved) == 5, f"expected Q, K, V, O, L to be saved, got {[tuple(t.shape) for t in saved]}"
    for t, want in zip(saved[:3], (q, k, v)):
        assert t.data_ptr() == want.data_ptr() and t.shape == want.shape
    assert saved[3].shape == O.shape and torch.equal(saved[3], O.detach())
    assert saved[4].shape == (1, 2, N)
    assert all(t.numel() < N * N for t in saved), "something N×N was saved for backward"
    _, L = forward_fa2(q.detach(), k.detach(), v.detach(), is_causal=True)
    torch.testing.assert_close(saved[4], L)


def test_no_keys_gives_zero_gradients_not_nan():
    q = torch.randn(1, 1, 5, 4, dtype=f64, requires_grad=True)
    k = torch.zeros(1, 1, 0, 4, dtype=f64, requires_grad=True)
    v = torch.zeros(1, 1, 0, 4, dtype=f64, requires_grad=True)
    O = tiled_attention(q, k, v, B_r=4, B_c=4)
    O.backward(torch.randn_like(O))
    assert torch.equal(q.grad, torch.zeros_like(q))
    L = torch.full((1, 1, 5), float("-inf"), dtype=f64)
    dQ, dK, dV = backward_fa2(q.detach(), k.detach(), v.detach(), O.detach(), L, torch.randn(1, 1, 5, 4, dtype=f64))
    assert not dQ.isnan().any() and dK.shape == (1, 1, 0, 4) and dV.shape == (1, 1, 0, 4)


def test_float32_inputs_give_float32_gradients_close_to_float64():
    g = torch.Generator().manual_seed(5)
    q, k, v, O, L, dO = problem(1, 2, 33, 40, 16, True, g)
    want = reference.attention_backward(q, k, v, dO, is_causal=True)
    got = backward_fa2(q.float(), k.float(), v.float(), O.float(), L.float(), dO.float(), is_causal=True, B_r=16, B_c=16)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        assert (a.double() - b).abs().max().item() < 1e-5


def test_bad_inputs_name_the_argument():
    g = torch.Generator().manual_seed(6)
    q, k, v, O, L, dO = problem(1, 1, 8, 8, 4, False, g)
    with pytest.raises(ValueError, match="B_r"):
        backward_fa2(q, k, v, O, L, dO, B_r=0)
    with pytest.raises(ValueError, match="L must have shape"):
        backward_fa2(q, k, v, O, L[..., :4], dO)
    with pytest.raises(ValueError, match="dO"):
        backward_fa2(q, k, v, O, L, dO[:, :, :3])
    with pytest.raises(ValueError, match="scale"):
        tiled_attention(q, k, v, scale=-1.0)
