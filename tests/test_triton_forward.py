"""The Triton forward kernel against float64 naive attention, within the course's tolerance
(kernels.grading.core.tolerance: 2x the error of naive attention in the same dtype).

CPU: the interpreter on small fp32 and fp16 shapes (N not a multiple of the block, N_q != N_k,
non-power-of-two head dims, strided inputs, the TMA path's logic, poisoned padding).
GPU (`-m gpu`, on the H100): N in {1, 17, 128, 1000, 4096}, d in {32, 64, 80, 128}, causal and
not, fp16 and bf16, B·H > 1, through the autotuned public entry.
"""

import pytest
import torch

import kernels
from kernels import reference
from kernels.grading.core import tolerance

pytestmark = pytest.mark.skipif(not kernels.device.HAS_TRITON, reason="triton is not installed on this platform")

if kernels.device.HAS_TRITON:
    from kernels import triton_forward as tf

DEV = kernels.device.default_device()


def _inputs(B, H, N_q, N_k, d, dtype, seed, scale_logits=1.0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = (torch.randn(B, H, N_q, d, generator=g) * scale_logits).to(DEV, dtype)  # (B, H, N_q, d)
    k = torch.randn(B, H, N_k, d, generator=g).to(DEV, dtype)  # (B, H, N_k, d)
    v = torch.randn(B, H, N_k, d, generator=g).to(DEV, dtype)  # (B, H, N_k, d)
    return q, k, v


def _assert_matches(q, k, v, causal, O, L, scale=None, factor=2.0):
    want_O, want_L = reference.ground_truth(q, k, v, is_causal=causal, scale=scale, return_lse=True)
    naive_O, naive_L = reference.attention(q, k, v, is_causal=causal, scale=scale, return_lse=True)
    assert O.dtype == q.dtype and O.shape == q.shape
    assert L.dtype == torch.float32 and L.shape == q.shape[:3]
    tol_O = tolerance(want_O, naive_O, q.dtype, factor)
    tol_L = tolerance(want_L, naive_L, q.dtype, factor)
    err_O = float((O.double() - want_O).abs().max())
    err_L = float((L.double() - want_L).abs().max())
    assert err_O <= tol_O, f"O: max error {err_O:.3g} > tolerance {tol_O:.3g}"
    assert err_L <= tol_L, f"L: max error {err_L:.3g} > tolerance {tol_L:.3g}"


# ------------------------------------------------------------------------------------------------ CPU
CPU_SHAPES = [  # (B, H, N_q, N_k, d)
    (1, 2, 1, 1, 16),
    (2, 1, 17, 17, 32),  # N not a multiple of the block
    (1, 2, 40, 23, 80),  # N_q > N_k, d padded 80 -> 128
    (1, 1, 23, 40, 64),  # N_q < N_k
    (1, 2, 70, 70, 16),  # several key blocks: the online rescaling matters
    (1, 1, 9, 33, 96),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_cpu(shape, causal, dtype):
    B, H, N_q, N_k, d = shape
    q, k, v = _inputs(B, H, N_q, N_k, d, dtype, seed=hash((shape, causal)) % 1000)
    O, L = tf.attention_forward(q, k, v, is_causal=causal)
    _assert_matches(q, k, v, causal, O, L)


def test_fp32_is_fp32_accurate():
    """fp32 inputs must not silently use TF32 (10-bit mantissa): a loose tolerance would hide it."""
    q, k, v = _inputs(1, 2, 50, 37, 64, torch.float32, seed=3)
    O, _ = tf.attention_forward(q, k, v)
    want = reference.ground_truth(q, k, v)
    assert float((O.double() - want).abs().max()) < 1e-5


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("config", [dict(BLOCK_M=16, BLOCK_N=32), dict(BLOCK_M=16, BLOCK_N=16), dict(BLOCK_M=64, BLOCK_N=16),
                                    dict(BLOCK_M=16, BLOCK_N=16, Q_BLOCKS=2), dict(BLOCK_M=32, BLOCK_N=16, Q_BLOCKS=2)],
                         ids=lambda c: "_".join(f"{k}{v}" for k, v in c.items()))
def test_block_sizes_cpu(config, causal):
    """BLOCK_N > BLOCK_M, equal, several diagonal blocks per query block, and two query blocks per
    program (an odd number of query blocks: 45 rows are 3 blocks of 16 or 2 of 32)."""
    q, k, v = _inputs(1, 2, 45, 51, 32, torch.float32, seed=7)
    O, L = tf.launch(q, k, v, is_causal=causal, config=config)
    _assert_matches(q, k, v, causal, O, L)


@pytest.mark.parametrize("causal", [False, True])
def test_tma_path_logic_cpu(causal):
    """The TMA path (descriptors clip at N and d) also runs under the interpreter when asked for."""
    q, k, v = _inputs(1, 2, 37, 29, 80, torch.float16, seed=11)
    O, L = tf.launch(q, k, v, is_causal=causal, use_tma=True)
    _assert_matches(q, k, v, causal, O, L)


def test_strided_inputs_cpu():
    """(B, N, H, d) storage seen as (B, H, N, d), and a V with d as the slow axis: strides only."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 19, 3, 32, generator=g).transpose(1, 2)  # (B, H, N, d), non-contiguous
    k = torch.randn(2, 21, 3, 32, generator=g).transpose(1, 2)
    v = torch.randn(2, 3, 32, 21, generator=g).transpose(2, 3)  # stride along d is not 1
    for causal in (False, True):
        O, L = tf.attention_forward(q, k, v, is_causal=causal)
        _assert_matches(q, k, v, causal, O, L)


def test_explicit_scale_and_large_logits_cpu():
    q, k, v = _inputs(1, 1, 33, 33, 32, torch.float32, seed=2, scale_logits=30.0)
    O, L = tf.attention_forward(q, k, v, is_causal=True, scale=0.7)
    _assert_matches(q, k, v, True, O, L, scale=0.7)


def test_poisoned_padding_does_not_leak_cpu():
    """V rows past N_k read as 1e4 must not reach O: the last block's mask works."""
    q, k, v = _inputs(1, 2, 20, 19, 32, torch.float16, seed=9)
    for causal in (False, True):
        O, L = tf.launch(q, k, v, is_causal=causal, pad_v=1.0e4)
        _assert_matches(q, k, v, causal, O, L)


def test_no_keys_gives_zero_and_minus_inf():
    q = torch.randn(1, 2, 5, 16)
    k = torch.randn(1, 2, 0, 16)
    O, L = tf.attention_forward(q, k, k)
    assert torch.equal(O, torch.zeros_like(O)) and torch.isneginf(L).all()


def test_bad_inputs_have_clear_errors():
    q = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="head dim d must be between 16 and 256"):
        tf.attention_forward(q, q, q)
    q = torch.randn(1, 1, 8, 300)
    with pytest.raises(ValueError, match="head dim"):
        tf.attention_forward(q, q, q)
    q = torch.randn(1, 1, 8, 32, dtype=torch.float64)
    with pytest.raises(TypeError, match="dtype"):
        tf.attention_forward(q, q, q)
    q = torch.randn(1, 1, 8, 32)
    with pytest.raises(ValueError, match="scale"):
        tf.attention_forward(q, q, q, scale=-1.0)
    with pytest.raises(ValueError, match="key"):
        tf.attention_forward(q, torch.randn(1, 1, 8, 16), q)


@pytest.mark.skipif(kernels.device.HAS_CUDA, reason="CPU-only check")
def test_gpu_tensor_rejected_without_gpu():
    with pytest.raises(ValueError, match="CPU"):
        tf._check(torch.randn(1, 1, 8, 32, device="meta"), torch.randn(1, 1, 8, 32, device="meta"),
                  torch.randn(1, 1, 8, 32, device="meta"), None)


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [32, 64, 80, 128])
@pytest.mark.parametrize("N", [1, 17, 128, 1000, 4096])
def test_matches_reference_gpu(N, d, causal, dtype):
    q, k, v = _inputs(2, 3, N, N, d, dtype, seed=N * 1000 + d)
    O, L = tf.attention_forward(q, k, v, is_causal=causal)
    _assert_matches(q, k, v, causal, O, L)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("shape", [(2, 3, 300, 517, 16), (1, 4, 517, 300, 256), (2, 2, 1000, 1000, 96)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_other_head_dims_and_lengths_gpu(shape, dtype, causal):
    B, H, N_q, N_k, d = shape
    q, k, v = _inputs(B, H, N_q, N_k, d, dtype, seed=N_q + d)
    O, L = tf.attention_forward(q, k, v, is_causal=causal)
    _assert_matches(q, k, v, causal, O, L)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [64, 128])
def test_every_tuned_config_gpu(d, causal):
    """Whatever the autotuner picks must be right: every config of the list, on odd lengths."""
    q, k, v = _inputs(2, 3, 1000, 777, d, torch.float16, seed=d)
    for config in tf.configs_for(d, torch.float16):
        O, L = tf.launch(q, k, v, is_causal=causal, config=config)
        try:
            _assert_matches(q, k, v, causal, O, L)
        except AssertionError as e:
            raise AssertionError(f"config {config}: {e}") from None


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_strided_and_pointer_path_gpu(causal):
    """Non-contiguous inputs (pointer path) and the TMA path forced off and on agree."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 1000, 4, 64, generator=g).to("cuda", torch.float16).transpose(1, 2)
    k = torch.randn(2, 777, 4, 64, generator=g).to("cuda", torch.float16).transpose(1, 2)
    v = torch.randn(2, 777, 4, 64, generator=g).to("cuda", torch.float16).transpose(1, 2)
    O, L = tf.attention_forward(q, k, v, is_causal=causal)
    _assert_matches(q, k, v, causal, O, L)
    qc, kc, vc = q.contiguous(), k.contiguous(), v.contiguous()
    for tma in (False, True):
        O, L = tf.launch(qc, kc, vc, is_causal=causal, use_tma=tma)
        _assert_matches(qc, kc, vc, causal, O, L)
