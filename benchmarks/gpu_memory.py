"""Peak memory of attention as N grows, on a GPU, against the memory model; and the GPU's
copy bandwidth and matmul throughput against its datasheet.

    python benchmarks/gpu_memory.py --out DIR          # on the GPU: writes DIR/memory_h100.json
    python benchmarks/gpu_memory.py --out DIR --cpu-smoke   # the same logic, tiny sizes, on a CPU

What it measures, for B=1, H=16, d=128, fp16 and N = 1k .. 64k:

* the peak memory beyond the inputs (torch.cuda.max_memory_allocated minus the memory
  allocated before the call) of standard attention (kernels.memory_model.standard_attention),
  the course's Triton forward (kernels.triton_forward, skipped with a note when absent), and
  torch SDPA's flash, memory-efficient and cuDNN backends, forward and forward+backward.
  Standard attention runs until it runs out of memory; torch.cuda.OutOfMemoryError is caught
  and the N where it happened is recorded (and compared with where the model says it will);
* device-to-device copy bandwidth (bytes read + bytes written per second);
* fp16 and bf16 matmul TFLOP/s (8192³).

Each memory figure is stored with the model's prediction (kernels.memory_model.
predicted_peak_bytes, with device="cuda" on the GPU and "cpu" for --cpu-smoke) and their ratio;
the check is |measured/predicted - 1| <= 10% for the implementations the model describes
(naive, Triton forward, SDPA flash). On "cuda" the naive forward+backward counts one more N×N
buffer than on a CPU: torch's CUDA softmax backward materialises dP∘P before its row sums (found
with tools/naive_peak_diag.py); each record names the device its prediction is for
("model_device"; a results file without it predates the argument and holds the CPU prediction).
The SDPA memory-efficient and cuDNN backends are compared with the algorithm's minimal state
(O, L and the gradients) for reference only. A time budget (default 150 s) keeps the run under
3 minutes: sweeps that do not fit are marked "skipped (time budget)".
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import pathlib
import platform
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from a checkout without installing

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import kernels  # noqa: E402,F401  (sets TRITON_INTERPRET before triton is imported on a CPU)
from kernels import hardware  # noqa: E402
from kernels import memory_model as mm  # noqa: E402

TOLERANCE = 0.10  # |measured / predicted - 1| allowed


# --- Implementations ------------------------------------------------------------------------

def _sdpa(backend_name: str):
    """SDPA forced onto one backend (torch.nn.attention.sdpa_kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def _triton():
    """The course's Triton forward, or None with the reason it is unavailable."""
    try:
        from kernels.triton_forward import attention_forward
    except Exception as e:  # absent, or triton missing on this platform
        return None, f"kernels.triton_forward.attention_forward unavailable: {type(e).__name__}: {e}"

    def run(q, k, v):
        O, _L = attention_forward(q, k, v, is_causal=False, scale=None)
        return O

    return run, ""


def _tiled():
    from kernels.tiled import forward_fa2

    def run(q, k, v):
        O, _L = forward_fa2(q, k, v)
        return O

    return run


def implementations(device: torch.device) -> tuple[list[dict], list[str]]:
    """[{name, fn, model, backward}] in the order they are measured, and notes on skipped ones.
    `model` is the memory_model implementation the prediction comes from; None marks a
    comparison with the minimal state for reference only."""
    notes = []
    impls = [{"name": "naive", "fn": mm.standard_attention, "model": "naive", "backward": True}]
    if device.type == "cuda":
        impls.append({"name": "sdpa_flash", "fn": _sdpa("FLASH_ATTENTION"), "model": "sdpa_flash", "backward": True})
    else:
        impls.append({"name": "sdpa_cpu", "fn": F.scaled_dot_product_attention, "model": "sdpa_cpu", "backward": True})
        impls.append({"name": "tiled", "fn": _tiled(), "model": "tiled", "backward": False})
        notes.append("SDPA flash, efficient and cuDNN backends need CUDA: not measured on a CPU.")
    fn, why = _triton()
    if fn is None:
        notes.append(f"course Triton kernel skipped: {why}")
    else:
        impls.append({"name": "triton", "fn": fn, "model": "triton", "backward": False, "warm_each_n": True})
    if device.type == "cuda":
        impls.append({"name": "sdpa_efficient", "fn": _sdpa("EFFICIENT_ATTENTION"), "model": None, "backward": True})
        impls.append({"name": "sdpa_cudnn", "fn": _sdpa("CUDNN_ATTENTION"), "model": None, "backward": True})
    return impls, notes


# --- Measuring ------------------------------------------------------------------------------

def _free_memory(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0]


def _clear(device: torch.device) -> None:
    """Free what the last call left: cycles (an exception's frames) and the allocator's cache."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(e, oom)) or "out of memory" in str(e).lower()


def measure_point(fn, B, H, N, d, dtype, device, backward: bool, warmup: bool = False) -> dict:
    """Peak extra memory of one call (forward, or forward then backward), as a record.
    warmup: call once first at this very shape (an autotuner benchmarks its configs on the
    first call of each shape, with a cache-flush buffer that is not the kernel's memory)."""
    g = torch.Generator(device=device)
    g.manual_seed(N)
    q, k, v = (torch.randn(B, H, N, d, generator=g, device=device, dtype=dtype) for _ in range(3))  # (B, H, N, d)
    dO = torch.randn(B, H, N, d, generator=g, device=device, dtype=dtype) if backward else None
    if backward:
        for t in (q, k, v):
            t.requires_grad_(True)

    def call():
        O = fn(q, k, v)  # (B, H, N, d)
        if backward:
            O.backward(dO)
        return None

    _clear(device)
    free = _free_memory(device)  # what is left for the call once the inputs are allocated
    t0 = time.perf_counter()
    try:
        if warmup:
            call()
            for t in (q, k, v):
                t.grad = None
            _clear(device)
        peak, _ = mm.measure_peak_bytes(call, device)
        status, error = "ok", ""
    except Exception as e:  # OOM, or a backend that does not support this shape
        peak, status = None, ("oom" if _is_oom(e) else "error")
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        e.__traceback__ = None
    seconds = time.perf_counter() - t0
    del q, k, v, dO
    _clear(device)
    return {"status": status, "peak_bytes": peak, "seconds": round(seconds, 4), "free_bytes_before": free,
            "error": error}


def sweep(impls, Ns, B, H, d, dtype, device, deadline: float) -> tuple[list[dict], dict]:
    """Every implementation and pass over Ns; after an OOM the larger Ns of that sweep are not run."""
    records, oom_at = [], {}
    dt_name = str(dtype).replace("torch.", "")
    for impl in impls:
        passes = ["forward"] + (["forward+backward"] if impl["backward"] else [])
        for pass_ in passes:
            backward = pass_ == "forward+backward"
            # warm up at a small N: one-time allocations (BLAS workspaces, compiled kernels)
            # then belong to the baseline, not to the first measured point
            warm = measure_point(impl["fn"], B, H, min(Ns), d, dtype, device, backward)
            stop = None if warm["status"] == "ok" else f"warm-up failed: {warm['error']}"
            for N in Ns:
                rec = {"impl": impl["name"], "pass": pass_, "B": B, "H": H, "N": N, "d": d, "dtype": dt_name}
                model = impl["model"] or "minimal"
                try:
                    # the model for the device measured on: on "cuda" the naive backward
                    # includes the N×N temporary of torch's CUDA softmax backward
                    predicted = mm.predicted_peak_bytes(model, B, H, N, d, dtype, backward=backward,
                                                        device=device.type)
                except ValueError:
                    predicted = None
                rec.update({"model": model, "model_device": device.type,
                            "model_is_reference_only": impl["model"] is None, "predicted_bytes": predicted})
                if stop is not None:
                    rec.update({"status": "skipped", "note": stop})
                    records.append(rec)
                    continue
                if time.perf_counter() > deadline:
                    rec.update({"status": "skipped", "note": "time budget"})
                    records.append(rec)
                    continue
                rec.update(measure_point(impl["fn"], B, H, N, d, dtype, device, backward,
                                         warmup=impl.get("warm_each_n", False)))
                if rec["free_bytes_before"] is not None and predicted is not None:
                    rec["predicted_oom"] = predicted > rec["free_bytes_before"]
                if rec["status"] == "ok" and predicted:
                    rec["ratio"] = rec["peak_bytes"] / predicted
                    rec["within_tolerance"] = None if impl["model"] is None else abs(rec["ratio"] - 1) <= TOLERANCE
                records.append(rec)
                if rec["status"] == "oom":
                    oom_at[f"{impl['name']}/{pass_}"] = N
                    stop = f"out of memory at N={N}"
                elif rec["status"] == "error":
                    stop = f"error at N={N}: {rec['error']}"
    return records, oom_at


# --- Bandwidth and matmul throughput ----------------------------------------------------------

def _time(fn, device, reps: int) -> float:
    """Seconds per call of fn(), after two warm-up calls."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3 / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def copy_bandwidth(device, nbytes: int, reps: int) -> dict:
    """y.copy_(x) for an fp32 buffer of nbytes: bandwidth = 2·nbytes / time (read + write)."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    y = torch.empty_like(x)
    t = _time(lambda: y.copy_(x), device, reps)
    del x, y
    _clear(device)
    return {"buffer_bytes": nbytes, "bytes_moved_per_copy": 2 * nbytes, "seconds": t, "bytes_per_s": 2 * nbytes / t}


def matmul_throughput(device, n: int, dtype, reps: int) -> dict:
    """C = A·B with n×n operands: 2·n³ / time."""
    g = torch.Generator(device=device)
    g.manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g, device=device, dtype=dtype)
    t = _time(lambda: a @ b, device, reps)
    del a, b
    _clear(device)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "seconds": t, "flops_per_s": 2 * n**3 / t}


def datasheet_for(name: str):
    """The hardware.GPUS entry for a device name, or None. kernels.hardware lists the SXM
    boards (A100 80GB); a PCIe, NVL or 40GB board of the same chip has other clocks or
    memory, so no match."""
    low = name.lower()
    if "pcie" in low or "nvl" in low or "40gb" in low:
        return None
    for key, gpu in hardware.GPUS.items():
        if key.lower() in low.replace(" ", ""):
            return gpu
    return None


def device_properties(device) -> dict:
    if device.type != "cuda":
        return {"cpu": hardware.cpu_name(), "threads": torch.get_num_threads()}
    p = torch.cuda.get_device_properties(device)
    out = {}
    for attr in ("name", "major", "minor", "total_memory", "multi_processor_count", "L2_cache_size",
                 "clock_rate", "memory_clock_rate", "memory_bus_width", "shared_memory_per_block_optin",
                 "shared_memory_per_multiprocessor", "regs_per_multiprocessor"):
        if hasattr(p, attr):
            v = getattr(p, attr)
            out[attr] = v if isinstance(v, (int, float, str)) else str(v)
    return out


# --- Main ---------------------------------------------------------------------------------------

def run(out_dir: pathlib.Path, cpu_smoke: bool, budget_s: float) -> dict:
    t_start = time.perf_counter()
    if cpu_smoke:
        device = torch.device("cpu")
        B, H, d, dtype = 1, 2, 16, torch.float32
        Ns = [64, 128, 256]
        copy_bytes, mm_n, reps = 32 * 2**20, 256, 3
        out_name = "memory_cpu_smoke.json"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on the GPU, or pass --cpu-smoke to test the logic on a CPU")
        device = torch.device("cuda")
        B, H, d, dtype = 1, 16, 128, torch.float16
        Ns = [1024 * 2**i for i in range(7)]  # 1k .. 64k
        copy_bytes, mm_n, reps = 2**30, 8192, 10
        out_name = "memory_h100.json"
    deadline = t_start + budget_s
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else hardware.cpu_name()
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None

    result = {
        "device": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "script": "benchmarks/gpu_memory.py" + (" --cpu-smoke" if cpu_smoke else ""),
        "config": {"B": B, "H": H, "d": d, "dtype": str(dtype).replace("torch.", ""), "N": Ns,
                   "tolerance": TOLERANCE, "budget_s": budget_s},
        "device_properties": device_properties(device),
        "total_memory_bytes": torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None,
        "notes": [],
    }

    # bandwidth and matmul first: quick, and wanted even if a sweep runs long
    result["copy_bandwidth"] = copy_bandwidth(device, copy_bytes, reps)
    result["matmul"] = [matmul_throughput(device, mm_n, dt, reps) for dt in (torch.float16, torch.bfloat16)]
    sheet = datasheet_for(name) if device.type == "cuda" else None
    if sheet is not None:
        result["datasheet"] = {
            "gpu": sheet.name, "hbm_bytes_per_s": sheet.hbm_bandwidth, "fp16_flops_per_s": sheet.peak("fp16"),
            "bf16_flops_per_s": sheet.peak("bf16"),
            "sources": {"hbm": sheet.levels[-1].bandwidth_Bps.cite(), "fp16": sheet.peak_flops["fp16"].cite()},
        }
    elif device.type == "cuda":
        result["notes"].append(f"no datasheet entry in kernels.hardware for {name!r}")

    impls, notes = implementations(device)
    result["notes"] += notes
    records, oom_at = sweep(impls, Ns, B, H, d, dtype, device, deadline)
    result["memory"] = records
    result["oom_at"] = oom_at
    checked = [r for r in records if r.get("within_tolerance") is not None]
    result["summary"] = {
        "points_checked": len(checked),
        "points_within_tolerance": sum(bool(r["within_tolerance"]) for r in checked),
        "max_abs_error": max((abs(r["ratio"] - 1) for r in checked), default=None),
        "oom_at": oom_at,
        "predicted_oom_at": {
            f"{r['impl']}/{r['pass']}": r["N"]
            for r in sorted(records, key=lambda r: -r["N"]) if r.get("predicted_oom")
        },
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / out_name
    path.write_text(json.dumps(result, indent=1) + "\n")
    result["_path"] = str(path)
    return result


def print_table(result: dict) -> None:
    print(f"\n{result['device']}  torch {result['torch']}  triton {result['triton']}  {result['date']}")
    bw = result["copy_bandwidth"]["bytes_per_s"]
    sheet = result.get("datasheet")
    print(f"copy bandwidth {bw / 1e9:8.1f} GB/s" + (f"  (datasheet {sheet['hbm_bytes_per_s'] / 1e9:.0f} GB/s)" if sheet else ""))
    keys = {"float16": "fp16_flops_per_s", "bfloat16": "bf16_flops_per_s"}
    for m in result["matmul"]:
        extra = f"  (datasheet {sheet[keys[m['dtype']]] / 1e12:.0f})" if sheet else ""
        print(f"matmul {m['dtype']:8s} {m['flops_per_s'] / 1e12:8.1f} TFLOP/s{extra}")
    print(f"{'impl':15s} {'pass':17s} {'N':>6s} {'status':8s} {'measured MiB':>13s} {'model MiB':>10s} {'ratio':>6s}")
    for r in result["memory"]:
        meas = f"{r['peak_bytes'] / 2**20:13.1f}" if r.get("peak_bytes") is not None else f"{'':13s}"
        pred = f"{r['predicted_bytes'] / 2**20:10.1f}" if r.get("predicted_bytes") is not None else f"{'':10s}"
        ratio = f"{r['ratio']:6.3f}" if r.get("ratio") is not None else ""
        flag = "" if r.get("within_tolerance") in (None, True) else "  <-- outside 10%"
        if r.get("model_is_reference_only") and r.get("ratio") is not None:
            flag = "  (vs minimal state, reference only)"
        print(f"{r['impl']:15s} {r['pass']:17s} {r['N']:6d} {r['status']:8s} {meas} {pred} {ratio}{flag}")
    s = result["summary"]
    print(f"model within {TOLERANCE:.0%}: {s['points_within_tolerance']}/{s['points_checked']} points; "
          f"out of memory at {s['oom_at']}; predicted {s['predicted_oom_at']}; {s['seconds']} s")
    for n in result["notes"]:
        print("note:", n)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for the JSON file")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU, to test the logic")
    parser.add_argument("--budget-s", type=float, default=150.0, help="stop starting new sweeps after this many seconds")
    args = parser.parse_args(argv)
    try:
        result = run(args.out, args.cpu_smoke, args.budget_s)
    except SystemExit:
        raise
    except Exception:
        traceback.print_exc()
        return 1
    print_table(result)
    print(f"wrote {result['_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
