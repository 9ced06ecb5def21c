"""What compiling the shape in does to the Triton backward's binaries, read without a GPU.

Compiles a backward kernel for sm_90 twice, as `_bwd_dkdv_kernel` / `_bwd_dq_kernel` (lengths and
strides at run time) and as `_bwd_static_kernel` (lengths and strides constant, N = 8192, contiguous
(B, H, N, d) inputs), and counts what ptxas produced: registers, stack (spills), SASS instructions,
integer instructions, barriers and wgmma. The numbers depend on the triton version: run it with the
GPU's (the H100 image has triton 3.6) to read the binaries the benchmarks timed.

    TRITON_INTERPRET=0 python tools/static_vs_dynamic_sass.py            # the tuned configs
    TRITON_INTERPRET=0 python tools/static_vs_dynamic_sass.py dkdv 64 0 64,128,8,3 64,64,4,3
        (kernel, head dim, causal 0/1, then configs B_r,B_c,warps,stages)
"""
import collections
import pathlib
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from kernels import triton_backward as tb  # noqa: E402
from kernels.triton_resources import read_cubin  # noqa: E402

N = 8192
INT_OPS = {"IMAD", "IADD3", "LEA", "SHF", "ISETP", "SEL", "LOP3", "IABS", "IMNMX", "VIADDMNMX", "VIADD"}


def compile_and_count(fn, consts: dict, warps: int, stages: int) -> dict:
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in ("Lg", "D"):
            sig[name], attrs[(i,)] = "*fp32", [["tt.divisibility", 16]]
        elif name in ("qk_scale", "scale"):
            sig[name] = "fp32"
        elif name in ("Q", "K", "V", "dO", "dQ", "dK", "dV"):
            sig[name], attrs[(i,)] = "*fp16", [["tt.divisibility", 16]]
        else:  # run-time lengths and strides, int32; strides divisible by 16 as a real launch says
            sig[name] = "i32"
            if name.startswith("stride_"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()}, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
    read = read_cubin(compiled.asm["cubin"], sass=True)
    ops = collections.Counter(op.split(".")[0] for op, _ in read["sass"])
    return dict(registers=read["registers"], stack=read["stack"],
                instructions=sum(ops.values()), integer=sum(ops[k] for k in INT_OPS), barriers=ops["BAR"],
                wgmma=ops["HGMMA"])


def both(kind: str, d: int, causal: bool, cfg: tuple) -> tuple[dict, dict]:
    """(dynamic, static) counts of kernel `kind` ("dkdv" or "dq") with config (B_r, B_c, warps, stages)."""
    m, n, w, st = cfg
    H = 2048 // d
    common = dict(HEAD_DIM=d, BLOCK_D=d, IS_CAUSAL=causal, PREC="tf32", USE_TMA=True)
    dynamic_fn = tb._bwd_dkdv_kernel if kind == "dkdv" else tb._bwd_dq_kernel
    dynamic = compile_and_count(dynamic_fn, dict(common, BLOCK_M=m, BLOCK_N=n), w, st)
    blocks = dict(BLOCK_M1=m, BLOCK_N1=n, BLOCK_M2=128, BLOCK_N2=64) if kind == "dkdv" else \
        dict(BLOCK_M1=64, BLOCK_N1=128, BLOCK_M2=m, BLOCK_N2=n)
    consts = dict(common, **blocks, H=H, Nq=N, Nk=N, KIND=0 if kind == "dkdv" else 1)
    for t, row in (("q", "m"), ("k", "n"), ("v", "n"), ("do", "m")):
        consts.update({f"stride_{t}b": H * N * d, f"stride_{t}h": N * d, f"stride_{t}{row}": d})
    return dynamic, compile_and_count(tb._bwd_static_kernel, consts, w, st)


def main(argv):
    if argv:
        kind, d, causal, *cfgs = argv
        jobs = [(kind, int(d), causal == "1", tuple(int(x) for x in c.split(","))) for c in cfgs]
    else:  # the first tuned candidate of each kernel, d = 64 and 128, causal and not
        jobs = [(kind, d, causal, tb.candidates(kind, d, causal, tb.torch.float16)[0])
                for d in (64, 128) for causal in (False, True) for kind in ("dkdv", "dq")]
    print(f"triton {triton.__version__}, sm_90, fp16, TMA loads; static: N = {N}, contiguous inputs, H = 2048 / d")
    for kind, d, causal, cfg in jobs:
        dyn, sta = both(kind, d, causal, cfg)
        print(f"{kind:4s} d={d:3d} causal={causal!s:5} {cfg}:  dynamic {dyn}\n{'':33s}static  {sta}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
