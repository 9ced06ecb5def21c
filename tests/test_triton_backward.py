"""The Triton backward: under the interpreter (CPU) on small fp32 shapes, and on the GPU over
the forward's shape grid, against float64 autograd through naive attention; the autograd
Function saves exactly Q, K, V, O, L; results are deterministic (no atomics)."""

import math
import os

import pytest
import torch

from kernels import device, reference
from kernels.grading.core import tolerance

pytestmark = pytest.mark.skipif(not device.HAS_TRITON, reason="triton is not installed on this platform")

if device.HAS_TRITON:
    from kernels import triton_backward as tb

f64 = torch.float64
DEV = device.default_device()


def make(B, H, Nq, Nk, d, dtype, causal, g, scale=None, logit_scale=1.0):
    """Random inputs, the forward's O and L (computed in float64, rounded like a kernel's output)."""
    q, k, v = (torch.randn(B, H, n, d, dtype=f64, generator=g) * s for n, s in
               ((Nq, logit_scale), (Nk, logit_scale), (Nk, 1.0)))
    dO = torch.randn(B, H, Nq, d, dtype=f64, generator=g)
    O, L = reference.attention(q, k, v, is_causal=causal, scale=scale, return_lse=True)
    to = lambda t: t.to(DEV, dtype)
    return to(q), to(k), to(v), to(O), L.to(DEV, torch.float32), to(dO)


def check_against_reference(q, k, v, O, L, dO, causal, scale=None, factor=2.0, **kw):
    got = tb.attention_backward(q, k, v, O, L, dO, is_causal=causal, scale=scale, **kw)
    up = lambda t: t.to(f64)
    want = reference.attention_backward(up(q), up(k), up(v), up(dO), is_causal=causal, scale=scale)
    naive = reference.attention_backward(q, k, v, dO, is_causal=causal, scale=scale)
    for name, a, w, n in zip(("dQ", "dK", "dV"), got, want, naive):
        assert a.dtype == q.dtype and a.shape == w.shape
        assert not a.isnan().any(), f"{name} has NaN"
        tol = tolerance(w, n, q.dtype, factor=factor)
        err = (a.to(f64) - w).abs().max().item() if a.numel() else 0.0
        assert err <= tol, f"{name}: max error {err:.3g} > tolerance {tol:.3g} (naive {((n.to(f64) - w).abs().max().item() if n.numel() else 0):.3g})"
    return got


# ------------------------------------------------------------------------------------------------
# CPU: the interpreter, small fp32 shapes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "Nq,Nk,d",
    [(37, 53, 32), (53, 37, 32), (5, 70, 16), (64, 64, 24), (1, 1, 16), (70, 5, 16)],
)
@pytest.mark.parametrize("causal", [False, True])
def test_interpreter_fp32_matches_reference(Nq, Nk, d, causal):
    g = torch.Generator().manual_seed(Nq * 7 + Nk * 13 + d)
    check_against_reference(*make(1, 2, Nq, Nk, d, torch.float32, causal, g), causal, factor=4.0)


def test_interpreter_fp16_and_explicit_scale_and_large_logits():
    g = torch.Generator().manual_seed(11)
    check_against_reference(*make(1, 1, 40, 33, 32, torch.float16, True, g, scale=0.5, logit_scale=3.0), True, scale=0.5)


def test_non_contiguous_inputs():
    """q, k, v as a (B, N, H, d) projection viewed as (B, H, N, d): strided rows and heads."""
    g = torch.Generator().manual_seed(12)
    B, H, N, d = 1, 2, 33, 16
    qkv = torch.randn(B, N, 3, H, d, generator=g).to(DEV)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, N, d), non-contiguous
    O, L = reference.attention(q, k, v, is_causal=True, return_lse=True)
    dO = torch.randn(B, N, H, d, generator=g).to(DEV).transpose(1, 2)
    check_against_reference(q, k, v, O, L.float(), dO, True, factor=4.0)


@pytest.mark.parametrize("Nq,Nk,d,causal", [(37, 53, 32, True), (53, 37, 24, False), (64, 64, 64, True)])
def test_interpreter_tma_path_matches_pointer_path_and_reference(Nq, Nk, d, causal):
    """use_tma=True (the Hopper path: descriptors, zero fill past N and d) under the interpreter:
    the same gradients as the pointer loads, bit for bit, and within tolerance of float64."""
    g = torch.Generator().manual_seed(Nq + 3 * Nk + d)
    args = make(1, 2, Nq, Nk, d, torch.float16, causal, g)
    by_tma = check_against_reference(*args, causal, use_tma=True)
    by_pointer = tb.attention_backward(*args, is_causal=causal, use_tma=False)
    for a, b in zip(by_tma, by_pointer):
        assert torch.equal(a, b)


@pytest.mark.parametrize("Nq,Nk,d,causal", [(37, 53, 32, True), (70, 70, 48, False)])
def test_interpreter_static_shapes_match_dynamic(Nq, Nk, d, causal):
    """static=True (lengths and strides compiled in, one binary per shape) and its one-launch variant
    (both programs in one grid): the same gradients as the dynamic kernels, bit for bit."""
    g = torch.Generator().manual_seed(Nq + Nk + d)
    args = make(1, 2, Nq, Nk, d, torch.float32, causal, g)
    static = check_against_reference(*args, causal, static=True)
    dynamic = tb.attention_backward(*args, is_causal=causal, static=False)
    p = tb._Problem(*args, causal, None)
    p.run_static(tb.CPU_CONFIG.dkdv, tb.CPU_CONFIG.dq, fused=True)
    for a, b, c in zip(static, dynamic, (p.dQ, p.dK, p.dV)):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_static_by_default_only_where_measured_faster():
    """Long sequences at d = 64 and d = 128, causal or not; not short sequences (one binary serves them
    all), not fp32, not head dims never measured (256)."""
    n = tb.STATIC_MIN_N
    assert tb.static_by_default(128, n, n, False, torch.float16)
    assert tb.static_by_default(100, 2 * n, 16, True, torch.bfloat16)  # d = 100 pads to the 128 class
    assert tb.static_by_default(64, n, n, True, torch.float16)
    assert tb.static_by_default(64, n, n, False, torch.float16)
    assert not tb.static_by_default(128, n - 1, n - 1, False, torch.float16)
    assert not tb.static_by_default(128, n, n, False, torch.float32)
    assert not tb.static_by_default(256, n, n, True, torch.float16)


def test_static_tiles_where_measured(monkeypatch):
    """The tuned dynamic dK/dV tile at d = 64 non-causal (64 x 128, 4 warps) spills when compiled static
    and ran three times slower: the static kernels take their own 64 x 64 tiles there. At d = 128 the
    first tuned tiles with 3 stages in one launch (fused); at d = 64 causal the first tuned candidates.
    fp32 and head dims outside STATIC_TILES fall back to default_config."""
    monkeypatch.setattr(tb.device, "TRITON_INTERPRET", False)
    assert tb.static_config(64, False).dkdv == (64, 64, 4, 3) != tb.default_config(64, False).dkdv
    for causal in (False, True):
        got = tb.static_config(128, causal)
        assert got.fused and got.dkdv == (64, 128, 8, 3) and got.dq == (128, 64, 8, 3)
        assert (got.dkdv[:2], got.dq[:2]) == (tb.default_config(128, causal).dkdv[:2], tb.default_config(128, causal).dq[:2])
    assert tb.static_config(64, True) == tb.default_config(64, True) and not tb.static_config(64, True).fused
    assert tb.static_config(256, True) == tb.default_config(256, True)
    assert tb.static_config(64, False, torch.float32) == tb.default_config(64, False, torch.float32)


def test_fused_configs_are_checked():
    """One launch runs both programs with one num_warps and num_stages; the dynamic kernels have no fused
    launch, so a fused config there is refused, not silently run as two launches."""
    with pytest.raises(ValueError, match="warps and stages must match"):
        tb.BackwardConfig(64, 128, 8, 3, 128, 64, 8, 4, fused=True)
    fused = tb.BackwardConfig(16, 32, 4, 1, 32, 16, 4, 1, fused=True)
    assert fused != tb.CPU_CONFIG and "fused=True" in repr(fused)
    g = torch.Generator().manual_seed(23)
    args = make(1, 1, 40, 40, 16, torch.float32, True, g)
    with pytest.raises(ValueError, match="only the static kernels"):
        tb.attention_backward(*args, is_causal=True, static=False, config=fused)
    want = tb.attention_backward(*args, is_causal=True, static=True, config=tb.CPU_CONFIG)
    for a, b in zip(tb.attention_backward(*args, is_causal=True, static=True, config=fused), want):
        assert torch.equal(a, b)


def test_tma_needs_fp16_or_bf16():
    g = torch.Generator().manual_seed(15)
    with pytest.raises(ValueError, match="use_tma"):
        tb.attention_backward(*make(1, 1, 16, 16, 16, torch.float32, False, g), use_tma=True)


def test_deterministic():
    g = torch.Generator().manual_seed(13)
    args = make(1, 2, 45, 45, 32, torch.float32, True, g)
    a = tb.attention_backward(*args, is_causal=True)
    b = tb.attention_backward(*args, is_causal=True)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_no_keys_gives_zero_gradients():
    q = torch.randn(1, 1, 5, 16, device=DEV)
    k = torch.zeros(1, 1, 0, 16, device=DEV)
    O = torch.zeros_like(q)
    L = torch.full((1, 1, 5), float("-inf"), device=DEV)
    dQ, dK, dV = tb.attention_backward(q, k, k, O, L, torch.randn_like(q))
    assert torch.equal(dQ, torch.zeros_like(q)) and dK.shape == (1, 1, 0, 16)


def test_minus_inf_L_gives_zero_not_nan():
    """A row with L = -inf (no visible key) must get P = 0 inside the kernels, not exp(inf)."""
    g = torch.Generator().manual_seed(14)
    q, k, v, O, L, dO = make(1, 1, 20, 20, 16, torch.float32, False, g)
    L[..., 3] = float("-inf")
    O[..., 3, :] = 0
    dQ, dK, dV = tb.attention_backward(q, k, v, O, L, dO)
    assert not (dQ.isnan().any() or dK.isnan().any() or dV.isnan().any())
    assert torch.equal(dQ[..., 3, :], torch.zeros_like(dQ[..., 3, :]))


def test_bad_inputs_name_the_argument():
    g = torch.Generator().manual_seed(15)
    q, k, v, O, L, dO = make(1, 1, 8, 8, 16, torch.float32, False, g)
    with pytest.raises(ValueError, match="L must have shape"):
        tb.attention_backward(q, k, v, O, L[..., :3], dO)
    with pytest.raises(ValueError, match="dO"):
        tb.attention_backward(q, k, v, O, L, dO[..., :4, :])
    with pytest.raises(TypeError, match="O and dO"):
        tb.attention_backward(q, k, v, O.half(), L, dO)
    with pytest.raises(TypeError, match="query"):
        tb.attention_backward(q.double(), k.double(), v.double(), O.double(), L, dO.double())
    with pytest.raises(ValueError, match="value head dim"):
        tb.attention_backward(q, k, torch.zeros(1, 1, 8, 32, device=DEV), O, L, dO)
    with pytest.raises(ValueError, match="scale"):
        tb.attention_backward(q, k, v, O, L, dO, scale=0.0)


def test_block_config_must_align():
    with pytest.raises(ValueError, match="BLOCK_N1 % BLOCK_M1"):
        tb.BackwardConfig(64, 32, 4, 1, 32, 16, 4, 1)
    with pytest.raises(ValueError, match="powers of two"):
        tb.BackwardConfig(16, 48, 4, 1, 32, 16, 4, 1)


def _saved_by_flash_attention(q, k, v, causal):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        O = tb.flash_attention(q, k, v, is_causal=causal)
    return O, saved


def test_flash_attention_saves_exactly_Q_K_V_O_L_and_gradients_match():
    pytest.importorskip("kernels.triton_forward")
    g = torch.Generator().manual_seed(16)
    B, H, N, d = 1, 2, 40, 16
    q, k, v = (torch.randn(B, H, N, d, generator=g).to(DEV).requires_grad_() for _ in range(3))
    O, saved = _saved_by_flash_attention(q, k, v, True)
    assert len(saved) == 5, f"saved {[tuple(t.shape) for t in saved]}, expected Q, K, V, O, L"
    for t, want in zip(saved[:3], (q, k, v)):
        assert t.data_ptr() == want.data_ptr()
    assert saved[3].shape == O.shape and saved[4].shape == (B, H, N)
    assert all(t.numel() < N * N for t in saved), "something N×N was saved"
    dO = torch.randn_like(O)
    O.backward(dO)
    up = lambda t: t.detach().to(f64)
    want = reference.attention_backward(up(q), up(k), up(v), up(dO), is_causal=True)
    for got, w in zip((q.grad, k.grad, v.grad), want):
        assert (got.to(f64) - w).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------------------------
# GPU: the forward's shape grid, fp16 and bf16, against float64 autograd
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def single_config(monkeypatch):
    """The grid compiles dozens of variants: one config each (autotuning is for benchmarks)."""
    monkeypatch.setenv("KERNELS_AUTOTUNE", "0")


@pytest.mark.gpu
@pytest.mark.parametrize("N", [1, 17, 128, 1000, 4096])
@pytest.mark.parametrize("d", [32, 64, 80, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_grid_matches_float64(N, d, causal, dtype, single_config):
    g = torch.Generator().manual_seed(N + d)
    B, H = (1, 2) if N >= 1000 else (2, 3)
    check_against_reference(*make(B, H, N, N, d, dtype, causal, g), causal, factor=3.0)


@pytest.mark.gpu
@pytest.mark.parametrize("Nq,Nk", [(1000, 333), (333, 1000)])
def test_gpu_nq_differs_from_nk(Nq, Nk, single_config):
    g = torch.Generator().manual_seed(17)
    for causal in (False, True):
        check_against_reference(*make(1, 2, Nq, Nk, 64, torch.float16, causal, g), causal, factor=3.0)


@pytest.mark.gpu
@pytest.mark.parametrize("use_tma", [False, True])
def test_gpu_pointer_and_tma_loads(use_tma, single_config):
    """On Hopper the TMA path is the default: the pointer path (strided inputs, older GPUs) must
    stay right too, on ragged N and a padded head dim."""
    g = torch.Generator().manual_seed(23)
    for d, causal in ((80, True), (64, False)):
        check_against_reference(*make(2, 2, 1000, 777, d, torch.bfloat16, causal, g), causal, factor=3.0,
                                use_tma=use_tma)


@pytest.mark.gpu
def test_gpu_head_dim_256_and_96(single_config):
    g = torch.Generator().manual_seed(21)
    for d, causal in ((256, True), (96, False)):
        check_against_reference(*make(1, 2, 300, 257, d, torch.float16, causal, g), causal, factor=3.0)


@pytest.mark.gpu
def test_gpu_fp32_uses_full_precision_products(single_config):
    g = torch.Generator().manual_seed(18)
    check_against_reference(*make(1, 2, 300, 300, 64, torch.float32, True, g), True, factor=4.0)


@pytest.mark.gpu
def test_gpu_autotuned_path_matches_float64():
    g = torch.Generator().manual_seed(19)
    for d in (64, 128):
        check_against_reference(*make(1, 4, 2048, 2048, d, torch.float16, True, g), True, factor=3.0, static=False)


@pytest.mark.gpu
def test_gpu_static_shapes_match_dynamic_and_float64():
    """From STATIC_MIN_N on, the default compiles lengths and strides in: right on a ragged length,
    and bit-identical to the dynamic kernels with the same blocks."""
    g = torch.Generator().manual_seed(22)
    for N, d, causal in ((tb.STATIC_MIN_N + 52, 128, True), (tb.STATIC_MIN_N + 52, 128, False), (tb.STATIC_MIN_N, 64, False)):
        args = make(1, 2, N, N, d, torch.float16, causal, g)
        static = check_against_reference(*args, causal, factor=3.0, static=True)  # d = 128: one fused launch
        tiles = tb.static_config(d, causal)
        separate = tb.BackwardConfig(*tiles.dkdv, *tiles.dq)  # the same blocks, two launches
        dynamic = tb.attention_backward(*args, is_causal=causal, static=False, config=separate)
        for a, b in zip(static, dynamic):
            assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_flash_attention_end_to_end_saves_only_Q_K_V_O_L():
    pytest.importorskip("kernels.triton_forward")
    g = torch.Generator().manual_seed(20)
    N = 2048
    q, k, v = (torch.randn(2, 4, N, 64, generator=g).to(DEV, torch.float16).requires_grad_() for _ in range(3))
    O, saved = _saved_by_flash_attention(q, k, v, True)
    assert len(saved) == 5 and all(t.numel() < N * N for t in saved)
    dO = torch.randn_like(O)
    O.backward(dO)
    up = lambda t: t.detach().to(f64)
    want = reference.attention_backward(up(q), up(k), up(v), up(dO), is_causal=True)
    naive = reference.attention_backward(q.detach(), k.detach(), v.detach(), dO, is_causal=True)
    for got, w, n in zip((q.grad, k.grad, v.grad), want, naive):
        assert (got.to(f64) - w).abs().max().item() <= tolerance(w, n, torch.float16, factor=3.0)


@pytest.mark.gpu
def test_gpu_dq_loop_exercise_grader_runs_on_gpu():
    """The exercise passes a @triton.jit function as a constexpr: that must compile on a GPU too."""
    from kernels.grading import registry

    ex = registry.get("04.triton_dq_loop")
    assert ex.run(ex.solution).passed
    assert ex.run(next(iter(ex.mutants.values()))).status == "fail"
