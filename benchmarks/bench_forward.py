"""Forward-pass benchmark of the course's Triton kernel on the H100 (lesson 03, issues 5 and 9).

    python benchmarks/bench_forward.py                # check, time, print a table, write JSON + PNG
    python benchmarks/bench_forward.py --sweep        # time every candidate config (tuning)

For each case (fp16; B=4; H=32 at d=64, H=16 at d=128; N = 1k..16k; causal and not) it first
checks the kernel against float64 naive attention (on the last 256 query rows of one head), then
times, with triton.testing.do_bench (median), the Triton forward and its peers: SDPA's flash,
cuDNN and memory-efficient backends, and FlexAttention compiled. TFLOP/s count 4·B·H·N²·d
FLOPs, half of that with causal. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import multiprocessing as mp
import os
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kernels  # noqa: E402  (first: decides whether triton runs under the interpreter)
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from kernels import reference  # noqa: E402
from kernels.grading.core import tolerance  # noqa: E402
from kernels.triton_forward import GPU_CONFIGS  # noqa: E402

CASES = [(64, 32), (128, 16)]  # (d, H)
BATCH = 4
NS = [1024, 2048, 4096, 8192, 16384]
PEERS = ["sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "flex"]


# ---------------------------------------------------------------------------------------------
# An experiment, not the course kernel: the inner loop with exp2 done in fp16 pairs
# (ex2.approx.f16x2: two exponentials per special-function-unit instruction). The sweep times it
# to test the claim that the SFU (MUFU.EX2) limits the kernel at d=64; see PERFORMANCE_forward.md.
# ---------------------------------------------------------------------------------------------
@triton.jit
def step_exp2_f16x2(acc, m_i, l_i, q, kT, v, offs_m, offs_n, N_k, qk_scale,
                    MASK_N: tl.constexpr, CAUSAL: tl.constexpr):
    s = tl.dot(q, kT)
    if MASK_N or CAUSAL:
        allowed = offs_n[None, :] < N_k
        if CAUSAL:
            allowed = allowed & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(allowed, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        s = s - m_new[:, None]
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        s = s * qk_scale - m_new[:, None]
    p = tl.inline_asm_elementwise("ex2.approx.f16x2 $0, $1;", "=r,r", [s.to(tl.float16)],
                                  dtype=tl.float16, is_pure=True, pack=2)
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p.to(tl.float32), 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p, v, acc)
    return acc, m_new, l_i


def _fast_exp2_step():
    return step_exp2_f16x2


def flops(B, H, N, d, causal):
    return 4 * B * H * N * N * d * (0.5 if causal else 1.0)


def inputs(B, H, N, d, dtype=torch.float16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, H, N, d, device="cuda", dtype=dtype, generator=g) for _ in range(3)]


def check(O, q, k, v, causal, rows=256):
    """O's last `rows` query rows of (batch 0, head 0) against float64 naive attention, within
    the course's tolerance (2x the fp16 naive error)."""
    N = q.shape[2]
    r0 = max(0, N - rows)
    qs, ks, vs = q[:1, :1, r0:], k[:1, :1], v[:1, :1]
    mask = None
    if causal:  # the rows keep their global index i: key j allowed when j <= i
        i = torch.arange(r0, N, device=q.device)[:, None]
        mask = torch.arange(N, device=q.device)[None, :] <= i
    want = reference.ground_truth(qs, ks, vs, attn_mask=mask)
    naive = reference.attention(qs, ks, vs, attn_mask=mask)
    tol = tolerance(want, naive, q.dtype)
    err = float((O[:1, :1, r0:].double() - want).abs().max())
    return err, tol


def bench_ms(fn):
    import triton

    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def peer_fn(name, q, k, v, causal):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name.startswith("sdpa_"):
        backend = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
                   "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}[name]

        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return run
    if name == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if not hasattr(peer_fn, "flex"):
            peer_fn.flex = torch.compile(flex_attention)
        block_mask = None
        if causal:
            N = q.shape[2]
            block_mask = create_block_mask(lambda b, h, i, j: j <= i, None, None, N, N, device="cuda")
        return lambda: peer_fn.flex(q, k, v, block_mask=block_mask)
    raise ValueError(name)


# ---------------------------------------------------------------------------------------------
# Compile in parallel: triton compiles one kernel per config and per constexpr combination, a few
# seconds each on one CPU core. Worker processes fill triton's on-disk cache; the timing process
# then finds every binary there.
# ---------------------------------------------------------------------------------------------
def _compile_one(job):
    import kernels.triton_forward as tf

    d, H, dtype_name, causal, cfg, tma, *fast = job
    q, k, v = inputs(1, H, 256, d, getattr(torch, dtype_name))
    try:
        tf.launch(q, k, v, is_causal=causal, config=cfg, use_tma=tma, step=_fast_exp2_step() if fast and fast[0] else None)
        torch.cuda.synchronize()
        return None
    except Exception as e:  # reported, not fatal: the sweep skips that config
        return f"{job}: {type(e).__name__}: {str(e)[:300]}"


def precompile(jobs, workers=None):
    workers = workers or max(1, min(len(jobs), (os.cpu_count() or 2) - 2))
    t0 = time.time()
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        errors = [e for e in ex.map(_compile_one, jobs) if e]
    print(f"precompiled {len(jobs)} kernels on {workers} processes in {time.time() - t0:.0f} s", flush=True)
    for e in errors:
        print("  compile error:", e, flush=True)
    return errors


# ---------------------------------------------------------------------------------------------
SWEEPS = {
    # the autotuner's own lists (kernels.triton_forward.GPU_CONFIGS, TMA): is its pick the best one?
    "tuned": {d: [(*c[:4], True, *c[4:]) for c in GPU_CONFIGS[d]] for d in (64, 128)},
    # first pass (N=8192): tile shapes, warps, stages, pointers vs TMA
    "wide": {
        64: [(128, 64, 4, 2, True), (128, 64, 4, 3, True), (128, 64, 4, 4, True), (128, 128, 4, 2, True),
             (128, 128, 4, 3, True), (128, 64, 8, 3, True), (128, 128, 8, 2, True), (128, 128, 8, 3, True),
             (64, 64, 4, 3, True), (64, 128, 4, 2, True), (256, 64, 8, 2, True), (256, 128, 8, 2, True),
             (128, 64, 8, 3, False), (128, 128, 8, 2, False), (128, 128, 8, 3, False), (64, 64, 4, 3, False),
             (64, 128, 4, 2, False), (128, 64, 4, 2, False)],
        128: [(128, 64, 8, 2, True), (128, 64, 8, 3, True), (128, 128, 8, 2, True), (128, 128, 8, 3, True),
              (64, 64, 4, 3, True), (64, 128, 4, 2, True), (128, 64, 4, 2, True), (128, 32, 4, 3, True),
              (128, 64, 8, 2, False), (128, 64, 8, 3, False), (128, 128, 8, 2, False), (64, 64, 4, 3, False),
              (64, 128, 4, 2, False)],
    },
    # third pass: one query block per program or two (causal: a long and a short one)
    "qblocks": {
        64: [(128, 128, 4, 3, True, 1), (128, 128, 4, 3, True, 2), (128, 64, 4, 3, True, 1),
             (128, 64, 4, 3, True, 2), (64, 128, 4, 2, True, 1), (64, 128, 4, 2, True, 2)],
        128: [(128, 128, 8, 3, True, 1), (128, 128, 8, 3, True, 2), (128, 64, 4, 2, True, 1),
              (128, 64, 4, 2, True, 2), (128, 64, 8, 3, True, 1), (128, 64, 8, 3, True, 2)],
    },
    # second pass (N=4096 and 16384): around the winners, deeper pipelines
    "narrow": {
        64: [(128, 128, 4, 3, True), (64, 128, 4, 2, True), (128, 64, 4, 4, True), (128, 64, 4, 3, True),
             (128, 128, 4, 4, True), (64, 128, 4, 3, True), (128, 64, 4, 5, True), (64, 64, 4, 4, True)],
        128: [(128, 128, 8, 3, True), (128, 64, 8, 3, True), (128, 64, 4, 2, True), (128, 64, 8, 4, True),
              (128, 64, 4, 3, True), (64, 64, 4, 4, True), (128, 32, 8, 4, True)],
    },
}


def sweep(args):
    """Time every candidate config at one N for d=64 and d=128, causal and not, pointer and TMA."""
    import kernels.triton_forward as tf

    # (BLOCK_M, BLOCK_N, num_warps, num_stages, TMA): the pointer path needs 8 warps at BLOCK_M=128
    # (4 warps spill: its address tensors take registers that TMA does not need)
    cands = SWEEPS[args.sweep_set]
    if args.tma_only:
        cands = {d: [c for c in cs if c[4]] for d, cs in cands.items()}
    fast = {64: [(128, 128, 4, 3, True, 1), (128, 64, 4, 4, True, 1)],
            128: [(128, 128, 8, 3, True, 1), (128, 64, 8, 3, True, 1)]}
    if not args.fast_exp2:
        fast = {64: [], 128: []}
    cands = {d: [tuple(c) + (1,) * (6 - len(c)) for c in cs] for d, cs in cands.items()}  # Q_BLOCKS=1 default
    jobs = [(d, H, "float16", c, dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s, Q_BLOCKS=qb), t, False)
            for d, H in CASES for m, n, w, s, t, qb in cands[d] for c in (False, True)]
    jobs += [(d, H, "float16", c, dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s, Q_BLOCKS=qb), t, True)
             for d, H in CASES for m, n, w, s, t, qb in fast[d] for c in (False, True)]
    precompile(jobs)
    fast_step = _fast_exp2_step()
    rows = []
    for N in args.sweep_n:
        for d, H in CASES:
            q, k, v = inputs(BATCH, H, N, d)
            for causal in (False, True):
                base = {}
                for p in ("sdpa_flash", "sdpa_cudnn"):
                    base[p] = flops(BATCH, H, N, d, causal) / bench_ms(peer_fn(p, q, k, v, causal)) / 1e9
                for m, n, w, s, tma, qb, step in [c + (None,) for c in cands[d]] + [c + (fast_step,) for c in fast[d]]:
                    cfg = dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s, Q_BLOCKS=qb)
                    try:
                        O, _ = tf.launch(q, k, v, is_causal=causal, config=cfg, use_tma=tma, step=step)
                        err, tol = check(O, q, k, v, causal)
                        ms = bench_ms(lambda: tf.launch(q, k, v, is_causal=causal, config=cfg, use_tma=tma, step=step))
                    except Exception as e:
                        print(f"  d={d} causal={causal} {cfg} tma={tma}: {type(e).__name__}: {str(e)[:200]}")
                        continue
                    tfl = flops(BATCH, H, N, d, causal) / ms / 1e9
                    rows.append(dict(N=N, d=d, H=H, causal=causal, tma=tma, exp2_f16x2=step is not None, **cfg, ms=ms, tflops=tfl,
                                     err=err, tol=tol, ok=err <= tol, flash=base["sdpa_flash"],
                                     cudnn=base["sdpa_cudnn"]))
                ms = bench_ms(lambda: tf.attention_forward(q, k, v, is_causal=causal))  # autotuned
                picked = {str(key): str(c) for key, c in tf._autotuned_kernel(d, q.dtype).cache.items()
                          if key[0] == tf._n_key(N) and key[2] == causal}
                rows.append(dict(N=N, d=d, H=H, causal=causal, autotuned=True, picked=picked,
                                 tflops=flops(BATCH, H, N, d, causal) / ms / 1e9))
                print(f"  autotuned attention_forward: {rows[-1]['tflops']:.1f} TFLOP/s, picked {picked}", flush=True)
                best = sorted((r for r in rows if r["N"] == N and r["d"] == d and r["causal"] == causal
                               and not r.get("autotuned")), key=lambda r: -r["tflops"])
                print(f"\nN={N} d={d} causal={causal}: flash {base['sdpa_flash']:.0f}, cudnn {base['sdpa_cudnn']:.0f} TFLOP/s")
                for r in best[:12]:
                    print(f"  {r['BLOCK_M']:>3} {r['BLOCK_N']:>3} w{r['num_warps']} s{r['num_stages']} tma={int(r['tma'])}"
                          f" qb={r['Q_BLOCKS']}"
                          f"{' exp2-f16x2' if r['exp2_f16x2'] else ''}"
                          f"  {r['tflops']:6.1f} TFLOP/s  x{r['tflops'] / base['sdpa_flash']:.2f} flash"
                          f"  {'ok' if r['ok'] else 'WRONG'}", flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "forward_sweep_h100_n" + "-".join(str(n) for n in args.sweep_n) + ".json"
    (out / name).write_text(json.dumps(dict(meta=meta(), rows=rows), indent=1))


def precompile_for_tests():
    """Compile what tests/test_triton_forward.py's GPU tests will autotune over, in parallel."""
    import triton

    import kernels.triton_forward as tf

    dims = {"float16": (16, 32, 64, 80, 96, 128, 256), "bfloat16": (16, 32, 64, 80, 96, 128, 256),
            "float32": (16, 96, 256)}
    jobs = [(d, 3, dt, c, cfg, None)
            for dt, ds in dims.items() for d in ds for c in (False, True)
            for cfg in tf.configs_for(max(16, triton.next_power_of_2(d)), getattr(torch, dt))]
    precompile(jobs)


def meta():
    import triton

    return dict(device=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()),
                torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                dtype="float16", batch=BATCH)


def main_bench(args):
    from kernels.triton_forward import attention_forward

    results = []
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_precompile:
        import kernels.triton_forward as tf
        jobs = [(d, H, "float16", c, cfg, None)
                for d, H in CASES for c in (False, True) for cfg in tf.configs_for(d, torch.float16)]
        precompile(jobs)
    for d, H in CASES:
        for causal in (False, True):
            for N in args.n:
                q, k, v = inputs(BATCH, H, N, d)
                O, _ = attention_forward(q, k, v, is_causal=causal)  # autotunes on first call
                err, tol = check(O, q, k, v, causal)
                row = dict(d=d, H=H, B=BATCH, N=N, causal=causal, err=err, tol=tol, ok=err <= tol)
                if err > tol:
                    print(f"WRONG: triton d={d} N={N} causal={causal}: error {err:.3g} > tolerance {tol:.3g}", flush=True)
                impls = {"triton": lambda: attention_forward(q, k, v, is_causal=causal)}
                for p in args.peers:
                    impls[p] = peer_fn(p, q, k, v, causal)
                for name, fn in impls.items():
                    try:
                        ms = bench_ms(fn)
                        row[name] = flops(BATCH, H, N, d, causal) / ms / 1e9
                    except Exception as e:
                        print(f"  {name} failed at d={d} N={N} causal={causal}: {type(e).__name__}: {str(e)[:200]}")
                        row[name] = None
                try:
                    from kernels.triton_forward import _autotuned_kernel

                    best = _autotuned_kernel(triton_next_pow2(d), torch.float16).best_config
                    row["config"] = str(best)
                except Exception:
                    pass
                results.append(row)
                print(fmt_row(row, args.peers), flush=True)
                data = dict(meta=meta(), flops="4*B*H*N^2*d, x0.5 causal", results=results)
                (out / "forward_h100.json").write_text(json.dumps(data, indent=1))  # after every case
    print_table(results, args.peers)
    plot(data, out / "forward_h100.png")


def triton_next_pow2(n):
    import triton

    return triton.next_power_of_2(n)


def fmt_row(r, peers):
    cells = [f"d={r['d']:>3} H={r['H']:>2} N={r['N']:>5} {'causal' if r['causal'] else 'full  '}"]
    for name in ["triton"] + list(peers):
        v = r.get(name)
        cells.append(f"{name} {v:6.1f}" if v else f"{name}    -  ")
    if r.get("triton") and r.get("sdpa_flash"):
        cells.append(f"x{r['triton'] / r['sdpa_flash']:.2f} flash")
    if r.get("triton") and r.get("flex"):
        cells.append(f"x{r['triton'] / r['flex']:.2f} flex")
    if r.get("triton") and r.get("sdpa_cudnn"):
        cells.append(f"x{r['triton'] / r['sdpa_cudnn']:.2f} cudnn")
    cells.append("ok" if r["ok"] else "WRONG")
    return "  ".join(cells)


def print_table(results, peers):
    print("\nForward TFLOP/s (fp16, B=4), ratios of the Triton kernel to each peer")
    for r in results:
        print(fmt_row(r, peers))


def plot(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = data["results"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2), sharey=True)
    panels = [(d, c) for d, _ in CASES for c in (False, True)]
    names = ["triton"] + [p for p in PEERS if any(r.get(p) for r in res)]
    for ax, (d, causal) in zip(axes, panels):
        rows = [r for r in res if r["d"] == d and r["causal"] == causal]
        for name in names:
            pts = [(r["N"], r[name]) for r in rows if r.get(name)]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name, lw=2.5 if name == "triton" else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_title(f"d={d}, {'causal' if causal else 'not causal'}")
        ax.set_xlabel("sequence length N")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("TFLOP/s (fp16)")
    axes[0].legend(fontsize=8)
    m = data["meta"]
    fig.suptitle(f"Attention forward on {m['device']} (torch {m['torch']}, triton {m['triton']}, B={m['batch']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", action="store_true", help="time every candidate config (tuning)")
    p.add_argument("--sweep-n", type=int, nargs="+", default=[8192])
    p.add_argument("--sweep-set", choices=sorted(SWEEPS), default="narrow")
    p.add_argument("--tma-only", action="store_true")
    p.add_argument("--fast-exp2", action="store_true", help="also time the fp16x2-exp2 experiment")
    p.add_argument("--n", type=int, nargs="+", default=NS)
    p.add_argument("--peers", nargs="*", default=PEERS)
    p.add_argument("--no-precompile", action="store_true")
    p.add_argument("--precompile-for-tests", action="store_true", help="only compile what the GPU tests use")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    kernels.device.require_cuda("benchmarks/bench_forward.py")
    if args.precompile_for_tests:
        precompile_for_tests()
    elif args.sweep:
        sweep(args)
    else:
        main_bench(args)


if __name__ == "__main__":
    main()
