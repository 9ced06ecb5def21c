"""Exercises of lesson 01: graders, reference solutions and mutants.

    01.matmul_intensity   FLOPs per byte of C = A·B, (M×K)·(K×N), reading A, B and writing C once
    01.naive_hbm_bytes    HBM bytes of standard attention's forward (S and P through HBM)
    01.block_sizes        FlashAttention's (B_r, B_c) for an SRAM of a given size
    01.peak_memory        peak extra memory of naive and flash attention's forward

Every grader draws fresh random sizes (the seed is in each case's description) and goes through
every dtype (fp16, bf16, fp32, fp64), so that a wrong element size, a missing factor of B or H,
or bits counted for bytes is caught on every run. Answers are counts: they must be exact
(relative error 1e-9 for the intensity, which is a ratio).
"""

from __future__ import annotations

import operator
import random

import torch

from .. import memory_model as mm
from .core import CaseFailure, assert_scalar, case, fresh_generator
from .registry import exercise

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _rng() -> tuple[random.Random, int]:
    _, seed = fresh_generator()
    return random.Random(seed), seed


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _as_int(name: str, x) -> int:
    if isinstance(x, bool):
        raise CaseFailure(f"{name} should be an int, got bool")
    if isinstance(x, float) and x.is_integer():
        return int(x)
    try:
        return operator.index(x)
    except TypeError:
        raise CaseFailure(f"{name} should be an int, got {type(x).__name__} {x!r}") from None


def _pair(name: str, out) -> tuple:
    try:
        items = tuple(out)
    except TypeError:
        raise CaseFailure(f"{name} should return two values, got {type(out).__name__}") from None
    if len(items) != 2:
        raise CaseFailure(f"{name} should return two values, got {len(items)}")
    return items


def _bits(dtype) -> int:
    return torch.finfo(dtype).bits


# ============================================================================================
# 01.matmul_intensity


def _mi_forgets_output(M, N, K, dtype):
    return 2 * M * N * K / ((M * K + K * N) * mm.element_size(dtype))


def _mi_bits(M, N, K, dtype):
    return 2 * M * N * K / ((M * K + K * N + M * N) * _bits(dtype))


def _mi_mnk(M, N, K, dtype):
    return M * N * K / ((M * K + K * N + M * N) * mm.element_size(dtype))


def _mi_fp32_always(M, N, K, dtype):
    return 2 * M * N * K / ((M * K + K * N + M * N) * 4)


def _mi_reads_C_too(M, N, K, dtype):
    return 2 * M * N * K / ((M * K + K * N + 2 * M * N) * mm.element_size(dtype))


def _mi_square(M, N, K, dtype):
    return 2 * M**3 / (3 * M * M * mm.element_size(dtype))


@exercise(
    "01.matmul_intensity",
    "Arithmetic intensity of a matmul",
    solution=mm.matmul_intensity,
    mutants={
        "forgets the write of C": _mi_forgets_output,
        "counts bits instead of bytes": _mi_bits,
        "M·N·K FLOPs (forgets the 2 of multiply-add)": _mi_mnk,
        "4 bytes per element whatever the dtype": _mi_fp32_always,
        "reads C as well as writing it": _mi_reads_C_too,
        "uses the square-matrix formula for every shape": _mi_square,
    },
)
def grade_matmul_intensity(candidate):
    rng, seed = _rng()
    shapes = [(4096, 4096, 4096), (1, 4096, 4096)]  # a square one and a matrix-vector product
    shapes += [(rng.randint(1, 8192), rng.randint(1, 8192), rng.randint(1, 512)) for _ in range(4)]
    for i, (M, N, K) in enumerate(shapes):
        dtype = DTYPES[i % len(DTYPES)]
        with case(f"M={M}, N={N}, K={K}, dtype={_name(dtype)} (seed {seed})"):
            assert_scalar("intensity (FLOP/byte)", candidate(M, N, K, dtype), mm.matmul_intensity(M, N, K, dtype))


# ============================================================================================
# 01.naive_hbm_bytes


def _hbm_forgets_O(B, H, N, d, dtype):
    return B * H * (3 * N * d + 4 * N * N) * mm.element_size(dtype)


def _hbm_bits(B, H, N, d, dtype):
    return B * H * (4 * N * d + 4 * N * N) * _bits(dtype)


def _hbm_S_not_P(B, H, N, d, dtype):
    return B * H * (4 * N * d + 2 * N * N) * mm.element_size(dtype)


def _hbm_forgets_B(B, H, N, d, dtype):
    return H * (4 * N * d + 4 * N * N) * mm.element_size(dtype)


def _hbm_forgets_H(B, H, N, d, dtype):
    return B * (4 * N * d + 4 * N * N) * mm.element_size(dtype)


def _hbm_fp32_always(B, H, N, d, dtype):
    return B * H * (4 * N * d + 4 * N * N) * 4


def _hbm_writes_only(B, H, N, d, dtype):
    return B * H * (N * d + 2 * N * N) * mm.element_size(dtype)


def _naive_hbm_solution(B, H, N, d, dtype):
    return mm.standard_attention_hbm_bytes(B, H, N, d, dtype)


@exercise(
    "01.naive_hbm_bytes",
    "HBM bytes of standard attention's forward",
    solution=_naive_hbm_solution,
    mutants={
        "forgets the write of O": _hbm_forgets_O,
        "counts bits instead of bytes": _hbm_bits,
        "counts S but not P": _hbm_S_not_P,
        "forgets the batch B": _hbm_forgets_B,
        "forgets the heads H": _hbm_forgets_H,
        "4 bytes per element whatever the dtype": _hbm_fp32_always,
        "counts the writes only": _hbm_writes_only,
    },
)
def grade_naive_hbm_bytes(candidate):
    rng, seed = _rng()
    for i, dtype in enumerate(DTYPES + (torch.float16,)):
        B, H = rng.randint(2, 8), rng.randint(2, 32)
        N, d = rng.randint(1, 32768), rng.choice((16, 32, 64, 80, 96, 128, 256))
        with case(f"B={B}, H={H}, N={N}, d={d}, dtype={_name(dtype)} (seed {seed})"):
            got = candidate(B, H, N, d, dtype)
            assert_scalar("HBM bytes", got, mm.standard_attention_hbm_bytes(B, H, N, d, dtype), rel=1e-12)


# ============================================================================================
# 01.block_sizes


def _bs(M, d):
    B_c = -(-M // (4 * d))
    return min(B_c, d), B_c


def _bs_forgets_4(sram_bytes, d, dtype):
    B_c = -(-(sram_bytes // mm.element_size(dtype)) // d)
    return min(B_c, d), B_c


def _bs_floor(sram_bytes, d, dtype):
    B_c = (sram_bytes // mm.element_size(dtype)) // (4 * d)
    return min(B_c, d), B_c


def _bs_bits(sram_bytes, d, dtype):
    return _bs(sram_bytes // _bits(dtype), d)


def _bs_bytes_as_elements(sram_bytes, d, dtype):
    return _bs(sram_bytes, d)


def _bs_no_min(sram_bytes, d, dtype):
    B_c = -(-(sram_bytes // mm.element_size(dtype)) // (4 * d))
    return B_c, B_c


def _bs_swapped(sram_bytes, d, dtype):
    B_r, B_c = mm.block_sizes(sram_bytes, d, dtype)
    return B_c, B_r


def _bs_B_r_is_d(sram_bytes, d, dtype):
    _, B_c = mm.block_sizes(sram_bytes, d, dtype)
    return d, B_c


@exercise(
    "01.block_sizes",
    "FlashAttention's block sizes for an SRAM size",
    solution=mm.block_sizes,
    mutants={
        "forgets the 4 in 4d": _bs_forgets_4,
        "rounds M/4d down instead of up": _bs_floor,
        "divides by bits instead of bytes per element": _bs_bits,
        "takes the SRAM bytes as elements": _bs_bytes_as_elements,
        "B_r = B_c (no min with d)": _bs_no_min,
        "returns (B_c, B_r)": _bs_swapped,
        "B_r = d always": _bs_B_r_is_d,
    },
)
def grade_block_sizes(candidate):
    rng, seed = _rng()
    cases = []
    for dtype in DTYPES:
        # an SRAM whose element count is not a multiple of 4d (ceil and floor differ), large
        # enough that B_c > d for a small d ...
        d = rng.choice((16, 32, 64))
        k, r = rng.randint(d + 1, 4 * d), rng.randint(1, 4 * d - 1)
        cases.append((mm.element_size(dtype) * (4 * d * k + r), d, dtype))
        # ... and one small enough that B_c < d for a large d
        d = rng.choice((128, 256))
        k, r = rng.randint(2, d // 2), rng.randint(1, 4 * d - 1)
        cases.append((mm.element_size(dtype) * (4 * d * k + r), d, dtype))
    cases.append((228 * 1024, 128, torch.float16))  # H100 shared memory, head dim 128
    for sram_bytes, d, dtype in cases:
        with case(f"sram_bytes={sram_bytes}, d={d}, dtype={_name(dtype)} (seed {seed})"):
            got = _pair("block_sizes", candidate(sram_bytes, d, dtype))
            B_r, B_c = _as_int("B_r", got[0]), _as_int("B_c", got[1])
            want_r, want_c = mm.block_sizes(sram_bytes, d, dtype)
            M = sram_bytes // mm.element_size(dtype)
            if B_c != want_c:
                raise CaseFailure(f"B_c is {B_c}, expected ⌈M/4d⌉ = ⌈{M}/{4 * d}⌉ = {want_c}")
            if B_r != want_r:
                raise CaseFailure(f"B_r is {B_r}, expected min(B_c, d) = min({want_c}, {d}) = {want_r}")


# ============================================================================================
# 01.peak_memory


def _pm(B, H, N, d, e, *, s_count=2, stats=4):
    return s_count * B * H * N * N * e, B * H * (N * d * e + N * stats)


def _pm_S_not_P(B, H, N, d, dtype):
    return _pm(B, H, N, d, mm.element_size(dtype), s_count=1)


def _pm_forgets_B(B, H, N, d, dtype):
    return _pm(1, H, N, d, mm.element_size(dtype))


def _pm_forgets_H(B, H, N, d, dtype):
    return _pm(B, 1, N, d, mm.element_size(dtype))


def _pm_bits(B, H, N, d, dtype):
    return _pm(B, H, N, d, _bits(dtype), stats=32)


def _pm_forgets_L(B, H, N, d, dtype):
    return _pm(B, H, N, d, mm.element_size(dtype), stats=0)


def _pm_L_in_dtype(B, H, N, d, dtype):
    e = mm.element_size(dtype)
    return _pm(B, H, N, d, e, stats=e)


def _pm_fp32_always(B, H, N, d, dtype):
    return _pm(B, H, N, d, 4)


def _pm_flash_keeps_tile(B, H, N, d, dtype):
    e = mm.element_size(dtype)
    naive, flash = _pm(B, H, N, d, e)
    return naive, flash + B * H * 64 * 64 * e  # counts an on-chip tile as HBM memory


@exercise(
    "01.peak_memory",
    "Peak extra memory of naive and flash attention",
    solution=mm.peak_memory_bytes,
    mutants={
        "naive: counts S but not P": _pm_S_not_P,
        "forgets the batch B": _pm_forgets_B,
        "forgets the heads H": _pm_forgets_H,
        "counts bits instead of bytes": _pm_bits,
        "flash: forgets L": _pm_forgets_L,
        "flash: L in the inputs' dtype instead of fp32": _pm_L_in_dtype,
        "4 bytes per element whatever the dtype": _pm_fp32_always,
        "flash: counts an on-chip tile as HBM memory": _pm_flash_keeps_tile,
    },
)
def grade_peak_memory(candidate):
    rng, seed = _rng()
    for dtype in DTYPES + (torch.bfloat16,):
        B, H = rng.randint(2, 8), rng.randint(2, 32)
        N, d = rng.randint(2, 65536), rng.choice((32, 64, 128, 256))
        with case(f"B={B}, H={H}, N={N}, d={d}, dtype={_name(dtype)} (seed {seed})"):
            naive, flash = _pair("peak_memory", candidate(B, H, N, d, dtype))
            want_naive, want_flash = mm.peak_memory_bytes(B, H, N, d, dtype)
            assert_scalar("naive peak bytes", naive, want_naive, rel=1e-12)
            assert_scalar("flash peak bytes", flash, want_flash, rel=1e-12)


__all__ = ["grade_matmul_intensity", "grade_naive_hbm_bytes", "grade_block_sizes", "grade_peak_memory"]
