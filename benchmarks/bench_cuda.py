"""Benchmark the course's CUDA C++ kernels against torch SDPA's flash backend (FlashAttention-2).

One script for the GPU: build the extension, check every version against float64 attention,
then time them (fp16, B = 4; H = 32 at d = 64, H = 16 at d = 128; N = 1k..16k; causal and not;
forward and backward), print a table, and write JSON (device, versions, date) and a PNG.

    python benchmarks/bench_cuda.py                      # full run, results in benchmarks/results/
    python benchmarks/bench_cuda.py --out /tmp/r --quick # N = 1k, 4k only
    python benchmarks/bench_cuda.py --sweep              # also time every v3 tile configuration

FLOPs: 4·B·H·N²·d forward (x0.5 causal), x2.5 for the backward. The scalar v1 kernels run only
up to N = 2k (they are ~100x slower: their point is to be read, not timed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels import cuda_kernels, reference  # noqa: E402
from kernels.grading.core import tolerance  # noqa: E402

SHAPES = {64: 32, 128: 16}  # head dim -> heads
BATCH = 4
V1_MAX_N = 2048


def flops(B, H, N, d, causal, direction):
    f = 4.0 * B * H * N * N * d * (0.5 if causal else 1.0)
    return f * (2.5 if direction == "backward" else 1.0)


def bench_ms(fn, min_time=0.15, max_iters=200):
    """Median time of fn() in ms, by CUDA events, after a warm-up."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    one = time.perf_counter() - t0
    iters = int(max(3, min(max_iters, min_time / max(one, 1e-6))))
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sdpa_flash(q, k, v, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


# ------------------------------------------------------------------------------------------------

def correctness(log):
    """Every version on odd shapes against float64, within 2x the fp16 naive error."""
    checks = []
    g = torch.Generator(device="cuda").manual_seed(1234)
    for d in (64, 128):
        for causal in (False, True):
            for (Nq, Nk) in ((1000, 1000), (77, 300)):
                q = torch.randn(2, 4, Nq, d, device="cuda", generator=g).half()  # (B, H, Nq, d)
                k = torch.randn(2, 4, Nk, d, device="cuda", generator=g).half()  # (B, H, Nk, d)
                v = torch.randn(2, 4, Nk, d, device="cuda", generator=g).half()
                dO = torch.randn_like(q)
                O64 = reference.ground_truth(q, k, v, is_causal=causal)
                tol = tolerance(O64, reference.attention(q, k, v, is_causal=causal), torch.float16)
                want_b = reference.attention_backward(q.double(), k.double(), v.double(), dO.double(), is_causal=causal)
                naive_b = reference.attention_backward(q, k, v, dO, is_causal=causal)
                for ver in ("v1", "v2", "v3"):
                    O, L = cuda_kernels.forward(q, k, v, is_causal=causal, version=ver)
                    err = (O.double() - O64).abs().max().item()
                    checks.append(dict(direction="forward", version=ver, d=d, causal=causal, Nq=Nq, Nk=Nk,
                                       max_err=err, tol=tol, ok=err <= tol))
                O, L = cuda_kernels.forward(q, k, v, is_causal=causal, version="v1")
                for ver in ("v1", "v2"):
                    got = cuda_kernels.backward(q, k, v, O, L, dO, is_causal=causal, version=ver)
                    worst, ok = 0.0, True
                    for gt, w, n in zip(got, want_b, naive_b):
                        t = tolerance(w, n, torch.float16)
                        e = (gt.double() - w).abs().max().item()
                        ok &= e <= t
                        worst = max(worst, e / t)
                    checks.append(dict(direction="backward", version=ver, d=d, causal=causal, Nq=Nq, Nk=Nk,
                                       max_err_over_tol=worst, ok=bool(ok)))
    bad = [c for c in checks if not c["ok"]]
    log(f"correctness: {len(checks) - len(bad)}/{len(checks)} checks pass")
    for c in bad:
        log(f"  WRONG: {c}")
    return checks


def timings(ns, log, sweep=False):
    rows = []
    for d, H in SHAPES.items():
        for causal in (False, True):
            for N in ns:
                q, k, v = (torch.randn(BATCH, H, N, d, device="cuda", dtype=torch.float16) for _ in range(3))
                dO = torch.randn_like(q)

                def record(direction, impl, fn):
                    try:
                        ms = bench_ms(fn)
                        tf = flops(BATCH, H, N, d, causal, direction) / (ms * 1e-3) / 1e12
                    except Exception as e:  # noqa: BLE001 - a failing provider is reported, not fatal
                        log(f"  {impl} {direction} d={d} N={N} causal={causal}: FAILED {type(e).__name__}: {e}")
                        return
                    rows.append(dict(direction=direction, impl=impl, d=d, H=H, B=BATCH, N=N, causal=causal,
                                     ms=ms, tflops=tf))

                record("forward", "sdpa-flash", lambda: sdpa_flash(q, k, v, causal))
                for ver in ("v2", "v3") + (("v1",) if N <= V1_MAX_N else ()):
                    record("forward", f"cuda-{ver}", lambda ver=ver: cuda_kernels.forward(q, k, v, is_causal=causal, version=ver))
                if sweep and N >= 4096:
                    for name in cuda_kernels.v3_configs():
                        if name.startswith(f"d{d}_"):
                            record("forward", f"cuda-v3[{name}]", lambda name=name: cuda_kernels.forward(
                                q, k, v, is_causal=causal, version="v3", config=name))

                # Backward: SDPA through autograd (backward kernels only: the graph is kept).
                qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
                out = sdpa_flash(qg, kg, vg, causal)
                record("backward", "sdpa-flash", lambda: torch.autograd.grad(out, (qg, kg, vg), dO, retain_graph=True))
                del out, qg, kg, vg
                O, L = cuda_kernels.forward(q, k, v, is_causal=causal, version="v2")
                for ver in ("v2",) + (("v1",) if N <= V1_MAX_N else ()):
                    record("backward", f"cuda-{ver}", lambda ver=ver: cuda_kernels.backward(
                        q, k, v, O, L, dO, is_causal=causal, version=ver))
                del q, k, v, dO, O, L
                torch.cuda.empty_cache()
                done = [r for r in rows if r["d"] == d and r["N"] == N and r["causal"] == causal]
                log(f"d={d} H={H} N={N:5d} causal={causal!s:5}: " + ", ".join(
                    f"{r['impl']}/{r['direction'][0]} {r['tflops']:.0f}" for r in done))
    return rows


def table(rows):
    lines = []
    for direction in ("forward", "backward"):
        impls = sorted({r["impl"] for r in rows if r["direction"] == direction and "[" not in r["impl"]},
                       key=lambda s: (s != "sdpa-flash", s))
        lines.append(f"\n{direction} TFLOP/s (fp16, B={BATCH}; ratio to sdpa-flash in brackets)")
        lines.append(f"{'d':>4} {'causal':>6} {'N':>6} " + " ".join(f"{i:>18}" for i in impls))
        keys = sorted({(r["d"], r["causal"], r["N"]) for r in rows if r["direction"] == direction})
        for d, c, N in keys:
            cell = {r["impl"]: r["tflops"] for r in rows if (r["direction"], r["d"], r["causal"], r["N"]) == (direction, d, c, N)}
            base = cell.get("sdpa-flash")
            out = []
            for i in impls:
                if i not in cell:
                    out.append(f"{'-':>18}")
                elif base and i != "sdpa-flash":
                    out.append(f"{cell[i]:>10.1f} ({cell[i] / base:4.2f}x)")
                else:
                    out.append(f"{cell[i]:>18.1f}")
            lines.append(f"{d:>4} {str(c):>6} {N:>6} " + " ".join(out))
    sweep = [r for r in rows if "[" in r["impl"]]
    if sweep:
        lines.append("\nforward v3 tile configurations (TFLOP/s)")
        for r in sorted(sweep, key=lambda r: (r["d"], r["causal"], r["N"], -r["tflops"])):
            lines.append(f"  d={r['d']:3d} causal={str(r['causal']):5} N={r['N']:5d} {r['impl']:32s} {r['tflops']:7.1f}")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 8), sharex=True)
    for col, (d, causal) in enumerate([(64, False), (64, True), (128, False), (128, True)]):
        for row, direction in enumerate(("forward", "backward")):
            ax = axes[row, col]
            sel = [r for r in rows if r["d"] == d and r["causal"] == causal and r["direction"] == direction and "[" not in r["impl"]]
            for impl in sorted({r["impl"] for r in sel}, key=lambda s: (s != "sdpa-flash", s)):
                pts = sorted((r["N"], r["tflops"]) for r in sel if r["impl"] == impl)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=impl,
                        color="black" if impl == "sdpa-flash" else None)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{direction}, d={d}, {'causal' if causal else 'full'}")
            ax.set_ylabel("TFLOP/s")
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("N")
            ax.legend(fontsize=7)
    fig.suptitle(f"Course CUDA kernels vs SDPA flash (fp16, B={BATCH}, H=32 at d=64, 16 at d=128) on {torch.cuda.get_device_name()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for cuda_h100.json / .png")
    ap.add_argument("--name", default="cuda_h100", help="file stem of the results")
    ap.add_argument("--quick", action="store_true", help="N = 1k and 4k only")
    ap.add_argument("--sweep", action="store_true", help="also time every v3 tile configuration")
    ap.add_argument("--ns", default="", help="comma-separated sequence lengths (overrides --quick)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda.py needs a CUDA GPU; the recorded results are in benchmarks/results/cuda_h100.json")
        return 1
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []

    def log(msg):
        print(msg, flush=True)
        lines.append(msg)

    t0 = time.perf_counter()
    cuda_kernels.build(verbose=False)
    log(f"built the extension in {time.perf_counter() - t0:.1f} s on {torch.cuda.get_device_name()}")
    checks = correctness(log)
    ns = [int(x) for x in args.ns.split(",") if x] or ([1024, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384])
    rows = timings(ns, log, sweep=args.sweep)
    text = table(rows)
    log(text)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    result = dict(
        device=torch.cuda.get_device_name(),
        capability=".".join(map(str, torch.cuda.get_device_capability())),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        triton=triton_version,
        python=platform.python_version(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command=" ".join([os.path.basename(sys.executable), *sys.argv]),
        flops="forward 4*B*H*N^2*d (x0.5 causal); backward 2.5x forward",
        dtype="float16",
        v3_configs=cuda_kernels.v3_configs(),
        correctness=checks,
        results=rows,
        table=text,
    )
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    plot(rows, out / f"{args.name}.png")
    (out / f"{args.name}.log").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / (args.name + '.json')} and .png", flush=True)
    return 0 if all(c["ok"] for c in checks) else 2


if __name__ == "__main__":
    sys.exit(main())
