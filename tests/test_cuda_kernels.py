"""The CUDA C++ kernels (kernels/cuda/, loaded by kernels.cuda_kernels) against float64 naive
attention, within a small multiple of the error that naive attention makes in the same dtype.

GPU tests (marked `gpu`) build the extension and run every version over N in {1, 17, 128,
1000, 4096}, the head dims each version supports among {32, 64, 80, 128}, causal and not,
float16 and bfloat16, B*H > 1; plus Nq != Nk, strided inputs, large logits, empty key sets, and
a compute-sanitizer memcheck and racecheck run. The CPU tests check the input validation,
which runs before any GPU is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from kernels import cuda_kernels, reference
from kernels.grading.core import tolerance

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
NS = [1, 17, 128, 1000, 4096]
DIMS = [32, 64, 80, 128]
B, H = 2, 3

# A float32 kernel sums in a different order than cuBLAS; its error is a few times that of the
# float32 naive path rather than 2x (both are ~1e-6). fp16/bf16 use FlashAttention's 2x.
FACTOR = {F16: 2.0, BF16: 2.0, F32: 4.0}


def versions(direction: str, dtype, d):
    return [
        v for (dr, v), sup in cuda_kernels.SUPPORT.items()
        if dr == direction and dtype in sup["dtypes"] and d in sup["head_dims"]
    ]


def make_qkv(Nq, Nk, d, dtype, seed, scale_q=1.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, H, Nq, d, device="cuda", generator=g) * scale_q  # (B, H, Nq, d)
    k = torch.randn(B, H, Nk, d, device="cuda", generator=g)  # (B, H, Nk, d)
    v = torch.randn(B, H, Nk, d, device="cuda", generator=g)  # (B, H, Nk, d)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def check_forward(q, k, v, causal, versions_, scale=None, label=""):
    """Run each version; collect every failure (one version's bug must not hide another's)."""
    O64, L64 = reference.ground_truth(q, k, v, is_causal=causal, scale=scale, return_lse=True)
    O_naive, L_naive = reference.attention(q, k, v, is_causal=causal, scale=scale, return_lse=True)
    tol_O = tolerance(O64, O_naive, q.dtype, FACTOR[q.dtype])
    # L: the kernels keep it in float32, far better than a float16 naive L; judge it in float32.
    _, L_naive32 = reference.attention(q.float(), k.float(), v.float(), is_causal=causal, scale=scale, return_lse=True)
    tol_L = tolerance(L64, L_naive32, torch.float32, 4.0) + 1e-5 * float(L64[torch.isfinite(L64)].abs().max() if torch.isfinite(L64).any() else 0)
    failures = []
    for ver in versions_:
        O, L = cuda_kernels.forward(q, k, v, is_causal=causal, scale=scale, version=ver)
        assert O.dtype == q.dtype and L.dtype == torch.float32
        assert O.shape == q.shape and L.shape == q.shape[:3]
        errO = (O.double() - O64).abs().max().item() if O.numel() else 0.0
        finite = torch.isfinite(L64)
        same_inf = bool(torch.equal(torch.isinf(L), ~finite))
        errL = (L.double() - L64)[finite].abs().max().item() if finite.any() else 0.0
        if not (errO <= tol_O and errL <= tol_L and same_inf):
            failures.append(f"forward {ver} {label}: max|O err| {errO:.3g} (tol {tol_O:.3g}), max|L err| {errL:.3g} (tol {tol_L:.3g}), inf pattern ok {same_inf}")
    return failures


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("N", NS)
def test_forward_matches_reference(N, d, causal, dtype):
    vers = versions("forward", dtype, d)
    q, k, v = make_qkv(N, N, d, dtype, seed=N * 1000 + d)
    failures = check_forward(q, k, v, causal, vers, label=f"N={N} d={d} causal={causal} {dtype}")
    assert not failures, "\n".join(failures)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [32, 64, 80, 128])
def test_forward_v1_float32(d, causal):
    q, k, v = make_qkv(300, 300, d, F32, seed=d)
    failures = check_forward(q, k, v, causal, ["v1"], label=f"d={d} causal={causal} fp32")
    assert not failures, "\n".join(failures)


@pytest.mark.gpu
@pytest.mark.parametrize("Nq,Nk", [(100, 257), (257, 100), (1, 300), (300, 1), (64, 65), (129, 4096)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_forward_nq_differs_from_nk(Nq, Nk, causal):
    for d in (64, 128):
        q, k, v = make_qkv(Nq, Nk, d, F16, seed=Nq + Nk)
        failures = check_forward(q, k, v, causal, versions("forward", F16, d), label=f"Nq={Nq} Nk={Nk} d={d}")
        assert not failures, "\n".join(failures)


@pytest.mark.gpu
def test_forward_large_logits_strided_inputs_and_custom_scale():
    # (B, N, H, d) memory viewed as (B, H, N, d): no copy for v1, strides a multiple of 8 for v2/v3.
    g = torch.Generator(device="cuda").manual_seed(7)
    base = torch.randn(B, 333, H, 3, 64, device="cuda", generator=g).to(F16)  # (B, N, H, 3, d)
    q, k, v = (base[:, :, :, i].transpose(1, 2) for i in range(3))  # (B, H, N, d), strided
    q = q * 8  # large logits: exp overflows without the running max
    for causal in (False, True):
        failures = check_forward(q, k, v, causal, versions("forward", F16, 64), scale=0.2, label="strided, large logits")
        assert not failures, "\n".join(failures)


@pytest.mark.gpu
def test_forward_no_keys_gives_zero_and_minus_inf():
    q = torch.randn(B, H, 5, 64, device="cuda", dtype=F16)
    k = torch.randn(B, H, 0, 64, device="cuda", dtype=F16)
    for ver in versions("forward", F16, 64):
        O, L = cuda_kernels.forward(q, k, k, version=ver)
        assert torch.all(O == 0), ver
        assert torch.all(torch.isneginf(L)), ver


@pytest.mark.gpu
def test_forward_v3_every_config_is_correct():
    for name in cuda_kernels.v3_configs():
        d = int(name.split("_")[0][1:])
        for causal in (False, True):
            q, k, v = make_qkv(333, 333, d, F16, seed=d + causal)
            O64 = reference.ground_truth(q, k, v, is_causal=causal)
            tol = tolerance(O64, reference.attention(q, k, v, is_causal=causal), F16)
            O, _ = cuda_kernels.forward(q, k, v, is_causal=causal, version="v3", config=name)
            err = (O.double() - O64).abs().max().item()
            assert err <= tol, f"v3 config {name} causal={causal}: error {err:.3g} > {tol:.3g}"


# ------------------------------------------------------------------------------------------------
# Backward

def check_backward(q, k, v, causal, versions_, label=""):
    dO = torch.randn_like(q)
    want = reference.attention_backward(*(t.double() for t in (q, k, v)), dO.double(), is_causal=causal)
    naive = reference.attention_backward(q, k, v, dO, is_causal=causal)
    failures = []
    for ver in versions_:
        # The backward gets the same O and L whatever version computed them: use v1's (fp32 math).
        O, L = cuda_kernels.forward(q, k, v, is_causal=causal, version="v1")
        got = cuda_kernels.backward(q, k, v, O, L, dO, is_causal=causal, version=ver)
        for name, g_, w, n in zip(("dQ", "dK", "dV"), got, want, naive):
            assert g_.dtype == q.dtype and g_.shape == w.shape
            tol = tolerance(w, n, q.dtype, FACTOR[q.dtype])
            err = (g_.double() - w).abs().max().item() if g_.numel() else 0.0
            if not err <= tol:
                failures.append(f"backward {ver} {label}: max|{name} err| {err:.3g} (tol {tol:.3g})")
    return failures


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("N", NS)
def test_backward_matches_reference(N, d, causal, dtype):
    vers = versions("backward", dtype, d)
    q, k, v = make_qkv(N, N, d, dtype, seed=N * 1000 + d + 1)
    failures = check_backward(q, k, v, causal, vers, label=f"N={N} d={d} causal={causal} {dtype}")
    assert not failures, "\n".join(failures)


@pytest.mark.gpu
@pytest.mark.parametrize("Nq,Nk", [(100, 257), (257, 100), (1, 300), (300, 1)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_backward_nq_differs_from_nk(Nq, Nk, causal):
    for d in (64, 128):
        q, k, v = make_qkv(Nq, Nk, d, F16, seed=Nq * 7 + Nk)
        failures = check_backward(q, k, v, causal, versions("backward", F16, d), label=f"Nq={Nq} Nk={Nk} d={d}")
        assert not failures, "\n".join(failures)


@pytest.mark.gpu
def test_backward_v1_float32():
    q, k, v = make_qkv(200, 150, 64, F32, seed=3)
    for causal in (False, True):
        failures = check_backward(q, k, v, causal, ["v1"], label=f"fp32 causal={causal}")
        assert not failures, "\n".join(failures)


@pytest.mark.gpu
def test_autograd_function_saves_only_q_k_v_o_l():
    q, k, v = (t.requires_grad_(True) for t in make_qkv(130, 130, 64, F16, seed=11))
    O = cuda_kernels.attention(q, k, v, is_causal=True)
    saved = O.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [tuple(q.shape)] * 4 + [tuple(q.shape[:3])]
    dO = torch.randn_like(O)
    O.backward(dO)
    want = reference.attention_backward(q.double(), k.double(), v.double(), dO.double(), is_causal=True)
    naive = reference.attention_backward(q.detach(), k.detach(), v.detach(), dO, is_causal=True)
    for name, g_, w, n in zip(("dQ", "dK", "dV"), (q.grad, k.grad, v.grad), want, naive):
        tol = tolerance(w, n, F16)
        assert (g_.double() - w).abs().max().item() <= tol, name


# ------------------------------------------------------------------------------------------------
# compute-sanitizer: memcheck and racecheck on a small case, every kernel

SANITIZER_CASE = textwrap.dedent(
    """
    import torch
    from kernels import cuda_kernels as ck
    torch.manual_seed(0)
    for d in (64, 128):
        for (Nq, Nk) in ((70, 70), (33, 97)):
            q = torch.randn(1, 2, Nq, d, device="cuda", dtype=torch.float16)
            k = torch.randn(1, 2, Nk, d, device="cuda", dtype=torch.float16)
            v = torch.randn(1, 2, Nk, d, device="cuda", dtype=torch.float16)
            dO = torch.randn_like(q)
            for causal in (False, True):
                for ver in ("v1", "v2", "v3"):
                    O, L = ck.forward(q, k, v, is_causal=causal, version=ver)
                for ver in ("v1", "v2"):
                    ck.backward(q, k, v, O, L, dO, is_causal=causal, version=ver)
    torch.cuda.synchronize()
    print("sanitizer case done")
    """
)


def run_sanitizer(tool: str) -> str:
    exe = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not os.path.exists(exe):
        pytest.skip("compute-sanitizer not found")
    cuda_kernels.build()  # build first, outside the sanitizer (the child process loads the cached build)
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    cmd = [exe, "--tool", tool, "--error-exitcode", "97"]
    if "--kernel-name" in help_text:  # check only the course's kernels (torch's own are not ours)
        cmd += ["--kernel-name", "kns=flash"]
    cmd += [sys.executable, "-c", SANITIZER_CASE]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    out = res.stdout + res.stderr
    assert "sanitizer case done" in out, out[-4000:]
    assert res.returncode == 0, out[-4000:]
    return out


@pytest.mark.gpu
def test_compute_sanitizer_memcheck():
    out = run_sanitizer("memcheck")
    assert "ERROR SUMMARY: 0 errors" in out, out[-4000:]


@pytest.mark.gpu
def test_compute_sanitizer_racecheck():
    out = run_sanitizer("racecheck")
    assert "0 hazards" in out or "ERROR SUMMARY: 0 errors" in out, out[-4000:]


# ------------------------------------------------------------------------------------------------
# CPU: the wrappers refuse bad input with an error that names what is wrong, before any GPU work.

def cpu_qkv(d=64, dtype=F16, N=8):
    return (torch.randn(1, 2, N, d).to(dtype) for _ in range(3))


def test_unsupported_head_dim_is_named():
    q, k, v = cpu_qkv(d=48)
    with pytest.raises(ValueError, match=r"cuda forward v2 supports head dims 32, 64, 80, 96, 128; got 48"):
        cuda_kernels.forward(q, k, v, version="v2")
    with pytest.raises(ValueError, match=r"cuda forward v3 supports head dims 64, 128; got 48"):
        cuda_kernels.forward(q, k, v, version="v3")
    with pytest.raises(ValueError, match=r"cuda backward v2 supports head dims 64, 128; got 48"):
        cuda_kernels.backward(q, k, v, q, torch.zeros(1, 2, 8), q, version="v2")


def test_unsupported_dtype_is_named():
    q, k, v = cpu_qkv(dtype=F32)
    with pytest.raises(TypeError, match=r"cuda forward v2 supports dtypes float16, bfloat16; got float32"):
        cuda_kernels.forward(q, k, v, version="v2")


def test_unknown_version_and_bad_shapes():
    q, k, v = cpu_qkv()
    with pytest.raises(ValueError, match=r"version must be one of v1, v2 for the cuda backward"):
        cuda_kernels.backward(q, k, v, q, torch.zeros(1, 2, 8), q, version="v3")
    with pytest.raises(ValueError, match="key head dim"):
        cuda_kernels.forward(q, k[..., :32], v, version="v1")
    with pytest.raises(ValueError, match="scale"):
        cuda_kernels.forward(q, k, v, scale=-1.0, version="v1")


def test_cpu_tensors_are_refused_clearly():
    q, k, v = cpu_qkv()
    with pytest.raises((RuntimeError, ValueError), match="CUDA"):
        cuda_kernels.forward(q, k, v, version="v1")


def test_best_version_prefers_the_newest_that_supports_the_input():
    assert cuda_kernels.best_version("forward", F16, 128) == "v3"
    assert cuda_kernels.best_version("forward", F16, 80) == "v2"
    assert cuda_kernels.best_version("forward", F32, 64) == "v1"
    assert cuda_kernels.best_version("backward", BF16, 64) == "v2"
    assert cuda_kernels.best_version("backward", F16, 32) == "v1"
