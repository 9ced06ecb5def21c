"""kernels.triton_resources: the course's Triton kernels compiled for the H100 (sm_90) on a
machine without a GPU, and ptxas' registers, stack and shared memory read back."""

import pathlib

import pytest

from kernels import device

pytestmark = pytest.mark.skipif(not device.HAS_TRITON, reason="triton is not installed on this platform")

if device.HAS_TRITON:
    from kernels import triton_resources as tr


def _has_cuobjdump() -> bool:
    import triton

    return (pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists()


@pytest.mark.parametrize("call,match", [
    (lambda: tr.resource_report("attention", 64, 128, 64), "kernel"),
    (lambda: tr.resource_report("forward", 96, 128, 64), "d must be a power of two"),
    (lambda: tr.resource_report("forward", 64, 100, 64), "BLOCK_M"),
    (lambda: tr.resource_report("forward", 64, 128, 8), "BLOCK_N"),
    (lambda: tr.resource_report("dkdv", 64, 128, 64), "BLOCK_N % BLOCK_M"),
    (lambda: tr.resource_report("dq", 64, 64, 128), "BLOCK_M % BLOCK_N"),
    (lambda: tr.resource_report("forward", 64, 128, 64, num_warps=3), "num_warps"),
    (lambda: tr.resource_report("forward", 64, 128, 64, num_stages=0), "num_stages"),
    (lambda: tr.resource_report("forward", 64, 128, 64, dtype="fp32"), "dtype"),
    (lambda: tr.resource_report("forward", 64, 128, 64, arch=75), "arch"),
    (lambda: tr.resource_report("forward", 64, 128, 64, arch=80, use_tma=True), "use_tma"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.skipif(device.HAS_TRITON and not _has_cuobjdump(), reason="this triton wheel ships no cuobjdump")
def test_forward_d128_pipeline_buffers_fit_the_h100():
    """3 stages of 128 x 128 fp16 K and V tiles need at least 3·2·32 KiB = 192 KiB of shared
    memory, and one program may use at most the H100's 227 KiB; a report outside that range
    (or registers outside 1..255) means it read the wrong numbers."""
    r = tr.resource_report("forward", 128, 128, 128, num_warps=8, num_stages=3)
    assert 3 * 2 * 128 * 128 * 2 <= r.shared_bytes <= 227 * 1024, r
    assert 0 < r.registers <= 255 and r.stack_bytes >= 0, r
    assert r.arch == 90 and r.config["use_tma"] and "registers" in str(r)


@pytest.mark.skipif(device.HAS_TRITON and not _has_cuobjdump(), reason="this triton wheel ships no cuobjdump")
def test_pointer_path_holds_more_registers_than_tma():
    """The pointer path keeps a 64-bit address per loaded element in registers; TMA keeps none
    (PERFORMANCE_forward.md, steps 2 and 3): with 4 warps at d = 64 that is the difference between
    ptxas running out of registers and not."""
    ptr = tr.resource_report("forward", 64, 128, 64, num_warps=4, num_stages=2, use_tma=False)
    tma = tr.resource_report("forward", 64, 128, 64, num_warps=4, num_stages=2, use_tma=True)
    assert tma.registers < ptr.registers or tma.stack_bytes < ptr.stack_bytes, (ptr, tma)


@pytest.mark.skipif(device.HAS_TRITON and not _has_cuobjdump(), reason="this triton wheel ships no cuobjdump")
def test_static_build_drops_the_ragged_tail_loop():
    """tools/static_vs_dynamic_sass.py: with N = 8192 compiled in (a multiple of B_r), the dQ binary
    loses its second, masked copy of the loop: half the wgmma and fewer instructions. The tool
    compiles in a subprocess with TRITON_INTERPRET=0, as kernels.triton_resources does."""
    import os
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "tools" / "static_vs_dynamic_sass.py"), "dq", "64", "0", "64,32,4,2"],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, TRITON_INTERPRET="0"))
    assert out.returncode == 0, out.stderr[-2000:]
    counts = [_parse(line) for line in out.stdout.splitlines() if "{" in line]
    dynamic, static = counts
    assert static["wgmma"] * 2 == dynamic["wgmma"]
    assert static["instructions"] < dynamic["instructions"]


def _parse(line: str) -> dict:
    import ast

    return ast.literal_eval("{" + line.split("{", 1)[1])
