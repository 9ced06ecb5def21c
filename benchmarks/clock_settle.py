"""Does a kernel's measured time depend on what ran just before it? (GPU clocks settling.)

    python benchmarks/clock_settle.py      # writes $OUT/clock_settle.json and $OUT/smi_clock_settle.csv

Why: `python -m kernels.bench` timed each provider for 25 ms of warm-up and 100 ms of calls (its
default until run 10; now 100 + 400 ms), right after the previous provider's job. Under the H100's 700 W power cap the SM clock drops while a heavy
job runs and takes time to come back, so a job may inherit the clock its predecessor left
(benchmarks/PERFORMANCE.md, section 6: a Gluon forward job logged at 1560 MHz and 442 W with the
power cap flagged).

What: for each case (provider, shape, direction, the bench's own callables from kernels.bench), the
time of every call, L2 flushed before each as triton.testing.do_bench does, for TRACE_S seconds
(a) after IDLE_S seconds idle and (b) right after HEAVY_S seconds of the Triton forward + backward at
fp16, d = 128, causal, N = 16384 (what precedes the Gluon forward in a bench run). It reports the
median of the calls that start in the bench's window (25-125 ms), and later windows, where the clock
has settled to what the kernel itself draws. Then SOAK_S seconds of that heavy job warm the chip up
to a full run's temperature, and every case is traced again (c) right after the heavy job, hot.
nvidia-smi logs SM clock, power, temperature and clock-event reasons every 50 ms beside it.
"""
from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import kernels  # noqa: E402, F401  (first: decides TRITON_INTERPRET)
from kernels import bench  # noqa: E402
from kernels.clock_log import ClockLog  # noqa: E402

IDLE_S, HEAVY_S, TRACE_S, SOAK_S = 2.0, 1.5, 1.5, 60.0
#: (label, provider, dtype, d, causal, direction, N); B = 4, H = 32 at d = 64 and 16 at d = 128, as the bench
CASES = [
    ("gluon fwd fp16 d128 causal 16k", "gluon", "fp16", 128, True, "fwd", 16384),
    ("cudnn fwd fp16 d128 causal 16k", "sdpa-cudnn", "fp16", 128, True, "fwd", 16384),
    ("flash fwd fp16 d128 causal 16k", "sdpa-flash", "fp16", 128, True, "fwd", 16384),
    ("gluon fwd fp16 d64 causal 4k", "gluon", "fp16", 64, True, "fwd", 4096),
    ("flash fwd fp16 d64 causal 4k", "sdpa-flash", "fp16", 64, True, "fwd", 4096),
    ("triton bwd bf16 d128 full 4k", "triton", "bf16", 128, False, "bwd", 4096),
    ("flex bwd bf16 d128 full 4k", "flex", "bf16", 128, False, "bwd", 4096),
]
#: windows of call start times, ms after the first call: the bench's window before run 10 (after 25 ms of
#: warm-up, 100 ms of calls), then later ones
WINDOWS = {"bench 25-125 ms": (25, 125), "250-500 ms": (250, 500), "500-1500 ms": (500, 1500)}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def inputs(dtype, d, N, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    H = 32 if d == 64 else 16
    return tuple(torch.randn(4, H, N, d, device="cuda", dtype=DTYPES[dtype], generator=g) for _ in range(4))


def run_for(fn, seconds):
    """Call fn back to back for about `seconds` of wall time (the heavy predecessor)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(4):
            fn()
        torch.cuda.synchronize()


def trace(fn, seconds, cache):
    """(start ms after the first call, duration ms) of every call for about `seconds`."""
    t0 = torch.cuda.Event(enable_timing=True)
    events = []
    wall_end = time.perf_counter() + seconds
    t0.record()
    wall0 = time.time()
    while time.perf_counter() < wall_end:
        for _ in range(8):
            cache.zero_()  # flush L2, as do_bench does
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            events.append((s, e))
        torch.cuda.synchronize()
    return wall0, [(t0.elapsed_time(s), s.elapsed_time(e)) for s, e in events]


def windows(calls):
    out = {}
    for name, (lo, hi) in WINDOWS.items():
        ms = [d for t, d in calls if lo <= t < hi]
        out[name] = statistics.median(ms) if ms else None
    return out


def main() -> int:
    out_dir = pathlib.Path(os.environ.get("OUT", "."))
    clocks = ClockLog(str(out_dir / "smi_clock_settle.csv"), interval_ms=50)
    env = bench.environment(torch.device("cuda"))
    print(f"{env['device']['name']}; torch {env['torch']}, triton {env['triton']}", flush=True)
    impls = {}
    cache = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    hq, hk, hv, hdo = inputs("fp16", 128, 16384, 1)
    impls["triton"] = bench.PROVIDERS["triton"].load()
    heavy = bench.make_call(impls["triton"], "fwd+bwd", hq, hk, hv, hdo, True, None)
    heavy()
    rows = []
    for conditions in (("after idle", "after heavy"), ("soak", "hot, after heavy")):
        if conditions[0] == "soak":
            print(f"soak: {SOAK_S:.0f} s of the heavy job", flush=True)
            run_for(heavy, SOAK_S)
            conditions = conditions[1:]
        for label, prov, dtype, d, causal, direction, N in CASES:
            if prov not in impls:
                impls[prov] = bench.PROVIDERS[prov].load()
            q, k, v, dO = inputs(dtype, d, N, 2)
            with impls[prov].context():  # SDPA's backend choice
                fn = bench.make_call(impls[prov], direction, q, k, v, dO, causal, None)
                for _ in range(3):  # compile / autotune / first-call costs out of the way
                    fn()
                torch.cuda.synchronize()
                flops = bench.attention_flops(4, q.shape[1], N, d, causal, direction)
                for cond in conditions:
                    if cond == "after idle":
                        time.sleep(IDLE_S)
                    else:
                        run_for(heavy, HEAVY_S)
                    wall0, calls = trace(fn, TRACE_S, cache)
                    w = windows(calls)
                    rows.append(dict(case=label, condition=cond, wall0=wall0, calls=len(calls), median_ms=w,
                                     tflops={k_: (flops / m * 1e-9 if m else None) for k_, m in w.items()},
                                     trace=[[round(t, 3), round(dur, 4)] for t, dur in calls]))
                    print(f"{label:32s} {cond:16s} " + "  ".join(
                        f"{k_}: {t:6.1f}" for k_, t in rows[-1]["tflops"].items() if t), flush=True)
            del q, k, v, dO, fn
    clocks.stop()
    for r in rows:  # the clock, power and temperature during each trace
        r["gpu"] = clocks.summary(r["wall0"], r["wall0"] + TRACE_S)
    path = out_dir / "clock_settle.json"
    path.write_text(json.dumps(dict(env=env, idle_s=IDLE_S, heavy_s=HEAVY_S, trace_s=TRACE_S, soak_s=SOAK_S,
                                    heavy="triton fwd+bwd fp16 d128 causal N=16384 B=4 H=16",
                                    date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), rows=rows)))
    print(f"wrote {path}")
    print("\nTFLOP/s (median of the calls starting in each window)")
    print(f"{'case':32s} {'condition':16s} " + " ".join(f"{k_:>16s}" for k_ in WINDOWS))
    for r in rows:
        print(f"{r['case']:32s} {r['condition']:16s} " + " ".join(
            f"{(r['tflops'][k_] or float('nan')):16.1f}" for k_ in WINDOWS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
