"""kernels.gluon_forward: the warp-specialised Gluon forward (Hopper).

On a CPU: the input checks, `usable` and flash_attention's choice of forward, and the kernel
compiled for sm_90 (no GPU needed): no spills, the producer/consumer partitions present, and the
spill check shown to fail on a tile that does spill. On the H100 (marked gpu): O and L against
float64 over a grid of lengths, head dims, causal and dtypes, and gradients through flash_attention.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import kernels
from kernels import reference
from kernels.grading.core import tolerance

pytestmark = pytest.mark.skipif(not kernels.device.HAS_TRITON, reason="triton is not installed on this platform")

try:
    from kernels import gluon_forward as gf
except ImportError as exc:  # a triton without Gluon's Hopper ops
    gf, _why = None, str(exc)
needs_gluon = pytest.mark.skipif(gf is None, reason="this triton has no Gluon Hopper ops")

if kernels.device.HAS_TRITON:
    from kernels import triton_backward as tb

DEV = kernels.device.default_device()
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _inputs(B, H, N, d, dtype, seed, device=DEV):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return tuple(torch.randn(B, H, N, d, generator=g).to(device, dtype) for _ in range(3))  # each (B, H, N, d)


# ------------------------------------------------------------------------------------------------ CPU
@needs_gluon
@pytest.mark.parametrize("make,error,match", [
    (lambda: _inputs(1, 2, 64, 64, torch.float32, 0, "cpu"), TypeError, "query must have dtype"),
    (lambda: _inputs(1, 2, 64, 96, torch.float16, 0, "cpu"), ValueError, "head dim d must be one of"),
    (lambda: (*_inputs(1, 2, 64, 64, torch.float16, 0, "cpu")[:1], *_inputs(1, 2, 32, 64, torch.float16, 1, "cpu")[:2]),
     ValueError, "N_q == N_k"),
    (lambda: tuple(t.transpose(1, 2).contiguous().transpose(1, 2) for t in _inputs(1, 2, 64, 64, torch.float16, 0, "cpu")),
     ValueError, "query must be contiguous"),
    (lambda: _inputs(1, 2, 64, 64, torch.float16, 0, "cpu"), ValueError, "CUDA GPU"),
])
def test_bad_inputs_are_named(make, error, match):
    with pytest.raises(error, match=match):
        gf.attention_forward_gluon(*make())


@needs_gluon
def test_bad_variant_and_flag_are_named():
    q, k, v = _inputs(1, 1, 16, 64, torch.float16, 0, "cpu")
    with pytest.raises(ValueError, match="variant must be one of"):
        gf.attention_forward_gluon(q, k, v, variant="pingpong")
    with pytest.raises(TypeError, match="is_causal must be a bool"):
        gf.attention_forward_gluon(q, k, v, is_causal=1)


@needs_gluon
@pytest.mark.parametrize("variant,config,match", [
    ("ws", dict(NUM_WG=1), "NUM_WG must be 2 or 3"),
    ("ws", dict(NUM_WG=3, PINGPONG=True), "PINGPONG takes turns between NUM_WG = 2"),
    ("overlap", dict(NUM_WG=3), "NUM_WG must be 1 or 2"),
    ("ws", dict(BLOCK_M=32), "BLOCK_M must be a power of two >= 64"),
    ("ws", dict(BLOCK_N=96), "BLOCK_N must be a power of two"),
    ("ws", dict(STAGES=0), "STAGES must be an int >= 1"),
    ("ws", dict(WARPS=8), "unknown keys"),
    ("overlap", dict(PINGPONG=True), "PINGPONG needs variant 'ws'"),
])
def test_bad_configs_are_named(variant, config, match):
    with pytest.raises(ValueError, match=match):
        gf.resolve_config(128, variant, config)
    assert gf.resolve_config(128, variant) == gf.CONFIGS[(128, variant)]


@needs_gluon
def test_usable_and_the_default_forward_on_cpu():
    """CPU tensors never suit the kernel, and flash_attention's "auto" keeps lesson 03's Triton kernel
    under the interpreter (whose O it returns, the reference's up to fp32 rounding)."""
    q, k, v = _inputs(1, 2, 40, 128, torch.float32, 3, "cpu")
    assert not gf.usable(q.half(), k.half(), v.half())
    assert not tb.gluon_by_default(q, k, v)
    O = tb.flash_attention(q, k, v, is_causal=True)
    assert torch.allclose(O, reference.attention(q, k, v, is_causal=True), atol=1e-5)
    with pytest.raises(ValueError, match="forward must be one of"):
        tb.flash_attention(q, k, v, forward="fast")
    with pytest.raises(TypeError, match="query must have dtype"):  # the Gluon kernel's own check
        tb.flash_attention(q, k, v, forward="gluon")


@needs_gluon
@pytest.mark.parametrize("variant,q_rows,warps", [("ws", 64, 4), ("overlap", 128, 8)])
def test_launch_grid_and_tma_boxes_on_cpu(monkeypatch, variant, q_rows, warps):
    """The host side of a launch, with the input check and the kernel stubbed out: one program per
    NUM_WG·B_r query rows and (batch, head), TMA boxes of one Q tile per consumer warpgroup ("ws") or
    per program ("overlap"), and the compile-time arguments launch_meta gives the offline compiler."""
    launches = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **meta: launches.append((grid, args, meta))

    monkeypatch.setattr(gf, "_check", lambda *args: None)
    monkeypatch.setattr(gf, "attention_forward_kernel", Kernel())
    q, k, v = _inputs(2, 3, 1000, 128, torch.float16, 5, "cpu")
    gf.attention_forward_gluon(q, k, v, is_causal=True, variant=variant)
    (grid, args, meta), = launches
    assert grid == (-(-1000 // 128), 2 * 3)
    assert [a.block_shape for a in args[:4]] == [[1, q_rows, 128], [1, 128, 128], [1, 128, 128], [1, q_rows, 128]]
    assert args[5] == 1000 and meta["num_warps"] == warps and meta["IS_CAUSAL"] and not meta["FENCE"]
    assert meta["ALIGN_END"]  # tiles end at row N: the ragged one is the first
    assert meta == gf.launch_meta(128, gf.CONFIGS[(128, variant)], variant, True)


def _has_cuobjdump() -> bool:
    import triton

    return (pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists()


#: The triton of the H100 image (3.6.0), which `make test` installs here (Makefile: TRITON_H100): the
#: offline compiles below then build exactly what ran on the GPU. Register allocation, and so spills,
#: differ between versions: triton 3.9's ptxas spills 88 bytes of scalars in the d = 64 tile that 3.6
#: compiles without any.
H100_TRITON = pathlib.Path(os.environ.get("KERNELS_H100_TRITON", ROOT / ".venv" / "triton-h100"))
H100_TRITON_VERSION = "3.6.0"  # the Makefile's TRITON_H100


def _compile(d, causal, config=None, fence=False, sets=()):
    """tools/gluon_forward_compile.py in a fresh process (the tests run triton in interpreter mode), with
    the H100 image's triton first on the path when it is installed."""
    args = [sys.executable, str(ROOT / "tools" / "gluon_forward_compile.py"), "--variants", "ws", "--dims", str(d),
            "--causal", str(int(causal)), "--json"] + (["--config", config] if config else []) + (["--fence"] if fence else [])
    args += [a for kv in sets for a in ("--set", kv)]  # other config entries, "KEY=INT"
    env = dict(os.environ)
    if _h100_triton_installed():
        env["PYTHONPATH"] = os.pathsep.join([str(H100_TRITON.resolve())] + [p for p in [env.get("PYTHONPATH")] if p])
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, out.stdout + out.stderr
    return json.loads(lines[0])


def _h100_triton_installed() -> bool:
    """Whether `make test` installed the H100 image's triton beside the project's (it skips that on a
    platform without a wheel for it)."""
    return (H100_TRITON / "triton").is_dir()


def _h100_triton() -> bool:
    """Whether _compile builds with the H100 image's triton: installed beside, or the one installed."""
    import triton

    return _h100_triton_installed() or triton.__version__ == H100_TRITON_VERSION


@needs_gluon
@pytest.mark.skipif(kernels.device.HAS_TRITON and not _has_cuobjdump(), reason="this triton wheel ships no cuobjdump")
@pytest.mark.parametrize("d,causal", [(64, False), (64, True), (128, True)])
def test_ws_kernel_compiles_for_sm90_without_spills(d, causal):
    """The tuned "ws" tiles compiled for the H100 offline: no stack (spills), a 1-warp producer and
    4-warp consumer partitions beside the default one, register reallocation (setmaxnreg) and wgmma."""
    if not _h100_triton():
        pytest.skip(f"needs the H100 image's triton {H100_TRITON_VERSION} (`make test` installs it in {H100_TRITON})")
    r = _compile(d, causal)
    assert r["triton"] == H100_TRITON_VERSION, r
    assert r["stack"] == 0, r
    # d = 64: three consumer warpgroups (the default partition and two 4-warp workers), d = 128: two
    assert r["ws"] == {64: "default+workers[1,4,4] warps", 128: "default+workers[1,4] warps"}[d], r
    assert r["hgmma"] > 0 and r["setmaxnreg"] > 0, r
    assert r["shared"] <= 227 * 1024, r


@needs_gluon
@pytest.mark.skipif(kernels.device.HAS_TRITON and not _has_cuobjdump(), reason="this triton wheel ships no cuobjdump")
def test_spill_check_rejects_a_tile_that_spills():
    """The check above can fail: 128 query rows per consumer warpgroup with 128-key tiles hold S_j,
    P_{j-1} and O at once (128 + 64 + 64 registers per thread and more) and spill."""
    r = _compile(64, False, "128,128,2")
    assert r["stack"] > 0, r


@needs_gluon
@pytest.mark.skipif(kernels.device.HAS_TRITON and not _has_cuobjdump(), reason="this triton wheel ships no cuobjdump")
def test_fence_keeps_the_softmax_between_the_two_waits():
    """What ptxas makes of the loop at d = 64 (two consumer warpgroups, the tile the fence was measured
    with: results/gluon_forward_fence_ab_h100.json): without the scheduling fence no exponential sits
    between the "one wgmma in flight" wait and the full wait (the intra-warpgroup overlap is lost); with
    it, every exponential of the step does (64 for P̃ plus 2 for α, per consumer loop body)."""
    two = tuple(f"{k}={v}" for k, v in gf.TWO_CONSUMERS.items())
    plain, fenced = _compile(64, False, sets=two), _compile(64, False, fence=True, sets=two)
    assert set(plain["overlap_ex2"].split("/")) == {"0"}, plain["overlap_ex2"]
    assert all(int(n) >= 64 for n in fenced["overlap_ex2"].split("/")), fenced["overlap_ex2"]
    assert fenced["stack"] == 0


# ------------------------------------------------------------------------------------------------ GPU
def _assert_matches(q, k, v, causal, O, L, factor=2.0):
    want_O, want_L = reference.ground_truth(q, k, v, is_causal=causal, return_lse=True)
    naive_O, naive_L = reference.attention(q, k, v, is_causal=causal, return_lse=True)
    assert O.dtype == q.dtype and O.shape == q.shape and L.dtype == torch.float32 and L.shape == q.shape[:3]
    for name, got, want, naive in (("O", O, want_O, naive_O), ("L", L, want_L, naive_L)):
        err, tol = float((got.double() - want).abs().max()), tolerance(want, naive, q.dtype, factor)
        assert err <= tol, f"{name}: max error {err:.3g} > tolerance {tol:.3g}"


#: the builds the GPU grid checks: name -> (variant, config on top of CONFIGS)
GPU_BUILDS = {
    "ws": ("ws", {}),
    "overlap": ("overlap", {}),
    "ws+fence": ("ws", dict(FENCE=True)),
    # turns are taken between two consumer warpgroups (d = 64 has three by default)
    "ws+pingpong": ("ws", dict(gf.TWO_CONSUMERS, PINGPONG=True) if gf else {}),
    "ws+from-row-0": ("ws", dict(ALIGN_END=False)),  # tiles counted from row 0: the ragged tile last
}


@pytest.mark.gpu
@needs_gluon
@pytest.mark.parametrize("build", list(GPU_BUILDS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("N", [1, 17, 128, 1000, 4096])
def test_matches_reference_gpu(N, d, causal, dtype, build):
    """Every length class: one row, shorter than a tile, one tile, ragged, many tiles (the ring wraps).
    With tiles counted back from row N (the default), a ragged N puts the first tile's rows below 0:
    six heads side by side show that those rows neither corrupt another head nor lose their own."""
    q, k, v = _inputs(2, 3, N, d, dtype, seed=N * 1000 + d)
    variant, config = GPU_BUILDS[build]
    O, L = gf.attention_forward_gluon(q, k, v, is_causal=causal, variant=variant, config=config)
    _assert_matches(q, k, v, causal, O, L)


@pytest.mark.gpu
@needs_gluon
def test_default_forward_and_gradients_gpu():
    """flash_attention runs the Gluon kernel on Hopper ("auto") at d = 64 and 128 (DEFAULT_HEAD_DIMS), the
    Triton kernel for strided inputs and other head dims; gradients through either forward match float64
    autograd."""
    q, k, v = _inputs(1, 4, 1000, 128, torch.float16, seed=128)
    assert gf.usable(q, k, v) and tb.gluon_by_default(q, k, v)
    assert not tb.gluon_by_default(*(t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)))  # strided
    assert tb.gluon_by_default(*_inputs(1, 4, 1000, 64, torch.float16, seed=64))
    assert not tb.gluon_by_default(*_inputs(1, 4, 1000, 32, torch.float16, seed=32))  # d = 32: Triton only
    q, k, v = (t.requires_grad_() for t in _inputs(1, 4, 1000, 128, torch.float16, seed=7))
    dO = torch.randn_like(q)
    up = lambda t: t.detach().double()
    want = reference.attention_backward(up(q), up(k), up(v), up(dO), is_causal=True)
    naive = reference.attention_backward(*(t.detach() for t in (q, k, v, dO)), is_causal=True)
    for forward in ("gluon", "auto"):
        O = tb.flash_attention(q, k, v, is_causal=True, forward=forward)
        grads = torch.autograd.grad(O, (q, k, v), dO)
        for name, g, w, n in zip(("dQ", "dK", "dV"), grads, want, naive):
            err, tol = float((g.double() - w).abs().max()), tolerance(w, n, q.dtype, 3.0)
            assert err <= tol, f"{forward} {name}: max error {err:.3g} > tolerance {tol:.3g}"
