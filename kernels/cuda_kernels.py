"""The course's CUDA C++ kernels, from Python: build, call, and compile-check them.

The sources live in kernels/cuda/, one numbered file per version so that a learner can diff
them (as llm.c's dev/cuda does):

    forward_v1_scalar.cu        readable: shared-memory tiles, online softmax per row, fp32 math
    forward_v2_tensor_core.cu   mma.sync tensor cores, ldmatrix, padded smem, cp.async double buffer
    forward_v3_tuned.cu         v2 with B_r = 128, register blocking, swizzle, split K/V pipeline
    backward_v1_scalar.cu       readable: D preprocess, dK/dV kernel (K/V outer), dQ kernel
    backward_v2_tensor_core.cu  the same three kernels on tensor cores

On a GPU, `forward` and `backward` build them once with torch.utils.cpp_extension (cached on
disk, rebuilt when a source changes) and run them. Without a GPU, `compile_check` still
compiles any of them with nvcc and returns ptxas' resource report (registers, spills, shared
memory per kernel): the .cu files include no torch header, so nvcc alone can compile them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pathlib
import re
import shutil
import subprocess

import torch

from . import device, validation

SOURCE_DIR = pathlib.Path(__file__).resolve().parent / "cuda"

FORWARD_SOURCES = {
    "v1": "forward_v1_scalar.cu",
    "v2": "forward_v2_tensor_core.cu",
    "v3": "forward_v3_tuned.cu",
}
BACKWARD_SOURCES = {
    "v1": "backward_v1_scalar.cu",
    "v2": "backward_v2_tensor_core.cu",
}

_F32, _F16, _BF16 = torch.float32, torch.float16, torch.bfloat16

#: What each version accepts: dtypes and head dims (mirrors the checks in the .cu launchers).
SUPPORT = {
    ("forward", "v1"): {"dtypes": (_F32, _F16, _BF16), "head_dims": tuple(range(1, 257)), "dims_text": "1 to 256"},
    ("forward", "v2"): {"dtypes": (_F16, _BF16), "head_dims": (32, 64, 80, 96, 128), "dims_text": "32, 64, 80, 96, 128"},
    ("forward", "v3"): {"dtypes": (_F16, _BF16), "head_dims": (64, 128), "dims_text": "64, 128"},
    ("backward", "v1"): {"dtypes": (_F32, _F16, _BF16), "head_dims": tuple(range(1, 129)), "dims_text": "1 to 128"},
    ("backward", "v2"): {"dtypes": (_F16, _BF16), "head_dims": (64, 128), "dims_text": "64, 128"},
}


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------------------------
# Building (GPU only)

_module = None


def build(verbose: bool = False):
    """Compile (first call) or load (later calls) the extension holding every version.

    torch.utils.cpp_extension caches the build under ~/.cache/torch_extensions and rebuilds only
    the files that changed. All sources go into one extension so that ninja compiles them in
    parallel."""
    global _module
    if _module is not None:
        return _module
    device.require_cuda("building the course's CUDA kernels")
    from torch.utils.cpp_extension import load

    if "TORCH_CUDA_ARCH_LIST" not in os.environ:  # build for this GPU only, not every arch torch knows
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    sources = [SOURCE_DIR / "torch_binding.cpp"]
    sources += [SOURCE_DIR / f for f in FORWARD_SOURCES.values()]
    sources += [SOURCE_DIR / f for f in BACKWARD_SOURCES.values()]
    _module = load(
        name="flash_course_cuda",
        sources=[str(s) for s in sources],
        extra_include_paths=[str(SOURCE_DIR)],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=["-O3", "-std=c++17", "-lineinfo", "-DFLASH_V3_SWEEP"],  # every v3 tile config
        verbose=verbose,
    )
    return _module


# ---------------------------------------------------------------------------------------------
# Calling the kernels

def _check_support(direction: str, version: str, dtype: torch.dtype, d: int) -> None:
    key = (direction, version)
    if key not in SUPPORT:
        known = ", ".join(v for (dr, v) in SUPPORT if dr == direction)
        raise ValueError(f"version must be one of {known} for the cuda {direction}, got {version!r}")
    sup = SUPPORT[key]
    if dtype not in sup["dtypes"]:
        names = ", ".join(_name(t) for t in sup["dtypes"])
        raise TypeError(f"cuda {direction} {version} supports dtypes {names}; got {_name(dtype)}")
    if d not in sup["head_dims"]:
        raise ValueError(f"cuda {direction} {version} supports head dims {sup['dims_text']}; got {d}")


def _kernel_ready(t: torch.Tensor, vectorised: bool) -> torch.Tensor:
    """A view the kernels can read: last dim contiguous; for cp.async (16-byte copies) also row
    strides a multiple of 8 elements and a 16-byte aligned start. Copies only when needed."""
    ok = t.stride(-1) == 1
    if ok and vectorised:
        ok = all(s % 8 == 0 for s in t.stride()[:3]) and t.data_ptr() % 16 == 0
    return t if ok else t.contiguous()


def _check_common(direction, q, k, v, scale, version):
    validation.check_qkv(q, k, v)
    validation.check_scale(scale)
    if v.shape[-1] != q.shape[-1]:
        raise ValueError(f"value head dim must equal query head dim d={q.shape[-1]}, got value shape {tuple(v.shape)}")
    _check_support(direction, version, q.dtype, q.shape[-1])
    if q.device.type != "cuda":
        device.require_cuda(f"cuda {direction} {version}")
        raise ValueError(f"cuda {direction} {version} needs CUDA tensors; got tensors on {q.device}")


def best_version(direction: str, dtype: torch.dtype, d: int) -> str:
    """The fastest version that supports this dtype and head dim (newest first)."""
    for version in ("v3", "v2", "v1"):
        sup = SUPPORT.get((direction, version))
        if sup and dtype in sup["dtypes"] and d in sup["head_dims"]:
            return version
    return "v1"  # unsupported everywhere: v1's check gives the error message


def forward(q, k, v, *, is_causal: bool = False, scale: float | None = None, version: str = "auto", config=None):
    """FlashAttention forward with the CUDA kernel `version` ("v1", "v2", "v3"; "auto" picks
    the fastest one that supports the dtype and head dim).

    q (B, H, Nq, d), k and v (B, H, Nk, d) on a CUDA device. Returns O (B, H, Nq, d) in the
    inputs' dtype and L (B, H, Nq) float32, the natural-log log-sum-exp of each row of scaled
    scores (-inf for a row with no key). Causal is top-left (key j <= query i), as torch SDPA.
    `config` (v3 only) picks one of `v3_configs()` instead of the default tile configuration.
    """
    if version == "auto" and isinstance(q, torch.Tensor):
        version = best_version("forward", q.dtype, q.shape[-1])
    _check_common("forward", q, k, v, scale, version)
    if config is not None and version != "v3":
        raise ValueError(f"config is only for version 'v3', got version {version!r}")
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    vec = version != "v1"
    q, k, v = (_kernel_ready(t, vec) for t in (q, k, v))
    cfg = -1
    if config is not None:
        names = v3_configs()
        if config not in names:
            raise ValueError(f"config must be one of {', '.join(names)}; got {config!r}")
        cfg = names.index(config)
    O, L = build().forward(q, k, v, scale, bool(is_causal), int(version[1:]), cfg)
    return O, L


def backward(q, k, v, O, L, dO, *, is_causal: bool = False, scale: float | None = None, version: str = "auto"):
    """FlashAttention backward with the CUDA kernel `version` ("v1", "v2"; "auto" picks the
    fastest one that supports the dtype and head dim).

    From the forward's inputs, its output O and log-sum-exp L (B, H, Nq), and the gradient dO
    of the loss with respect to O, returns (dQ, dK, dV) in the inputs' dtype. P is recomputed
    from L tile by tile; nothing of size N x N is stored."""
    if version == "auto" and isinstance(q, torch.Tensor):
        version = best_version("backward", q.dtype, q.shape[-1])
    _check_common("backward", q, k, v, scale, version)
    validation.check_tensor("O", O, dtypes=(q.dtype,))
    validation.check_tensor("dO", dO, dtypes=(q.dtype,))
    for name, t in (("O", O), ("dO", dO)):
        if tuple(t.shape) != tuple(q.shape):
            raise ValueError(f"{name} must have the query's shape {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on {q.device}, got {t.device}")
    B, H, Nq, d = q.shape
    if not isinstance(L, torch.Tensor) or tuple(L.shape) != (B, H, Nq):
        got = tuple(L.shape) if isinstance(L, torch.Tensor) else type(L).__name__
        raise ValueError(f"L must be the forward's log-sum-exp of shape (B, H, Nq) = {(B, H, Nq)}, got {got}")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    vec = version != "v1"
    q, k, v, O, dO = (_kernel_ready(t, vec) for t in (q, k, v, O, dO))
    L = L.to(torch.float32).contiguous()
    dQ, dK, dV, _D = build().backward(q, k, v, O, L, dO, scale, bool(is_causal), int(version[1:]))
    return dQ, dK, dV


def v3_configs() -> list[str]:
    """Names of the tile configurations of forward v3 (for benchmarking them side by side)."""
    return list(build().v3_configs())


class FlashAttentionCUDA(torch.autograd.Function):
    """Autograd wrapper: the CUDA forward saves only Q, K, V, O and L for the CUDA backward."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False, scale=None, fwd_version="auto", bwd_version="auto"):
        O, L = forward(q, k, v, is_causal=is_causal, scale=scale, version=fwd_version)
        ctx.save_for_backward(q, k, v, O, L)
        ctx.opts = (is_causal, scale, bwd_version)
        return O

    @staticmethod
    def backward(ctx, dO):
        q, k, v, O, L = ctx.saved_tensors
        is_causal, scale, bwd_version = ctx.opts
        dQ, dK, dV = backward(q, k, v, O, L, dO.contiguous(), is_causal=is_causal, scale=scale, version=bwd_version)
        return dQ, dK, dV, None, None, None, None


def attention(q, k, v, *, is_causal=False, scale=None, fwd_version="auto", bwd_version="auto"):
    """O = attention(q, k, v) with the CUDA kernels, differentiable."""
    return FlashAttentionCUDA.apply(q, k, v, is_causal, scale, fwd_version, bwd_version)


# ---------------------------------------------------------------------------------------------
# Compile-only checks (CPU is enough): ptxas' resource report

@dataclasses.dataclass
class KernelResources:
    """What ptxas says about one kernel: the numbers that decide occupancy and speed."""

    name: str
    arch: str
    registers: int
    spill_stores: int  # bytes per thread written to local memory because registers ran out
    spill_loads: int
    stack_frame: int
    static_smem: int  # bytes of __shared__ arrays (dynamic shared memory is set at launch)
    barriers: int


@dataclasses.dataclass
class ResourceReport:
    source: str
    arch: str
    command: str
    kernels: list
    log: str
    seconds: float = 0.0
    cached: bool = False

    def __str__(self) -> str:
        lines = [f"{self.source} for {self.arch}: {len(self.kernels)} kernels"]
        width = max([len(k.name) for k in self.kernels] + [6])
        lines.append(f"  {'kernel':<{width}}  regs  spill st/ld (B)  stack (B)  static smem (B)")
        for k in self.kernels:
            lines.append(
                f"  {k.name:<{width}}  {k.registers:4d}  {k.spill_stores:6d}/{k.spill_loads:<6d}   {k.stack_frame:9d}  {k.static_smem:15d}"
            )
        return "\n".join(lines)

    def rows(self) -> list[dict]:
        return [dataclasses.asdict(k) | {"source": self.source} for k in self.kernels]


def _source_path(source) -> pathlib.Path:
    if isinstance(source, str) and not source.endswith(".cu") and "/" not in source:
        table = {f"forward_{v}": f for v, f in FORWARD_SOURCES.items()} | {
            f"backward_{v}": f for v, f in BACKWARD_SOURCES.items()
        }
        if source in FORWARD_SOURCES:
            source = f"forward_{source}"
        if source not in table:
            raise ValueError(f"unknown CUDA source {source!r}; known: {', '.join(table)} or a path to a .cu file")
        return SOURCE_DIR / table[source]
    path = pathlib.Path(source)
    if not path.is_absolute() and not path.exists():
        path = SOURCE_DIR / path
    if not path.exists():
        raise FileNotFoundError(f"no CUDA source at {path}")
    return path


def _nvcc() -> str:
    if device.NVCC is None:
        raise RuntimeError(
            "nvcc was not found (neither on the PATH nor under $CUDA_HOME/bin): the CUDA sources cannot be "
            "compile-checked here. Install the CUDA toolkit, or read the recorded report in the notebook."
        )
    return device.NVCC


def _demangle(names: list[str]) -> list[str]:
    """Readable kernel names: c++filt when present, then drop the namespace and argument noise."""
    out = list(names)
    cxxfilt = shutil.which("c++filt")
    if cxxfilt and names:
        try:
            res = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, timeout=30)
            if res.returncode == 0 and len(res.stdout.splitlines()) == len(names):
                out = res.stdout.splitlines()
        except (OSError, subprocess.SubprocessError):
            pass
    pretty = []
    for n in out:
        n = re.sub(r"^void ", "", n)
        n = re.sub(r"\(flash::(Fwd|Bwd)Params\)$", "", n)
        n = n.replace("flash::", "").replace("__nv_bfloat16", "bf16").replace("__half", "fp16")
        n = re.sub(r"v3::Config<([^<>]*)>", lambda m: _config_name(m[1]), n)
        pretty.append(n.replace(" >", ">"))
    return pretty


def _config_name(args: str) -> str:
    """v3::Config<128, 4, 2, 64, false, true, true, true, 32> -> 'd128 w4 m2 Bc64 sub32 pad'
    (then the switches that are off: exp2f, eager, onebody; then packp if P is packed early)."""
    parts = [a.strip() for a in args.split(",")]
    d, w, m, bc = parts[:4]
    defaults = ["false", "true", "true", "true", bc, "false"]  # kSwizzle, kFastExp, kLazyRescale, kSplitMask, kSub, kPackP
    vals = parts[4:] + defaults[len(parts) - 4:]
    swz, fast, lazy, split = (v == "true" for v in vals[:4])
    sub, packp = vals[4], vals[5] == "true"
    name = f"d{d} w{w} m{m} Bc{bc}" + (f" sub{sub}" if sub != bc else "") + f" {'swz' if swz else 'pad'}"
    name += "" if fast else " exp2f"
    name += "" if lazy else " eager"
    name += "" if split else " onebody"
    name += " packp" if packp else ""
    return name


def parse_ptxas(log: str, arch: str = "") -> list[KernelResources]:
    """The per-kernel records of `nvcc -Xptxas -v` output."""
    kernels, current = [], None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
        if m:
            current = {"name": m[1], "arch": m[2], "registers": 0, "spill_stores": 0, "spill_loads": 0,
                       "stack_frame": 0, "static_smem": 0, "barriers": 0}
            kernels.append(current)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["stack_frame"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m[1])
            b = re.search(r"used (\d+) barriers", line)
            current["barriers"] = int(b[1]) if b else 0
            s = re.search(r"(\d+) bytes smem", line)
            current["static_smem"] = int(s[1]) if s else 0
    names = _demangle([k["name"] for k in kernels])
    return [KernelResources(**(k | {"name": n})) for k, n in zip(kernels, names)]


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("FLASH_COURSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flash-attention-course")
    return pathlib.Path(root) / "ptxas"


def compile_command(source, arch: str = "sm_90", extra_flags=()) -> list[str]:
    """The nvcc command line compile_check runs (compile only, no torch, no GPU needed)."""
    path = _source_path(source)
    return [_nvcc(), "-std=c++17", "-O3", f"-arch={arch}", "-c", "-Xptxas", "-v", *extra_flags,
            "-I", str(SOURCE_DIR), str(path), "-o", os.devnull]


def compile_check(source, arch: str = "sm_90", *, extra_flags=(), cache: bool = True, timeout: float = 900) -> ResourceReport:
    """Compile one CUDA source with nvcc for `arch` and return ptxas' resource report.

    `source` is a path, a file name in kernels/cuda/, or a version name ("v2" = forward v2,
    "backward_v1", ...). Needs nvcc, not a GPU. The report is cached by the contents of the
    source and its headers, the flags and the nvcc version (nvcc is slow on a small CPU);
    cache=False always compiles. Raises RuntimeError with nvcc's messages if it fails."""
    import time

    path = _source_path(source)
    cmd = compile_command(path, arch, extra_flags)
    key = hashlib.sha256()
    key.update(path.read_bytes())
    for hp in sorted(list(path.parent.glob("*.cuh")) + list(path.parent.glob("*.h"))):  # the headers it may include
        key.update(hp.read_bytes())
    key.update(" ".join([arch, *extra_flags, _nvcc_version()]).encode())
    cache_file = _cache_dir() / f"{path.stem}-{arch}-{key.hexdigest()[:20]}.log"
    shown = " ".join(["nvcc", "-std=c++17", "-O3", f"-arch={arch}", "-c", "-Xptxas", "-v", *extra_flags, path.name, "-o", os.devnull])
    if cache and cache_file.exists():
        log = cache_file.read_text()
        return ResourceReport(path.name, arch, shown, parse_ptxas(log, arch), log, 0.0, True)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    log = res.stdout + res.stderr
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed on {path.name} for {arch} (exit {res.returncode}):\n{log[-4000:]}")
    if cache:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(log)
        except OSError:
            pass
    return ResourceReport(path.name, arch, shown, parse_ptxas(log, arch), log, seconds, False)


_nvcc_version_text = None


def _nvcc_version() -> str:
    global _nvcc_version_text
    if _nvcc_version_text is None:
        try:
            out = subprocess.run([_nvcc(), "--version"], capture_output=True, text=True, timeout=60).stdout
            _nvcc_version_text = out.strip().splitlines()[-1] if out.strip() else "unknown"
        except (OSError, subprocess.SubprocessError):
            _nvcc_version_text = "unknown"
    return _nvcc_version_text


def all_sources() -> list[pathlib.Path]:
    """Every .cu file of kernels/cuda/."""
    return sorted(SOURCE_DIR.glob("*.cu"))


# ---------------------------------------------------------------------------------------------
# Reading the sources (for the notebooks): regions, diffs, launch shapes, occupancy

def read_source(name) -> str:
    """The text of a CUDA source or header of kernels/cuda/ (a file name or a version name)."""
    path = SOURCE_DIR / name if (SOURCE_DIR / str(name)).exists() else _source_path(name)
    return path.read_text()


def source_region(name, start: str, end: str | None = None, *, include_end: bool = True) -> str:
    """The lines of a source from the first line containing `start` to the next line containing
    `end` (or to the end of the enclosing block when end is None: the first line, after start,
    indented no deeper than the start line and closing a brace)."""
    lines = read_source(name).splitlines()
    i = next((n for n, line in enumerate(lines) if start in line), None)
    if i is None:
        raise ValueError(f"{start!r} not found in {name}")
    if end is None:
        indent = len(lines[i]) - len(lines[i].lstrip())
        for n in range(i + 1, len(lines)):
            line = lines[n]
            if line.strip().startswith("}") and len(line) - len(line.lstrip()) <= indent:
                return "\n".join(lines[i:n + 1])
        return "\n".join(lines[i:])
    for n in range(i + 1, len(lines)):
        if end in lines[n]:
            return "\n".join(lines[i:n + 1] if include_end else lines[i:n])
    raise ValueError(f"{end!r} not found after {start!r} in {name}")


def diff_hunks(a, b, *, grep=(), context: int = 2) -> list[str]:
    """Unified-diff hunks between two sources (file or version names); with `grep`, only the
    hunks whose changed lines contain one of the words."""
    import difflib

    la, lb = read_source(a).splitlines(), read_source(b).splitlines()
    name_a = a if str(a).endswith(".cu") else _source_path(a).name
    name_b = b if str(b).endswith(".cu") else _source_path(b).name
    diff = list(difflib.unified_diff(la, lb, name_a, name_b, lineterm="", n=context))
    hunks, current = [], []
    for line in diff[2:]:
        if line.startswith("@@") and current:
            hunks.append(current)
            current = []
        current.append(line)
    if current:
        hunks.append(current)
    out = []
    for h in hunks:
        changed = [x for x in h[1:] if x[:1] in "+-"]
        if not grep or any(w in x for x in changed for w in grep):
            out.append("\n".join(h))
    return out


def diff_stats(a, b) -> dict:
    """Lines kept, removed and added going from source a to source b."""
    import difflib

    la, lb = read_source(a).splitlines(), read_source(b).splitlines()
    sm = difflib.SequenceMatcher(a=la, b=lb, autojunk=False)
    kept = sum(block.size for block in sm.get_matching_blocks())
    return {"lines_a": len(la), "lines_b": len(lb), "kept": kept, "removed": len(la) - kept, "added": len(lb) - kept}


#: The launch shape of each kernel, mirroring the constants and smem_bytes() of the .cu files
#: (threads per block, dynamic shared memory in bytes as a function of the head dim).
def launch_shape(kernel: str, d: int, config: str | None = None) -> tuple[int, int]:
    """(threads per block, dynamic shared memory bytes) of a kernel of the course."""
    if kernel == "forward_v1":
        B_r = B_c = 32
        return 128, 4 * (B_r * d + B_c * (d + 1) + B_c * d + B_r * (d + 1) + B_r * (B_c + 1) + B_r)
    if kernel == "forward_v2":
        return 128, (64 + 4 * 64) * (d + 8) * 2
    if kernel == "forward_v3":
        name = config or {64: "d64_w4_m2_bc128_sub64_pad", 128: "d128_w4_m2_bc64_pad"}[d]
        m = re.match(r"d(\d+)_w(\d+)_m(\d+)_bc(\d+)(?:_sub\d+)?_(pad|swz)", name)
        D, w, mt, bc, layout = int(m[1]), int(m[2]), int(m[3]), int(m[4]), m[5]
        ld = D if layout == "swz" else D + 8
        return 32 * w, (w * 16 * mt + 4 * bc) * ld * 2
    if kernel == "backward_v1_dkdv":
        return 128, 4 * (2 * 32 * (d + 1) + 2 * 32 * d + 2 * 32 * d + 2 * 32 * 32 + 2 * 32)
    if kernel == "backward_v1_dq":
        return 128, 4 * (2 * 32 * (d + 1) + 3 * 32 * d + 2 * 32 * 32 + 2 * 32)
    if kernel == "backward_v2_dkdv":
        return 128, (2 * 64 + 4 * 64) * (d + 8) * 2 + 4 * 64 * 4
    if kernel == "backward_v2_dq":
        return 128, (2 * 64 + 4 * 64) * (d + 8) * 2
    raise ValueError(f"unknown kernel {kernel!r}")


#: Per-SM limits used by occupancy() (CUDA C Programming Guide, compute capabilities table).
SM_LIMITS = {
    "sm_80": {"regs": 65536, "smem": 164 * 1024, "smem_per_block": 163 * 1024, "threads": 2048, "blocks": 32},
    "sm_90": {"regs": 65536, "smem": 228 * 1024, "smem_per_block": 227 * 1024, "threads": 2048, "blocks": 32},
}


def occupancy(registers: int, threads: int, smem: int, arch: str = "sm_90") -> dict:
    """Thread blocks (and warps) that fit on one SM, and which resource runs out first.
    Registers are allocated per warp in units of 256; shared memory per block in units of
    128 bytes, plus 1 KiB the system reserves per block."""
    lim = SM_LIMITS[arch]
    regs_per_warp = -(-registers * 32 // 256) * 256
    warps = -(-threads // 32)
    by = {
        "registers": lim["regs"] // (regs_per_warp * warps) if registers else lim["blocks"],
        "shared memory": lim["smem"] // (-(-smem // 128) * 128 + 1024) if smem <= lim["smem_per_block"] else 0,
        "threads": lim["threads"] // threads,
        "blocks": lim["blocks"],
    }
    blocks = min(by.values())
    limiter = min(by, key=by.get)
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps, "limited_by": limiter, **{f"by_{k.replace(' ', '_')}": v for k, v in by.items()}}


RECORDED_PTXAS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cuda_ptxas.json"


def resources(source, arch: str = "sm_90", extra_flags=()) -> tuple[ResourceReport, bool]:
    """ptxas' report for a source: compiled here when nvcc exists (live=True), else the one
    recorded in benchmarks/results/cuda_ptxas.json (live=False), so a notebook can always show it."""
    if device.NVCC is not None:
        return compile_check(source, arch, extra_flags=tuple(extra_flags)), True
    import json

    name = " ".join([_source_path(source).name, *extra_flags])
    data = json.loads(RECORDED_PTXAS.read_text())
    rows = data["reports"][name][arch]
    kernels_ = [KernelResources(**{k: v for k, v in r.items() if k != "source"}) for r in rows]
    return ResourceReport(name, arch, f"(recorded with {data['nvcc']} on {data['date']})", kernels_, "", 0.0, True), False


def record_ptxas(archs=("sm_80", "sm_90")) -> dict:
    """Compile every source for every arch and write benchmarks/results/cuda_ptxas.json."""
    import datetime
    import json

    reports = {}
    for path in all_sources():
        reports[path.name] = {arch: compile_check(path, arch).rows() for arch in archs}
    sweep = ("-DFLASH_V3_SWEEP",)  # every v3 tile configuration, as the GPU build compiles it
    reports[" ".join([FORWARD_SOURCES["v3"], *sweep])] = {
        arch: compile_check(FORWARD_SOURCES["v3"], arch, extra_flags=sweep).rows() for arch in archs}
    data = {"nvcc": _nvcc_version(), "date": datetime.date.today().isoformat(),
            "flags": "-std=c++17 -O3 -arch=<arch> -c -Xptxas -v", "reports": reports}
    RECORDED_PTXAS.write_text(json.dumps(data, indent=1))
    return data
