"""Tiles of the static Triton backward at d = 128, against FlexAttention in the same process (H100).

    OUT=... python benchmarks/backward_tile_sweep.py     # writes $OUT/backward_tile_sweep.json

Why: at d = 128 the backward led FlexAttention by only 0-7 % in runs 4-8 (benchmarks/PERFORMANCE.md,
section 6), with the tiles STATIC_TILES had taken over from the dynamic kernels' tuning. This times other
tiles, and one fused launch, compiled static, at N = 4096 and 16384 (B = 4, H = 16), non-causal in bf16
and causal in fp16 (the two classes whose lead was smallest in the recorded runs). "default" is
attention_backward as users get it: since this sweep, the fused launch with 3 stages
(PERFORMANCE_backward.md, section 9; the recorded file has the tiles before it). Every variant's dQ,
dK, dV of head (0, 0) is checked against float64 autograd first, with the benchmark's tolerance.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import kernels  # noqa: E402, F401  (first: decides TRITON_INTERPRET)
from kernels import bench, reference  # noqa: E402
from kernels import triton_backward as tb  # noqa: E402
from kernels import triton_forward as tf  # noqa: E402
from kernels.grading.core import tolerance  # noqa: E402

import triton  # noqa: E402

NS = [int(n) for n in os.environ.get("NS", "4096,16384").split(",")]
#: (causal, dtype) classes
CLASSES = [(False, torch.bfloat16), (True, torch.float16)]
#: name -> (dK/dV tile, dQ tile, fused); a tile is (B_r, B_c, warps, stages)
VARIANTS = {
    "3 stages": ((64, 128, 8, 3), (128, 64, 8, 3), False),
    "3 stages, fused": ((64, 128, 8, 3), (128, 64, 8, 3), True),
    "4 stages": ((64, 128, 8, 4), (128, 64, 8, 4), False),
    "2 stages": ((64, 128, 8, 2), (128, 64, 8, 2), False),
    "dkdv 32x128 w4": ((32, 128, 4, 3), (128, 64, 8, 3), False),
    "dq 64x64 w4": ((64, 128, 8, 3), (64, 64, 4, 3), False),
    "both 64x64 w4": ((64, 64, 4, 3), (64, 64, 4, 3), False),
}


def main() -> int:
    t_start, rows = time.time(), []
    flex = bench._load_flex().differentiable
    bench_ms = lambda f: triton.testing.do_bench(f, warmup=50, rep=300, return_mode="median")  # noqa: E731
    for causal, dtype in CLASSES:
        for N in NS:
            B, H, d = 4, 16, 128
            g = torch.Generator(device="cuda").manual_seed(N + causal)
            q, k, v, dO = (torch.randn(B, H, N, d, device="cuda", dtype=dtype, generator=g) for _ in range(4))
            O, L = tf.attention_forward(q, k, v, is_causal=causal)
            flops = bench.attention_flops(B, H, N, d, causal, "bwd")
            head = lambda t: t[:1, :1]  # noqa: E731  (1, 1, N, d)
            want = reference.attention_backward(*(head(t).double() for t in (q, k, v, dO)), is_causal=causal)
            naive = reference.attention_backward(*(head(t) for t in (q, k, v, dO)), is_causal=causal)
            row = dict(N=N, causal=causal, dtype=str(dtype).split(".")[-1], B=B, H=H, d=d, tflops={}, check={},
                       static_tiles=str(tb.STATIC_TILES[(128, causal)].__dict__))
            row["tflops"]["default"] = flops / bench_ms(lambda: tb.attention_backward(q, k, v, O, L, dO, is_causal=causal)) * 1e-9
            for name, (c1, c2, fused) in VARIANTS.items():
                def run(c1=c1, c2=c2, fused=fused):
                    p = tb._Problem(q, k, v, O, L, dO, causal, None)
                    p.run_static(c1, c2, fused=fused)
                    return p
                try:
                    p = run()
                    errs = []
                    for gname, got, w, n in zip(("dQ", "dK", "dV"), (p.dQ, p.dK, p.dV), want, naive):
                        err, tol = float((head(got).double() - w).abs().max()), tolerance(w, n, dtype, 3.0)
                        errs.append(err <= tol)
                    row["check"][name] = "ok" if all(errs) else "WRONG"
                    if all(errs):
                        row["tflops"][name] = flops / bench_ms(run) * 1e-9
                except Exception as e:  # noqa: BLE001  (a tile that does not compile or fit: recorded)
                    row["check"][name] = f"error: {type(e).__name__}: {str(e)[:200]}"
            qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
            o = flex(qg, kg, vg, causal, None)
            row["tflops"]["flex"] = flops / bench_ms(lambda: torch.autograd.grad(o, (qg, kg, vg), dO, retain_graph=True)) * 1e-9
            row["tflops"]["default again"] = flops / bench_ms(
                lambda: tb.attention_backward(q, k, v, O, L, dO, is_causal=causal)) * 1e-9
            rows.append(row)
            print(f"{row['dtype']} causal={causal!s:5} N={N:5d}  " + "  ".join(f"{k_} {t:5.1f}" for k_, t in row["tflops"].items())
                  + "".join(f"  [{k_}: {c}]" for k_, c in row["check"].items() if c != "ok") + f"  t={time.time() - t_start:.0f}s",
                  flush=True)
            del q, k, v, dO, O, L, o, qg, kg, vg
    out = pathlib.Path(os.environ.get("OUT", "."))
    (out / "backward_tile_sweep.json").write_text(json.dumps(dict(
        device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), variants={k_: list(v) for k_, v in VARIANTS.items()},
        rows=rows), indent=1))
    print("\nTFLOP/s, backward (ratio to FlexAttention)")
    for r in rows:
        print(f"{r['dtype']} causal={r['causal']!s:5} N={r['N']:5d}: " + "  ".join(
            f"{k_}={t:.0f} ({t / r['tflops']['flex']:.3f})" for k_, t in r["tflops"].items() if k_ != "flex"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
