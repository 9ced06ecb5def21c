"""The benchmark: how fast and how lean each attention implementation is, measured one way.

    python -m kernels.bench                 # the full sweep (GPU): minutes; writes JSON + PNG
    python -m kernels.bench --quick         # N = 1k, 2k, d = 64, fp16: a first look
    python -m kernels.bench --cpu-smoke     # tiny shapes, CPU providers: tests the tool itself
    python -m kernels.bench --roofline      # arithmetic intensity of each algorithm (no timing)
    python -m kernels.bench --list-providers

What it measures, for every provider (the course's Triton and CUDA kernels, torch SDPA's flash,
cuDNN and efficient backends, FlexAttention compiled, naive attention) and every shape:

* TFLOP/s, with the usual convention (FlashAttention's papers and benchmarks): the forward does
  two matmuls, S = QKᵀ and O = PV, so 4·B·H·N²·d FLOPs; causal halves it; the backward does
  five (S again, dV, dP, dQ, dK) so ×2.5; forward plus backward ×3.5. The FLOPs are those of
  the algorithm, not of the hardware: a kernel that computes masked blocks gets no credit.
* Peak memory: torch.cuda.max_memory_allocated during one call minus what was allocated just
  before it (the inputs: Q, K, V, and for the backward dO, O, L or the autograd graph).

How it measures, so that the numbers can be trusted:

* Correctness first. The very call whose output we keep is compared with float64 naive attention
  (kernels.reference), with the course's tolerance: a multiple of the error naive attention
  makes in the same dtype (kernels.grading.core.tolerance). When the float64 reference of the
  whole shape fits in memory it is checked whole (on the GPU that is the smallest N of the sweep:
  the "small shape"); otherwise on the first and last query rows of batch 0 (O for the forward,
  dQ for the backward: a row of O or dQ depends on its own query row only). A provider that
  fails is marked "wrong" and is not timed for that configuration again.
* Timing: triton.testing.do_bench (median, L2 flushed between calls, 100 ms of warm-up, then 400 ms
  of timed calls), or CUDA events, or time.perf_counter on the CPU. --smi-ms logs nvidia-smi beside
  the run and records the SM clock, power and temperature of every timed job. Inputs are fresh
  random normals (never zeros, never a fixed seed: the seed is recorded with each figure).

CPU numbers (--cpu-smoke, or automatically without CUDA) are NOT GPU numbers: they exist to
test this tool on a laptop or in CI, and every CPU output says so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib
import json
import math
import os
import platform
import sys
import time
from typing import Callable

import torch

from . import device as _device
from . import reference
from .clock_log import ClockLog

# ---------------------------------------------------------------------------------------------
# FLOPs and the roofline: pure arithmetic, no device needed
# ---------------------------------------------------------------------------------------------

DIRECTIONS = ("fwd", "bwd", "fwd+bwd")

#: FLOPs of each direction as a multiple of the forward's: the backward recomputes S and does
#: four more matmuls (dV = Pᵀ dO, dP = dO Vᵀ, dQ = dS K, dK = dSᵀ Q): 5 matmuls / 2 = 2.5.
DIRECTION_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def attention_flops(B: int, H: int, N: int, d: int, causal: bool = False, direction: str = "fwd") -> float:
    """FLOPs credited to one call: 4·B·H·N²·d for the forward (two N×N×d matmuls, 2 FLOPs per
    multiply-add), ×0.5 when causal, ×2.5 for the backward, ×3.5 for forward + backward."""
    if direction not in DIRECTION_FACTOR:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    for name, value in (("B", B), ("H", H), ("N", N), ("d", d)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    flops = 4.0 * B * H * N * N * d
    if causal:
        flops *= 0.5
    return flops * DIRECTION_FACTOR[direction]


def _keys_per_query_block(N: int, B_r: int, causal: bool) -> list[int]:
    """How many keys each of the T_r = ceil(N / B_r) query blocks reads (causal: up to its diagonal)."""
    T_r = math.ceil(N / B_r)
    return [min(N, (i + 1) * B_r) if causal else N for i in range(T_r)]


def _queries_per_key_block(N: int, B_c: int, causal: bool) -> list[int]:
    """How many query rows each of the T_c = ceil(N / B_c) key blocks meets (causal: from its diagonal down)."""
    T_c = math.ceil(N / B_c)
    return [N - j * B_c if causal else N for j in range(T_c)]


def hbm_bytes(
    algorithm: str,
    direction: str,
    N: int,
    d: int,
    *,
    B: int = 1,
    H: int = 1,
    causal: bool = False,
    elem_bytes: int = 2,
    B_r: int = 128,
    B_c: int = 128,
) -> int:
    """Bytes moved between HBM and the chip by one call, under a simple model (no L2 cache).

    algorithm:
      "naive"       three kernels per direction, every N×N matrix (S, P, dP, dS) written to HBM
                    and read back: Θ(Nd + N²) per head.
      "flash"       FlashAttention-2 tiling: forward parallel over query blocks of B_r rows, each
                    streaming every K/V block from HBM once (so K and V are read T_r times).
                    Backward as the course's Triton kernels do it, without atomics: D = rowsum(dO∘O);
                    one pass per key block of B_c (K_j, V_j once, streaming Q, dO, L, D); one pass
                    per query block (Q_i, dO_i once, streaming K, V). Θ(N²d / B) per head: an upper
                    bound, since the L2 cache serves K/V reads shared by blocks running at once.
      "compulsory"  every input read once and every output written once: the lower bound.
    L and D are fp32 (4 bytes); everything else `elem_bytes`.
    """
    if algorithm not in ("naive", "flash", "compulsory"):
        raise ValueError(f"algorithm must be 'naive', 'flash' or 'compulsory', got {algorithm!r}")
    if direction not in DIRECTION_FACTOR:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    s, f32 = elem_bytes, 4
    Nd, NN = N * d, N * N

    def forward() -> int:
        if algorithm == "compulsory":
            return s * 4 * Nd + f32 * N  # read Q, K, V; write O, L
        if algorithm == "naive":
            # S = QKᵀ: read Q, K, write S; P = softmax(S): read S, write P; O = PV: read P, V, write O
            return s * (2 * Nd + NN) + s * (2 * NN) + s * (NN + 2 * Nd)
        keys = _keys_per_query_block(N, B_r, causal)
        # each query block: read its Q rows once, read K and V for its keys, write O rows; L: fp32
        return s * (Nd + 2 * d * sum(keys) + Nd) + f32 * N

    def backward() -> int:
        if algorithm == "compulsory":
            return s * (4 * Nd) + f32 * N + s * 3 * Nd  # read Q, K, V, dO, L; write dQ, dK, dV
        if algorithm == "naive":
            # with P kept from the forward: dV = Pᵀ dO (read P, dO, write dV); dP = dO Vᵀ (read dO, V,
            # write dP); dS = P∘(dP − D) (read P, dP, write dS; D from dO and O); dQ = dS K; dK = dSᵀ Q
            return (
                s * (NN + 2 * Nd)
                + s * (2 * Nd + NN)
                + s * (3 * NN + 2 * Nd)
                + s * (NN + 2 * Nd)
                + s * (NN + 2 * Nd)
            )
        # FlashAttention-2's backward split into three kernels without atomics (the course's Triton
        # backward): D = rowsum(dO ∘ O); dK, dV per key block; dQ per query block.
        D_pass = s * 2 * Nd + f32 * N  # read O, dO; write D
        rows = _queries_per_key_block(N, B_c, causal)
        dkdv = s * 2 * Nd + sum(s * 2 * r * d + f32 * 2 * r for r in rows) + s * 2 * Nd  # K, V; Q, dO, L, D rows; dK, dV
        keys = _keys_per_query_block(N, B_c, causal)
        dq = s * 2 * Nd + f32 * 2 * N + sum(s * 2 * n * d for n in keys) + s * Nd  # Q, dO, L, D; K, V keys; dQ
        return D_pass + dkdv + dq

    per_head = {"fwd": forward, "bwd": backward, "fwd+bwd": lambda: forward() + backward()}[direction]()
    return B * H * per_head


def arithmetic_intensity(algorithm: str, direction: str, N: int, d: int, **kw) -> float:
    """FLOPs per HBM byte (the x axis of the roofline), with attention_flops' convention."""
    causal = kw.get("causal", False)
    B, H = kw.get("B", 1), kw.get("H", 1)
    return attention_flops(B, H, N, d, causal, direction) / hbm_bytes(algorithm, direction, N, d, **kw)


def roofline_table(Ns=(1024, 4096, 16384), ds=(64, 128), elem_bytes: int = 2, B_r: int = 128, B_c: int = 128) -> str:
    """A Markdown table of arithmetic intensity (FLOP/byte) per algorithm, direction, d, N.

    Compare each number with the ridge point, measured peak matmul FLOP/s ÷ measured HBM
    bandwidth: below it the kernel is memory bound, above it compute bound."""
    lines = [
        f"Arithmetic intensity, FLOP per HBM byte ({elem_bytes}-byte elements; flash: B_r = {B_r}, B_c = {B_c}, "
        "no L2 reuse). Non-causal / causal.",
        "",
        "| direction | d | N | naive | flash (tiled) | compulsory |",
        "|---|---|---|---|---|---|",
    ]
    for direction in DIRECTIONS:
        for d in ds:
            for N in Ns:
                cells = []
                for algorithm in ("naive", "flash", "compulsory"):
                    a = [
                        arithmetic_intensity(algorithm, direction, N, d, causal=c, elem_bytes=elem_bytes, B_r=B_r, B_c=B_c)
                        for c in (False, True)
                    ]
                    cells.append(f"{a[0]:.0f} / {a[1]:.0f}")
                lines.append(f"| {direction} | {d} | {N} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Providers: each implementation behind one small interface, imported lazily
# ---------------------------------------------------------------------------------------------


class Unsupported(Exception):
    """The provider does not offer this direction, dtype or shape (not an error of the kernel)."""


@dataclasses.dataclass
class Impl:
    """What a loaded provider can do. Each callable takes (q, k, v, causal, scale) first.

    forward:        -> O
    forward_lse:    -> (O, L), for providers whose backward takes O and L explicitly
    backward:       (q, k, v, O, L, dO, causal, scale) -> (dQ, dK, dV)
    differentiable: -> O with an autograd graph (backward through torch.autograd)
    context:        entered around everything the provider runs (SDPA's backend choice)
    memory_estimate(B, H, N, d, elem_bytes, direction) -> bytes, to skip a shape that cannot fit
    """

    forward: Callable | None = None
    forward_lse: Callable | None = None
    backward: Callable | None = None
    differentiable: Callable | None = None
    context: Callable = contextlib.nullcontext
    memory_estimate: Callable | None = None


@dataclasses.dataclass
class Provider:
    name: str
    description: str
    load: Callable[[], Impl]  # imports lazily; an exception means "unavailable" with its message
    needs_cuda: bool = False
    course: bool = False  # one of the course's own kernels (rather than a peer)


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _course_impl(forward: Callable, forward_name: str) -> Impl:
    """A course forward (q, k, v, *, is_causal, scale) -> (O, L) with lesson 04's Triton backward;
    forward_name is what kernels.triton_backward.flash_attention calls it."""
    impl = Impl(
        forward=lambda q, k, v, c, s: forward(q, k, v, is_causal=c, scale=s)[0],
        forward_lse=lambda q, k, v, c, s: forward(q, k, v, is_causal=c, scale=s),
    )
    try:
        bwd_mod = importlib.import_module("kernels.triton_backward")
    except ImportError as e:
        print(f"  {forward_name}: no backward ({e}); forward only", flush=True)
        return impl
    ab, fa = bwd_mod.attention_backward, bwd_mod.flash_attention
    impl.backward = lambda q, k, v, O, L, dO, c, s: ab(q, k, v, O, L, dO, is_causal=c, scale=s)
    impl.differentiable = lambda q, k, v, c, s: fa(q, k, v, is_causal=c, scale=s, forward=forward_name)
    return impl


def _load_triton() -> Impl:
    return _course_impl(importlib.import_module("kernels.triton_forward").attention_forward, "triton")


def _load_gluon() -> Impl:
    """kernels.gluon_forward's warp-specialised forward; the backward is the Triton one (same as "triton")."""
    return _course_impl(importlib.import_module("kernels.gluon_forward").attention_forward_gluon, "gluon")


def _cuda_loader(version: str) -> Callable[[], Impl]:
    def load() -> Impl:
        print(f"  cuda-{version}: loading kernels.cuda_kernels (builds the extension the first time) ...", flush=True)
        mod = importlib.import_module("kernels.cuda_kernels")
        fwd, bwd = mod.forward, getattr(mod, "backward", None)
        impl = Impl(
            forward=lambda q, k, v, c, s: _first(fwd(q, k, v, is_causal=c, scale=s, version=version)),
            forward_lse=lambda q, k, v, c, s: fwd(q, k, v, is_causal=c, scale=s, version=version),
        )
        if bwd is not None:
            # the backward is numbered v1 (scalar) and v2 (tensor cores); v3 is a forward-only tuning
            bwd_version = version if version in ("v1", "v2") else "v2"
            impl.backward = lambda q, k, v, O, L, dO, c, s: bwd(q, k, v, O, L, dO, is_causal=c, scale=s, version=bwd_version)
        return impl

    return load


def _sdpa_loader(backend_name: str) -> Callable[[], Impl]:
    def load() -> Impl:
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, backend_name)

        def sdpa(q, k, v, c, s):
            return F.scaled_dot_product_attention(q, k, v, is_causal=c, scale=s)

        est = None
        if backend_name == "MATH":  # materialises S and P like naive attention
            est = _naive_memory_estimate
        return Impl(forward=sdpa, differentiable=sdpa, context=lambda: sdpa_kernel(backend), memory_estimate=est)

    return load


_FLEX = {"compiled": None, "block_masks": {}}


def _raise_recompile_limits() -> None:
    """Each new shape recompiles flex_attention (dynamic=False); dynamo's default limit of 8
    recompiles would silently fall back to the slow eager path part-way through a sweep."""
    import torch._dynamo.config as dc

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        try:
            setattr(dc, name, max(int(getattr(dc, name)), 1024))
        except (AttributeError, TypeError):
            pass


def _load_flex() -> Impl:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if _FLEX["compiled"] is None:
        _raise_recompile_limits()
        _FLEX["compiled"] = torch.compile(flex_attention, dynamic=False)
    compiled = _FLEX["compiled"]

    def causal_mod(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    def flex(q, k, v, c, s):
        block_mask = None
        if c:
            key = (q.shape[2], k.shape[2], str(q.device))
            if key not in _FLEX["block_masks"]:  # built once per N, outside the timed call
                _FLEX["block_masks"][key] = create_block_mask(
                    causal_mod, B=None, H=None, Q_LEN=q.shape[2], KV_LEN=k.shape[2], device=q.device
                )
            block_mask = _FLEX["block_masks"][key]
        return compiled(q, k, v, block_mask=block_mask, scale=s)

    return Impl(forward=flex, differentiable=flex)


def _naive_memory_estimate(B, H, N, d, elem_bytes, direction) -> int:
    """Naive attention keeps several N×N matrices alive: about 5 in the forward (S, the masked
    S, E, P and a temporary), about 10 with the autograd graph and the gradients."""
    per = B * H * N * N * elem_bytes
    return (5 if direction == "fwd" else 10) * per


def _load_naive() -> Impl:
    def naive(q, k, v, c, s):
        return reference.attention(q, k, v, is_causal=c, scale=s)

    return Impl(forward=naive, differentiable=naive, memory_estimate=_naive_memory_estimate)


def _load_tiled() -> Impl:
    mod = importlib.import_module("kernels.tiled")
    fa2 = mod.forward_fa2
    impl = Impl(
        forward=lambda q, k, v, c, s: _first(fa2(q, k, v, is_causal=c, scale=s)),
        forward_lse=lambda q, k, v, c, s: fa2(q, k, v, is_causal=c, scale=s),
    )
    for name in ("backward_fa2", "backward"):  # a tiled backward, if the module has one
        if callable(getattr(mod, name, None)):
            bw = getattr(mod, name)
            impl.backward = lambda q, k, v, O, L, dO, c, s, bw=bw: bw(q, k, v, O, L, dO, is_causal=c, scale=s)
            break
    return impl


#: Every provider the tool knows, in the order tables and plots list them.
PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in [
        Provider("triton", "course Triton kernels (kernels.triton_forward / triton_backward)", _load_triton, course=True),
        Provider("gluon", "course Gluon forward, warp-specialised (kernels.gluon_forward; Hopper, d 64/128) + Triton backward",
                 _load_gluon, True, True),
        Provider("cuda-v1", "course CUDA C++ v1 (kernels.cuda_kernels, version='v1')", _cuda_loader("v1"), True, True),
        Provider("cuda-v2", "course CUDA C++ v2 (tensor cores)", _cuda_loader("v2"), True, True),
        Provider("cuda-v3", "course CUDA C++ v3", _cuda_loader("v3"), True, True),
        Provider("sdpa-flash", "torch SDPA, FLASH_ATTENTION backend (FlashAttention-2)", _sdpa_loader("FLASH_ATTENTION"), True),
        Provider("sdpa-cudnn", "torch SDPA, CUDNN_ATTENTION backend", _sdpa_loader("CUDNN_ATTENTION"), True),
        Provider("sdpa-efficient", "torch SDPA, EFFICIENT_ATTENTION backend (memory-efficient)", _sdpa_loader("EFFICIENT_ATTENTION"), True),
        Provider("sdpa-math", "torch SDPA, MATH backend (composite ops)", _sdpa_loader("MATH")),
        Provider("flex", "FlexAttention, torch.compile'd (causal through a block mask)", _load_flex),
        Provider("naive", "kernels.reference.attention: S and P in full", _load_naive),
        Provider("tiled", "kernels.tiled.forward_fa2: the tiled algorithm in PyTorch (CPU path)", _load_tiled, course=True),
    ]
}

GPU_DEFAULT = ["triton", "gluon", "cuda-v1", "cuda-v2", "cuda-v3", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "flex", "naive"]
CPU_DEFAULT = ["naive", "tiled", "sdpa-math"]
GPU_BASELINES = ["sdpa-flash", "flex"]
CPU_BASELINES = ["sdpa-math"]


# ---------------------------------------------------------------------------------------------
# One call of one direction, ready to check, measure and time
# ---------------------------------------------------------------------------------------------


def make_call(impl: Impl, direction: str, q, k, v, dO, causal: bool, scale) -> Callable[[], object]:
    """A zero-argument callable doing exactly what is timed: the forward returns O; the backward
    and forward+backward return (dQ, dK, dV). Setup (the forward whose graph or O, L the
    backward needs) happens here, outside the timed call."""
    if direction == "fwd":
        if impl.forward is not None:
            f = impl.forward
            return lambda: f(q, k, v, causal, scale)
        if impl.forward_lse is not None:
            return lambda: impl.forward_lse(q, k, v, causal, scale)[0]
        raise Unsupported("no forward")
    if direction == "bwd":
        if impl.backward is not None and impl.forward_lse is not None:
            O, L = impl.forward_lse(q, k, v, causal, scale)
            return lambda: impl.backward(q, k, v, O, L, dO, causal, scale)
        if impl.differentiable is not None:
            qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
            O = impl.differentiable(qg, kg, vg, causal, scale)
            return lambda: torch.autograd.grad(O, (qg, kg, vg), dO, retain_graph=True)
        raise Unsupported("no backward")
    if direction == "fwd+bwd":
        if impl.differentiable is not None:
            qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
            return lambda: torch.autograd.grad(impl.differentiable(qg, kg, vg, causal, scale), (qg, kg, vg), dO)
        if impl.backward is not None and impl.forward_lse is not None:

            def both():
                O, L = impl.forward_lse(q, k, v, causal, scale)
                return impl.backward(q, k, v, O, L, dO, causal, scale)

            return both
        raise Unsupported("no backward")
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


# ---------------------------------------------------------------------------------------------
# The correctness gate
# ---------------------------------------------------------------------------------------------


def _row_mask(rows: torch.Tensor, N: int, causal: bool):
    """(R, N) boolean mask for the chosen query rows (causal: key j <= query row i), or None."""
    if not causal:
        return None
    return torch.arange(N, device=rows.device)[None, :] <= rows[:, None]


def check_rows(N: int, R: int, device) -> torch.Tensor:
    """The query rows the gate checks on a large shape: the first R and the last R (in causal
    attention the first rows see few keys and the last rows see them all)."""
    if 2 * R >= N:
        return torch.arange(N, device=device)
    return torch.cat([torch.arange(R, device=device), torch.arange(N - R, N, device=device)])


def check_bytes(kind: str, direction: str, B: int, H: int, N: int, R: int, elem_bytes: int) -> int:
    """Memory the float64 reference of a check needs (a rough upper bound: about 10 N×N or
    rows×N matrices with the autograd graph, plus the same-dtype naive run)."""
    per = (B * H * N * N) if kind == "full" else (H * min(N, 2 * R) * N)
    mats = 4 if direction == "fwd" else 10
    return mats * per * (8 + elem_bytes)


def check_call(direction: str, out, q, k, v, dO, causal: bool, scale, *, rows=None, tol_factor: float = 3.0) -> str:
    """Compare one call's output with float64 naive attention; raise CaseFailure if it is wrong.

    rows None: the whole output (O, or dQ, dK, dV). rows a 1-D tensor: those query rows of batch
    0 (O, or dQ). The tolerance is tol_factor × the error naive attention makes in the inputs'
    dtype, plus a few ulps (kernels.grading.core.tolerance). Returns a one-line summary."""
    from .grading.core import CaseFailure, assert_close, tolerance

    dtype = q.dtype
    kw = {"scale": scale}
    if rows is None:
        kw["is_causal"] = causal
        qs, ks, vs, dOs = q, k, v, dO
    else:
        qs, ks, vs, dOs = q[:1, :, rows], k[:1], v[:1], dO[:1, :, rows]  # (1, H, R, d), (1, H, N, d)
        mask = _row_mask(rows, q.shape[2], causal)
        if mask is not None:
            kw["attn_mask"] = mask
    where = "all rows" if rows is None else f"rows {rows.numel()} of batch 0"

    if direction == "fwd":
        got = out if rows is None else out[:1, :, rows]
        want64 = reference.ground_truth(qs, ks, vs, **kw)
        naive = reference.attention(qs, ks, vs, **kw)
        tol = tolerance(want64, naive, dtype, factor=tol_factor)
        assert_close("O", got, want64, tol, expect_dtype=dtype)
        return f"O ok on {where} (tol {tol:.2g})"

    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise CaseFailure(f"the backward should return (dQ, dK, dV), got {type(out).__name__}")
    up = lambda t: t.detach().to(torch.float64)
    want64 = reference.attention_backward(up(qs), up(ks), up(vs), up(dOs), **kw)
    naive = reference.attention_backward(qs, ks, vs, dOs, **kw)
    names = ("dQ", "dK", "dV") if rows is None else ("dQ",)  # a row of dQ depends on its own row only
    worst = 0.0
    for i, name in enumerate(names):
        got = out[i] if rows is None else out[i][:1, :, rows]
        tol = tolerance(want64[i], naive[i], dtype, factor=tol_factor)
        assert_close(name, got, want64[i], tol, expect_dtype=dtype)
        worst = max(worst, tol)
    return f"{', '.join(names)} ok on {where} (tol <= {worst:.2g})"


# ---------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_ms(fn: Callable, dev: torch.device, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median milliseconds per call of fn. CUDA: triton.testing.do_bench (flushes L2 between
    calls), or CUDA events if triton is missing. CPU: time.perf_counter."""
    if dev.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            do_bench = None
        if do_bench is not None:
            try:
                return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
            except TypeError:  # an older triton without return_mode
                return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5]))
        return _events_ms(fn, dev, warmup_ms, rep_ms)
    fn()  # warm-up: first calls allocate and dispatch lazily
    fn()
    times, spent = [], 0.0
    while len(times) < 5 or (spent < rep_ms / 1e3 and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt * 1e3)
        spent += dt
    return sorted(times)[len(times) // 2]


def _events_ms(fn, dev, warmup_ms, rep_ms) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize(dev)
    estimate = max(start.elapsed_time(end), 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    times = []
    for _ in range(max(3, int(rep_ms / estimate))):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(dev)
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def peak_bytes(fn: Callable, dev: torch.device) -> int | None:
    """Peak bytes allocated during one call, beyond what was allocated just before it (the
    inputs). None on the CPU, where torch keeps no such counter."""
    if dev.type != "cuda":
        return None
    _sync(dev)
    before = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    out = fn()
    _sync(dev)
    peak = torch.cuda.max_memory_allocated(dev) - before
    del out
    return int(peak)


def _free_bytes(dev: torch.device) -> int:
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    return 2 * 1024**3  # the CPU smoke mode stays tiny; this only bounds the reference checks


def _release(dev: torch.device) -> None:
    """Return freed memory to the device: between shapes and after an out-of-memory error only
    (gc.collect takes a quarter of a second with torch loaded; references drop by themselves)."""
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}


@dataclasses.dataclass
class Config:
    providers: list[str]
    Ns: list[int]
    ds: list[int]
    causals: list[bool]
    directions: list[str]
    dtypes: list[str]
    batch: int = 4
    heads: dict | int | None = None  # int, {d: H}, or None for H = 2048 // d (32 at d=64, 16 at d=128)
    memory_Ns: list[int] = dataclasses.field(default_factory=list)
    memory_batch: int = 1
    out: str = "benchmarks/results"
    name: str = "bench"
    device: str = "cuda"
    check_rows: int = 64
    tol_factor: float = 3.0
    # 100 ms of warm-up, 400 ms of timed calls: the H100's clock moves on a ~100 ms scale under its power
    # cap, and a 100 ms window could land in one dip (benchmarks/PERFORMANCE.md, section 6)
    warmup_ms: float = 100.0
    rep_ms: float = 400.0
    baselines: list[str] = dataclasses.field(default_factory=lambda: list(GPU_BASELINES))
    plots: bool = True
    max_call_ms: float = 300.0  # a configuration slower than this per call is not timed at larger N
    ceilings: bool = False
    smoke: bool = False
    smi_ms: int = 0  # > 0: log nvidia-smi every smi_ms ms and record each job's clock, power, temperature

    def H(self, d: int) -> int:
        if isinstance(self.heads, int):
            return self.heads
        if isinstance(self.heads, dict) and d in self.heads:
            return self.heads[d]
        return max(1, 2048 // d)


def environment(dev: torch.device) -> dict:
    """Device, versions and date: recorded with every run."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": None,
        "cudnn": None,
        "host": platform.node(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info["device"] = {
            "type": "cuda",
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "multiprocessors": p.multi_processor_count,
            "total_memory_bytes": int(p.total_memory),
        }
        try:
            info["cudnn"] = torch.backends.cudnn.version()
        except Exception:
            pass
    else:
        info["device"] = {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    return info


CPU_WARNING = "CPU numbers are NOT GPU numbers: this CPU smoke run only tests the benchmark tool."


class Bench:
    """Runs a Config: loads providers, walks the shapes, records every figure, writes JSON as it goes."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.dev = torch.device(cfg.device)
        self.results: list[dict] = []
        self.checks: list[dict] = []
        self.providers: dict[str, dict] = {}
        self.impls: dict[str, Impl] = {}
        self.failed: dict[tuple, str] = {}  # (provider, dtype, d, causal, direction) -> why it is not timed
        self.small_checked: set = set()  # configurations whose whole-output ("small shape") check passed
        self.env = environment(self.dev)
        self.ceilings: dict | None = None
        self.count, self.total = 0, 0
        self.t0 = time.time()

    # -- providers -----------------------------------------------------------------------------
    def load_providers(self) -> None:
        for name in self.cfg.providers:
            if name not in PROVIDERS:
                self.providers[name] = {"available": False, "reason": f"unknown provider (known: {', '.join(PROVIDERS)})"}
                print(f"provider {name}: UNKNOWN, skipped", flush=True)
                continue
            p = PROVIDERS[name]
            entry = {"description": p.description, "course": p.course}
            if p.needs_cuda and self.dev.type != "cuda":
                entry.update(available=False, reason="needs a CUDA GPU")
            else:
                t = time.time()
                try:
                    self.impls[name] = p.load()
                    entry.update(available=True, load_s=round(time.time() - t, 2))
                except Exception as e:  # missing module, failed build: reported, never fatal
                    entry.update(available=False, reason=_one_line(e))
            self.providers[name] = entry
            state = "ok" if entry["available"] else f"UNAVAILABLE ({entry['reason']})"
            print(f"provider {name:15s} {state}", flush=True)

    # -- one measurement -----------------------------------------------------------------------
    def measure(self, sweep, name, dtype_name, d, causal, direction, B, H, N, q, k, v, dO, seed) -> dict:
        cfg, dev = self.cfg, self.dev
        impl = self.impls[name]
        elem = q.element_size()
        rec = dict(
            sweep=sweep, provider=name, dtype=dtype_name, direction=direction, causal=causal, B=B, H=H, N=N, d=d,
            seed=seed, flops=attention_flops(B, H, N, d, causal, direction),
            status=None, ms=None, tflops=None, peak_bytes=None, check=None, message="",
        )
        key = (name, dtype_name, d, causal, direction)
        if key in self.failed:
            rec.update(status="skipped", message=self.failed[key])
            return rec
        if impl.memory_estimate is not None:
            need = impl.memory_estimate(B, H, N, d, elem, direction)
            free = _free_bytes(dev)
            if need > 0.9 * free:
                rec.update(status="skipped", message=f"would need about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
                return rec
        fn = out = None
        try:
            with impl.context():
                try:
                    fn = make_call(impl, direction, q, k, v, dO, causal, None)
                    out = fn()  # the first call: compiles, warms up, and is the output we check
                    _sync(dev)
                except Unsupported as e:
                    rec.update(status="unsupported", message=str(e))
                    return rec
                except (NotImplementedError, ValueError, TypeError) as e:
                    # the provider's input checks refuse this dtype, head dim or version
                    rec.update(status="unsupported", message=_one_line(e))
                    return rec
                except RuntimeError as e:
                    if "No available kernel" not in str(e):  # SDPA: this backend cannot take the shape
                        raise
                    rec.update(status="unsupported", message=_one_line(e))
                    return rec
                # correctness gate: whole output when the float64 reference fits, else rows
                budget = min(16 * 2**30, 0.5 * _free_bytes(dev))
                kind = "full" if check_bytes("full", direction, B, H, N, cfg.check_rows, elem) <= budget else "rows"
                if kind == "rows" and check_bytes("rows", direction, B, H, N, cfg.check_rows, elem) > budget:
                    kind = None
                if kind == "rows" and key not in self.small_checked:
                    # never checked whole yet: check on a small shape first
                    self.small_check(impl, key, d, causal, direction, q.dtype)
                if kind is None:
                    rec["check"] = "not checked at this shape (the float64 reference does not fit)"
                else:
                    rows = None if kind == "full" else check_rows(N, cfg.check_rows, dev)
                    try:
                        rec["check"] = check_call(direction, out, q, k, v, dO, causal, None, rows=rows, tol_factor=cfg.tol_factor)
                    except AssertionError as e:
                        raise _Wrong(str(e)) from None
                    except Exception as e:  # the reference itself ran out of memory: not the provider's fault
                        if not _is_oom(e):
                            raise
                        rec["check"] = "not checked at this shape (the float64 reference ran out of memory)"
                        kind = None
                    if kind == "full":
                        self.small_checked.add(key)
                del out
                out = None
                rec["peak_bytes"] = peak_bytes(fn, dev)
                t_start = time.time()
                rec["ms"] = time_ms(fn, dev, cfg.warmup_ms, cfg.rep_ms)
                rec["timed_s"] = [round(t_start, 3), round(time.time(), 3)]  # wall clock, for the clock log
                rec["tflops"] = rec["flops"] / (rec["ms"] * 1e-3) / 1e12
                rec["status"] = "ok"
                if cfg.max_call_ms and rec["ms"] > cfg.max_call_ms and sweep == "speed":
                    # larger N only gets slower: spare the sweep (do_bench runs a call 5+ times)
                    self.failed[key] = f"not timed: {rec['ms']:.0f} ms per call at N={N} (over --max-call-ms {cfg.max_call_ms:g})"
        except _Wrong as e:
            msg = str(e)
            rec.update(status="wrong", message=msg)
            self.failed[key] = f"not timed: failed the correctness gate at N={N}"
            self.checks.append(dict(provider=name, dtype=dtype_name, d=d, causal=causal, direction=direction, N=N, ok=False, message=msg))
        except Exception as e:
            if _is_oom(e):
                rec.update(status="oom", message="out of memory")
            else:
                rec.update(status="error", message=_one_line(e))
        finally:
            fn = out = None
        if rec["status"] == "oom":
            _release(dev)  # after the except block: its traceback no longer holds the tensors
        if rec["status"] == "ok":
            self.checks.append(dict(provider=name, dtype=dtype_name, d=d, causal=causal, direction=direction, N=N, ok=True, message=rec["check"]))
        return rec

    def small_check(self, impl, key, d, causal, direction, dtype) -> None:
        """Whole-output check on (B, H, N) = (1, 2, 256) for a configuration first met at a shape
        too large to check whole. Raises _Wrong if it fails."""
        g = torch.Generator(device=self.dev)
        seed = int.from_bytes(os.urandom(4), "little")
        g.manual_seed(seed)
        q, k, v, dO = (torch.randn(1, 2, 256, d, generator=g, device=self.dev, dtype=dtype) for _ in range(4))  # (1, 2, 256, d)
        fn = make_call(impl, direction, q, k, v, dO, causal, None)
        try:
            check_call(direction, fn(), q, k, v, dO, causal, None, tol_factor=self.cfg.tol_factor)
        except AssertionError as e:
            raise _Wrong(f"small shape (1, 2, 256, {d}), seed {seed}: {e}") from None
        self.small_checked.add(key)

    # -- the loops -----------------------------------------------------------------------------
    def plan(self) -> list[tuple]:
        cfg = self.cfg
        jobs = []
        names = [n for n in cfg.providers if n in self.impls]
        for dtype_name in cfg.dtypes:
            for d in cfg.ds:
                for N in cfg.Ns:
                    for causal in cfg.causals:
                        for name in names:
                            for direction in cfg.directions:
                                jobs.append(("speed", dtype_name, d, N, causal, name, direction))
                mem_dirs = [x for x in cfg.directions if x in ("fwd", "fwd+bwd")]
                for N in cfg.memory_Ns:
                    for name in names:
                        for direction in mem_dirs:
                            jobs.append(("memory", dtype_name, d, N, False, name, direction))
        return jobs

    def run(self) -> dict:
        cfg = self.cfg
        print(f"kernels.bench: {self.env['device']['name']} ({self.dev.type}); torch {self.env['torch']}, "
              f"triton {self.env['triton']}, CUDA {self.env['cuda']}", flush=True)
        if self.dev.type != "cuda":
            print(f"*** {CPU_WARNING} ***", flush=True)
        if cfg.ceilings:
            self.ceilings = measure_ceilings(self.dev)
        self.load_providers()
        clocks = None
        if cfg.smi_ms and self.dev.type == "cuda":
            os.makedirs(cfg.out, exist_ok=True)
            clocks = ClockLog(os.path.join(cfg.out, f"{cfg.name}_smi.csv"), cfg.smi_ms)
            print(f"clock log: {clocks.path}" if clocks.running else "clock log: no nvidia-smi, not logged", flush=True)
        jobs = self.plan()
        self.total = len(jobs)
        try:
            self._run_jobs(jobs)
        finally:  # nvidia-smi must not outlive the run, also when a job raises or the run is interrupted
            if clocks is not None:
                clocks.stop()
        if clocks is not None and clocks.running:
            for rec in self.results:
                if rec.get("timed_s"):
                    rec["gpu"] = clocks.summary(*rec["timed_s"])
        data = self.write_json(complete=True)
        print()
        print(format_table(self.results, self.cfg.baselines, self.providers_order()))
        if self.dev.type != "cuda":
            print(f"\n*** {CPU_WARNING} ***")
        if cfg.plots:
            try:
                for path in write_plots(data, cfg.out, cfg.name):
                    print(f"plot: {path}")
            except Exception as e:  # e.g. no matplotlib on the GPU machine: the JSON is what matters
                print(f"plots not written ({_one_line(e)}); make them later with --report {self.json_path()}")
        print(f"json: {self.json_path()}")
        return data

    def _run_jobs(self, jobs: list[tuple]) -> None:
        """Every planned measurement in order, one set of inputs per shape, the JSON rewritten after each."""
        cfg = self.cfg
        inputs_key, inputs = None, None
        for sweep, dtype_name, d, N, causal, name, direction in jobs:
            B = cfg.batch if sweep == "speed" else cfg.memory_batch
            H = cfg.H(d)
            if inputs_key != (sweep, dtype_name, d, N):
                inputs = None
                _release(self.dev)
                seed = int.from_bytes(os.urandom(4), "little")  # fresh inputs for every shape
                g = torch.Generator(device=self.dev)
                g.manual_seed(seed)
                dtype = DTYPES[dtype_name]
                try:
                    inputs = [torch.randn(B, H, N, d, generator=g, device=self.dev, dtype=dtype) for _ in range(4)]  # q, k, v, dO: (B, H, N, d)
                except Exception as e:
                    if not _is_oom(e):
                        raise
                    inputs = None
                inputs_key = (sweep, dtype_name, d, N)
            self.count += 1
            if inputs is None:
                rec = dict(sweep=sweep, provider=name, dtype=dtype_name, direction=direction, causal=causal, B=B, H=H,
                           N=N, d=d, seed=seed, flops=attention_flops(B, H, N, d, causal, direction), status="oom",
                           ms=None, tflops=None, peak_bytes=None, check=None, message="inputs do not fit")
            else:
                q, k, v, dO = inputs
                rec = self.measure(sweep, name, dtype_name, d, causal, direction, B, H, N, q, k, v, dO, seed)
            self.results.append(rec)
            print(self.progress_line(rec), flush=True)
            self.write_json(complete=False)
        inputs = None
        _release(self.dev)

    def providers_order(self) -> list[str]:
        return [n for n in PROVIDERS if n in self.cfg.providers] + [n for n in self.cfg.providers if n not in PROVIDERS]

    def progress_line(self, r: dict) -> str:
        head = (f"[{self.count:>4}/{self.total}] {r['sweep']:6s} {r['dtype']} d={r['d']:<3} "
                f"{'causal' if r['causal'] else 'non-causal':10s} {r['direction']:7s} B={r['B']} H={r['H']} N={r['N']:<6} {r['provider']:15s}")
        if r["status"] == "ok":
            mem = "" if r["peak_bytes"] is None else f"  peak +{_fmt_bytes(r['peak_bytes'])}"
            tf = f"{r['tflops']:8.1f}" if r["tflops"] >= 1 else f"{r['tflops']:8.3g}"
            return f"{head} {r['ms']:9.3f} ms {tf} TFLOP/s{mem}  [{r['check']}]"
        return f"{head} {r['status'].upper()}: {r['message']}"

    def json_path(self) -> str:
        return os.path.join(self.cfg.out, f"{self.cfg.name}.json")

    def write_json(self, complete: bool) -> dict:
        cfg = self.cfg
        data = {
            "tool": "kernels.bench",
            "schema": 1,
            "complete": complete,
            "smoke": cfg.smoke,
            "note": CPU_WARNING if self.dev.type != "cuda" else (
                "smoke run: small shapes to test the tool, not the benchmark result" if cfg.smoke else ""),
            **self.env,
            "argv": sys.argv[1:],
            "elapsed_s": round(time.time() - self.t0, 1),
            "conventions": {
                "flops": "4*B*H*N^2*d forward; x0.5 causal; x2.5 backward; x3.5 forward+backward",
                "tflops": "flops / median time",
                "peak_bytes": "torch.cuda.max_memory_allocated during one call minus memory allocated just before it",
                "check": "output vs float64 naive attention, tolerance = tol_factor x same-dtype naive error + ulps",
            },
            "config": {k: v for k, v in dataclasses.asdict(cfg).items()} | {"heads_by_d": {str(d): cfg.H(d) for d in cfg.ds}},
            "ceilings": self.ceilings,
            "providers": self.providers,
            "checks": self.checks,
            "results": self.results,
            "ratios": ratios(self.results, cfg.baselines),
        }
        os.makedirs(cfg.out, exist_ok=True)
        tmp = self.json_path() + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(tmp, self.json_path())
        return data


def _one_line(e: BaseException, limit: int = 400) -> str:
    """An exception as one line: its type, first line and (for long compiler errors) last line."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    text = " ... ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else (lines[0] if lines else "")
    return f"{type(e).__name__}: {text}"[:limit]


class _Wrong(Exception):
    """A provider's output failed the correctness gate."""


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------------------------
# The two ceilings of the roofline: measured, never assumed
# ---------------------------------------------------------------------------------------------


def measure_ceilings(dev: torch.device) -> dict | None:
    """HBM copy bandwidth (bytes read + written per second by a 1 GiB device-to-device copy)
    and dense matmul TFLOP/s (8192³, fp16 and bf16). The roofline's two lines."""
    if dev.type != "cuda":
        print("ceilings: skipped (no CUDA device)", flush=True)
        return None
    out = {}
    x = torch.empty(2**29, dtype=torch.float16, device=dev).normal_()  # 1 GiB
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), dev)
    out["copy_bytes"] = 2 * x.numel() * x.element_size()
    out["copy_GBps"] = out["copy_bytes"] / (ms * 1e-3) / 1e9
    del x, y
    n = 8192
    out["matmul_n"] = n
    for name in ("fp16", "bf16"):
        a = torch.randn(n, n, device=dev, dtype=DTYPES[name])
        b = torch.randn(n, n, device=dev, dtype=DTYPES[name])
        ms = time_ms(lambda: a @ b, dev)
        out[f"matmul_tflops_{name}"] = 2 * n**3 / (ms * 1e-3) / 1e12
        del a, b
    _release(dev)
    out["ridge_flop_per_byte_fp16"] = out["matmul_tflops_fp16"] * 1e12 / (out["copy_GBps"] * 1e9)
    print(f"ceilings: copy {out['copy_GBps']:.0f} GB/s; matmul fp16 {out['matmul_tflops_fp16']:.0f} TFLOP/s, "
          f"bf16 {out['matmul_tflops_bf16']:.0f} TFLOP/s; ridge {out['ridge_flop_per_byte_fp16']:.0f} FLOP/byte", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# Reports: table, ratios, plots
# ---------------------------------------------------------------------------------------------

_SHORT = {"ok": None, "wrong": "WRONG", "oom": "oom", "error": "err", "unsupported": "n/a", "skipped": "skip"}


def _groups(results: list[dict]) -> dict:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["sweep"], r["dtype"], r["direction"], r["d"], r["causal"], r["B"], r["H"]), []).append(r)
    return groups


def ratios(results: list[dict], baselines: list[str]) -> list[dict]:
    """provider TFLOP/s ÷ baseline TFLOP/s at the same shape, for every pair measured in this run."""
    ok = {(r["sweep"], r["dtype"], r["direction"], r["d"], r["causal"], r["B"], r["H"], r["N"], r["provider"]): r
          for r in results if r["status"] == "ok"}
    out = []
    for key, r in ok.items():
        for base in baselines:
            b = ok.get(key[:-1] + (base,))
            if b is not None and r["provider"] != base:
                out.append(dict(provider=r["provider"], baseline=base, dtype=r["dtype"], direction=r["direction"], d=r["d"],
                                causal=r["causal"], N=r["N"], B=r["B"], H=r["H"], sweep=r["sweep"],
                                ratio=r["tflops"] / b["tflops"]))
    return out


def _fmt_tflops(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def format_table(results: list[dict], baselines: list[str], order: list[str] | None = None) -> str:
    """One block per (sweep, dtype, direction, d, causal): TFLOP/s per provider and N, then each
    provider's ratio to each baseline, then peak memory."""
    lines = []
    for (sweep, dtype, direction, d, causal, B, H), rs in _groups(results).items():
        Ns = sorted({r["N"] for r in rs})
        names = [n for n in (order or []) if any(r["provider"] == n for r in rs)]
        names += [n for n in dict.fromkeys(r["provider"] for r in rs) if n not in names]
        cell = {(r["provider"], r["N"]): r for r in rs}
        title = f"{dtype} {direction} d={d} {'causal' if causal else 'non-causal'} B={B} H={H}"
        lines.append(f"== {title} ({'TFLOP/s' if sweep == 'speed' else 'memory sweep: TFLOP/s'}) ==")
        w = 22
        lines.append(f"{'provider':{w}s}" + "".join(f"{N:>10d}" for N in Ns))
        for n in names:
            row = f"{n:{w}s}"
            for N in Ns:
                r = cell.get((n, N))
                txt = "" if r is None else (_fmt_tflops(r["tflops"]) if r["status"] == "ok" else _SHORT.get(r["status"], r["status"]))
                row += f"{txt:>10s}"
            lines.append(row)
        for base in baselines:
            if not any(r["provider"] == base and r["status"] == "ok" for r in rs):
                lines.append(f"(no {base} figure in this group: no ratios to it)")
                continue
            for n in names:
                if n == base or not any(r["provider"] == n and r["status"] == "ok" for r in rs):
                    continue
                row = f"{(n + ' / ' + base):{w}s}"
                for N in Ns:
                    r, b = cell.get((n, N)), cell.get((base, N))
                    ok = r is not None and b is not None and r["status"] == b["status"] == "ok"
                    txt = f"{r['tflops'] / b['tflops']:.2f}x" if ok else ""
                    row += f"{txt:>10s}"
                lines.append(row)
        if any(r["peak_bytes"] is not None for r in rs):
            lines.append("peak memory beyond the inputs (MiB):")
            for n in names:
                row = f"{n:{w}s}"
                for N in Ns:
                    r = cell.get((n, N))
                    txt = "" if r is None or r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f}"
                    row += f"{txt:>10s}"
                lines.append(row)
        bad = [r for r in rs if r["status"] in ("wrong", "error")]
        for r in bad:
            lines.append(f"  {r['provider']} N={r['N']}: {r['status']}: {r['message'][:300]}")
        lines.append("")
    return "\n".join(lines)


def _n_ticks(ax, Ns: list[int]) -> None:
    """Log-2 x axis labelled with the measured N (1k, 2k, ...)."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(Ns)
    ax.set_xticklabels([f"{N // 1024}k" if N % 1024 == 0 else str(N) for N in Ns])
    ax.minorticks_off()


def _color(provider: str) -> str:
    """One colour per provider in every plot."""
    names = list(PROVIDERS)
    if provider in names and names.index(provider) < 10:
        return f"C{names.index(provider)}"
    return "black"


def _legend_outside(fig, axes) -> None:
    """One legend for the figure, right of the panels, where it hides no line."""
    seen = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="center right", fontsize=8)
    right = 1 - 1.9 / fig.get_figwidth() if seen else 1  # about 1.9 inches for the legend
    fig.tight_layout(rect=(0, 0, right, 0.95))


def write_plots(data: dict, out_dir: str, name: str) -> list[str]:
    """PNG plots: TFLOP/s vs N (one figure per dtype and direction; a panel per d and causal),
    and peak memory vs N for each dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    dev = data.get("device", {}).get("name", "?")
    cpu = data.get("device", {}).get("type") != "cuda"
    suffix = " [CPU smoke run: not GPU numbers]" if cpu else (" [smoke run]" if data.get("smoke") else "")
    paths = []
    order = list(PROVIDERS) + sorted({r["provider"] for r in results} - set(PROVIDERS))
    speed = [r for r in results if r["sweep"] == "speed"]
    for dtype in dict.fromkeys(r["dtype"] for r in speed):
        for direction in DIRECTIONS:
            rs = [r for r in speed if r["dtype"] == dtype and r["direction"] == direction]
            if not rs:
                continue
            ds = sorted({r["d"] for r in rs})
            cs = sorted({r["causal"] for r in rs})
            fig, axes = plt.subplots(len(ds), len(cs), figsize=(5.5 * len(cs) + 2, 3.8 * len(ds)), squeeze=False)
            for i, d in enumerate(ds):
                for j, c in enumerate(cs):
                    ax = axes[i][j]
                    for p in order:
                        pts = sorted((r["N"], r["tflops"]) for r in rs
                                     if r["provider"] == p and r["d"] == d and r["causal"] == c and r["status"] == "ok")
                        if pts:
                            style = "-o" if PROVIDERS.get(p, Provider(p, "", None)).course else "--s"
                            ax.plot([x for x, _ in pts], [y for _, y in pts], style, label=p, markersize=4, color=_color(p))
                    _n_ticks(ax, sorted({r["N"] for r in rs}))
                    ax.set_xlabel("N (sequence length)")
                    ax.set_ylabel("TFLOP/s")
                    ax.set_title(f"d={d}, {'causal' if c else 'non-causal'}")
                    ax.grid(True, alpha=0.3)
            _legend_outside(fig, axes)
            fig.suptitle(f"{direction} {dtype} on {dev}{suffix}")
            path = os.path.join(out_dir, f"{name}_{dtype}_{direction.replace('+', '')}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    for dtype in dict.fromkeys(r["dtype"] for r in results):
        rs = [r for r in results if r["dtype"] == dtype and r["peak_bytes"] is not None and r["status"] == "ok"]
        if not rs:
            continue
        direction = "fwd+bwd" if any(r["direction"] == "fwd+bwd" for r in rs) else rs[0]["direction"]
        rs = [r for r in rs if r["direction"] == direction and not r["causal"]]
        panels = sorted({(r["sweep"], r["d"], r["B"], r["H"]) for r in rs})
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 2, 3.8), squeeze=False)
        for ax, (sweep, d, B, H) in zip(axes[0], panels):
            for p in order:
                pts = sorted((r["N"], r["peak_bytes"] / 2**30) for r in rs
                             if r["provider"] == p and (r["sweep"], r["d"], r["B"], r["H"]) == (sweep, d, B, H))
                if pts:
                    ax.plot([x for x, _ in pts], [y for _, y in pts], "-o", label=p, markersize=4, color=_color(p))
            _n_ticks(ax, sorted({r["N"] for r in rs if (r["sweep"], r["d"], r["B"], r["H"]) == (sweep, d, B, H)}))
            ax.set_yscale("log")
            ax.set_xlabel("N")
            ax.set_ylabel("peak GiB beyond inputs")
            ax.set_title(f"{direction}, d={d}, B={B}, H={H}, non-causal")
            ax.grid(True, alpha=0.3)
        _legend_outside(fig, axes)
        fig.suptitle(f"peak memory, {dtype} on {dev}{suffix}")
        path = os.path.join(out_dir, f"{name}_{dtype}_memory.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def merge_reports(paths: list[str], out_dir: str, name: str, baselines: list[str] | None = None, plots: bool = True) -> dict:
    """Merge result files of several runs (e.g. one per dtype or head dim, to keep each run short)
    into one JSON, table and set of plots. Refuses runs from different devices or versions, since
    ratios are only meaningful within one machine and one software stack."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    if not runs:
        raise ValueError("--report needs at least one JSON file")
    stack = lambda r: (r.get("device", {}).get("name"), r.get("torch"), r.get("triton"), r.get("cuda"))
    if len({stack(r) for r in runs}) != 1:
        raise ValueError("the runs come from different devices or versions: " + "; ".join(
            f"{p}: {stack(r)}" for p, r in zip(paths, runs)))
    first = runs[0]
    baselines = baselines or first.get("config", {}).get("baselines") or list(GPU_BASELINES)
    results = [r for run in runs for r in run["results"]]
    data = {k: first[k] for k in ("tool", "schema", "python", "torch", "cuda", "triton", "cudnn", "host", "device", "conventions") if k in first}
    data.update(
        complete=all(r.get("complete") for r in runs),
        smoke=any(r.get("smoke") for r in runs),
        note="; ".join(sorted({r.get("note", "") for r in runs} - {""})),
        merged_from=[{"file": os.path.basename(p), "date": r.get("date"), "argv": r.get("argv")} for p, r in zip(paths, runs)],
        date=max(r.get("date", "") for r in runs),
        config={"baselines": baselines},
        baselines=baselines,
        ceilings=next((r["ceilings"] for r in runs if r.get("ceilings")), None),
        providers={k: v for r in runs for k, v in r.get("providers", {}).items()},
        checks=[c for r in runs for c in r.get("checks", [])],
        results=results,
        ratios=ratios(results, baselines),
    )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)
    if plots:
        for path in write_plots(data, out_dir, name):
            print(f"plot: {path}")
    return data


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    """'1k,2k,4096' -> [1024, 2048, 4096]; '' or 'none' -> []."""
    if text.strip().lower() in ("", "none"):
        return []
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1024 if part.endswith("k") else 1
        try:
            value = int(part[:-1] if part.endswith("k") else part) * mult
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected sizes like 1k,2k,4096; got {part!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"sizes must be positive, got {part!r}")
        out.append(value)
    return out


def _parse_heads(text: str):
    if text is None:
        return None
    if ":" not in text:
        return int(text)
    return {int(a): int(b) for a, b in (p.split(":") for p in text.split(","))}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kernels.bench",
        description="TFLOP/s and peak memory of the course's attention kernels against SDPA, FlexAttention and naive attention.",
    )
    p.add_argument("--providers", help=f"comma-separated; GPU default {','.join(GPU_DEFAULT)}; CPU default {','.join(CPU_DEFAULT)}")
    p.add_argument("--n", default=None, help="sequence lengths (default 1k,2k,4k,8k,16k)")
    p.add_argument("--d", default=None, help="head dims (default 64,128)")
    p.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    p.add_argument("--directions", default=None, help="fwd,bwd,fwd+bwd (default all three)")
    p.add_argument("--dtypes", default=None, help="fp16,bf16,fp32 (default fp16,bf16 on GPU, fp32 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="B (default 4; 1 in the CPU smoke mode)")
    p.add_argument("--heads", default=None, help="H for every d, or pairs like 64:32,128:16 (default 2048 // d)")
    p.add_argument("--memory-n", default=None, help="extra N for the memory sweep, B=--memory-batch, non-causal (default 32k,64k; 'none')")
    p.add_argument("--memory-batch", type=int, default=1)
    p.add_argument("--out", default=os.path.join("benchmarks", "results"), help="output folder (default benchmarks/results)")
    p.add_argument("--name", default=None, help="file name stem (default bench, bench_quick or bench_cpu_smoke)")
    p.add_argument("--quick", action="store_true", help="N=1k,2k, d=64, fp16, no memory sweep, shorter timing")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes, CPU providers (automatic without CUDA)")
    p.add_argument("--smoke", action="store_true", help="label the output as a smoke run (not the benchmark result)")
    p.add_argument("--baselines", default=None, help="ratios are to these (default sdpa-flash,flex; sdpa-math on CPU)")
    p.add_argument("--check-rows", type=int, default=64, help="rows checked at each end on shapes too big to check whole")
    p.add_argument("--tol-factor", type=float, default=3.0, help="tolerance = this x same-dtype naive error + ulps")
    p.add_argument("--warmup-ms", type=float, default=None, help="do_bench warm-up per job (default 100; --quick 10)")
    p.add_argument("--rep-ms", type=float, default=None, help="do_bench timed calls per job, ms (default 400; --quick 40)")
    p.add_argument("--max-call-ms", type=float, default=None,
                   help="a provider slower than this per call is not timed at larger N (default 300 on GPU; 0: no limit)")
    p.add_argument("--smi-ms", type=int, default=0,
                   help="log nvidia-smi every this many ms to <name>_smi.csv and record each job's SM clock, power "
                        "and temperature in the JSON (default 0: off)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--report", nargs="+", metavar="JSON",
                   help="no measuring: merge these result files (e.g. one per dtype) into --out/--name JSON, table and plots")
    p.add_argument("--ceilings", action="store_true", help="also measure HBM copy bandwidth and matmul TFLOP/s first")
    p.add_argument("--roofline", action="store_true", help="print the arithmetic-intensity table and exit")
    p.add_argument("--list-providers", action="store_true")
    return p


def config_from_args(args) -> Config:
    cpu = args.cpu_smoke or not torch.cuda.is_available()
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]
    if cpu:
        if not args.cpu_smoke:
            print("no CUDA device: running the CPU smoke mode (--cpu-smoke).", flush=True)
        Ns, ds, dtypes, batch, heads, mem = [64, 128], [32], ["fp32"], 1, 2, []
        providers, baselines, warm, rep = CPU_DEFAULT, CPU_BASELINES, 0, 20
        name = "bench_cpu_smoke"
    elif args.quick:
        Ns, ds, dtypes, batch, heads, mem = [1024, 2048], [64], ["fp16"], 4, None, []
        providers, baselines, warm, rep = GPU_DEFAULT, GPU_BASELINES, 10, 40
        name = "bench_quick"
    else:
        Ns, ds, dtypes, batch, heads, mem = [1024, 2048, 4096, 8192, 16384], [64, 128], ["fp16", "bf16"], 4, None, [32768, 65536]
        providers, baselines, warm, rep = GPU_DEFAULT, GPU_BASELINES, Config.warmup_ms, Config.rep_ms
        name = "bench"
    directions = split(args.directions) if args.directions else list(DIRECTIONS)
    for x in directions:
        if x not in DIRECTIONS:
            raise SystemExit(f"--directions: expected some of {', '.join(DIRECTIONS)}, got {x!r}")
    dtypes = split(args.dtypes) if args.dtypes else dtypes
    for x in dtypes:
        if x not in DTYPES:
            raise SystemExit(f"--dtypes: expected some of {', '.join(DTYPES)}, got {x!r}")
    return Config(
        providers=split(args.providers) if args.providers else list(providers),
        Ns=parse_sizes(args.n) if args.n else Ns,
        ds=[int(x) for x in split(args.d)] if args.d else ds,
        causals={"both": [False, True], "yes": [True], "no": [False]}[args.causal],
        directions=directions,
        dtypes=dtypes,
        batch=args.batch or batch,
        heads=_parse_heads(args.heads) if args.heads else heads,
        memory_Ns=parse_sizes(args.memory_n) if args.memory_n is not None else mem,
        memory_batch=args.memory_batch,
        out=args.out,
        name=args.name or name,
        device="cpu" if cpu else "cuda",
        check_rows=args.check_rows,
        tol_factor=args.tol_factor,
        warmup_ms=args.warmup_ms if args.warmup_ms is not None else warm,
        rep_ms=args.rep_ms if args.rep_ms is not None else rep,
        baselines=split(args.baselines) if args.baselines else list(baselines),
        plots=not args.no_plots,
        max_call_ms=args.max_call_ms if args.max_call_ms is not None else (0.0 if cpu else 300.0),
        ceilings=args.ceilings,
        smoke=cpu or args.smoke,
        smi_ms=max(0, args.smi_ms),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_providers:
        for p in PROVIDERS.values():
            print(f"{p.name:15s} {'(needs CUDA) ' if p.needs_cuda else ''}{p.description}")
        return 0
    if args.roofline:
        Ns = parse_sizes(args.n) if args.n else [1024, 4096, 16384]
        ds = [int(x) for x in args.d.split(",")] if args.d else [64, 128]
        print(roofline_table(Ns, ds))
        return 0
    if args.report:
        data = merge_reports(args.report, args.out, args.name or "bench_merged",
                             args.baselines.split(",") if args.baselines else None, plots=not args.no_plots)
        print(format_table(data["results"], data["baselines"], list(PROVIDERS)))
        return 0
    cfg = config_from_args(args)
    data = Bench(cfg).run()
    bad = [r for r in data["results"] if r["status"] == "wrong"]
    if bad:
        print(f"\n{len(bad)} measurement(s) failed the correctness gate: see 'wrong' above.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
