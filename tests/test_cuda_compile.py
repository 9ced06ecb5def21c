"""Every CUDA source of kernels/cuda/ compiles with nvcc alone (no torch, no GPU) for sm_80
(A100) and sm_90 (H100), and ptxas' resource report parses: registers within the hardware's
255, every expected kernel present, the scalar versions free of spills.

The compiles run once per (file, arch), two at a time, with the report cache off: the test
measures the sources as they are. Skipped, with the reason, when nvcc is missing.
"""

from __future__ import annotations

import concurrent.futures

import pytest

from kernels import cuda_kernels, device

pytestmark = pytest.mark.skipif(device.NVCC is None, reason="nvcc not found: the CUDA sources cannot be compile-checked")

ARCHS = ("sm_80", "sm_90")
SOURCES = [p.name for p in cuda_kernels.all_sources()]
# Kernels each file must contain, by a substring of the demangled name, and how many at least.
EXPECTED = {
    "forward_v1_scalar.cu": ("v1::forward_kernel", 3),  # float32, float16, bfloat16
    "forward_v2_tensor_core.cu": ("v2::forward_kernel", 10),  # 2 dtypes x 5 head dims
    "forward_v3_tuned.cu": ("v3::forward_kernel", 2 * len(["d64", "d128"])),
    "backward_v1_scalar.cu": ("bwd_v1::", 9),  # preprocess, dkdv, dq x 3 dtypes
    "backward_v2_tensor_core.cu": ("bwd_v2::", 10),  # preprocess x 2, (dkdv, dq) x 2 dtypes x 2 dims
}


@pytest.fixture(scope="module")
def reports():
    jobs = [(src, arch) for src in SOURCES for arch in ARCHS]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {job: pool.submit(cuda_kernels.compile_check, job[0], job[1], cache=False) for job in jobs}
        out = {}
        for job, fut in futures.items():
            try:
                out[job] = fut.result()
            except Exception as e:  # reported by the test of that file, not as a fixture error
                out[job] = e
    return out


def test_every_source_is_listed():
    assert set(SOURCES) == set(EXPECTED), "a .cu file was added or removed: update EXPECTED"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(EXPECTED))
def test_compiles_standalone(reports, source, arch):
    rep = reports[(source, arch)]
    if isinstance(rep, Exception):
        pytest.fail(f"{source} does not compile for {arch}: {rep}")
    needle, count = EXPECTED[source]
    names = [k.name for k in rep.kernels]
    assert sum(needle in n for n in names) >= count, f"{source} {arch}: expected {count} kernels matching {needle!r}, got {names}"
    assert all(k.arch == arch for k in rep.kernels)
    for k in rep.kernels:
        assert 0 < k.registers <= 255, f"{k.name}: {k.registers} registers"
    if "scalar" in source:  # the readable versions use few registers: a spill would mean a mistake
        spills = [(k.name, k.spill_stores) for k in rep.kernels if k.spill_stores]
        assert not spills, f"{source} {arch} spills: {spills}"


def test_report_parser_reads_ptxas_lines():
    log = (
        "ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z3fooPf\n"
        "    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 42 registers, used 1 barriers, 384 bytes smem, 368 bytes cmem[0]\n"
    )
    (k,) = cuda_kernels.parse_ptxas(log)
    assert (k.arch, k.registers, k.spill_stores, k.spill_loads, k.stack_frame, k.static_smem, k.barriers) == (
        "sm_90", 42, 8, 12, 16, 384, 1)
    assert k.name.startswith("foo")


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="unknown CUDA source"):
        cuda_kernels.compile_check("v9")
