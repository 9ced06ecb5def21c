"""The mini-Flex (kernels.mini_flex): the course's Triton kernels with a score_mod, a mask_mod
and block skipping.

CPU: under the Triton interpreter on small shapes, forward (O and L) and backward (dQ, dK, dV
and a learnable bias table) against the materialised float64 reference, with tolerances that are
a multiple of the same-dtype naive error; block skipping and the full-block path are checked by
construction. GPU (`gpu` marker, the lent H100): forward and backward against flex_attention for
every pattern, at least as accurate as FlexAttention itself.
"""

import math

import pytest
import torch

from kernels import device
from kernels import flex_patterns as fp
from kernels import mini_flex as mf
from kernels.grading.core import tolerance

pytestmark = [
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
    pytest.mark.skipif(not device.HAS_TRITON, reason="triton is not installed on this platform"),
]

CPU = torch.device("cpu")


def run_both(q, k, v, p, dO):
    """(O, L, grads) of the mini-Flex, and the float64 ground truth and the same-dtype naive
    answer of the materialised reference."""
    qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
    O, L = mf.mini_flex_attention(qs, ks, vs, p, return_lse=True)
    O.backward(dO)
    got = [O, L, qs.grad, ks.grad, vs.grad]
    if p is not None and p.learnable:
        got.append(p.score_buffer.grad)
        p.score_buffer.grad = None

    def reference(dtype):
        tq, tk, tv = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        pd = p
        table = None
        if p is not None and p.learnable:
            table = p.score_buffer.detach().to(torch.float64 if dtype == torch.float64 else torch.float32)
            table.requires_grad_()
            pd = fp.relative_bias(table, causal=p.params["causal"])
        O, L = fp.reference_attention(tq, tk, tv, pd, return_lse=True)
        O.backward(dO.to(dtype))
        out = [O, L, tq.grad, tk.grad, tv.grad]
        if table is not None:
            out.append(table.grad)
        return out

    return got, reference(torch.float64), reference(q.dtype)


NAMES = ["O", "L", "dQ", "dK", "dV", "dtable"]


def assert_matches(label, got, want64, naive, dtype, factor=2.0):
    for name, g, w, n in zip(NAMES, got, want64, naive):
        tol = tolerance(w, n, dtype, factor=factor)
        finite = torch.isfinite(w)
        assert torch.equal(torch.isneginf(g), torch.isneginf(w)), f"{label}: {name} -inf pattern differs"
        err = (g.double() - w)[finite].abs().max().item() if finite.any() else 0.0
        assert err <= tol, f"{label}: {name} max error {err:.3g} > tolerance {tol:.3g}"


@pytest.mark.parametrize("N", [37, 64])
def test_every_pattern_forward_and_backward_under_the_interpreter(N):
    """37: ragged (N not a multiple of the 32-wide sparse blocks nor of the 16-wide tiles);
    64: every block whole (the EVEN path, no bounds checks)."""
    g = torch.Generator().manual_seed(N)
    B, H, d = 1, 2, 16
    for name, p in fp.example_patterns(N, H=H, learnable=True, seed=N).items():
        q, k, v, dO = (torch.randn(B, H, N, d, generator=g) for _ in range(4))
        got, want, naive = run_both(q, k, v, p, dO)
        assert got[0].shape == (B, H, N, d) and got[1].shape == (B, H, N) and got[1].dtype == torch.float32
        assert_matches(f"{name} N={N}", got, want, naive, torch.float32)


def test_queries_and_keys_of_different_lengths():
    g = torch.Generator().manual_seed(3)
    B, H, d = 2, 2, 16
    for Nq, Nk in ((20, 45), (45, 20)):
        for name, p in fp.example_patterns(max(Nq, Nk), H=H, names=("causal", "sliding_window", "alibi", "softcap")).items():
            q, dO = (torch.randn(B, H, Nq, d, generator=g) for _ in range(2))
            k, v = (torch.randn(B, H, Nk, d, generator=g) for _ in range(2))
            got, want, naive = run_both(q, k, v, p, dO)
            assert_matches(f"{name} ({Nq}, {Nk})", got, want, naive, torch.float32)


def test_fully_masked_rows_give_zero_and_minus_infinity():
    """Sliding window with Nq > Nk: queries past Nk + window see no key at all."""
    g = torch.Generator().manual_seed(4)
    p = fp.sliding_window(3)
    q, dO = (torch.randn(1, 2, 50, 16, generator=g) for _ in range(2))
    k, v = (torch.randn(1, 2, 20, 16, generator=g) for _ in range(2))
    got, want, naive = run_both(q, k, v, p, dO)
    assert torch.isneginf(got[1][..., 23:]).all() and (got[0][..., 23:, :] == 0).all()
    assert all(torch.isfinite(t).all() for t in got[2:])
    assert_matches("fully masked rows", got, want, naive, torch.float32)


def test_float16_and_head_dims_that_are_not_powers_of_two():
    g = torch.Generator().manual_seed(5)
    for dtype, d in ((torch.float16, 32), (torch.float32, 24)):
        p = fp.causal_sliding_window(9)
        q, k, v, dO = (torch.randn(2, 2, 40, d, generator=g).to(dtype) for _ in range(4))
        got, want, naive = run_both(q, k, v, p, dO)
        assert got[0].dtype == dtype and got[2].dtype == dtype
        assert_matches(f"{dtype} d={d}", got, want, naive, dtype)


def test_torch_block_mask_gives_the_same_answer():
    """torch's BlockMask (create_block_mask, any block size the tiles divide) drives the kernel
    exactly like the mini-Flex's own."""
    g = torch.Generator().manual_seed(6)
    N = 48
    p = fp.example_patterns(N, H=2, names=("document",), seed=2)["document"]
    q, k, v = (torch.randn(1, 2, N, 16, generator=g) for _ in range(3))
    ours = mf.mini_flex_attention(q, k, v, p)
    for block in (16, 32, 128):
        theirs = mf.mini_flex_attention(q, k, v, p, block_mask=p.block_mask(1, 2, N, N, "cpu", BLOCK_SIZE=block))
        assert torch.allclose(ours, theirs, atol=1e-6), block


def test_empty_blocks_are_never_read():
    """Poison (NaN) the keys and values of the last two 32-key blocks: query block 0 of a narrow
    sliding window lists only key blocks 0 and 1, so its output must be finite and right."""
    g = torch.Generator().manual_seed(7)
    N = 128
    p = fp.sliding_window(5)
    q, k, v = (torch.randn(1, 1, N, 16, generator=g) for _ in range(3))
    want = fp.reference_attention(q.double(), k.double(), v.double(), p)
    k[:, :, 64:] = float("nan")
    v[:, :, 64:] = float("nan")
    O = mf.mini_flex_attention(q, k, v, p)
    assert torch.isfinite(O[:, :, :32]).all()
    assert torch.allclose(O[:, :, :32].double(), want[:, :, :32], atol=1e-5)
    bm = mf.build_block_mask(p, 1, 1, N, N, (32, 32))
    assert bm.kv_num_blocks[0, 0, 0] + bm.full_kv_num_blocks[0, 0, 0] == 2


def test_mask_mod_is_skipped_on_full_blocks():
    """A block mask that (wrongly) calls every block full makes the kernel skip the mask_mod
    everywhere: the causal pattern then gives plain, unmasked attention. This is the full-block
    fast path at work."""
    g = torch.Generator().manual_seed(8)
    N = 64
    q, k, v = (torch.randn(1, 1, N, 16, generator=g) for _ in range(3))
    all_full = mf.block_mask_from_dense(torch.ones(1, 1, N, N, dtype=torch.bool), (32, 32))
    O = mf.mini_flex_attention(q, k, v, fp.causal(), block_mask=all_full)
    assert torch.allclose(O.double(), fp.reference_attention(q.double(), k.double(), v.double()), atol=1e-5)
    partial = mf.block_mask_from_dense(fp.causal().dense_mask(1, 1, N, N), (32, 32))
    O2 = mf.mini_flex_attention(q, k, v, fp.causal(), block_mask=partial)
    assert torch.allclose(O2.double(), fp.reference_attention(q.double(), k.double(), v.double(), fp.causal()), atol=1e-5)


def test_answer_does_not_depend_on_the_tiles():
    g = torch.Generator().manual_seed(9)
    p = fp.example_patterns(64, H=2, names=("global_local",))["global_local"]
    q, k, v = (torch.randn(1, 2, 64, 16, generator=g) for _ in range(3))
    a = mf.mini_flex_attention(q, k, v, p, config=mf.ForwardConfig(16, 16))
    b = mf.mini_flex_attention(q, k, v, p, config=mf.ForwardConfig(32, 32))
    assert torch.allclose(a, b, atol=1e-6)


def test_bad_inputs_are_rejected_with_clear_errors():
    q = torch.randn(1, 2, 32, 16)
    with pytest.raises(TypeError, match="pattern"):
        mf.mini_flex_attention(q, q, q, pattern="causal")
    with pytest.raises(TypeError, match="bfloat16"):
        mf.mini_flex_attention(q.bfloat16(), q.bfloat16(), q.bfloat16(), fp.causal())
    with pytest.raises(TypeError, match="dtype"):
        mf.mini_flex_attention(q.double(), q.double(), q.double(), fp.causal())
    with pytest.raises(ValueError, match="key head dim"):
        mf.mini_flex_attention(q, torch.randn(1, 2, 32, 8), torch.randn(1, 2, 32, 8))
    with pytest.raises(ValueError, match="length"):
        mf.mini_flex_attention(q, q, q, fp.document(torch.zeros(31, dtype=torch.int32)))
    with pytest.raises(ValueError, match="block_mask was built"):
        mf.mini_flex_attention(q, q, q, fp.causal(), block_mask=mf.build_block_mask(fp.causal(), 1, 2, 64, 64, 32))
    with pytest.raises(ValueError, match="BLOCK_M"):
        mf.mini_flex_attention(q, q, q, fp.causal(), config=mf.ForwardConfig(64, 16))
    with pytest.raises(ValueError, match="scale"):
        mf.mini_flex_attention(q, q, q, scale=-1.0)


# ------------------------------------------------------------------------------------------------
# GPU: against flex_attention itself
# ------------------------------------------------------------------------------------------------
def flex_run(q, k, v, p, dO, compiled):
    from torch.nn.attention.flex_attention import flex_attention

    if p.learnable:  # flex gets the same table, detached (its gradient is checked against the reference)
        p = fp.relative_bias(p.score_buffer.detach(), causal=p.params["causal"])
    # Eager flex_attention compiles its own wrapper too (backend "eager"), and dynamo's cache is
    # shared by every call: after several patterns and shapes it recompiles with dynamic shapes,
    # which torch 2.11 cannot trace for a score_mod holding a float (softcap). Start afresh each time.
    torch._dynamo.reset()
    fn = torch.compile(flex_attention, dynamic=False) if compiled else flex_attention
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    bm = p.block_mask(B, H, Nq, Nk, q.device) if p.has_mask else None
    qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
    O, L = fn(qs, ks, vs, score_mod=p.score_mod, block_mask=bm, return_lse=True)
    O.backward(dO)
    return [O, L, qs.grad, ks.grad, vs.grad], bm


def compare_with_flex(name, p, N, compiled_names, B=2, H=4, d=64, seed=0):
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(seed)
    q, k, v, dO = (torch.randn(B, H, N, d, device=dev, generator=g, dtype=torch.float16) for _ in range(4))
    got, want, naive = run_both(q, k, v, p, dO)
    for compiled in ((False, True) if name in compiled_names else (False,)):
        theirs, bm = flex_run(q, k, v, p, dO, compiled)
        for i, label in enumerate(NAMES[:5]):
            tol = tolerance(want[i], theirs[i], torch.float16, factor=2.0)
            finite = torch.isfinite(want[i])
            err = (got[i].double() - want[i])[finite].abs().max().item()
            assert err <= tol, f"{name} N={N} compiled={compiled}: {label} error {err:.3g} > {tol:.3g} (2x flex's)"
        if bm is not None:  # the same BlockMask object drives the mini-Flex to the same answer
            again = mf.mini_flex_attention(q, k, v, p, block_mask=bm)
            assert (again.float() - got[0].float()).abs().max().item() < 1e-2
    if p.learnable:
        tol = tolerance(want[5], naive[5], torch.float16)
        assert (got[5].double() - want[5]).abs().max().item() <= tol, f"{name}: dtable"


@pytest.mark.gpu
def test_gpu_every_pattern_matches_flex_attention():
    """fp16, forward and backward, N = 1000 (not a multiple of the 128-wide blocks), against
    FlexAttention (eager for every pattern, compiled for two): the mini-Flex's error against the
    float64 truth is at most twice FlexAttention's own."""
    N = 1000
    for name, p in fp.example_patterns(N, H=4, device="cuda", learnable=True, seed=N).items():
        compare_with_flex(name, p, N, ("causal", "softcap"), seed=len(name))


@pytest.mark.gpu
def test_gpu_whole_blocks_match_flex_attention():
    """N = 1024: every block whole, the kernels compiled without bounds checks."""
    N = 1024
    for name, p in fp.example_patterns(N, H=4, device="cuda", learnable=True, seed=N,
                                       names=("causal", "document", "relative_bias", "global_local")).items():
        compare_with_flex(name, p, N, (), seed=len(name))


@pytest.mark.gpu
def test_gpu_bfloat16_and_head_dim_128():
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(1)
    p = fp.causal()
    q, k, v, dO = (torch.randn(2, 4, 777, 128, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(4))
    got, want, naive = run_both(q, k, v, p, dO)
    assert_matches("bf16 d=128", got, want, naive, torch.bfloat16, factor=3.0)
    assert math.isfinite(float(got[0].float().sum()))


# ------------------------------------------------------------------------------------------------
# CPU, no GPU needed: every kernel compiles for the H100 (sm_90) and fits in its shared memory
# ------------------------------------------------------------------------------------------------
_SM90_SCRIPT = r'''
import json, os, sys
os.environ["TRITON_INTERPRET"] = "0"   # real compilation, not the interpreter
import dataclasses
import kernels  # noqa: F401
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import flex_patterns as fp, mini_flex as mf

def compile_sm90(fn, values, constexprs, num_warps, num_stages):
    """As the JIT specialises on a GPU: pointers aligned, ints equal to 1 folded, ints divisible
    by 16 hinted. Returns the shared memory the kernel needs, in bytes."""
    signature, attrs, constexprs = {}, {}, dict(constexprs)
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        v = values[name]
        if isinstance(v, int) and v == 1:
            constexprs[name], signature[name] = 1, "constexpr"
            continue
        signature[name] = v if isinstance(v, str) else ("fp32" if isinstance(v, float) else "i32")
        if isinstance(v, str) or (isinstance(v, int) and v % 16 == 0):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()}, attrs=attrs)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    return out.metadata.shared

def values(fn, d):
    out = {}
    for n in fn.arg_names:
        if n in ("L", "L2", "DELTA", "SBUF", "DSBUF"):
            out[n] = "*fp32"
        elif n in ("MBUF",) or n.endswith("_NUM") or n.endswith("_IDX"):
            out[n] = "*i32"
        elif n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV"):
            out[n] = "*fp16"
        elif n.startswith("stride"):
            out[n] = {"b": 16 * 4096 * d, "h": 4096 * d, "n": d, "d": 1, "m": d}[n[-1]]
        elif n in ("scale", "SF"):
            out[n] = 0.5
        else:
            out[n] = {"H": 16, "Nq": 4096, "Nk": 4096, "BM_B": 1, "BM_H": 1}.get(n, 32)
    return out

report = []
for name, p in fp.example_patterns(256, H=4).items():
    for d in (64, 128):
        _, f, b = mf.default_configs(d, True)
        if p.max_stages:
            f = dataclasses.replace(f, num_stages=min(f.num_stages, p.max_stages))
            b = dataclasses.replace(b, num_stages=min(b.num_stages, p.max_stages))
        mods = dict(MASK_MOD=p.tl_mask_mod or fp.tl_no_mask, SCORE_MOD=p.tl_score_mod or fp.tl_identity_score,
                    HEAD_DIM=d, BLOCK_D=d, SPARSE_Q=128, SPARSE_KV=128, RAGGED=False, DOT_PRECISION="tf32")
        k = mf._mini_flex_fwd_kernel
        report.append((name, d, "forward", compile_sm90(k, values(k, d), dict(mods, BLOCK_M=f.BLOCK_M, BLOCK_N=f.BLOCK_N),
                                                    f.num_warps, f.num_stages)))
        if d == 128:  # the backward's largest tiles
            mods["SCORE_GRAD"] = p.tl_score_grad or fp.tl_identity_grad
            k = mf._mini_flex_bwd_dkdv_kernel
            report.append((name, d, "dK/dV", compile_sm90(k, values(k, d), dict(mods, BLOCK_M1=b.BLOCK_M1, BLOCK_N1=b.BLOCK_N1),
                                                      b.num_warps, b.num_stages)))
            k = mf._mini_flex_bwd_dq_kernel
            report.append((name, d, "dQ", compile_sm90(k, values(k, d), dict(mods, BLOCK_M2=b.BLOCK_M2, BLOCK_N2=b.BLOCK_N2,
                                                   WRITE_DBUF=p.learnable or name == "relative_bias"), b.num_warps, b.num_stages)))
print("REPORT " + json.dumps(report))
'''


@pytest.mark.slow
def test_every_kernel_compiles_for_the_h100_and_fits_its_shared_memory(tmp_path):
    """Compile (no GPU needed) every pattern's forward kernel at d = 64 and 128 and its backward
    kernels at d = 128 for sm_90, specialised as the JIT would on the H100, with the default tiles:
    the shared memory each needs must fit the H100's 227 KiB per block. (The software pipeliner
    buffers every load of the inner loop once per stage: a per-pair gather, like the relative
    bias table, costs a whole B_r × B_c fp32 tile per stage; Pattern.max_stages caps that.)"""
    import subprocess
    import sys

    env = dict(__import__("os").environ, TRITON_INTERPRET="0")
    script = tmp_path / "sm90.py"
    script.write_text(_SM90_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    if not line:
        if "ptxas" in proc.stderr or "GPUTarget" in proc.stderr or "No module named 'triton.backends.nvidia'" in proc.stderr:
            pytest.skip(f"this triton cannot compile for sm_90 here: {proc.stderr[-300:]}")
        raise AssertionError(f"the compile script failed:\n{proc.stderr[-3000:]}")
    import json

    H100_SHARED = 232448  # bytes of shared memory one block may use on an H100 (227 KiB)
    report = json.loads(line[0][len("REPORT "):])
    assert len(report) == 10 * 2 + 10 * 2
    too_big = [r for r in report if r[3] > H100_SHARED]
    assert not too_big, f"kernels that need more shared memory than the H100 has: {too_big}"
