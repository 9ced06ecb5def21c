"""kernels.scaled_dot_product_attention against torch's, over a table of cases, on every backend.

Each case draws fresh random inputs (the seed is in the test's failure message) and compares
the output and the gradients of query, key and value with torch.nn.functional.
scaled_dot_product_attention computed in float64. The tolerance is a multiple of the error that
naive attention (kernels.reference) makes in the same dtype (kernels.grading.core.tolerance).
With dropout, torch cannot draw our mask: the answer is kernels.reference given the keep-mask
that dropout_keep_mask regenerates from the seed.

CPU (CI): the reference and tiled backends, and the Triton kernels under the interpreter on tiny
shapes. GPU (`-m gpu`): the Triton path on the H100 at larger shapes and every dtype.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import api, memory_model
from kernels.api import AttentionConfig, scaled_dot_product_attention
from kernels.grading.core import assert_close, fresh_generator, tolerance
from kernels.reference import attention as reference_attention
from kernels.triton_sdpa import dropout_keep_mask

# Where triton has no wheel (macOS), only the PyTorch backends can run.
WITH_TRITON = ("reference", "triton") if kernels.device.HAS_TRITON else ("reference",)
no_triton = pytest.mark.skipif(not kernels.device.HAS_TRITON, reason="triton is not installed on this platform")

CUDA = torch.cuda.is_available()
#: Where the small Triton tests run: the GPU when there is one, else the interpreter on the CPU.
DEV = "cuda" if CUDA else "cpu"


# ------------------------------------------------------------------------------------------------
# The case table
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    B: int
    H: int
    H_kv: int
    Nq: int
    Nk: int
    d: int
    d_v: int
    mask: str = "none"  # none | bool | bool-2d | additive | padding | empty-rows
    causal: bool = False
    p: float = 0.0

    @property
    def gqa(self) -> bool:
        return self.H_kv != self.H

    def __str__(self):
        return self.name


CASES = [
    Case("plain", 2, 3, 3, 17, 17, 16, 16),
    Case("causal Nq>Nk", 1, 2, 2, 33, 20, 24, 24, causal=True),
    Case("causal Nq<Nk", 1, 2, 2, 12, 40, 16, 16, causal=True),
    Case("bool full-size, d_v != d", 2, 2, 2, 20, 31, 16, 8, mask="bool"),
    Case("bool (Nq, Nk) broadcast", 2, 2, 2, 20, 31, 16, 16, mask="bool-2d"),
    Case("additive (1, H, Nq, Nk)", 2, 2, 2, 20, 31, 16, 16, mask="additive"),
    Case("key padding (B, 1, 1, Nk)", 3, 2, 2, 20, 31, 16, 16, mask="padding"),
    Case("GQA + causal + bool", 2, 4, 2, 20, 26, 16, 16, mask="bool", causal=True),
    Case("MQA + additive, d=40", 2, 4, 1, 20, 26, 40, 40, mask="additive"),
    Case("fully masked rows", 2, 2, 2, 19, 23, 16, 16, mask="empty-rows"),
    Case("head dim 8", 1, 2, 2, 18, 18, 8, 8, causal=True),
    Case("dropout 0.2", 1, 2, 2, 24, 24, 16, 16, p=0.2),
    Case("dropout 0.5 + GQA + causal + padding", 2, 4, 2, 20, 26, 16, 16, mask="padding", causal=True, p=0.5),
]

#: The subset the Triton interpreter runs in float16 as well (it is slow: keep it short).
FP16_TRITON = {"plain", "GQA + causal + bool", "fully masked rows", "dropout 0.2"}


def make_mask(case: Case, g: torch.Generator, dtype, device):
    """The case's attn_mask (SDPA convention: True = attend), or None."""
    B, H, Nq, Nk = case.B, case.H, case.Nq, case.Nk
    kind = case.mask
    if kind == "none":
        return None
    if kind == "bool":
        return (torch.rand(B, H, Nq, Nk, generator=g) > 0.3).to(device)
    if kind == "bool-2d":
        m = torch.rand(Nq, Nk, generator=g) > 0.3
        m[:, 0] = True  # no empty row here: that is its own case
        return m.to(device)
    if kind == "additive":
        bias = torch.randn(1, H, Nq, Nk, generator=g) * 2
        bias[..., :, 1] = float("-inf")  # -inf masks, like False
        return bias.to(device=device, dtype=dtype)
    if kind == "padding":  # each batch entry has its own number of real keys
        lengths = torch.randint(1, Nk + 1, (B,), generator=g)
        lengths[0] = Nk - 3
        return (torch.arange(Nk)[None, :] < lengths[:, None]).view(B, 1, 1, Nk).to(device)
    if kind == "empty-rows":
        m = torch.rand(B, 1, Nq, Nk, generator=g) > 0.4
        m[:, :, 0] = False  # row 0 and 7 see no key at all
        m[0, :, 7] = False
        return m.to(device)
    raise ValueError(kind)


def make_inputs(case: Case, dtype, device, g):
    q = torch.randn(case.B, case.H, case.Nq, case.d, generator=g).to(device, dtype)
    k = torch.randn(case.B, case.H_kv, case.Nk, case.d, generator=g).to(device, dtype)
    v = torch.randn(case.B, case.H_kv, case.Nk, case.d_v, generator=g).to(device, dtype)
    dO = torch.randn(case.B, case.H, case.Nq, case.d_v, generator=g).to(device, dtype)
    return q, k, v, dO, make_mask(case, g, dtype, device)


def grads(fn, q, k, v, dO):
    """(O, dQ, dK, dV) of fn(q, k, v) for the incoming gradient dO."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    O = fn(q, k, v)
    dQ, dK, dV = torch.autograd.grad(O, (q, k, v), dO.to(O.dtype))
    return O.detach(), dQ, dK, dV


def up64(t):
    return None if t is None else (t.double() if t.is_floating_point() else t)


def torch_sdpa(q, k, v, mask, case, keep=None):
    """The answer: torch's SDPA; with dropout, kernels.reference given the keep-mask."""
    if case.p > 0:
        return reference_attention(q, k, v, attn_mask=mask, is_causal=case.causal, dropout_p=case.p,
                                   dropout_mask=keep, enable_gqa=case.gqa)
    if case.causal:  # torch refuses attn_mask with is_causal: fold the causal mask into it
        causal = kernels.reference.causal_mask(case.Nq, case.Nk, q.device)
        if mask is None:
            mask = causal
        elif mask.dtype == torch.bool:
            mask = mask & causal
        else:
            mask = mask.masked_fill(~causal, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=case.gqa)


def check_case(case: Case, backend: str, dtype, device="cpu", cfg: AttentionConfig | None = None):
    """Compare one backend with torch on one case: O, dQ, dK, dV."""
    g, seed = fresh_generator()
    q, k, v, dO, mask = make_inputs(case, dtype, device, g)
    dropout_seed = int(torch.randint(0, 2**62, (), generator=g))
    keep = dropout_keep_mask(dropout_seed, (case.B, case.H, case.Nq, case.Nk), case.p, device) if case.p else None
    cfg = (cfg or AttentionConfig()).replace(backend=backend, seed=dropout_seed, is_causal=case.causal,
                                             dropout_p=case.p)

    got = grads(lambda q, k, v: cfg(q, k, v, attn_mask=mask, enable_gqa=case.gqa), q, k, v, dO)
    want = grads(lambda q, k, v: torch_sdpa(q, k, v, up64(mask), case, keep), up64(q), up64(k), up64(v), dO.double())
    naive = grads(lambda q, k, v: reference_attention(q, k, v, attn_mask=mask, is_causal=case.causal,
                                                      dropout_p=case.p, dropout_mask=keep, enable_gqa=case.gqa),
                  q, k, v, dO)
    where = f"{case} backend={backend} {dtype} seed={seed}"
    for name, a, w, n in zip(("O", "dQ", "dK", "dV"), got, want, naive):
        assert not torch.isnan(a).any(), f"{where}: {name} has NaN"
        assert a.dtype == dtype, f"{where}: {name} dtype {a.dtype}"
        assert_close(f"{where}: {name}", a, w, tolerance(w, n, dtype, factor=3.0))
    return got


def _supported(case: Case, backend: str) -> bool:
    if backend == "tiled":
        return case.mask == "none" and case.p == 0 and not case.gqa
    return True


# ------------------------------------------------------------------------------------------------
# CPU: reference and tiled backends, Triton under the interpreter
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_reference_backend_matches_torch(case, dtype):
    check_case(case, "reference", dtype)


@pytest.mark.parametrize("case", [c for c in CASES if _supported(c, "tiled")], ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_tiled_backend_matches_torch(case, dtype):
    check_case(case, "tiled", dtype, cfg=AttentionConfig(B_r=16, B_c=8))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_triton_small_matches_torch_fp32(case, needs_triton):
    check_case(case, "triton", torch.float32, device=DEV)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in FP16_TRITON], ids=str)
def test_triton_small_matches_torch_fp16(case, needs_triton):
    check_case(case, "triton", torch.float16, device=DEV)


def test_default_backend_is_reference_on_cpu():
    q = torch.randn(1, 2, 5, 8)
    assert api.resolve_backend(None, q) == "reference"
    assert api.resolve_backend("tiled", q) == "tiled"


def test_fully_masked_rows_give_zeros_forward_and_backward():
    case = next(c for c in CASES if c.mask == "empty-rows")
    for backend in WITH_TRITON:
        O, dQ, dK, dV = check_case(case, backend, torch.float32, device=DEV)
        assert torch.all(O[:, :, 0] == 0) and torch.all(O[0, :, 7] == 0), backend
        assert torch.all(dQ[:, :, 0] == 0) and torch.all(dQ[0, :, 7] == 0), backend
        for t in (O, dQ, dK, dV):
            assert torch.isfinite(t).all(), backend


def test_additive_all_minus_inf_row_gives_zeros():
    q, k, v = (torch.randn(1, 2, 9, 16, device=DEV) for _ in range(3))
    bias = torch.zeros(9, 9, device=DEV)
    bias[4] = float("-inf")
    for backend in WITH_TRITON:
        qq = q.clone().requires_grad_(True)
        O = scaled_dot_product_attention(qq, k, v, bias, backend=backend)
        O.sum().backward()
        assert torch.all(O[:, :, 4] == 0) and torch.all(qq.grad[:, :, 4] == 0), backend
        assert torch.isfinite(O).all() and torch.isfinite(qq.grad).all(), backend


@pytest.mark.parametrize("backend", ["reference", "tiled", pytest.param("triton", marks=no_triton)])
def test_strided_and_3d_inputs(backend):
    """A (B, N, H, d) tensor transposed to (B, H, N, d) is used as it is; 3-D (H, N, d) works."""
    g, seed = fresh_generator()
    x = torch.randn(2, 21, 3, 16, generator=g).to(DEV).transpose(1, 2)  # (B, H, N, d), not contiguous
    assert not x.is_contiguous()
    got = scaled_dot_product_attention(x, x, x, is_causal=True, backend=backend)
    want = F.scaled_dot_product_attention(x.double(), x.double(), x.double(), is_causal=True)
    naive = reference_attention(x, x, x, is_causal=True)
    assert_close(f"strided {backend} seed={seed}", got, want, tolerance(want, naive, torch.float32, 3.0))
    got3 = scaled_dot_product_attention(x[0], x[0], x[0], backend=backend)
    want3 = F.scaled_dot_product_attention(x[0].double(), x[0].double(), x[0].double())
    assert got3.shape == (3, 21, 16)
    assert_close(f"3-D {backend} seed={seed}", got3, want3, tolerance(want3, reference_attention(x[:1], x[:1], x[:1])[0],
                                                                      torch.float32, 3.0))


@pytest.mark.parametrize("B_r,B_c", [(16, 16), (32, 16), (16, 32)])
def test_triton_answer_independent_of_block_size(B_r, B_c, needs_triton):
    case = next(c for c in CASES if c.name == "GQA + causal + bool")
    check_case(case, "triton", torch.float32, device=DEV, cfg=AttentionConfig(B_r=B_r, B_c=B_c))


# ------------------------------------------------------------------------------------------------
# Dropout through the API
# ------------------------------------------------------------------------------------------------
def test_dropout_same_seed_same_result_and_backends_agree():
    q, k, v = (torch.randn(1, 2, 20, 16, device=DEV) for _ in range(3))
    outs = {}
    for backend in WITH_TRITON:
        torch.manual_seed(1234)
        a = scaled_dot_product_attention(q, k, v, dropout_p=0.3, backend=backend)
        torch.manual_seed(1234)
        b = scaled_dot_product_attention(q, k, v, dropout_p=0.3, backend=backend)
        c = scaled_dot_product_attention(q, k, v, dropout_p=0.3, backend=backend)  # next seed
        assert torch.equal(a, b), backend
        assert not torch.equal(a, c), backend
        outs[backend] = a
    if "triton" in outs:  # the reference draws the keep-mask with the kernel's Philox, in NumPy
        torch.testing.assert_close(outs["triton"], outs["reference"], rtol=1e-5, atol=1e-5)


def test_dropout_seed_comes_from_torch_generator():
    torch.manual_seed(99)
    s = api.draw_dropout_seed()
    q, k, v = (torch.randn(1, 1, 12, 8) for _ in range(3))
    torch.manual_seed(99)
    got = scaled_dot_product_attention(q, k, v, dropout_p=0.4)
    keep = dropout_keep_mask(s, (1, 1, 12, 12), 0.4)
    want = reference_attention(q.double(), k.double(), v.double(), dropout_p=0.4, dropout_mask=keep)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Config, NaN policy, memory estimator
# ------------------------------------------------------------------------------------------------
def test_config_call_equals_function():
    q, k, v = (torch.randn(2, 2, 10, 8, dtype=torch.float64) for _ in range(3))
    cfg = AttentionConfig(is_causal=True, scale=0.3)
    torch.testing.assert_close(cfg(q, k, v), scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3))
    assert cfg.replace(is_causal=False).is_causal is False


def test_nan_policy():
    q, k, v = (torch.randn(1, 1, 6, 8) for _ in range(3))
    k[0, 0, 2, 3] = float("nan")
    # default: not scanned; NaN in key row 2 reaches every row that attends to it, as in torch
    O = scaled_dot_product_attention(q, k, v)
    assert torch.isnan(O).all()
    causal = scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.isnan(causal[0, 0, :2]).any() and torch.isnan(causal[0, 0, 2:]).all()
    with pytest.raises(ValueError, match="key contains NaN or inf"):
        AttentionConfig(check_finite=True)(q, k, v)
    bias = torch.zeros(6, 6)
    bias[0, 0] = float("inf")
    with pytest.raises(ValueError, match="attn_mask contains NaN or \\+inf"):
        AttentionConfig(check_finite=True)(q, q, v, attn_mask=bias)


def test_memory_estimator_on_public_api():
    assert api.predicted_peak_bytes is memory_model.predicted_peak_bytes
    assert api.measure_peak_bytes is memory_model.measure_peak_bytes
    B, H, N, d = 1, 2, 1024, 64
    assert api.flash_peak_bytes(B, H, N, d, torch.float16) == B * H * (N * d * 2 + N * 4)


def test_mask_is_read_in_place_not_expanded():
    """The Triton path hands the kernel a stride-0 view of the mask: the same storage."""
    from kernels.triton_sdpa import _mask_view

    pad = torch.rand(3, 1, 1, 40) > 0.5
    kind, view, strides = _mask_view(pad, 3, 8, 50, 40)
    assert view.data_ptr() == pad.data_ptr() and view.untyped_storage().nbytes() == pad.numel()
    assert strides[1] == 0 and strides[2] == 0 and strides[0] == 40 and strides[3] == 1


# ------------------------------------------------------------------------------------------------
# Bad inputs: each with the message it must give
# ------------------------------------------------------------------------------------------------
def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device) if dtype.is_floating_point else \
        torch.ones(*shape, dtype=dtype, device=device)


Q = (2, 4, 8, 16)
BAD_INPUTS = [
    ("query not a tensor", lambda: scaled_dot_product_attention([1.0], _t(*Q), _t(*Q)), TypeError,
     "query must be a torch.Tensor"),
    ("query 2-D", lambda: scaled_dot_product_attention(_t(8, 16), _t(8, 16), _t(8, 16)), ValueError,
     r"query must be 4-D \(B, H, N, d\) or 3-D"),
    ("query 5-D", lambda: scaled_dot_product_attention(_t(1, *Q), _t(1, *Q), _t(1, *Q)), ValueError,
     "query must be 4-D"),
    ("key rank differs", lambda: scaled_dot_product_attention(_t(*Q), _t(4, 8, 16), _t(*Q)), ValueError,
     "key must have query's rank 4"),
    ("batch mismatch", lambda: scaled_dot_product_attention(_t(*Q), _t(3, 4, 8, 16), _t(3, 4, 8, 16)), ValueError,
     "batch size must match"),
    ("head dim mismatch", lambda: scaled_dot_product_attention(_t(*Q), _t(2, 4, 8, 32), _t(2, 4, 8, 16)), ValueError,
     "key head dim must equal query head dim"),
    ("value rows differ", lambda: scaled_dot_product_attention(_t(*Q), _t(2, 4, 8, 16), _t(2, 4, 9, 16)), ValueError,
     "value must have as many rows as key"),
    ("heads differ without GQA", lambda: scaled_dot_product_attention(_t(*Q), _t(2, 2, 8, 16), _t(2, 2, 8, 16)),
     ValueError, "pass enable_gqa=True"),
    ("GQA heads not a divisor", lambda: scaled_dot_product_attention(_t(*Q), _t(2, 3, 8, 16), _t(2, 3, 8, 16),
                                                                      enable_gqa=True),
     ValueError, "query heads H=4 must be a multiple of key heads 3"),
    ("dtype mismatch", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q, dtype=torch.float64), _t(*Q)), TypeError,
     "must share one dtype"),
    ("integer dtype", lambda: scaled_dot_product_attention(_t(*Q, dtype=torch.int32), _t(*Q), _t(*Q)), TypeError,
     "query must have dtype in"),
    ("device mismatch", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q, device="meta"), _t(*Q)), ValueError,
     "must be on one device"),
    ("negative scale", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q), scale=-1.0), ValueError,
     "scale must be a positive finite number"),
    ("scale a string", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q), scale="0.1"), TypeError,
     "scale must be a float or None"),
    ("dropout_p = 1", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q), dropout_p=1.0), ValueError,
     r"dropout_p must be in \[0, 1\)"),
    ("dropout_p negative", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q), dropout_p=-0.1), ValueError,
     r"dropout_p must be in \[0, 1\)"),
    ("is_causal not a bool", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q), is_causal="yes"), TypeError,
     "is_causal must be a bool"),
    ("mask of int dtype", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q), _t(8, 8, dtype=torch.int64)),
     TypeError, "attn_mask must be bool"),
    ("mask not broadcastable", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q), _t(8, 7)), ValueError,
     r"attn_mask of shape \(8, 7\) is not broadcastable"),
    ("mask 5-D", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q), _t(1, 2, 4, 8, 8)), ValueError,
     "attn_mask must have at most 4 dims"),
    ("mask on another device", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q), _t(8, 8, device="meta")),
     ValueError, "attn_mask must be on cpu"),
    ("mask as a list", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q), [[True]]), TypeError,
     "attn_mask must be a torch.Tensor or None"),
    ("unknown backend", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q), backend="fast"), ValueError,
     "backend must be one of"),
    ("tiled with a mask", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q), _t(8, 8) > 0, backend="tiled"),
     ValueError, "backend='tiled' does not support attn_mask"),
    ("tiled with dropout", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q), dropout_p=0.1,
                                                                backend="tiled"),
     ValueError, r"backend='tiled' does not support dropout"),
    ("tiled with GQA", lambda: scaled_dot_product_attention(_t(*Q), _t(2, 2, 8, 16), _t(2, 2, 8, 16), enable_gqa=True,
                                                            backend="tiled"),
     ValueError, "backend='tiled' does not support GQA"),
    ("triton with float64", lambda: scaled_dot_product_attention(*(_t(*Q, dtype=torch.float64),) * 3,
                                                                 backend="triton"),
     TypeError, "backend='triton' takes float16, bfloat16 or float32"),
    ("triton head dim 512", lambda: scaled_dot_product_attention(_t(1, 1, 4, 512), _t(1, 1, 4, 512), _t(1, 1, 4, 512),
                                                                 backend="triton"),
     ValueError, "backend='triton' supports head dims up to 256"),
    ("triton block not a power of two", lambda: AttentionConfig(backend="triton", B_r=24)(_t(*Q), _t(*Q), _t(*Q)),
     ValueError, "B_r must be a power of two >= 16"),
    ("triton mask requiring grad", lambda: scaled_dot_product_attention(
        _t(*Q), _t(*Q), _t(*Q), _t(8, 8).requires_grad_(True), backend="triton"),
     ValueError, "attn_mask requires grad"),
    ("config block size 0", lambda: AttentionConfig(B_c=0), ValueError, "B_c must be a positive int"),
    ("config negative seed", lambda: AttentionConfig(seed=-1), ValueError, r"seed must be an int in \[0, 2\*\*63\)"),
    ("config dropout 1.5", lambda: AttentionConfig(dropout_p=1.5), ValueError, r"dropout_p must be in \[0, 1\)"),
]
if not CUDA:
    BAD_INPUTS.append(("cuda backend without a GPU", lambda: scaled_dot_product_attention(_t(*Q), _t(*Q), _t(*Q),
                                                                                         backend="cuda"),
                       RuntimeError, "backend='cuda' needs a CUDA GPU"))
if kernels.device.TRITON_INTERPRET:
    BAD_INPUTS.append(("bfloat16 under the interpreter", lambda: scaled_dot_product_attention(
        *(_t(*Q, dtype=torch.bfloat16),) * 3, backend="triton"), TypeError, "computes bfloat16 wrongly"))


def test_bad_input_table_is_large():
    assert len(BAD_INPUTS) >= 20


@pytest.mark.parametrize(
    "name,call,exc,message",
    [pytest.param(*b, marks=no_triton) if b[0].startswith("triton") else b for b in BAD_INPUTS],
    ids=[b[0] for b in BAD_INPUTS],
)
def test_bad_input(name, call, exc, message):
    with pytest.raises(exc, match=message):
        call()


# ------------------------------------------------------------------------------------------------
# GPU: the Triton path on the H100
# ------------------------------------------------------------------------------------------------
GPU_CASES = [
    Case("plain", 2, 4, 4, 300, 300, 64, 64),
    Case("causal Nq>Nk", 2, 4, 4, 333, 200, 64, 64, causal=True),
    Case("causal Nq<Nk", 1, 4, 4, 130, 517, 128, 128, causal=True),
    Case("bool full-size", 2, 2, 2, 257, 300, 64, 32, mask="bool"),
    Case("bool (Nq, Nk) broadcast", 2, 4, 4, 200, 311, 96, 96, mask="bool-2d"),
    Case("additive", 2, 4, 4, 200, 311, 64, 64, mask="additive"),
    Case("key padding", 4, 4, 4, 256, 256, 64, 64, mask="padding", causal=True),
    Case("GQA + causal + bool", 2, 8, 2, 300, 300, 64, 64, mask="bool", causal=True),
    Case("MQA + additive d=256", 1, 4, 1, 150, 150, 256, 256, mask="additive"),
    Case("fully masked rows", 2, 2, 2, 190, 230, 64, 64, mask="empty-rows"),
    Case("dropout 0.1", 2, 4, 4, 256, 256, 64, 64, p=0.1),
    Case("dropout 0.5 + GQA + causal + padding", 2, 8, 4, 300, 260, 64, 64, mask="padding", causal=True, p=0.5),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_triton_gpu_matches_torch(case, dtype):
    check_case(case, "triton", dtype, device="cuda")


@pytest.mark.gpu
def test_default_backend_is_triton_on_gpu():
    assert api.resolve_backend(None, torch.zeros(1, device="cuda")) == "triton"


@pytest.mark.gpu
def test_cuda_backend_matches_torch():
    """backend='cuda': the CUDA C++ kernels of lessons 03-04 (builds the extension the first time)."""
    check_case(Case("plain", 2, 4, 4, 200, 200, 64, 64, causal=True), "cuda", torch.float16, device="cuda")
