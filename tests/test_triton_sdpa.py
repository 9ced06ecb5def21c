"""The general Triton kernels (kernels.triton_sdpa): dropout, masks in place, GQA, peak memory.

CPU: the kernels under the Triton interpreter on tiny shapes, and the NumPy Philox that must give
the very numbers the kernels draw. GPU (`-m gpu`): the keep rate over 10⁷ elements, dropout
forward and backward against the reference given the regenerated mask, and the peak memory of
the masked kernel at N = 16k.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import memory_model, triton_sdpa
from kernels.grading.core import assert_close, fresh_generator, tolerance
from kernels.reference import attention as reference_attention
from kernels.reference import ground_truth
from kernels.triton_sdpa import dropout_keep_mask, philox_uniform, sdpa

pytestmark = pytest.mark.usefixtures("needs_triton")

#: Where the small tests run: the GPU when there is one, else the Triton interpreter on the CPU.
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _seed(g) -> int:
    return int(torch.randint(0, 2**62, (), generator=g))


# ------------------------------------------------------------------------------------------------
# The random numbers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 12345, 2**31 + 5, 2**62 + 7])
def test_numpy_philox_equals_kernel_draws(seed):
    """philox_uniform reproduces tl.rand bit for bit, so CPU code can rebuild the kernel's mask."""
    shape = (2, 3, 21, 19)
    a = dropout_keep_mask(seed, shape, 0.3, DEV, method="triton").cpu()
    b = dropout_keep_mask(seed, shape, 0.3, method="numpy")
    assert torch.equal(a, b)


def test_philox_offsets_index_elements():
    """Element (b, h, i, j) uses offset ((b·H + h)·Nq + i)·Nk + j: a sub-block of a larger mask is
    the same numbers (what lets the backward draw the forward's mask one tile at a time)."""
    g, _ = fresh_generator()
    seed = _seed(g)
    B, H, Nq, Nk = 2, 3, 7, 5
    u = philox_uniform(seed, np.arange(B * H * Nq * Nk)).reshape(B, H, Nq, Nk)
    b, h, i, j = 1, 2, 4, 3
    assert u[b, h, i, j] == philox_uniform(seed, [((b * H + h) * Nq + i) * Nk + j])[0]
    assert 0.0 <= u.min() and u.max() < 1.0


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_cpu(p):
    """2·10⁶ draws (the GPU test does 10⁷): keep rate within 0.5% of 1 - p."""
    g, _ = fresh_generator()
    keep = dropout_keep_mask(_seed(g), (1, 2, 1000, 1000), p, method="numpy")
    rate = keep.double().mean().item()
    assert abs(rate - (1 - p)) <= 0.005 * (1 - p), rate


# ------------------------------------------------------------------------------------------------
# Dropout in the kernels
# ------------------------------------------------------------------------------------------------
def _dropout_vs_reference(p, dtype, device, B=1, H=4, H_kv=2, Nq=33, Nk=40, d=16, causal=True, factor=3.0):
    """Forward O and gradients of the kernel with dropout vs the float64 reference given the
    keep-mask regenerated from the seed."""
    g, gseed = fresh_generator()
    seed = _seed(g)
    q = torch.randn(B, H, Nq, d, generator=g).to(device, dtype)
    k = torch.randn(B, H_kv, Nk, d, generator=g).to(device, dtype)
    v = torch.randn(B, H_kv, Nk, d, generator=g).to(device, dtype)
    dO = torch.randn(B, H, Nq, d, generator=g).to(device, dtype)
    pad = (torch.arange(Nk) < Nk - 5).view(1, 1, 1, Nk).expand(B, 1, 1, Nk).to(device)
    keep = dropout_keep_mask(seed, (B, H, Nq, Nk), p, device)
    kw = dict(attn_mask=pad, is_causal=causal, dropout_p=p, dropout_mask=keep, enable_gqa=True)

    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
    O = sdpa(qg, kg, vg, pad, is_causal=causal, scale=None, dropout_p=p, seed=seed)
    dQ, dK, dV = torch.autograd.grad(O, (qg, kg, vg), dO)

    want = [ground_truth(q, k, v, **kw), *kernels_grads(q.double(), k.double(), v.double(), dO.double(), kw)]
    naive = [reference_attention(q, k, v, **kw), *kernels_grads(q, k, v, dO, kw)]
    for name, got, w, n in zip(("O", "dQ", "dK", "dV"), (O, dQ, dK, dV), want, naive):
        assert_close(f"dropout p={p} {dtype} seed={gseed}: {name}", got, w, tolerance(w, n, dtype, factor))
    return O, keep, seed, (q, k, v, pad)


def kernels_grads(q, k, v, dO, kw):
    from kernels.reference import attention_backward

    return attention_backward(q, k, v, dO, **kw)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_forward_backward_equal_reference_given_mask(p):
    _dropout_vs_reference(p, torch.float32, DEV)


def test_dropout_same_seed_same_result():
    g, _ = fresh_generator()
    q, k, v = (torch.randn(1, 2, 24, 16, generator=g).to(DEV) for _ in range(3))
    a = sdpa(q, k, v, dropout_p=0.3, seed=7)
    b = sdpa(q, k, v, dropout_p=0.3, seed=7)
    c = sdpa(q, k, v, dropout_p=0.3, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dropout_scaling_and_mask_exactly():
    """With Q = 0 every P_ij = 1/Nk; with V = I (Nk = d_v) O_ij = P_ij·Z_ij/(1-p) = Z_ij/(Nk(1-p)):
    the output *is* the scaled keep-mask, so both the 1/(1-p) scale and the regenerated mask show."""
    Nq, Nk, p = 20, 32, 0.25
    q = torch.zeros(1, 2, Nq, 16, device=DEV)
    k = torch.randn(1, 2, Nk, 16, device=DEV)
    v = torch.eye(Nk, device=DEV).expand(1, 2, Nk, Nk).contiguous()
    O = sdpa(q, k, v, dropout_p=p, seed=2024)
    keep = dropout_keep_mask(2024, (1, 2, Nq, Nk), p, DEV)
    assert torch.equal(O > 0, keep)
    torch.testing.assert_close(O[keep], torch.full_like(O[keep], 1.0 / (Nk * (1 - p))))


# ------------------------------------------------------------------------------------------------
# Masks, GQA, edge cases
# ------------------------------------------------------------------------------------------------
def test_gqa_reads_kv_heads_without_copy_and_sums_gradients():
    """dK of a shared K/V head is the sum over its query heads: compare with repeated heads."""
    g, seed = fresh_generator()
    q = torch.randn(2, 6, 20, 16, generator=g).to(DEV)
    k, v = (torch.randn(2, 2, 18, 16, generator=g).to(DEV) for _ in range(2))
    dO = torch.randn(2, 6, 20, 16, generator=g).to(DEV)
    kg, vg = k.clone().requires_grad_(True), v.clone().requires_grad_(True)
    O = sdpa(q, kg, vg, is_causal=True)
    dK, dV = torch.autograd.grad(O, (kg, vg), dO)
    kr, vr = (t.double().repeat_interleave(3, dim=1).requires_grad_(True) for t in (k, v))
    Or = reference_attention(q.double(), kr, vr, is_causal=True)
    dKr, dVr = torch.autograd.grad(Or, (kr, vr), dO.double())
    dKr = dKr.view(2, 2, 3, 18, 16).sum(2)
    dVr = dVr.view(2, 2, 3, 18, 16).sum(2)
    assert_close(f"O seed={seed}", O, Or, 1e-5)
    assert_close(f"dK seed={seed}", dK, dKr, 1e-4)
    assert_close(f"dV seed={seed}", dV, dVr, 1e-4)


def test_lse_and_empty_rows():
    """L = log Σ exp(S) per row, -inf for a row with no visible key; O = 0 there, no NaN."""
    g, seed = fresh_generator()
    q, k, v = (torch.randn(1, 2, 17, 16, generator=g).to(DEV) for _ in range(3))
    m = (torch.rand(1, 2, 17, 17, generator=g) > 0.5).to(DEV)
    m[:, :, 5] = False
    O, L = sdpa(q, k, v, m, return_lse=True)
    O64, L64 = reference_attention(q.double(), k.double(), v.double(), attn_mask=m, return_lse=True)
    assert L.shape == (1, 2, 17) and L.dtype == torch.float32
    assert torch.isneginf(L[:, :, 5]).all() and torch.all(O[:, :, 5] == 0)
    assert_close(f"L seed={seed}", L, L64, 1e-5)
    assert_close(f"O seed={seed}", O, O64, 1e-5)


def test_empty_key_sequence():
    q = torch.randn(1, 2, 5, 16, device=DEV, requires_grad=True)
    k = torch.randn(1, 2, 0, 16, device=DEV)
    O, L = sdpa(q, k, k, return_lse=True)
    O.sum().backward()
    assert torch.all(O == 0) and torch.isneginf(L).all() and torch.all(q.grad == 0)


def test_poisoned_padding_is_never_read():
    """Views into a larger tensor whose padding is NaN: the kernels must mask every edge read."""
    g, seed = fresh_generator()
    big = torch.full((1, 2, 40, 32), float("nan"))
    big[:, :, :21, :20] = torch.randn(1, 2, 21, 20, generator=g)
    big = big.to(DEV)
    x = big[:, :, :21, :20]  # (1, 2, 21, 20): rows and head dim inside NaN padding
    xg = x.clone().requires_grad_(True)
    O = sdpa(xg, x, x, is_causal=True)
    O.sum().backward()
    assert torch.isfinite(O).all() and torch.isfinite(xg.grad).all(), f"seed={seed}"
    assert_close(f"O seed={seed}", O, reference_attention(x.double(), x.double(), x.double(), is_causal=True), 1e-5)


# ------------------------------------------------------------------------------------------------
# GPU
# ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_gpu_keep_rate_over_1e7(p):
    """The kernels' own random numbers (method='triton') over 10⁷ elements."""
    g, _ = fresh_generator()
    keep = dropout_keep_mask(_seed(g), (2, 5, 1000, 1000), p, "cuda", method="triton")
    assert keep.numel() == 10**7
    rate = keep.double().mean().item()
    assert abs(rate - (1 - p)) <= 0.005 * (1 - p), rate


@pytest.mark.gpu
@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_gpu_dropout_equal_reference_given_mask(p, dtype):
    _dropout_vs_reference(p, dtype, "cuda", B=2, H=8, H_kv=2, Nq=300, Nk=257, d=64)


@pytest.mark.gpu
def test_gpu_kernel_mask_equals_numpy_mask():
    shape = (2, 3, 130, 77)
    assert torch.equal(dropout_keep_mask(99, shape, 0.3, "cuda").cpu(), dropout_keep_mask(99, shape, 0.3, method="numpy"))


@pytest.mark.gpu
@pytest.mark.parametrize("mask_kind", ["(N, N) bool", "(B, 1, 1, N) key padding"])
def test_gpu_peak_memory_16k_boolean_mask(mask_kind):
    """Forward + backward at N = 16k with a boolean mask allocate only O, L, dQ, dK, dV and the
    backward's row vectors: nothing N×N beyond the mask the caller holds."""
    B, H, N, d = 1, 4, 16384, 64
    dtype = torch.float16
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    dO = torch.randn(B, H, N, d, device="cuda", dtype=dtype)
    if mask_kind.startswith("(N, N)"):
        mask = torch.rand(N, N, device="cuda") > 0.1  # 256 MiB, held by the caller
    else:
        mask = (torch.arange(N, device="cuda") < N - 1000).view(1, 1, 1, N)

    def step():
        O = sdpa(q, k, v, mask, is_causal=True)
        O.backward(dO)
        return O

    step()  # compile first
    for t in (q, k, v):
        t.grad = None
    torch.cuda.synchronize()
    peak, O = memory_model.measure_peak_bytes(step, "cuda")
    minimal = memory_model.predicted_peak_bytes("minimal", B, H, N, d, dtype, backward=True)
    extra_rows = B * H * N * 4  # L·log2 e in the backward, beside D
    print(f"\n{mask_kind}: peak {peak / 2**20:.1f} MiB, minimal {minimal / 2**20:.1f} MiB, "
          f"one N×N bool {N * N / 2**20:.0f} MiB")
    assert peak <= minimal + extra_rows + 2**20, (peak, minimal)
    assert peak < N * N // 2  # far below even one N×N byte matrix
    ref = reference_attention(q[:, :1, :2048].detach(), k[:, :1, :2048].detach(), v[:, :1, :2048].detach(),
                              attn_mask=mask[..., :2048, :2048] if mask.dim() == 2 else mask[..., :2048],
                              is_causal=True)
    torch.testing.assert_close(O[:, :1, :2048].float(), ref.float(), rtol=2e-2, atol=2e-2)
