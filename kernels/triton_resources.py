"""What a Triton kernel costs on chip, without a GPU: registers, spills and shared memory.

Triton does not need to see a GPU to compile for one: `triton.compile` with a target (compute
capability 9.0 for the H100) runs the whole pipeline down to the machine code, ptxas included, and
`cuobjdump --dump-resource-usage` (shipped inside the triton wheel) reads back what ptxas decided:

* registers per thread (at most 255; 8 warps × 32 threads × 255 fills an SM's 64 K registers);
* the stack frame in bytes: 0 unless ptxas ran out of registers and spilled values to local
  memory, which lives in HBM behind the caches; a non-zero stack in a hot loop costs speed;
* shared memory per program, which with the registers decides how many programs fit on an SM.

This is the Triton counterpart of `kernels.cuda_kernels.resource_report` (nvcc's ptxas report for
the CUDA C++ kernels). The compile runs in a fresh Python process with TRITON_INTERPRET=0: a process
without a GPU that imported the kernels under the interpreter holds interpreted functions, which
cannot be compiled.

    from kernels.triton_resources import resource_report
    resource_report("dkdv", d=128, BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=3)
    python -m kernels.triton_resources dkdv 128 64 128 8 3      # the same, from a shell
    python -m kernels.triton_resources --tuned                   # every config the autotuners try

The numbers are this triton version's; the GPU may run another (the lent H100 has triton 3.6), and
register allocation can differ between versions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

__all__ = ["KERNELS", "TritonResources", "resource_report", "tuned_reports", "read_cubin"]

#: The kernels that can be reported: name -> (module, function). Block sizes: forward B_r query rows
#: per program and B_c keys per step; dK/dV B_r queries per step and B_c keys per program; dQ B_r
#: queries per program and B_c keys per step.
KERNELS = {
    "forward": ("kernels.triton_forward", "_attention_forward_kernel"),
    "dkdv": ("kernels.triton_backward", "_bwd_dkdv_kernel"),
    "dq": ("kernels.triton_backward", "_bwd_dq_kernel"),
}
_DTYPES = ("fp16", "bf16")


@dataclasses.dataclass(frozen=True)
class TritonResources:
    """ptxas' decisions for one kernel and configuration."""

    kernel: str
    config: dict
    arch: int
    registers: int  # per thread
    stack_bytes: int  # > 0: spills to local memory
    shared_bytes: int  # per program (Triton's own count: tiles, pipeline buffers, reductions)
    triton: str

    @property
    def spills(self) -> bool:
        return self.stack_bytes > 0

    def __str__(self) -> str:
        c = self.config
        return (f"{self.kernel:8s} d={c['d']:<3d} {c['BLOCK_M']:>3d}x{c['BLOCK_N']:<3d} {c['num_warps']} warps "
                f"{c['num_stages']} stages {'TMA' if c['use_tma'] else 'ptr'} {'causal' if c['is_causal'] else 'full'}"
                f" {c['dtype']}: {self.registers:3d} registers, stack {self.stack_bytes:4d} B, "
                f"shared {self.shared_bytes / 1024:5.1f} KiB  (sm_{self.arch}, triton {self.triton})")


def _check(kernel, d, BLOCK_M, BLOCK_N, num_warps, num_stages, dtype, arch) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if not isinstance(d, int) or not 16 <= d <= 256 or d & (d - 1):
        raise ValueError(f"d must be a power of two from 16 to 256 (the padded head dim), got {d!r}")
    for name, b in (("BLOCK_M", BLOCK_M), ("BLOCK_N", BLOCK_N)):
        if not isinstance(b, int) or b < 16 or b & (b - 1):
            raise ValueError(f"{name} must be a power of two >= 16 (tl.dot on a GPU), got {b!r}")
    if kernel == "dkdv" and BLOCK_N % BLOCK_M:
        raise ValueError(f"the dK/dV kernel needs BLOCK_N % BLOCK_M == 0, got {BLOCK_M}, {BLOCK_N}")
    if kernel == "dq" and BLOCK_M % BLOCK_N:
        raise ValueError(f"the dQ kernel needs BLOCK_M % BLOCK_N == 0, got {BLOCK_M}, {BLOCK_N}")
    if num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps must be 1, 2, 4, 8 or 16, got {num_warps!r}")
    if not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"num_stages must be a positive int, got {num_stages!r}")
    if arch not in (80, 86, 89, 90):
        raise ValueError(f"arch must be a compute capability 80, 86, 89 or 90, got {arch!r}")


def resource_report(kernel: str, d: int, BLOCK_M: int, BLOCK_N: int, num_warps: int = 4, num_stages: int = 3, *,
                    use_tma: bool = True, is_causal: bool = False, dtype: str = "fp16", arch: int = 90,
                    timeout: float = 600.0) -> TritonResources:
    """Compile one of the course's Triton kernels for compute capability `arch` (no GPU needed)
    and return ptxas' registers, stack (spills) and shared memory. d is the padded head dim
    (BLOCK_D). TMA needs arch 90."""
    _check(kernel, d, BLOCK_M, BLOCK_N, num_warps, num_stages, dtype, arch)
    if use_tma and arch < 90:
        raise ValueError(f"use_tma=True needs arch 90 (Hopper), got arch={arch}")
    config = dict(d=d, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps, num_stages=num_stages,
                  use_tma=bool(use_tma), is_causal=bool(is_causal), dtype=dtype)
    env = dict(os.environ, TRITON_INTERPRET="0")
    root = str(pathlib.Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "kernels.triton_resources", "--json", kernel, json.dumps(config),
                           str(arch)], capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {kernel} {config} for sm_{arch} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return TritonResources(kernel, config, arch, out["registers"], out["stack_bytes"], out["shared_bytes"],
                           out["triton"])


def tuned_reports(arch: int = 90, head_dims=(64, 128)) -> list[TritonResources]:
    """The report of every configuration the GPU autotuners choose from (fp16, TMA): the forward's
    GPU_CONFIGS (one query block per program) and the backward's TUNED lists, causal and not."""
    from .triton_backward import TUNED
    from .triton_forward import GPU_CONFIGS

    out, seen = [], set()
    for d in head_dims:
        for causal in (False, True):
            jobs = [("forward", c[:4]) for c in GPU_CONFIGS[d]]
            jobs += [(kind, c) for kind in ("dkdv", "dq") for c in TUNED[(d, causal)][kind]]
            for kernel, (m, n, w, st) in jobs:
                key = (kernel, d, causal, m, n, w, st)
                if key not in seen:
                    seen.add(key)
                    out.append(resource_report(kernel, d, m, n, w, st, is_causal=causal, arch=arch))
    return out


# ------------------------------------------------------------------------------------------------
# The compile itself (runs in the subprocess, TRITON_INTERPRET=0)
# ------------------------------------------------------------------------------------------------
def _signature(fn, kernel: str, config: dict) -> tuple[dict, dict, dict]:
    """Triton types of the kernel's arguments, its compile-time constants, and the divisibility
    hints a real launch would give (pointers and strides that are multiples of 16)."""
    d = config["d"]
    dt = "*" + config["dtype"]
    consts = dict(HEAD_DIM=d, BLOCK_D=d, BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"],
                  IS_CAUSAL=config["is_causal"], USE_TMA=config["use_tma"])
    if kernel == "forward":
        from kernels.triton_forward import attention_block_step

        consts.update(STEP=attention_block_step, PAD_V=0.0, Q_BLOCKS=1)
    else:
        consts.update(PREC="tf32")
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in ("L", "Lg", "D"):
            sig[name] = "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("Q", "K", "V", "O", "dO", "dQ", "dK", "dV"):
            sig[name] = dt
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("qk_scale", "scale"):
            sig[name] = "fp32"
        else:  # strides, H, lengths: int32
            sig[name] = "i32"
            if name.startswith("stride_"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def _cuobjdump() -> str:
    import triton

    path = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump is not in this triton wheel ({path}); it reads the registers back")
    return str(path)


#: one SASS instruction in `cuobjdump -sass` output: its offset comment (4 hex digits, more past 64 KiB
#: of code), an optional predicate, the opcode and its operands
_SASS_OP = re.compile(r"/\*[0-9a-f]{4,6}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)([^;]*)")


def read_cubin(cubin: bytes, sass: bool = False) -> dict:
    """What ptxas decided for a compiled kernel: registers and stack bytes per thread (cuobjdump
    --dump-resource-usage) and, with sass=True, its SASS instructions as (opcode, operands) pairs."""
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", str(path)], capture_output=True,
                               text=True, check=True).stdout
        listing = subprocess.run([_cuobjdump(), "-sass", str(path)], capture_output=True, text=True,
                                 check=True).stdout if sass else ""
    regs, stack = re.search(r"REG:(\d+)", usage), re.search(r"STACK:(\d+)", usage)
    if not regs or not stack:
        raise RuntimeError(f"could not read the resource usage:\n{usage}")
    out = dict(registers=int(regs.group(1)), stack=int(stack.group(1)))
    if sass:
        out["sass"] = [(m.group(1), m.group(2)) for m in _SASS_OP.finditer(listing)]
    return out


def _compile(kernel: str, config: dict, arch: int) -> dict:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name = KERNELS[kernel]
    fn = getattr(importlib.import_module(module), name)
    sig, consts, attrs = _signature(fn, kernel, config)
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()}, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=config["num_warps"], num_stages=config["num_stages"]))
    usage = read_cubin(compiled.asm["cubin"])
    return dict(registers=usage["registers"], stack_bytes=usage["stack"],
                shared_bytes=int(compiled.metadata.shared), triton=triton.__version__)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--json":  # the subprocess side
        kernel, config, arch = argv[1], json.loads(argv[2]), int(argv[3])
        print(json.dumps(_compile(kernel, config, arch)))
        return 0
    import argparse

    p = argparse.ArgumentParser(prog="python -m kernels.triton_resources",
                                description="registers, spills and shared memory of a course Triton kernel, no GPU needed")
    if argv == ["--tuned"]:
        for r in tuned_reports():
            print(r, flush=True)
        return 0
    p.add_argument("kernel", choices=sorted(KERNELS))
    p.add_argument("d", type=int, help="padded head dim (BLOCK_D)")
    p.add_argument("BLOCK_M", type=int)
    p.add_argument("BLOCK_N", type=int)
    p.add_argument("num_warps", type=int)
    p.add_argument("num_stages", type=int)
    p.add_argument("--pointers", action="store_true", help="pointer loads instead of TMA")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--dtype", default="fp16", choices=sorted(_DTYPES))
    p.add_argument("--arch", type=int, default=90)
    a = p.parse_args(argv)
    print(resource_report(a.kernel, a.d, a.BLOCK_M, a.BLOCK_N, a.num_warps, a.num_stages, use_tma=not a.pointers,
                          is_causal=a.causal, dtype=a.dtype, arch=a.arch))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
