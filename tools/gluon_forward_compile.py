"""Compile the Gluon forward kernel (kernels/gluon_forward.py) for the H100 without a GPU, and read
back what ptxas made of each variant.

For every (variant, d in {64, 128}, causal in {0, 1}), fp16, the tile config of
kernels.gluon_forward.CONFIGS, this compiles `attention_forward_kernel` for GPUTarget("cuda", 90, 32)
and prints:

    regs      registers per thread ptxas allocated (cuobjdump --dump-resource-usage; with warp
              specialisation the launch value, which setmaxnreg then moves per partition)
    stack     stack frame in bytes: > 0 means spills to local memory
    smem      shared memory per CTA (Triton's count)
    sass      SASS instructions; HGMMA: wgmma instructions; wgmma_wait: WARPGROUP.DEPBAR waits;
              bar: BAR instructions (bar.sync / bar.arrive of named barriers)
    ex2_in_overlap  MUFU.EX2 that ptxas left between each `wgmma wait <= 1` and the following
              `wait 0` (per loop body): the exponentials that really overlap the in-flight P·V
    setmaxnreg  the register reallocation instructions in the SASS (USETMAXREG)
    ws        whether the TTGIR holds a ttg.warp_specialize op, and its partitions' warp counts

Gluon kernels compile through GluonASTSource (triton.experimental.gluon._runtime), whose signature
takes the TMA descriptors as "tensordesc<fp16[1, 64, 64],NVMMASharedLayout(...)>" strings, the
same strings the launcher derives from a host TensorDescriptor.

    cd /work/main && PYTHONPATH=. TRITON_INTERPRET=0 python tools/gluon_forward_compile.py
        [--variants ws,overlap] [--dims 64,128] [--causal 0,1] [--dtype fp16]
        [--config B_r,B_c,stages] [--json] [--fence] [--pingpong] [--set KEY=INT ...]   (a tile other
        than CONFIGS'; one JSON line per case; with the scheduling fence of _step; with the consumers
        taking turns; any other config entry)
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import sys
import time

os.environ["TRITON_INTERPRET"] = "0"  # before kernels / triton: compile for real, no interpreter

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from kernels import gluon_forward as gf  # noqa: E402  (first: kernels.device reads TRITON_INTERPRET)
from kernels.triton_resources import read_cubin  # noqa: E402

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402

def signature(d: int, variant: str, causal: bool, dtype: str, cfg: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, options) of one compile, as a launch with contiguous inputs gives."""
    q_rows, q_layout, kv_layout = gf.shared_layouts(d, cfg, variant, {"fp16": gl.float16, "bf16": gl.bfloat16}[dtype])
    q_sig = f"tensordesc<{dtype}[1, {q_rows}, {d}],{q_layout!r}>"
    kv_sig = f"tensordesc<{dtype}[1, {cfg['BLOCK_N']}, {d}],{kv_layout!r}>"
    consts = gf.launch_meta(d, cfg, variant, causal)
    options = dict(num_warps=consts.pop("num_warps"))
    sig = dict(q_desc=q_sig, k_desc=kv_sig, v_desc=kv_sig, o_desc=q_sig, L="*fp32", N="i32", qk_scale="fp32")
    sig.update({k: "constexpr" for k in consts})
    return sig, consts, options


def compile_one(d: int, variant: str, causal: bool, dtype: str = "fp16", cfg: dict | None = None) -> dict:
    cfg = gf.resolve_config(d, variant, cfg)
    fn = gf.attention_forward_kernel
    sig, consts, options = signature(d, variant, causal, dtype, cfg)
    src = GluonASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
                         attrs={(fn.arg_names.index("L"),): [["tt.divisibility", 16]]})
    t0 = time.time()
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    seconds = time.time() - t0
    read = read_cubin(compiled.asm["cubin"], sass=True)
    seq = read["sass"]
    ops = collections.Counter(op.split(".")[0] for op, _ in seq)
    ttgir = compiled.asm["ttgir"]
    partitions = re.findall(r"partition\d+\(.*?\) num_warps\((\d+)\)", ttgir)
    ptx = compiled.asm["ptx"]
    return dict(
        variant=variant, d=d, causal=causal, dtype=dtype, cfg=cfg, num_warps=options["num_warps"], triton=triton.__version__,
        registers=read["registers"], stack=read["stack"],
        shared=int(compiled.metadata.shared), sass=sum(ops.values()), hgmma=ops["HGMMA"],
        wgmma_wait=ops["WARPGROUP"], setmaxnreg=ops["USETMAXREG"], bar_sync=ops["BAR"],
        ws=f"default+workers[{','.join(partitions)}] warps" if "ttg.warp_specialize" in ttgir else "no",
        overlap_ex2=_ex2_between_waits(seq),
        ptx_setmaxnreg=sorted(set(re.findall(r"setmaxnreg\.(inc|dec)\.sync\.aligned\.u32\s+(\d+)", ptx))),
        seconds=seconds,
    )


def _ex2_between_waits(seq) -> str:
    """How many MUFU.EX2 ptxas left between a `wgmma wait <= 1` and the next `wait 0`, per such
    window: the softmax work that actually overlaps the in-flight P·V wgmma in the final SASS."""
    counts, inside, n = [], False, 0
    for op, args in seq:
        if op.startswith("WARPGROUP.DEPBAR"):
            if inside:
                counts.append(n)
            inside, n = args.strip().endswith("0x1"), 0
        elif inside and op.startswith("MUFU.EX2"):
            n += 1
    return "/".join(map(str, counts)) or "-"


def fmt(r: dict) -> str:
    c = r["cfg"]
    tile = f"{c['NUM_WG']}x{c['BLOCK_M']}x{c['BLOCK_N']} s{c['STAGES']}"
    regs = ",".join(f"{k}{n}" for k, n in r["ptx_setmaxnreg"]) or "-"
    return (f"{r['variant']:8s} d={r['d']:<3d} causal={int(r['causal'])} {r['dtype']} {tile:14s} warps={r['num_warps']}"
            f"  regs={r['registers']:3d} stack={r['stack']:3d}B smem={r['shared'] / 1024:5.1f}KiB"
            f"  sass={r['sass']:5d} HGMMA={r['hgmma']:3d} wgmma_wait={r['wgmma_wait']:2d} bar={r['bar_sync']:2d}"
            f"  ex2_in_overlap={r['overlap_ex2']}  setmaxnreg={regs}  ws={r['ws']}  ({r['seconds']:.1f}s)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(gf.VARIANTS))
    p.add_argument("--dims", default="64,128")
    p.add_argument("--causal", default="0,1")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16"))
    p.add_argument("--config", default=None, help="B_r,B_c,stages instead of CONFIGS' tile")
    p.add_argument("--json", action="store_true", help="print each case as one JSON line")
    p.add_argument("--fence", action="store_true", help="compile with the scheduling fence (FENCE=True)")
    p.add_argument("--pingpong", action="store_true", help="compile with the consumers taking turns (PINGPONG=True)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=INT",
                   help="any other config entry, e.g. --set NUM_WG=3 --set CONSUMER_REGS=160 (repeatable)")
    a = p.parse_args(argv)
    cfg = None
    if a.config:
        m, n, st = (int(x) for x in a.config.split(","))
        cfg = dict(BLOCK_M=m, BLOCK_N=n, STAGES=st)
    if a.fence:
        cfg = dict(cfg or {}, FENCE=True)
    if a.pingpong:
        cfg = dict(cfg or {}, PINGPONG=True)
    for item in a.set:
        key, _, value = item.partition("=")
        cfg = dict(cfg or {}, **{key: int(value)})
    print(f"triton {triton.__version__}, Gluon forward, sm_90 (GPUTarget('cuda', 90, 32)), offline compile")
    bad = 0
    for variant in a.variants.split(","):
        for d in (int(x) for x in a.dims.split(",")):
            for causal in (c == "1" for c in a.causal.split(",")):
                try:
                    r = compile_one(d, variant, causal, a.dtype, cfg)
                except Exception as exc:  # noqa: BLE001  (report and go on with the others)
                    bad += 1
                    print(f"{variant:8s} d={d:<3d} causal={int(causal)} FAILED: {type(exc).__name__}: "
                          f"{str(exc)[-1500:]}", flush=True)
                    continue
                bad += r["stack"] > 0
                print(json.dumps(r) if a.json else fmt(r), flush=True)
    print("all compiled, no stack/spills" if not bad else f"{bad} compile(s) failed or spilled")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
