"""The memory model (kernels.memory_model) against brute force and measurement.

* HBM bytes: the closed forms equal a step-by-step count of every tile load and store of the
  standard, FA1, FA2 and FA2-backward schedules, for random N, d and block sizes (N not a
  multiple of the block included).
* FLOPs: equal torch's FLOP counter on the matmuls.
* Block sizes: B_c is the least integer with 4·d·B_c >= M, B_r = min(B_c, d).
* Peak memory: within 10% of what torch's CPU allocator records for standard attention,
  torch's SDPA and the course's tiled forward (forward, and forward+backward where there is one).
* Bad input: errors name the argument.
* The hardware table: every number has a known source.
"""

import math
import os
import random

import pytest
import torch
import torch.nn.functional as F

from kernels import hardware
from kernels import memory_model as mm

SEED = int.from_bytes(os.urandom(4), "little")
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _rng(extra=0):
    return random.Random(SEED + extra)


# --- Brute-force HBM traffic: walk the loops, count every element moved ------------------------

class HBM:
    """Counts bytes moved between 'HBM' and 'SRAM' by a schedule written as loops."""

    def __init__(self):
        self.bytes = 0

    def move(self, rows, cols, nbytes):  # one load or store of a rows×cols block
        self.bytes += rows * cols * nbytes


def _blocks(N, size):
    return [(s, min(s + size, N)) for s in range(0, N, size)]


def brute_standard(N, d, e, backward=False):
    hbm = HBM()
    if not backward:
        hbm.move(N, d, e), hbm.move(N, d, e), hbm.move(N, N, e)  # read Q, K; write S
        hbm.move(N, N, e), hbm.move(N, N, e)  # read S; write P
        hbm.move(N, N, e), hbm.move(N, d, e), hbm.move(N, d, e)  # read P, V; write O
    else:
        hbm.move(N, N, e), hbm.move(N, d, e), hbm.move(N, d, e)  # P, dO -> dV
        hbm.move(N, d, e), hbm.move(N, d, e), hbm.move(N, N, e)  # dO, V -> dP
        hbm.move(N, N, e), hbm.move(N, N, e), hbm.move(N, N, e)  # P, dP -> dS
        hbm.move(N, N, e), hbm.move(N, d, e), hbm.move(N, d, e)  # dS, K -> dQ
        hbm.move(N, N, e), hbm.move(N, d, e), hbm.move(N, d, e)  # dS, Q -> dK
    return hbm.bytes


def brute_fa2(N, d, e, B_r, B_c, s=4):
    hbm = HBM()
    for r0, r1 in _blocks(N, B_r):
        hbm.move(r1 - r0, d, e)  # Q_i
        for c0, c1 in _blocks(N, B_c):
            hbm.move(c1 - c0, d, e), hbm.move(c1 - c0, d, e)  # K_j, V_j
        hbm.move(r1 - r0, d, e), hbm.move(r1 - r0, 1, s)  # O_i, L_i
    return hbm.bytes


def brute_fa1(N, d, e, B_r, B_c, s=4):
    hbm = HBM()
    hbm.move(N, d, e), hbm.move(N, 1, s), hbm.move(N, 1, s)  # initialise O, ℓ, m
    for c0, c1 in _blocks(N, B_c):
        hbm.move(c1 - c0, d, e), hbm.move(c1 - c0, d, e)  # K_j, V_j
        for r0, r1 in _blocks(N, B_r):
            rows = r1 - r0
            hbm.move(rows, d, e), hbm.move(rows, d, e), hbm.move(rows, 1, s), hbm.move(rows, 1, s)  # Q_i, O_i, ℓ_i, m_i
            hbm.move(rows, d, e), hbm.move(rows, 1, s), hbm.move(rows, 1, s)  # write O_i, ℓ_i, m_i
    return hbm.bytes


def brute_fa2_backward(N, d, e, B_r, B_c, s=4):
    hbm = HBM()
    hbm.move(N, d, e), hbm.move(N, d, e), hbm.move(N, 1, s)  # D = rowsum(dO∘O)
    for c0, c1 in _blocks(N, B_c):
        hbm.move(c1 - c0, d, e), hbm.move(c1 - c0, d, e)  # K_j, V_j
        for r0, r1 in _blocks(N, B_r):
            rows = r1 - r0
            hbm.move(rows, d, e), hbm.move(rows, d, e), hbm.move(rows, 1, s), hbm.move(rows, 1, s)  # Q_i, dO_i, L_i, D_i
            hbm.move(rows, d, e), hbm.move(rows, d, e)  # read and write dQ_i
        hbm.move(c1 - c0, d, e), hbm.move(c1 - c0, d, e)  # write dK_j, dV_j
    return hbm.bytes


@pytest.mark.parametrize("trial", range(4))
def test_hbm_bytes_match_brute_force(trial):
    rng = _rng(trial)
    for _ in range(5):
        B, H = rng.randint(1, 3), rng.randint(1, 4)
        N, d = rng.randint(1, 300), rng.choice([8, 16, 64, 80])
        B_r, B_c = rng.randint(1, 70), rng.randint(1, 70)
        dtype = rng.choice(DTYPES)
        e = mm.element_size(dtype)
        msg = f"seed {SEED}: B={B} H={H} N={N} d={d} B_r={B_r} B_c={B_c} {dtype}"
        assert mm.standard_attention_hbm_bytes(B, H, N, d, dtype) == B * H * brute_standard(N, d, e), msg
        assert mm.standard_attention_hbm_bytes(B, H, N, d, dtype, backward=True) == B * H * brute_standard(N, d, e, True), msg
        kw = dict(B_r=B_r, B_c=B_c)
        assert mm.flash_attention_hbm_bytes(B, H, N, d, dtype, **kw) == B * H * brute_fa2(N, d, e, B_r, B_c), msg
        assert mm.flash_attention_hbm_bytes(B, H, N, d, dtype, order="fa1", **kw) == B * H * brute_fa1(N, d, e, B_r, B_c), msg
        assert (mm.flash_attention_hbm_bytes(B, H, N, d, dtype, backward=True, **kw)
                == B * H * brute_fa2_backward(N, d, e, B_r, B_c)), msg


def test_flash_beats_standard_and_scales_as_n2d2_over_m():
    """FA1's schedule (KV blocks outer, B_c = ⌈M/4d⌉) moves Θ(N²d²/M): doubling M (SRAM) about
    halves the part above the compulsory 4Nd, while standard attention does not depend on M."""
    N, d = 8192, 64
    small = mm.flash_attention_hbm_bytes(1, 1, N, d, "fp16", sram_bytes=64 * 1024, order="fa1")
    large = mm.flash_attention_hbm_bytes(1, 1, N, d, "fp16", sram_bytes=128 * 1024, order="fa1")
    compulsory = mm.compulsory_hbm_bytes(1, 1, N, d, "fp16")
    assert 1.9 < (small - compulsory) / (large - compulsory) < 2.1
    assert large < mm.standard_attention_hbm_bytes(1, 1, N, d, "fp16") / 4


# --- FLOPs ----------------------------------------------------------------------------------

def test_flops_match_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    rng = _rng(99)
    B, H, N, d = rng.randint(1, 2), rng.randint(1, 3), rng.randint(2, 90), rng.choice([8, 16])
    q, k, v = (torch.randn(B, H, N, d) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        mm.standard_attention(q, k, v)
    assert counter.get_total_flops() == mm.attention_flops(B, H, N, d), f"seed {SEED}"
    a, b = torch.randn(N, d), torch.randn(d, 2 * N)
    with FlopCounterMode(display=False) as counter:
        a @ b
    assert counter.get_total_flops() == mm.matmul_flops(N, 2 * N, d)
    assert mm.attention_flops(B, H, N, d, pass_="backward") == 2.5 * mm.attention_flops(B, H, N, d)
    assert mm.attention_flops(2, 2, 64, 64, causal=True) * 2 == mm.attention_flops(2, 2, 64, 64)


# --- Block sizes ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_block_sizes_brute_force(dtype):
    rng = _rng(7)
    e = mm.element_size(dtype)
    for _ in range(50):
        sram, d = rng.randint(e, 300_000), rng.randint(1, 300)
        M = sram // e
        B_c = next(b for b in range(1, M + 2) if 4 * d * b >= M)  # least B_c with 4·d·B_c >= M
        assert mm.block_sizes(sram, d, dtype) == (min(B_c, d), B_c), f"seed {SEED}: sram={sram} d={d}"


def test_head_dim_256_forces_small_tiles_on_h100():
    """With H100's 227 KB per block, d=128 fits 128×128 tiles and d=256 only 64×64."""
    smem = int(hardware.get("H100").max_smem_per_block.value)
    assert mm.largest_tiles(smem, 128, "fp16") == (128, 128)
    assert mm.largest_tiles(smem, 256, "fp16") == (64, 64)
    B_r128, _ = mm.block_sizes(smem, 128, "fp16")
    B_r256, _ = mm.block_sizes(smem, 256, "fp16")
    assert B_r256 < B_r128


# --- Peak memory: measured on the CPU ---------------------------------------------------------

def _measure(fn, q, k, v, backward):
    if backward:
        q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
        dO = torch.randn_like(q)

        def call():
            fn(q, k, v).backward(dO)
    else:
        def call():
            fn(q, k, v)
    return mm.measure_peak_bytes(call)[0]


def _tiled(q, k, v):
    from kernels.tiled import forward_fa2

    return forward_fa2(q, k, v)[0]


CASES = [  # impl, function, backward
    ("naive", mm.standard_attention, False),
    ("naive", mm.standard_attention, True),
    ("sdpa_cpu", F.scaled_dot_product_attention, False),
    ("sdpa_cpu", F.scaled_dot_product_attention, True),
    ("tiled", _tiled, False),
]


@pytest.mark.parametrize("impl,fn,backward", CASES, ids=[f"{c[0]}-{'fwd+bwd' if c[2] else 'fwd'}" for c in CASES])
@pytest.mark.parametrize("N", [200, 512])
def test_peak_memory_measured_within_10_percent(impl, fn, backward, N):
    B, H, d = 1, 2, 32
    g = torch.Generator().manual_seed(SEED)
    q, k, v = (torch.randn(B, H, N, d, generator=g) for _ in range(3))  # (B, H, N, d)
    _measure(fn, q, k, v, backward)  # warm up: one-time allocations are not the model's
    measured = _measure(fn, q, k, v, backward)
    predicted = mm.predicted_peak_bytes(impl, B, H, N, d, torch.float32, backward=backward)
    assert abs(measured / predicted - 1) <= 0.10, f"{impl} N={N}: measured {measured}, predicted {predicted}"


def test_naive_and_flash_peaks_are_the_algorithms_state():
    """The 'naive' implementation's forward peak is S and P (2·B·H·N²·e) exactly when N >= d;
    'minimal' is O and L: the exercise's formulas."""
    for dtype in DTYPES:
        assert mm.predicted_peak_bytes("naive", 2, 3, 256, 64, dtype) == mm.naive_peak_bytes(2, 3, 256, 64, dtype)
        assert mm.predicted_peak_bytes("minimal", 2, 3, 256, 64, dtype) == mm.flash_peak_bytes(2, 3, 256, 64, dtype)
    ratio = mm.memory_savings_ratio(1, 1, 4096, 64, torch.float32)
    assert ratio == pytest.approx(2 * 4096 * 4096 * 4 / (4096 * 64 * 4 + 4096 * 4))


@pytest.mark.parametrize("B,H,N,d,dtype", [(1, 16, 1024, 128, torch.float16), (2, 3, 256, 64, torch.float32),
                                          (1, 2, 200, 32, torch.bfloat16), (3, 1, 128, 128, torch.float64)])
def test_cuda_naive_backward_adds_the_softmax_backward_temporary(B, H, N, d, dtype):
    """On "cuda" the naive forward+backward holds one more N×N tensor than on a CPU, dP∘P, which
    torch's CUDA softmax backward materialises before its row sums: exactly one B·H·N²·e more
    whenever N >= d (then the softmax backward is the peak on both devices)."""
    e = mm.element_size(dtype)
    cpu = mm.predicted_peak_bytes("naive", B, H, N, d, dtype, backward=True)
    assert mm.predicted_peak_bytes("naive", B, H, N, d, dtype, backward=True, device="cpu") == cpu
    assert mm.predicted_peak_bytes("naive", B, H, N, d, dtype, backward=True, device=torch.device("cpu")) == cpu
    for device in ("cuda", "cuda:0", torch.device("cuda", 1)):
        cuda = mm.predicted_peak_bytes("naive", B, H, N, d, dtype, backward=True, device=device)
        assert cuda - cpu == B * H * N * N * e, device


def test_cuda_naive_backward_is_the_traced_h100_peak():
    """tools/naive_peak_diag.py on the H100 (B=1, H=16, N=1024, d=128, fp16): 140.0 MiB above
    the inputs, P, dP, dS and the temporary (32 MiB each) and Qs, O, dV (4 MiB each)."""
    MiB = 2**20
    assert mm.predicted_peak_bytes("naive", 1, 16, 1024, 128, "fp16", backward=True, device="cuda") == 140 * MiB
    assert mm.predicted_peak_bytes("naive", 1, 16, 1024, 128, "fp16", backward=True) == 108 * MiB


def test_recorded_h100_naive_backward_within_tolerance_of_the_cuda_model():
    """The recorded H100 run's measured naive forward+backward peaks, against the model for the
    device they were measured on."""
    import json
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "memory_h100.json"
    if not path.exists():
        pytest.skip(f"{path.name} not recorded")
    recs = [r for r in json.loads(path.read_text())["memory"]
            if r["impl"] == "naive" and r["pass"] == "forward+backward" and r["status"] == "ok"]
    assert recs
    for r in recs:
        model = mm.predicted_peak_bytes("naive", r["B"], r["H"], r["N"], r["d"], r["dtype"], backward=True, device="cuda")
        assert abs(r["peak_bytes"] / model - 1) <= 0.10, (r["N"], r["peak_bytes"], model)


@pytest.mark.parametrize("dtype", DTYPES)
def test_predictions_other_than_the_naive_backward_do_not_depend_on_the_device(dtype):
    B, H, d = 2, 3, 64
    for N in (50, 256, 1000):
        for impl in ("naive", "minimal", "triton", "tiled"):
            cpu = mm.predicted_peak_bytes(impl, B, H, N, d, dtype)
            assert mm.predicted_peak_bytes(impl, B, H, N, d, dtype, device="cuda") == cpu, (impl, N)
        cpu = mm.predicted_peak_bytes("minimal", B, H, N, d, dtype, backward=True)
        assert mm.predicted_peak_bytes("minimal", B, H, N, d, dtype, backward=True, device="cuda") == cpu


def test_measure_peak_bytes_counts_a_known_allocation():
    def fn():
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        b = torch.empty(500, dtype=torch.float64)  # 4000 bytes, both alive
        del a, b
        return torch.empty(10, dtype=torch.float32)  # 40 bytes

    peak, out = mm.measure_peak_bytes(fn)
    assert peak == 8000 and out.shape == (10,)


# --- Roofline ---------------------------------------------------------------------------------

def test_roofline_helpers():
    h100 = hardware.get("H100")
    peak, bw = h100.peak("fp16"), h100.hbm_bandwidth
    ridge = mm.ridge_point(peak, bw)
    assert mm.attainable_flops(ridge / 2, peak, bw) == pytest.approx(peak / 2)
    assert mm.attainable_flops(ridge * 2, peak, bw) == peak
    assert mm.bound(ridge / 2, peak, bw) == "memory" and mm.bound(ridge * 2, peak, bw) == "compute"
    assert mm.roofline_time(1e12, 1e9, peak, bw) == pytest.approx(max(1e12 / peak, 1e9 / bw))
    # a big square fp16 matmul is compute-bound on an H100, softmax is memory-bound
    assert mm.bound(mm.matmul_intensity(8192, 8192, 8192, "fp16"), peak, bw) == "compute"
    assert mm.bound(mm.softmax_intensity("fp16"), peak, bw) == "memory"
    assert mm.matmul_intensity(2, 3, 4, torch.float32) == pytest.approx(2 * 2 * 3 * 4 / ((8 + 12 + 6) * 4))
    steps = mm.attention_steps(1, 16, 4096, 128, "fp16")
    assert [s.name.split(":")[0] for s in steps] == ["naive"] * 3 + ["flash"] * 2
    assert all(s.intensity > 0 for s in steps)


# --- Bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("call,exc,word", [
    (lambda: mm.block_sizes(0, 64, "fp16"), ValueError, "sram_bytes"),
    (lambda: mm.block_sizes(1024, 0, "fp16"), ValueError, "d"),
    (lambda: mm.block_sizes(1, 64, "fp16"), ValueError, "sram_bytes"),
    (lambda: mm.naive_peak_bytes(1, 1, 1.5, 64, "fp16"), TypeError, "N"),
    (lambda: mm.naive_peak_bytes(True, 1, 8, 64, "fp16"), TypeError, "B"),
    (lambda: mm.flash_peak_bytes(1, -2, 8, 64, "fp16"), ValueError, "H"),
    (lambda: mm.element_size("int8"), TypeError, "dtype"),
    (lambda: mm.element_size(torch.int32), TypeError, "dtype"),
    (lambda: mm.predicted_peak_bytes("nope", 1, 1, 8, 8, "fp32"), ValueError, "impl"),
    (lambda: mm.predicted_peak_bytes("tiled", 1, 1, 8, 8, "fp32", backward=True), ValueError, "tiled"),
    (lambda: mm.predicted_peak_bytes("naive", 1, 1, 8, 8, "fp32", device="mps"), ValueError, "device"),
    (lambda: mm.predicted_peak_bytes("naive", 1, 1, 8, 8, "fp32", device="gpu"), ValueError, "device"),
    (lambda: mm.predicted_peak_bytes("naive", 1, 1, 8, 8, "fp32", device=None), ValueError, "device"),
    (lambda: mm.predicted_peak_bytes("naive", 1, 1, 8, 8, "fp32", device=0), ValueError, "device"),
    (lambda: mm.predicted_peak_bytes("naive", 1, 1, 8, 8, "fp32", device=torch.device("meta")), ValueError, "device"),
    (lambda: mm.predicted_peak_bytes("sdpa_cpu", 1, 1, 8, 8, "fp32", device="cuda"), ValueError, "device"),
    (lambda: mm.predicted_peak_bytes("sdpa_flash", 1, 1, 8, 8, "fp16"), ValueError, "device"),
    (lambda: mm.flash_attention_hbm_bytes(1, 1, 8, 8, "fp16"), ValueError, "sram_bytes"),
    (lambda: mm.flash_attention_hbm_bytes(1, 1, 8, 8, "fp16", B_r=4, B_c=4, order="fa3"), ValueError, "order"),
    (lambda: mm.attention_flops(1, 1, 8, 8, pass_="sideways"), ValueError, "pass_"),
    (lambda: mm.ridge_point(0, 1e12), ValueError, "peak_flops"),
    (lambda: mm.arithmetic_intensity(1.0, float("nan")), ValueError, "nbytes"),
    (lambda: mm.standard_attention(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)), ValueError, "query"),
    (lambda: hardware.get("V100"), KeyError, "name"),
])
def test_errors_name_the_argument(call, exc, word):
    with pytest.raises(exc) as info:
        call()
    assert word in str(info.value)


# --- The hardware table -----------------------------------------------------------------------

def test_every_hardware_number_has_a_source():
    assert {"A100", "H100", "H200", "RTX4090"} <= set(hardware.GPUS)
    for gpu in hardware.GPUS.values():
        assert [lv.name for lv in gpu.levels] == ["registers", "shared memory / L1", "L2", "HBM"]
        facts = [gpu.sms, gpu.clock_hz, gpu.max_smem_per_block, *gpu.peak_flops.values()]
        for lv in gpu.levels:
            facts += [lv.size_bytes, lv.bandwidth_Bps, lv.latency_cycles]
        for f in facts:
            assert f.source in hardware.SOURCES and f.cite()
        # below the registers (which hold more than shared memory on these GPUs), each level
        # is larger than the one above it, and off-chip memory is slower than shared memory
        sizes = [lv.size_bytes.value * (gpu.sms.value if lv.scope == "per SM" else 1) for lv in gpu.levels[1:]]
        assert sizes == sorted(sizes), gpu.name
        assert gpu.level("shared memory / L1").bandwidth_Bps.value > gpu.hbm_bandwidth
        assert math.isclose(gpu.ridge_point(), gpu.peak("fp16") / gpu.hbm_bandwidth)
    table = hardware.markdown_table()
    assert "H100" in table and "[1]" in table


# --- The GPU benchmark's logic, on the CPU ------------------------------------------------------

def _load_benchmark():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_memory.py"
    spec = importlib.util.spec_from_file_location("gpu_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_sweep_records_model_ratio_and_out_of_memory():
    bench = _load_benchmark()

    def runs_out_of_memory_from_64(q, k, v):
        if q.shape[2] >= 64:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")
        return mm.standard_attention(q, k, v)

    impls = [{"name": "naive", "fn": mm.standard_attention, "model": "naive", "backward": True},
             {"name": "oom", "fn": runs_out_of_memory_from_64, "model": "naive", "backward": False}]
    records, oom_at = bench.sweep(impls, [32, 64, 128], 1, 2, 16, torch.float32, torch.device("cpu"),
                                  deadline=float("inf"))
    naive = [r for r in records if r["impl"] == "naive"]
    assert len(naive) == 6 and all(r["status"] == "ok" and r["within_tolerance"] for r in naive)
    oom = {r["N"]: r["status"] for r in records if r["impl"] == "oom"}
    assert oom == {32: "ok", 64: "oom", 128: "skipped"}
    assert oom_at == {"oom/forward": 64}
    # past the deadline nothing more is measured
    records, _ = bench.sweep(impls[:1], [32], 1, 2, 16, torch.float32, torch.device("cpu"), deadline=0.0)
    assert {r["status"] for r in records} == {"skipped"}


def test_benchmark_knows_which_datasheet_applies():
    bench = _load_benchmark()
    assert bench.datasheet_for("NVIDIA H100 80GB HBM3") is hardware.get("H100")
    assert bench.datasheet_for("NVIDIA H100 PCIe") is None
    assert bench.datasheet_for("NVIDIA A100-SXM4-40GB") is None
