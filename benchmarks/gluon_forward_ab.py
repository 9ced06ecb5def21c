"""A/B of the Gluon forward variants against the Triton kernel, SDPA flash and cuDNN, on one H100.

    python benchmarks/gluon_forward_ab.py          # writes $OUT/gluon_forward_ab.json when OUT is set

For each Gluon variant, d in {64, 128}, causal in {False, True}, N in {4096, 16384} (fp16, B = 4,
H = 32 at d = 64 and H = 16 at d = 128): check O and L on a slice (one head, the last 256 query rows)
against float64 naive attention, plus a ragged length (N = 1000, B = 1, H = 2, every row); time only
what passed, with triton.testing.do_bench (median). The peers are timed in the same process on the
same inputs: kernels.triton_forward.attention_forward, SDPA's FLASH_ATTENTION and CUDNN_ATTENTION
backends. FLOPs = 4·B·H·N²·d, half with causal masking. Every variant runs in its own try/except, so a
compile or launch failure prints a short traceback and the rest still run.

Environment knobs (comma lists): GLUON_AB_VARIANTS (ws,overlap), GLUON_AB_DIMS (64,128),
GLUON_AB_CAUSAL (0,1), GLUON_AB_N (4096,16384), GLUON_AB_REP_MS (do_bench rep, default 60).

    python benchmarks/gluon_forward_ab.py --sweep   # tile configs of "ws" (SWEEP below), $OUT/gluon_forward_sweep.json
    python benchmarks/gluon_forward_ab.py --fence   # with and without the scheduling fence, $OUT/gluon_forward_fence_ab.json
    python benchmarks/gluon_forward_ab.py --pingpong   # with and without the consumers taking turns,
                                                       # $OUT/gluon_forward_pingpong_ab.json
    python benchmarks/gluon_forward_ab.py --align   # tiles counted from row 0 and back from row N (ALIGN_END),
                                                    # $OUT/gluon_forward_align_ab.json
    python benchmarks/gluon_forward_ab.py --cases NAME '[["ws", {"NUM_WG": 3}], ...]'   # any configs, $OUT/NAME.json
    ncu --kernel-name regex:attention_forward_kernel --section ComputeWorkloadAnalysis ... \
        python benchmarks/gluon_forward_ab.py --ncu-driver   # two calls of each kernel at N = 8192, nothing else

Both check every config on the ragged length (all rows) and on the last rows of the timed shape, then
time it at each N of GLUON_AB_N, causal and not, beside the Triton kernel, SDPA flash and cuDNN.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import kernels  # noqa: E402, F401  (first: decides TRITON_INTERPRET)
from kernels import gluon_forward as gf  # noqa: E402
from kernels import triton_forward as tf  # noqa: E402

import triton  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402


def _env_list(name, default, cast=str):
    return [cast(x) for x in os.environ.get(name, default).split(",") if x]


VARIANTS = _env_list("GLUON_AB_VARIANTS", "ws,overlap")
DIMS = _env_list("GLUON_AB_DIMS", "64,128", int)
CAUSAL = [c == "1" for c in _env_list("GLUON_AB_CAUSAL", "0,1")]
LENGTHS = _env_list("GLUON_AB_N", "4096,16384", int)
REP_MS = int(os.environ.get("GLUON_AB_REP_MS", "60"))
SLICE = 256  # query rows checked per case


def reference(q, k, v, causal, rows=None):
    """float64 naive attention of (B, H, N, d) inputs, for the query rows `rows` (default all):
    returns O (float64) and L = logsumexp of the scaled scores (natural log)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    q64, k64, v64 = q.double(), k.double(), v.double()
    N = q.shape[2]
    idx = torch.arange(N, device=q.device) if rows is None else rows
    s = (q64[:, :, idx] @ k64.transpose(-1, -2)) * scale  # (B, H, R, N)
    if causal:
        s = s.masked_fill(torch.arange(N, device=q.device)[None, :] > idx[:, None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    return torch.softmax(s, dim=-1) @ v64, lse


def naive_half(q, k, v, causal, rows):
    """Naive attention computed in the inputs' dtype (fp16 scores, softmax and product): its error
    is the yardstick, as in benchmarks/PERFORMANCE_forward.md (tolerance 2x that error)."""
    N = q.shape[2]
    s = (q[:, :, rows] @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        s = s.masked_fill(torch.arange(N, device=q.device)[None, :] > rows[:, None], float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def check(variant, d, causal, q, k, v, rows, head=None, config=None):
    """Max |error| of O and L of one variant on `rows` (one head when `head` is given), next to the
    error of naive attention in fp16 as the tolerance yardstick."""
    O, L = gf.attention_forward_gluon(q, k, v, is_causal=causal, variant=variant, config=config)
    torch.cuda.synchronize()
    if head is not None:
        q, k, v, O, L = (t[:1, head:head + 1] for t in (q, k, v, O, L))
    o_ref, l_ref = reference(q, k, v, causal, rows)
    err_o = (O[:, :, rows].double() - o_ref).abs().max().item()
    err_l = (L[:, :, rows].double() - l_ref).abs().max().item()
    o_half = naive_half(q, k, v, causal, rows)
    tol_o = max(2 * (o_half.double() - o_ref).abs().max().item(), 2e-3)
    ok = math.isfinite(err_o) and math.isfinite(err_l) and err_o <= tol_o and err_l <= 1e-2
    return ok, err_o, err_l, tol_o


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=REP_MS, return_mode="median")


def main() -> int:
    torch.manual_seed(0)
    dev = torch.cuda.get_device_name()
    print(f"{dev}; torch {torch.__version__}, triton {triton.__version__}; fp16; variants {VARIANTS}", flush=True)
    t_start = time.time()
    records, passed = [], {}

    # ---- correctness: the ragged length first (every row), then the big shapes on a slice
    for variant in VARIANTS:
        for d in DIMS:
            for causal in CAUSAL:
                key = (variant, d, causal)
                try:
                    q, k, v = (torch.randn(1, 2, 1000, d, device="cuda", dtype=torch.float16) for _ in range(3))
                    ok, eo, el, tol = check(variant, d, causal, q, k, v, torch.arange(1000, device="cuda"))
                    print(f"check {variant:8s} d={d:3d} causal={causal!s:5} N=1000 (B=1,H=2, all rows): "
                          f"max|dO|={eo:.2e} (tol {tol:.1e}) max|dL|={el:.2e}  {'PASS' if ok else 'FAIL'}", flush=True)
                    passed[key] = ok
                except Exception:  # noqa: BLE001
                    print(f"check {variant} d={d} causal={causal} N=1000 raised:\n"
                          + "".join(traceback.format_exc().splitlines(True)[-6:]), flush=True)
                    passed[key] = False

    for d in DIMS:
        H = 32 if d == 64 else 16
        B = 4
        for N in LENGTHS:
            q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.float16) for _ in range(3))
            rows = torch.arange(N - SLICE, N, device="cuda")
            for causal in CAUSAL:
                flops = 4 * B * H * N * N * d * (0.5 if causal else 1.0)
                rec = dict(d=d, N=N, B=B, H=H, causal=causal, tflops={}, errors={})
                # peers
                peers = {
                    "triton": lambda: tf.attention_forward(q, k, v, is_causal=causal),
                    "flash": lambda: _sdpa(SDPBackend.FLASH_ATTENTION, q, k, v, causal),
                    "cudnn": lambda: _sdpa(SDPBackend.CUDNN_ATTENTION, q, k, v, causal),
                }
                for name, fn in peers.items():
                    try:
                        rec["tflops"][name] = flops / bench(fn) * 1e-9
                    except Exception as exc:  # noqa: BLE001
                        rec["errors"][name] = f"{type(exc).__name__}: {str(exc)[:200]}"
                for variant in VARIANTS:
                    name = f"gluon_{variant}"
                    if not passed.get((variant, d, causal)):
                        rec["errors"][name] = "skipped: ragged check failed"
                        continue
                    try:
                        ok, eo, el, tol = check(variant, d, causal, q, k, v, rows, head=H - 1)
                        print(f"check {variant:8s} d={d:3d} causal={causal!s:5} N={N:5d} (last {SLICE} rows, one head): "
                              f"max|dO|={eo:.2e} (tol {tol:.1e}) max|dL|={el:.2e}  {'PASS' if ok else 'FAIL'}", flush=True)
                        rec["errors"][name + "_check"] = dict(o=eo, l=el, tol_o=tol, ok=ok)
                        if not ok:
                            continue
                        ms = bench(lambda: gf.attention_forward_gluon(q, k, v, is_causal=causal, variant=variant))
                        rec["tflops"][name] = flops / ms * 1e-9
                    except Exception:  # noqa: BLE001
                        tb = "".join(traceback.format_exc().splitlines(True)[-6:])
                        print(f"{name} d={d} N={N} causal={causal} raised:\n{tb}", flush=True)
                        rec["errors"][name] = tb[-600:]
                print(f"  d={d:3d} N={N:5d} causal={causal!s:5}: "
                      + "  ".join(f"{k}={v:6.1f}" for k, v in rec["tflops"].items()), flush=True)
                records.append(rec)
            del q, k, v
            torch.cuda.empty_cache()

    # ---- summary table
    print(f"\nTFLOP/s (median of do_bench, {dev}); ratios of each Gluon variant to the peers")
    head = f"{'d':>4} {'N':>6} {'causal':>6} {'flash':>7} {'cudnn':>7} {'triton':>7}"
    for variant in VARIANTS:
        head += f" {variant:>8} {'/flash':>6} {'/cudnn':>6} {'/triton':>7}"
    print(head)
    for r in records:
        t = r["tflops"]
        line = f"{r['d']:>4} {r['N']:>6} {str(r['causal']):>6} " + " ".join(
            f"{t.get(p, float('nan')):7.1f}" for p in ("flash", "cudnn", "triton"))
        for variant in VARIANTS:
            g = t.get(f"gluon_{variant}", float("nan"))
            line += f" {g:8.1f} " + " ".join(f"{g / t.get(p, float('nan')):6.2f}" for p in ("flash", "cudnn")) + \
                f" {g / t.get('triton', float('nan')):7.2f}"
        print(line)
    print(f"total wall time {time.time() - t_start:.0f} s")
    out = os.environ.get("OUT")
    if out:
        path = pathlib.Path(out) / "gluon_forward_ab.json"
        path.write_text(json.dumps(dict(device=dev, torch=torch.__version__, triton=triton.__version__,
                                        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), variants=VARIANTS, configs={f"{k[0]}_{k[1]}": v for k, v in gf.CONFIGS.items()},
                                        ragged_checks={f"{k[0]}_d{k[1]}_causal{int(k[2])}": v for k, v in passed.items()},
                                        records=records), indent=1))
        print(f"wrote {path}")
    return 0


#: --sweep: "ws" tile configs per head dim (B_r per warpgroup, B_c, stages), two consumer warpgroups as
#: when it was recorded (results/gluon_forward_sweep_h100.json, made before the scheduling fence; it also
#: timed one consumer warpgroup: 0.7-0.8x of two, since removed from the kernel).
SWEEP = {
    64: [("ws", dict(gf.TWO_CONSUMERS, BLOCK_M=m, BLOCK_N=n, STAGES=st)) for m, n, st in
         ((64, 128, 3), (64, 128, 4), (64, 128, 2), (64, 64, 4), (128, 64, 3), (128, 64, 4))],
    128: [("ws", dict(BLOCK_M=m, BLOCK_N=n, STAGES=st)) for m, n, st in ((64, 128, 2), (64, 64, 3), (64, 64, 4))],
}
#: --fence: each variant with and without the scheduling fence (kernels/gluon_forward.py, _step, step 5);
#: "ws" with two consumer warpgroups, as recorded (results/gluon_forward_fence_ab_h100.json)
FENCE_AB = {d: [(variant, dict(gf.TWO_CONSUMERS if variant == "ws" else {}, FENCE=fence))
                for variant in ("ws", "overlap") for fence in (True, False)] for d in (64, 128)}
#: --pingpong: "ws" with and without the two consumers taking turns (kernels/gluon_forward.py, _turn_wait)
PINGPONG_AB = {d: [("ws", dict(gf.TWO_CONSUMERS, PINGPONG=pp)) for pp in (True, False)] for d in (64, 128)}

#: --align: the default build with its tiles counted from row 0 (the ragged tile last) and back from row N
ALIGN_AB = {d: [("ws", dict(ALIGN_END=a)) for a in (False, True)] for d in (64, 128)}


def sweep(cases: dict, name: str) -> int:
    """Each (variant, config) of cases[d]: checked on the ragged length (all rows) and on the last rows of
    every timed shape, then timed beside the Triton kernel, SDPA flash and cuDNN on the same inputs."""
    torch.manual_seed(0)
    dev = torch.cuda.get_device_name()
    print(f"{dev}; torch {torch.__version__}, triton {triton.__version__}; fp16; {name}", flush=True)
    t_start, rows_out, ragged = time.time(), [], {}
    for d in DIMS:
        H, B = (32 if d == 64 else 16), 4
        for causal in CAUSAL:
            for variant, cfg in cases[d]:
                key = (variant, json.dumps(cfg, sort_keys=True))
                try:
                    q, k, v = (torch.randn(1, 2, 1000, d, device="cuda", dtype=torch.float16) for _ in range(3))
                    ragged[key] = check(variant, d, causal, q, k, v, torch.arange(1000, device="cuda"), config=cfg)[0]
                except Exception:  # noqa: BLE001
                    print(f"{variant} {cfg} d={d} causal={causal} raised:\n" + traceback.format_exc()[-600:], flush=True)
                    ragged[key] = False
            for N in LENGTHS:
                q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.float16) for _ in range(3))
                flops = 4 * B * H * N * N * d * (0.5 if causal else 1.0)
                rec = dict(d=d, causal=causal, N=N, B=B, H=H, tflops={}, checks={})
                for peer, fn in (("triton", lambda: tf.attention_forward(q, k, v, is_causal=causal)),
                                 ("flash", lambda: _sdpa(SDPBackend.FLASH_ATTENTION, q, k, v, causal)),
                                 ("cudnn", lambda: _sdpa(SDPBackend.CUDNN_ATTENTION, q, k, v, causal))):
                    rec["tflops"][peer] = flops / bench(fn) * 1e-9
                for variant, cfg in cases[d]:
                    label = f"{variant} " + json.dumps(cfg, sort_keys=True)
                    if not ragged[(variant, json.dumps(cfg, sort_keys=True))]:
                        rec["checks"][label] = "ragged check failed"
                        continue
                    ok = check(variant, d, causal, q, k, v, torch.arange(N - SLICE, N, device="cuda"), head=H - 1,
                               config=cfg)[0]
                    rec["checks"][label] = "ok" if ok else "FAILED"
                    if ok:
                        rec["tflops"][label] = flops / bench(lambda: gf.attention_forward_gluon(
                            q, k, v, is_causal=causal, variant=variant, config=cfg)) * 1e-9
                print(f"d={d:3d} causal={causal!s:5} N={N:5d}: " + "  ".join(f"{k_}={t:6.1f}" for k_, t in rec["tflops"].items())
                      + "".join(f"  [{k_}: {c}]" for k_, c in rec["checks"].items() if c != "ok"), flush=True)
                rows_out.append(rec)
                del q, k, v
    print(f"total wall time {time.time() - t_start:.0f} s")
    out = os.environ.get("OUT")
    if out:
        path = pathlib.Path(out) / f"{name}.json"
        path.write_text(json.dumps(dict(device=dev, torch=torch.__version__, triton=triton.__version__,
                                        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), rows=rows_out), indent=1))
        print(f"wrote {path}")
    return 0


def ncu_driver() -> int:
    """For Nsight Compute: the Gluon kernel ("ws") at d = 64 and 128 and the Triton kernel at d = 64 (its
    tuned 128 x 128, 4-warp, 3-stage tile, no autotuning), non-causal, N = 8192, two calls each."""
    for d, H in ((64, 32), (128, 16)):
        q, k, v = (torch.randn(4, H, 8192, d, device="cuda", dtype=torch.float16) for _ in range(3))
        for _ in range(2):
            gf.attention_forward_gluon(q, k, v)
            if d == 64:
                tf.launch(q, k, v, config=dict(BLOCK_M=128, BLOCK_N=128, num_warps=4, num_stages=3, Q_BLOCKS=1))
    torch.cuda.synchronize()
    return 0


def _sdpa(backend, q, k, v, causal):
    with sdpa_kernel(backend):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)


if __name__ == "__main__":
    if "--sweep" in sys.argv[1:]:
        sys.exit(sweep(SWEEP, "gluon_forward_sweep"))
    if "--ncu-driver" in sys.argv[1:]:
        sys.exit(ncu_driver())
    if "--fence" in sys.argv[1:]:
        sys.exit(sweep(FENCE_AB, "gluon_forward_fence_ab"))
    if "--pingpong" in sys.argv[1:]:
        sys.exit(sweep(PINGPONG_AB, "gluon_forward_pingpong_ab"))
    if "--align" in sys.argv[1:]:
        sys.exit(sweep(ALIGN_AB, "gluon_forward_align_ab"))
    if "--cases" in sys.argv[1:]:  # --cases NAME JSON: [[variant, config], ...] for every d of GLUON_AB_DIMS
        name, cases = sys.argv[sys.argv.index("--cases") + 1:][:2]
        sys.exit(sweep({d: [tuple(c) for c in json.loads(cases)] for d in DIMS}, name))
    sys.exit(main())
