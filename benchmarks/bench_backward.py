"""Backward-pass benchmark of the course's Triton kernels on the H100 (lesson 04, issues 6 and 9).

    python benchmarks/bench_backward.py --sweep --out DIR    # tune, check, time; JSON + PNG in DIR
    python benchmarks/bench_backward.py --plot FILE.json     # redraw the PNG from a recorded JSON

What it does, in order (each step checks before it times):

1. Correctness: the Triton backward against float64 autograd through naive attention (ragged
   N = 1000, fp16 and bf16, d = 64 and 128, causal and not), within 3x the error of naive
   attention in the same dtype.
2. --sweep: every candidate configuration of the dK/dV kernel and of the dQ kernel, each checked
   for correctness, then timed alone at N = 8192 (B = 4; H = 32 at d = 64, H = 16 at d = 128), per
   head dim and causality. The fastest of each kernel is kept for step 3.
3. Timing (fp16, N = 1k..16k): the Triton backward (dQ, dK, dV from saved Q, K, V, O, L) and
   forward + backward, against torch SDPA's flash, cuDNN and memory-efficient backends and
   FlexAttention (torch.compile'd), their backward timed as torch.autograd.grad of a saved graph.
   Before timing, each provider's gradients are compared with SDPA flash's on the same inputs.

TFLOP/s: 4·B·H·N²·d per forward, ×0.5 causal; backward ×2.5, forward + backward ×3.5 (the
FlashAttention papers' count of the algorithm's FLOPs). Times are medians of
triton.testing.do_bench (L2 flushed between calls). Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = [(64, 32), (128, 16)]  # (d, H)
BATCH = 4
NS = [1024, 2048, 4096, 8192, 16384]
SWEEP_N = 8192
#: What --sweep times, per (d, causal): the current best first (the baseline, in the same run), then
#: variations around it. Earlier sweeps' results are in benchmarks/results/ and PERFORMANCE_backward.md.
SWEEP = {
    # (64, 128, 8, 3) at d = 64 and (64, 64, 8, 3) at d = 128: spill-free in the offline register
    # report (results/triton_resources_sm90.txt, PERFORMANCE_backward.md section 7), not timed yet
    (64, False): dict(dkdv=[(64, 128, 4, 3), (64, 128, 4, 2), (64, 128, 4, 4), (128, 128, 8, 3), (64, 128, 8, 3)],
                      dq=[(128, 64, 8, 3), (128, 64, 8, 2), (128, 64, 8, 4), (128, 128, 8, 3)]),
    (64, True): dict(dkdv=[(64, 64, 4, 3), (64, 64, 4, 2), (64, 64, 4, 4), (32, 64, 4, 3)],
                     dq=[(64, 64, 4, 3), (64, 64, 4, 2), (64, 64, 4, 4), (64, 32, 4, 3)]),
    (128, False): dict(dkdv=[(64, 128, 8, 3), (64, 128, 8, 2), (64, 128, 8, 4), (32, 128, 8, 3), (64, 64, 8, 3)],
                       dq=[(128, 64, 8, 3), (128, 64, 8, 2), (128, 64, 8, 4), (128, 32, 8, 3)]),
    (128, True): dict(dkdv=[(64, 128, 8, 3), (64, 128, 8, 2), (64, 128, 8, 4), (32, 128, 8, 3)],
                      dq=[(128, 64, 8, 3), (128, 64, 8, 2), (128, 64, 8, 4), (128, 32, 8, 3)]),
}
PROVIDERS = ["triton", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "flex"]
DEV = "cuda"  # "cpu" with --cpu-smoke: tiny shapes under the interpreter, to test this script only


def fwd_flops(B, H, N, d, causal):
    return 4 * B * H * N * N * d * (0.5 if causal else 1.0)


def log(msg):
    print(msg, flush=True)


class Budget:
    def __init__(self, seconds):
        self.t0, self.seconds = time.time(), seconds

    def left(self):
        return self.seconds - (time.time() - self.t0)

    def used(self):
        return time.time() - self.t0


def bench_ms(fn):
    import triton

    fn()
    if DEV == "cpu":
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def rand(B, H, N, d, dtype, g, requires_grad=False):
    return torch.randn(B, H, N, d, dtype=dtype, generator=g, device=DEV).requires_grad_(requires_grad)


# ------------------------------------------------------------------------------------------------
# 1. correctness against float64
# ------------------------------------------------------------------------------------------------
def check_small(tb, reference, tolerance, config=None, N=1000, d=64, dtype=torch.float16, causal=False, seed=0):
    """Max error / tolerance of the Triton backward on a ragged shape (1 means at the tolerance).
    H = 16 like the timed shapes, so that the kernels compiled here are the ones timed."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    q, k, v, dO = (rand(1, 16, N, d, dtype, g) for _ in range(4))
    up = lambda t: t.double()
    O, L = reference.attention(up(q), up(k), up(v), is_causal=causal, return_lse=True)
    dQ, dK, dV = tb.attention_backward(q, k, v, O.to(dtype), L.float(), dO, is_causal=causal, config=config)
    want = reference.attention_backward(up(q), up(k), up(v), up(dO), is_causal=causal)
    naive = reference.attention_backward(q, k, v, dO, is_causal=causal)
    worst = 0.0
    for got, w, n in zip((dQ, dK, dV), want, naive):
        tol = tolerance(w, n, dtype, factor=3.0)
        worst = max(worst, float((got.double() - w).abs().max()) / tol)
    return worst


# ------------------------------------------------------------------------------------------------
# 2. the sweep: each kernel's candidates, alone
# ------------------------------------------------------------------------------------------------
def sweep(tb, reference, tolerance, budget, results, share=0.5):
    """Time each candidate of each kernel alone; returns the best BackwardConfig per (d, causal).
    Stops once `share` of the time budget is used (the rest is for the timing against peers)."""
    best = {}
    for d, H in CASES:
        for causal in (False, True):
            g = torch.Generator(device=DEV).manual_seed(1)
            q, k, v, dO = (rand(BATCH, H, SWEEP_N, d, torch.float16, g) for _ in range(4))
            O, L = tb_forward(q, k, v, causal)
            prob = tb._Problem(q, k, v, O, L, dO, causal, None)
            fl = fwd_flops(BATCH, H, SWEEP_N, d, causal)
            rows = {"dkdv": [], "dq": []}
            plan = SWEEP.get((d, causal)) or dict(dkdv=tb.candidates("dkdv", d, causal, torch.float16),
                                                   dq=tb.candidates("dq", d, causal, torch.float16))
            for kind, cands, run in (("dkdv", plan["dkdv"], prob.run_dkdv), ("dq", plan["dq"], prob.run_dq)):
                for cfg in cands if DEV == "cuda" else cands[:2]:
                    if budget.left() < 20 or budget.used() > share * budget.seconds:
                        log("  sweep: half the budget used, stopping the sweep")
                        break
                    if d >= 128 and cfg[0] * cfg[1] >= 128 * 128:
                        continue
                    other = tb.default_config(d, causal)
                    full = tb.BackwardConfig(*(cfg if kind == "dkdv" else other.dkdv), *(cfg if kind == "dq" else other.dq))
                    try:
                        ratio = check_small(tb, reference, tolerance, full, N=1000 if DEV == "cuda" else 40, d=d,
                                            dtype=torch.float16 if DEV == "cuda" else torch.float32, causal=causal)
                        compiled = run(cfg)
                        regs = dict(n_regs=getattr(compiled, "n_regs", None), n_spills=getattr(compiled, "n_spills", None))
                        ms = bench_ms(lambda: run(cfg))
                    except Exception as e:  # out of shared memory or registers: not a candidate here
                        log(f"  {kind} {cfg}: failed ({type(e).__name__}: {str(e)[:80]})")
                        continue
                    # share of the backward's FLOPs: dK/dV does 4 of the 7 products, dQ 3
                    tf = (fl * (4 if kind == "dkdv" else 3) / 2) / (ms * 1e-3) / 1e12
                    rows[kind].append(dict(config=list(cfg), ms=ms, tflops_of_its_products=tf, err_over_tol=ratio, **regs))
                    log(f"  sweep d={d} causal={causal} {kind} {cfg}: {ms:.3f} ms ({tf:.0f} TFLOP/s of its products), "
                        f"err/tol {ratio:.2f}, registers {regs['n_regs']}, spills {regs['n_spills']}")
            ok = {kk: [r for r in rows[kk] if r["err_over_tol"] <= 1.0] for kk in rows}
            if ok["dkdv"] and ok["dq"]:
                b1 = min(ok["dkdv"], key=lambda r: r["ms"])
                b2 = min(ok["dq"], key=lambda r: r["ms"])
                best[(d, causal)] = tb.BackwardConfig(*b1["config"], *b2["config"])
                log(f"  best d={d} causal={causal}: {best[(d, causal)]}")
            results["sweep"].append(dict(d=d, H=H, N=SWEEP_N, B=BATCH, causal=causal, **rows))
            del q, k, v, dO, O, L, prob
            torch.cuda.empty_cache()
    return best


def tb_forward(q, k, v, causal):
    """O, L for the backward: the course's Triton forward when present, else SDPA math in fp32."""
    try:
        from kernels.triton_forward import attention_forward

        return attention_forward(q, k, v, is_causal=causal)
    except ImportError:
        from kernels import reference

        O, L = reference.attention(q.float(), k.float(), v.float(), is_causal=causal, return_lse=True)
        return O.to(q.dtype), L


# ------------------------------------------------------------------------------------------------
# 3. timing against the peers
# ------------------------------------------------------------------------------------------------
def make_peer(name, causal, N):
    """A differentiable attention (q, k, v) -> O for a peer, or None when unavailable."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name.startswith("sdpa_"):
        backend = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
                   "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}[name]

        def fn(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return fn
    if name == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        compiled = _flex_compiled()
        bm = None
        if causal:
            bm = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, None, None, N, N, device=DEV)
        return lambda q, k, v: compiled(q, k, v, block_mask=bm)
    raise ValueError(name)


_FLEX = None


def _flex_compiled():
    global _FLEX
    if _FLEX is None:
        import torch._dynamo
        import torch._functorch.config
        from torch.nn.attention.flex_attention import flex_attention

        torch._dynamo.config.cache_size_limit = 64
        # the compiled backward frees ("donates") its saved buffers: timing it repeatedly with
        # retain_graph=True needs them kept
        torch._functorch.config.donated_buffer = False
        _FLEX = torch.compile(flex_attention)  # automatic dynamic shapes: one compile serves several N
    return _FLEX


def time_case(tb, d, H, N, causal, configs, budget, flash_grads_check=True):
    """All providers on one shape: dict provider -> {bwd_ms, fwdbwd_ms, max_diff_vs_flash}."""
    g = torch.Generator(device=DEV).manual_seed(N + d)
    q, k, v = (rand(BATCH, H, N, d, torch.float16, g, requires_grad=True) for _ in range(3))
    dO = rand(BATCH, H, N, d, torch.float16, g)
    out = {}
    ref_grads = None
    for name in ["sdpa_flash"] + [p for p in PROVIDERS if p != "sdpa_flash"]:
        if budget.left() < (90 if name == "flex" else 20):
            log(f"  budget nearly exhausted: skipping {name} and the providers after it")
            break
        try:
            if name == "triton":
                O, L = tb_forward(q.detach(), k.detach(), v.detach(), causal)
                cfg = configs.get((d, causal))
                bwd = lambda: tb.attention_backward(q.detach(), k.detach(), v.detach(), O, L, dO, is_causal=causal, config=cfg)
                grads = bwd()

                def fwdbwd():
                    o = tb.flash_attention(q, k, v, is_causal=causal)
                    return torch.autograd.grad(o, (q, k, v), dO)

                if cfg is not None:  # pin the tuned config inside flash_attention too
                    fwdbwd = _pinned_fwdbwd(tb, q, k, v, dO, causal, cfg)
            else:
                fn = make_peer(name, causal, N)
                o = fn(q, k, v)
                bwd = lambda: torch.autograd.grad(o, (q, k, v), dO, retain_graph=True)
                grads = bwd()

                def fwdbwd(fn=fn):
                    return torch.autograd.grad(fn(q, k, v), (q, k, v), dO)

            diff = None
            if ref_grads is None and name == "sdpa_flash":
                ref_grads = [t.detach().clone() for t in grads]
            elif ref_grads is not None:
                diff = max(float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))
                           for a, b in zip(grads, ref_grads))
            del grads
            r = dict(bwd_ms=bench_ms(bwd), fwdbwd_ms=bench_ms(fwdbwd), rel_diff_vs_flash=diff)
            if diff is not None and diff > 0.05:
                r["wrong"] = True
            out[name] = r
        except Exception as e:
            log(f"  {name}: unavailable ({type(e).__name__}: {str(e)[:120]})")
            out[name] = dict(error=f"{type(e).__name__}: {str(e)[:200]}")
        torch.cuda.empty_cache()
    return out


def _pinned_fwdbwd(tb, q, k, v, dO, causal, cfg):
    def run():
        O, L = tb_forward(q.detach(), k.detach(), v.detach(), causal)
        return tb.attention_backward(q.detach(), k.detach(), v.detach(), O, L, dO, is_causal=causal, config=cfg)

    return run


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def table(results):
    lines = []
    head = f"{'d':>4} {'causal':>6} {'N':>6} | " + " ".join(f"{p:>14}" for p in PROVIDERS) + " | triton/flash triton/flex triton/cudnn"
    lines.append("backward TFLOP/s (fp16, B=4; H=32 at d=64, H=16 at d=128)")
    lines.append(head)
    for r in results["timings"]:
        tf = {}
        for p in PROVIDERS:
            x = r["providers"].get(p, {})
            tf[p] = x.get("bwd_tflops")
        cells = " ".join(f"{tf[p]:14.1f}" if tf[p] else f"{'-':>14}" for p in PROVIDERS)
        ratio = lambda a, b: f"{tf[a] / tf[b]:12.2f}" if tf.get(a) and tf.get(b) else f"{'-':>12}"
        lines.append(f"{r['d']:>4} {str(r['causal']):>6} {r['N']:>6} | {cells} | {ratio('triton', 'sdpa_flash')} "
                     f"{ratio('triton', 'flex')} {ratio('triton', 'sdpa_cudnn')}")
    lines.append("")
    lines.append("forward + backward TFLOP/s")
    lines.append(head)
    for r in results["timings"]:
        tf = {p: r["providers"].get(p, {}).get("fwdbwd_tflops") for p in PROVIDERS}
        cells = " ".join(f"{tf[p]:14.1f}" if tf[p] else f"{'-':>14}" for p in PROVIDERS)
        ratio = lambda a, b: f"{tf[a] / tf[b]:12.2f}" if tf.get(a) and tf.get(b) else f"{'-':>12}"
        lines.append(f"{r['d']:>4} {str(r['causal']):>6} {r['N']:>6} | {cells} | {ratio('triton', 'sdpa_flash')} "
                     f"{ratio('triton', 'flex')} {ratio('triton', 'sdpa_cudnn')}")
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2), sharey=True)
    for ax, (d, causal) in zip(axes, [(64, False), (64, True), (128, False), (128, True)]):
        rows = [r for r in results["timings"] if r["d"] == d and r["causal"] == causal]
        for p in PROVIDERS:
            xs = [r["N"] for r in rows if r["providers"].get(p, {}).get("bwd_tflops")]
            ys = [r["providers"][p]["bwd_tflops"] for r in rows if r["providers"].get(p, {}).get("bwd_tflops")]
            if xs:
                ax.plot(xs, ys, marker="o", lw=2.5 if p == "triton" else 1.2, label=p)
        ax.set_xscale("log", base=2)
        ax.set_title(f"backward, d={d}, {'causal' if causal else 'not causal'}")
        ax.set_xlabel("N")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("TFLOP/s (fp16)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Attention backward on {results['device']} (torch {results['torch']}, triton {results['triton']}, {results['date'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", action="store_true", help="time every candidate config and pin the best")
    ap.add_argument("--sweep-only", action="store_true", help="--sweep, then stop (no timing against the peers)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default="backward_h100")
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop timing (and still write results) after this")
    ap.add_argument("--ns", type=int, nargs="*", default=None)
    ap.add_argument("--plot", help="redraw the PNG of a recorded JSON and print its table")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: tests this script, not a benchmark")
    ap.add_argument("--quick", action="store_true", help="d=64, N=4096, Triton vs SDPA flash and cuDNN only (a first look)")
    args = ap.parse_args(argv)
    global CASES, BATCH, NS, SWEEP_N, DEV, PROVIDERS
    if args.cpu_smoke:
        CASES, BATCH, NS, SWEEP_N, DEV = [(32, 2)], 1, [64], 64, "cpu"
        PROVIDERS = ["triton", "sdpa_flash", "sdpa_cudnn"]
    if args.quick:
        CASES, NS = [(64, 32)], [4096]
        PROVIDERS = ["triton", "sdpa_flash", "sdpa_cudnn"]
    if args.plot:
        res = json.loads(pathlib.Path(args.plot).read_text())
        plot(res, pathlib.Path(args.plot).with_suffix(".png"))
        print(table(res))
        return 0
    import kernels  # noqa: F401
    import triton
    from kernels import reference
    from kernels import triton_backward as tb
    from kernels.grading.core import tolerance

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("bench_backward needs a CUDA GPU")
        return 1
    budget = Budget(args.budget_s)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(
        device=torch.cuda.get_device_name() if DEV == "cuda" else "CPU (smoke test: NOT a benchmark)", torch=torch.__version__, triton=triton.__version__,
        cuda=torch.version.cuda, date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        flops="forward 4*B*H*N^2*d (x0.5 causal); backward x2.5; forward+backward x3.5",
        batch=BATCH, cases=[dict(d=d, H=H) for d, H in CASES], dtype="float16",
        correctness=[], sweep=[], pinned_configs={}, timings=[],
    )

    def save():
        (out / f"{args.name}.json").write_text(json.dumps(results, indent=1))

    log(f"device {results['device']}, torch {results['torch']}, triton {results['triton']}")
    # 1. correctness (--sweep-only checks each swept configuration instead)
    for d in () if args.sweep_only else (64,) if args.quick else (64, 128) if DEV == "cuda" else (32,):
        for dtype in (torch.float16,) if args.quick else (torch.float16, torch.bfloat16) if DEV == "cuda" else (torch.float32,):
            for causal in (False, True):
                n = 1000 if DEV == "cuda" else 40
                r = check_small(tb, reference, tolerance, None if tb._autotuning() else tb.default_config(d, causal, dtype),
                                N=n, d=d, dtype=dtype, causal=causal)
                results["correctness"].append(dict(N=n, H=16, d=d, dtype=str(dtype), causal=causal, err_over_tol=r))
                log(f"correctness N={n} d={d} {dtype} causal={causal}: max error / tolerance = {r:.2f}"
                    + ("" if r <= 1 else "  FAILED"))
    save()
    # 2. sweep
    configs = {}
    if args.sweep or args.sweep_only:
        configs = sweep(tb, reference, tolerance, budget, results, share=0.95 if args.sweep_only else 0.5)
        for d, _ in CASES:  # cases the sweep did not reach: the default config, not a fresh autotune
            for c in (False, True):
                configs.setdefault((d, c), tb.default_config(d, c))
        results["pinned_configs"] = {f"d={d},causal={c}": repr(v) for (d, c), v in configs.items()}
        save()
    if args.sweep_only:
        log(json.dumps(results["pinned_configs"], indent=1))
        return 0
    # 3. timing
    ns = args.ns or NS
    order = sorted(ns, key=lambda n: (n < 4096, n))  # the targets (N >= 4k) first
    for N in order:
        for d, H in CASES:
            for causal in (False, True):
                if budget.left() < 30:
                    log("budget exhausted: stopping")
                    break
                t0 = time.time()
                prov = time_case(tb, d, H, N, causal, configs, budget)
                fl = fwd_flops(BATCH, H, N, d, causal)
                for p, r in prov.items():
                    if "bwd_ms" in r:
                        r["bwd_tflops"] = 2.5 * fl / (r["bwd_ms"] * 1e-3) / 1e12
                        r["fwdbwd_tflops"] = 3.5 * fl / (r["fwdbwd_ms"] * 1e-3) / 1e12
                results["timings"].append(dict(d=d, H=H, B=BATCH, N=N, causal=causal, providers=prov))
                tri = prov.get("triton", {}).get("bwd_tflops")
                fla = prov.get("sdpa_flash", {}).get("bwd_tflops")
                log(f"N={N} d={d} causal={causal}: triton bwd {tri or 0:.0f} TFLOP/s, flash {fla or 0:.0f} "
                    f"({time.time() - t0:.1f} s)")
                save()
    results["timings"].sort(key=lambda r: (r["d"], r["causal"], r["N"]))
    results["autotuned"] = tb.tuned_configs()
    save()
    try:
        plot(results, out / f"{args.name}.png")
    except Exception as e:  # matplotlib missing on the GPU image: the JSON is enough to redraw
        log(f"plot skipped: {e}")
    log(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
