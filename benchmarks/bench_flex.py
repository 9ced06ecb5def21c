"""The mini-Flex against FlexAttention (compiled) on the H100 (lesson 05, issue 7).

    python benchmarks/bench_flex.py                       # check, time, table, JSON + PNG
    python benchmarks/bench_flex.py --ns 4096 --budget 200

For each mask (causal; causal sliding window of 1024 keys; causal document masking of packed
documents), head dim d (64 with H = 16, 128 with H = 8; B = 4; fp16) and N (4k, 8k, 16k), the
same torch BlockMask (create_block_mask, 128 × 128 blocks) drives both kernels:

1. correctness first: O, dQ, dK, dV of both are compared, on one (batch, head) slice, with the
   float64 materialised reference; the mini-Flex's error must be within 2x FlexAttention's own
   (+ a few ulps);
2. timing with triton.testing.do_bench (median): the forward (inputs that require grad, so both
   save what their backward needs), and the backward alone (autograd.grad on a kept graph).

Both run through their public entry points: torch.compile(flex_attention, dynamic=False) with its
default kernel options (FlexAttention's H100 tile defaults, no autotuning), and
kernels.mini_flex.mini_flex_attention with its default tiles (the same values), or, with --tune,
the fastest of three candidates per head dim on the causal mask at N = 4096 (all timings are
recorded under "tuning"). Effective TFLOP/s count only the attended pairs: 4·B·H·d·(pairs)
forward, 2.5x that backward. Results go to benchmarks/results/flex_h100.json and flex_h100.png.
A time budget (--budget, seconds) stops the sweep early; the JSON is rewritten after every case.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time

import torch
import torch._functorch.config  # noqa: F401  (`import torch` alone does not load it)

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kernels  # noqa: E402
from kernels import flex_patterns as fp  # noqa: E402
from kernels import mini_flex as mf  # noqa: E402
from kernels.grading.core import tolerance  # noqa: E402

MASKS = ["causal", "sliding_window", "document"]
CASES = [(64, 16), (128, 8)]  # (d, H)
BATCH = 4
NS = [4096, 8192, 16384]
WINDOW = 1024


def make_pattern(mask: str, N: int, device) -> fp.Pattern:
    if mask == "causal":
        return fp.causal()
    if mask == "sliding_window":
        return fp.causal_sliding_window(WINDOW)
    if mask == "document":
        # packed documents of random lengths between N/32 and N/4 (the last one takes the rest)
        g = torch.Generator().manual_seed(N)
        lengths, left = [], N
        while left > 0:
            n = min(left, int(torch.randint(max(1, N // 32), max(1, N // 4) + 1, (1,), generator=g)))
            lengths.append(n)
            left -= n
        return fp.document(fp.document_ids_from_lengths(lengths), causal=True, device=device)
    raise ValueError(mask)


def describe(mask):
    return {"causal": "causal", "sliding_window": f"causal sliding window, {WINDOW} keys back",
            "document": "causal document masking, packed documents of N/32..N/4 tokens"}[mask]


def check(q, k, v, dO, pattern, mini_out, flex_out, rows=slice(None)):
    """Errors of both against the float64 reference on (batch 0, head 0); the mini-Flex must be
    within 2x FlexAttention's error + a floor. Returns a dict of errors and the verdict."""
    sl = (slice(0, 1), slice(0, 1))
    q64, k64, v64 = (t[sl].detach().double().requires_grad_() for t in (q, k, v))
    O64 = fp.reference_attention(q64, k64, v64, pattern)
    O64.backward(dO[sl].double())
    want = [O64, q64.grad, k64.grad, v64.grad]
    out, ok = {}, True
    for name, w, m, f in zip(("O", "dQ", "dK", "dV"), want, mini_out, flex_out):
        m, f = m[sl].double(), f[sl].double()
        err_m = (m - w).abs().max().item()
        err_f = (f - w).abs().max().item()
        tol = tolerance(w, f, torch.float16, factor=2.0)
        out[name] = {"mini_flex_err": err_m, "flex_err": err_f, "tolerance": tol}
        ok &= err_m <= tol
    out["pass"] = bool(ok)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ns", type=int, nargs="*", default=NS)
    ap.add_argument("--masks", nargs="*", default=MASKS)
    ap.add_argument("--ds", type=int, nargs="*", default=[d for d, _ in CASES])
    ap.add_argument("--budget", type=float, default=1e9, help="seconds; stop starting new cases after this")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--merge", action="store_true", help="merge into an existing flex_h100.json")
    ap.add_argument("--tune", action="store_true",
                    help="first pick the mini-Flex tiles per head dim among a few candidates (causal, N=4096)")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU plumbing check: tiny shapes under the interpreter, SDPA with the dense mask standing "
                         "in for FlexAttention (no flex backward on CPU), wall-clock timing; numbers mean nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        return smoke(args)
    if not torch.cuda.is_available():
        print("bench_flex needs a CUDA GPU; the recorded results are in benchmarks/results/flex_h100.json")
        return 0

    import triton
    from triton.testing import do_bench
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # the backward is timed on a kept graph (retain_graph=True), which compiled autograd graphs
    # refuse when they donate their saved buffers to the backward's outputs
    if hasattr(torch._functorch.config, "donated_buffer"):
        torch._functorch.config.donated_buffer = False
    torch._dynamo.config.cache_size_limit = 256
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 256
    if hasattr(torch._dynamo.config, "accumulated_recompile_limit"):
        torch._dynamo.config.accumulated_recompile_limit = 1024
    flex = torch.compile(flex_attention, dynamic=False)
    return sweep_and_record(args, flex, do_bench, create_block_mask, torch.device("cuda"),
                            torch.cuda.get_device_name(), triton.__version__)


def smoke(args):
    """Run main's whole path on the CPU with tiny shapes (see --smoke)."""
    import triton
    from torch.nn.attention.flex_attention import create_block_mask, create_mask

    global BATCH, FWD_CANDIDATES, BWD_CANDIDATES
    BATCH = 1
    FWD_CANDIDATES = {64: [(16, 16, 4, 1), (32, 16, 4, 1)], 128: [(16, 16, 4, 1)]}
    BWD_CANDIDATES = [(16, 32, 32, 16, 4, 1)]

    def sdpa_as_flex(q, k, v, block_mask):
        N = q.shape[2]
        dense = create_mask(block_mask.mask_mod, None, None, N, N, device=q.device)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)

    def wall_clock(fn, warmup=0, rep=0, return_mode="median"):
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def small_blocks(mask_mod, B, H, Nq, Nk, device):
        return create_block_mask(mask_mod, B, H, Nq, Nk, device=device, BLOCK_SIZE=32)

    args.ns = [n for n in args.ns if n <= 128] or [64]
    args.ds = [64]
    return sweep_and_record(args, sdpa_as_flex, wall_clock, small_blocks, torch.device("cpu"),
                            "CPU smoke run (not a measurement)", triton.__version__, tune_N=64)


def sweep_and_record(args, flex, do_bench, create_block_mask, dev, device_name, triton_version, tune_N=4096):
    """Tune (optionally), then check and time every case; write JSON, table and plot."""
    t0 = time.time()
    outdir = pathlib.Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / "flex_h100.json"
    record = {
        "device": device_name, "torch": torch.__version__, "triton": triton_version,
        "python": platform.python_version(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": "float16", "batch": BATCH, "block_mask": "create_block_mask, BLOCK_SIZE 128 x 128 (both kernels)",
        "timing": "triton.testing.do_bench median, ms; forward with inputs requiring grad; backward = autograd.grad on a kept graph",
        "flops": "effective: 4*B*H*d*attended_pairs forward, 2.5x backward",
        "masks": {m: describe(m) for m in MASKS},
        "mini_flex_configs": {}, "rows": [],
    }
    if args.merge and path.exists():
        old = json.loads(path.read_text())
        keep = [r for r in old.get("rows", [])]
        record["rows"] = keep
        record["mini_flex_configs"] = old.get("mini_flex_configs", {})

    cases = [(d, H) for d, H in CASES if d in args.ds]
    chosen = {}
    if args.tune:
        record["tuning"] = []
        for d, H in cases:
            chosen[d] = tune(d, H, do_bench, create_block_mask, record["tuning"], dev=dev, N=tune_N)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    todo = [(N, mask, d, H) for N in args.ns for mask in args.masks for d, H in cases]
    for N, mask, d, H in todo:
        if time.time() - t0 > args.budget:
            print(f"time budget of {args.budget:.0f} s spent: stopping before N={N} {mask} d={d}", flush=True)
            break
        try:
            row = run_case(N, mask, d, H, flex, chosen, record, do_bench, create_block_mask, dev=dev)
        except Exception as e:  # one failing case must not lose the others
            print(f"{mask} N={N} d={d}: {type(e).__name__}: {str(e)[:300]}", flush=True)
            record.setdefault("errors", []).append({"mask": mask, "N": N, "d": d, "error": f"{type(e).__name__}: {e}"[:500]})
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            continue
        record["rows"] = [r for r in record["rows"] if (r["mask"], r["N"], r["d"]) != (mask, N, d)] + [row]
        print(f"[{time.time() - t0:5.0f}s] {mask:15s} N={N:5d} d={d:3d}  check={'ok' if row['check']['pass'] else 'FAIL'}  "
              f"fwd {row['mini_flex_fwd_ms']:.3f}/{row['flex_fwd_ms']:.3f} ms ({row['speed_fwd']:.2f}x)  "
              f"bwd {row['mini_flex_bwd_ms']:.3f}/{row['flex_bwd_ms']:.3f} ms ({row['speed_bwd']:.2f}x)", flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        path.write_text(json.dumps(record, indent=1) + "\n")

    path.write_text(json.dumps(record, indent=1) + "\n")
    table(record)
    try:
        plot(record, outdir / "flex_h100.png")
    except Exception as e:  # the JSON and the table are written already
        print(f"no plot: {type(e).__name__}: {e}")
    return 0 if all(r["check"]["pass"] for r in record["rows"]) and not record.get("errors") else 1


def run_case(N, mask, d, H, flex, chosen, record, do_bench, create_block_mask, dev=None):
    """Check, then time, one (mask, N, d): returns the row."""
    dev = dev or torch.device("cuda")
    tc = time.time()
    B = BATCH
    pattern = make_pattern(mask, N, dev)
    bm = create_block_mask(pattern.mask_mod, None, None, N, N, device=dev)
    mbm = mf.MiniBlockMask.from_torch(bm)
    density = float(pattern.dense_mask_fn(1, 1, N, N, dev).sum()) / (N * N)
    block_density = (1.0 - mbm.sparsity())
    g = torch.Generator(device=dev).manual_seed(N + d)
    q, k, v, dO = (torch.randn(B, H, N, d, device=dev, dtype=torch.float16, generator=g) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    _, fwd_cfg, bwd_cfg = mf.default_configs(d, dev.type == "cuda")
    fwd_cfg, bwd_cfg = chosen.get(d, (fwd_cfg, bwd_cfg))
    record["mini_flex_configs"][f"d={d}"] = {"forward": vars(fwd_cfg), "backward": vars(bwd_cfg),
                                             "how": "tuned (see tuning)" if d in chosen else "default_configs"}

    def run_flex():
        return flex(q, k, v, block_mask=bm)

    def run_mini():
        return mf.mini_flex_attention(q, k, v, pattern, block_mask=mbm, config=fwd_cfg, bwd_config=bwd_cfg)

    # correctness first
    outs = {}
    for name, fn in (("flex", run_flex), ("mini_flex", run_mini)):
        O = fn()
        grads = torch.autograd.grad(O, (q, k, v), dO)
        outs[name] = [O.detach()] + [gr.detach() for gr in grads]
    verdict = check(q, k, v, dO, pattern, outs["mini_flex"], outs["flex"])
    del outs
    row = {"mask": mask, "N": N, "d": d, "B": B, "H": H, "density": density, "block_density": block_density,
           "check": verdict}
    # timing
    for name, fn in (("flex", run_flex), ("mini_flex", run_mini)):
        row[f"{name}_fwd_ms"] = do_bench(fn, warmup=25, rep=100, return_mode="median")
        O = fn()
        row[f"{name}_bwd_ms"] = do_bench(lambda: torch.autograd.grad(O, (q, k, v), dO, retain_graph=True),
                                         warmup=25, rep=100, return_mode="median")
        del O
    pairs = density * N * N
    fl_fwd = 4 * B * H * d * pairs
    for name in ("flex", "mini_flex"):
        row[f"{name}_fwd_tflops"] = fl_fwd / row[f"{name}_fwd_ms"] * 1e-9
        row[f"{name}_bwd_tflops"] = 2.5 * fl_fwd / row[f"{name}_bwd_ms"] * 1e-9
    row["speed_fwd"] = row["flex_fwd_ms"] / row["mini_flex_fwd_ms"]  # > 1: mini-Flex faster
    row["speed_bwd"] = row["flex_bwd_ms"] / row["mini_flex_bwd_ms"]
    row["seconds"] = time.time() - tc
    return row


#: tile candidates per head dim, default (FlexAttention's own H100 choice) first
FWD_CANDIDATES = {64: [(128, 128, 4, 3), (128, 64, 4, 3), (128, 128, 8, 3)],
                  128: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3)]}
BWD_CANDIDATES = [(64, 128, 128, 64, 8, 3), (64, 128, 128, 64, 4, 3), (64, 64, 64, 64, 4, 3)]


def tune(d, H, do_bench, create_block_mask, log, dev=None, N=4096):
    """Time the candidate tiles of the mini-Flex on the causal mask at N=4096; keep the fastest
    forward and backward (a failing candidate, e.g. out of shared memory, is logged and skipped)."""
    dev = dev or torch.device("cuda")
    pattern = fp.causal()
    mbm = mf.MiniBlockMask.from_torch(create_block_mask(pattern.mask_mod, None, None, N, N, device=dev))
    g = torch.Generator(device=dev).manual_seed(1)
    q, k, v, dO = (torch.randn(BATCH, H, N, d, device=dev, dtype=torch.float16, generator=g) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    best = {}
    for kind, cands in (("fwd", FWD_CANDIDATES[d]), ("bwd", BWD_CANDIDATES)):
        for c in cands:
            try:
                if kind == "fwd":
                    cfg = mf.ForwardConfig(*c)
                    ms = do_bench(lambda: mf.mini_flex_attention(q, k, v, pattern, block_mask=mbm, config=cfg),
                                  warmup=25, rep=100, return_mode="median")
                else:
                    cfg = mf.BackwardConfig(*c)
                    O = mf.mini_flex_attention(q, k, v, pattern, block_mask=mbm, bwd_config=cfg)
                    ms = do_bench(lambda: torch.autograd.grad(O, (q, k, v), dO, retain_graph=True), warmup=25, rep=100, return_mode="median")
                    del O
                log.append({"d": d, "N": N, "mask": "causal", "kind": kind, "config": list(c), "ms": ms})
                print(f"tune {kind} d={d} {c}: {ms:.3f} ms", flush=True)
                if kind not in best or ms < best[kind][0]:
                    best[kind] = (ms, cfg)
            except Exception as e:
                log.append({"d": d, "N": N, "kind": kind, "config": list(c), "error": f"{type(e).__name__}: {e}"[:300]})
                print(f"tune {kind} d={d} {c}: {type(e).__name__}: {str(e)[:200]}", flush=True)
    _, f0, b0 = mf.default_configs(d, dev.type == "cuda")
    return (best["fwd"][1] if "fwd" in best else f0), (best["bwd"][1] if "bwd" in best else b0)


def table(record):
    print(f"\n{record['device']}, torch {record['torch']}, triton {record['triton']}, fp16, B={record['batch']}")
    print("times in ms; dens = fraction of (q, kv) pairs attended")
    print(f"{'mask':15s} {'N':>6s} {'d':>4s} {'dens':>5s} | {'fwd mini':>9s} {'fwd flex':>9s} {'x':>5s} | "
          f"{'bwd mini':>9s} {'bwd flex':>9s} {'x':>5s} | check")
    for r in sorted(record["rows"], key=lambda r: (MASKS.index(r["mask"]), r["d"], r["N"])):
        print(f"{r['mask']:15s} {r['N']:6d} {r['d']:4d} {r['density']:5.2f} | {r['mini_flex_fwd_ms']:9.3f} "
              f"{r['flex_fwd_ms']:9.3f} {r['speed_fwd']:5.2f} | {r['mini_flex_bwd_ms']:9.3f} "
              f"{r['flex_bwd_ms']:9.3f} {r['speed_bwd']:5.2f} | {'ok' if r['check']['pass'] else 'FAIL'}")
    print("x = FlexAttention time / mini-Flex time (>= 0.9 is the target; > 1: the mini-Flex is faster)")


def plot(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["rows"]
    ds = sorted({r["d"] for r in rows})
    fig, axes = plt.subplots(2, len(ds), figsize=(5.5 * len(ds), 7), squeeze=False)
    colors = {"causal": "C0", "sliding_window": "C1", "document": "C2"}
    for col, d in enumerate(ds):
        for row_i, phase in enumerate(("fwd", "bwd")):
            ax = axes[row_i][col]
            for mask in MASKS:
                rs = sorted((r for r in rows if r["d"] == d and r["mask"] == mask), key=lambda r: r["N"])
                if not rs:
                    continue
                Ns = [r["N"] for r in rs]
                ax.plot(Ns, [r[f"mini_flex_{phase}_tflops"] for r in rs], "o-", color=colors[mask], label=f"mini-Flex, {mask}")
                ax.plot(Ns, [r[f"flex_{phase}_tflops"] for r in rs], "s--", color=colors[mask], alpha=0.6, label=f"FlexAttention, {mask}")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{'forward' if phase == 'fwd' else 'backward'}, d={d}")
            ax.set_xlabel("N")
            ax.set_ylabel("effective TFLOP/s (attended pairs)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"mini-Flex vs FlexAttention (compiled), {record['device']}, fp16, B={record['batch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
