"""The memory hierarchy of real GPUs, as data: every number carries the name of its source.

FlashAttention is an argument about where bytes live. A GPU has a few hundred kilobytes of
fast on-chip SRAM per streaming multiprocessor (SM) — registers and shared memory/L1 — a
few tens of megabytes of L2 cache shared by all SMs, and tens of gigabytes of off-chip HBM
(or GDDR on consumer cards). Each level down is larger and slower. This module records those
levels for a few GPUs so that the memory model (kernels.memory_model) and the lesson can use
real sizes and bandwidths instead of made-up ones.

Each figure is a `Fact`: a value, its unit, and where it comes from. Three kinds of source:

* a vendor document (datasheet, architecture whitepaper, CUDA programming guide), named;
* a published microbenchmark (latencies: vendors do not publish them), named;
* "derived": computed here from other facts, with the formula in the note (e.g. shared memory
  bandwidth = 128 bytes per clock per SM x SMs x clock).

A value of None means no source was at hand: the table shows a dash rather than a guess.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import platform

# --- Sources -------------------------------------------------------------------------------

SOURCES: dict[str, str] = {
    "a100-whitepaper": "NVIDIA A100 Tensor Core GPU Architecture (whitepaper, 2020)",
    "a100-datasheet": "NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM column)",
    "h100-whitepaper": "NVIDIA H100 Tensor Core GPU Architecture (whitepaper, 2022), H100 SXM5 column",
    "h100-datasheet": "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM column)",
    "h200-datasheet": "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM column)",
    "ada-whitepaper": "NVIDIA Ada GPU Architecture (whitepaper), GeForce RTX 4090 column",
    "cuda-guide": "CUDA C++ Programming Guide, table 'Technical Specifications per Compute Capability'",
    "cuda-guide-banks": (
        "CUDA C++ Programming Guide, shared memory section: 32 banks, each 32 bits wide per clock "
        "cycle, i.e. 128 bytes per clock per SM"
    ),
    "dewing-latency": (
        "markdewing/AI_kernels (GitHub), latency/README.md: pointer-chasing microbenchmark, "
        "clock cycles; the Hopper row was measured on a GH200 (an H100-class GPU with HBM3)"
    ),
    "derived": "computed in kernels/hardware.py from the facts named in the note",
    "inferred": "not stated by the vendor for this product; inferred as explained in the note",
}


@dataclasses.dataclass(frozen=True)
class Fact:
    """One number with its unit and the key of its source in SOURCES."""

    value: float | None
    unit: str
    source: str
    note: str = ""

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be a key of SOURCES, got {self.source!r}")

    def cite(self) -> str:
        text = SOURCES[self.source]
        return f"{text} ({self.note})" if self.note else text


@dataclasses.dataclass(frozen=True)
class Level:
    """One level of the memory hierarchy: its capacity, bandwidth and latency."""

    name: str  # "registers", "shared memory / L1", "L2", "HBM"
    scope: str  # "per SM" or "per GPU"
    size_bytes: Fact
    bandwidth_Bps: Fact  # bytes per second, whole GPU
    latency_cycles: Fact


@dataclasses.dataclass(frozen=True)
class GPU:
    """A GPU's memory hierarchy and its peak arithmetic throughput."""

    name: str
    sms: Fact
    clock_hz: Fact  # the clock at which the vendor's peak figures are quoted
    levels: tuple[Level, ...]
    peak_flops: dict  # "fp16", "bf16", "fp32" (dense, no sparsity) -> Fact in FLOP/s
    max_smem_per_block: Fact  # bytes a single thread block may use (the M of the FlashAttention paper)

    def level(self, name: str) -> Level:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(f"{self.name} has no level {name!r}; levels: {[lv.name for lv in self.levels]}")

    @property
    def hbm_bandwidth(self) -> float:
        """Bytes per second of the off-chip memory (HBM or GDDR)."""
        return self.levels[-1].bandwidth_Bps.value

    @property
    def hbm_bytes(self) -> float:
        return self.levels[-1].size_bytes.value

    def peak(self, dtype: str = "fp16") -> float:
        """Dense peak FLOP/s for `dtype` ("fp16", "bf16" or "fp32")."""
        try:
            return self.peak_flops[dtype].value
        except KeyError:
            raise KeyError(f"dtype must be one of {sorted(self.peak_flops)}, got {dtype!r}") from None

    def ridge_point(self, dtype: str = "fp16") -> float:
        """Arithmetic intensity (FLOP per HBM byte) above which a kernel can be compute-bound."""
        return self.peak(dtype) / self.hbm_bandwidth


KB, MB, GB = 1024, 1024**2, 10**9  # capacities: KiB and MiB as vendors use "KB"/"MB" for on-chip memory
SMEM_BYTES_PER_CLOCK_PER_SM = 128  # 32 banks x 4 bytes (cuda-guide-banks)


def _smem_bandwidth(sms: Fact, clock: Fact) -> Fact:
    value = SMEM_BYTES_PER_CLOCK_PER_SM * sms.value * clock.value
    return Fact(value, "B/s", "derived",
                f"{SMEM_BYTES_PER_CLOCK_PER_SM} B/clock/SM (CUDA guide) x {sms.value:g} SMs x "
                f"{clock.value / 1e6:g} MHz")


def _a100() -> GPU:
    sms = Fact(108, "SMs", "a100-whitepaper")
    clock = Fact(1410e6, "Hz", "a100-whitepaper", "GPU boost clock")
    levels = (
        Level("registers", "per SM", Fact(256 * KB, "B", "a100-whitepaper", "65,536 32-bit registers per SM"),
              Fact(None, "B/s", "a100-whitepaper", "not published"), Fact(None, "cycles", "a100-whitepaper", "not published")),
        Level("shared memory / L1", "per SM", Fact(192 * KB, "B", "a100-whitepaper", "combined L1 and shared memory per SM"),
              _smem_bandwidth(sms, clock), Fact(None, "cycles", "dewing-latency", "no A100 row in this source")),
        Level("L2", "per GPU", Fact(40 * MB, "B", "a100-whitepaper"),
              Fact(5120 * clock.value, "B/s", "derived", "5120 B/clock L2 read bandwidth (A100 whitepaper) x 1410 MHz"),
              Fact(None, "cycles", "dewing-latency", "no A100 row in this source")),
        Level("HBM", "per GPU", Fact(80 * GB, "B", "a100-datasheet", "HBM2e"),
              Fact(2039e9, "B/s", "a100-datasheet", "2,039 GB/s"), Fact(None, "cycles", "dewing-latency", "no A100 row in this source")),
    )
    peaks = {
        "fp16": Fact(312e12, "FLOP/s", "a100-datasheet", "FP16 Tensor Core, dense"),
        "bf16": Fact(312e12, "FLOP/s", "a100-datasheet", "BF16 Tensor Core, dense"),
        "fp32": Fact(19.5e12, "FLOP/s", "a100-datasheet", "FP32 (no Tensor Core)"),
    }
    return GPU("A100 SXM4 80GB", sms, clock, levels, peaks,
               Fact(163 * KB, "B", "cuda-guide", "compute capability 8.0: 164 KB per SM, 163 KB per block"))


def _hopper(name: str, hbm: Fact, hbm_bw: Fact) -> GPU:
    # H100 SXM5 and H200 share the GH100 configuration; the H200 rows that the H200 datasheet
    # does not state are marked "inferred".
    h200 = name.startswith("H200")
    src = "inferred" if h200 else "h100-whitepaper"
    why = "H200 datasheet quotes the same Tensor Core peaks as H100 SXM; same GH100 SM configuration" if h200 else ""
    sms = Fact(132, "SMs", src, why)
    clock = Fact(989.4e12 / (132 * 4096), "Hz", "derived",
                 "clock implied by the 989.4 TFLOP/s dense FP16 peak: 132 SMs x 4096 FLOP/clock/SM "
                 "(1024 dense FP16 FMA/clock/SM on A100, doubled per SM on H100 per the H100 whitepaper)")
    levels = (
        Level("registers", "per SM", Fact(256 * KB, "B", "cuda-guide", "64K 32-bit registers per SM, compute capability 9.0"),
              Fact(None, "B/s", "h100-whitepaper", "not published"), Fact(None, "cycles", "h100-whitepaper", "not published")),
        Level("shared memory / L1", "per SM", Fact(256 * KB, "B", src, why or "combined L1 and shared memory per SM"),
              _smem_bandwidth(sms, clock), Fact(40, "cycles", "dewing-latency", "L1 hit")),
        Level("L2", "per GPU", Fact(50 * MB, "B", src, why),
              Fact(None, "B/s", "h100-whitepaper", "not published"), Fact(281, "cycles", "dewing-latency", "L2 hit")),
        Level("HBM", "per GPU", hbm, hbm_bw, Fact(690, "cycles", "dewing-latency", "main memory")),
    )
    peak_src = "h200-datasheet" if h200 else "h100-whitepaper"
    peaks = {
        "fp16": Fact(989.4e12, "FLOP/s", peak_src, "FP16 Tensor Core, dense (half the sparse 1,979 TFLOP/s)"),
        "bf16": Fact(989.4e12, "FLOP/s", peak_src, "BF16 Tensor Core, dense (half the sparse 1,979 TFLOP/s)"),
        "fp32": Fact(67e12, "FLOP/s", "h200-datasheet" if h200 else "h100-datasheet", "FP32 (no Tensor Core)"),
    }
    return GPU(name, sms, clock, levels, peaks,
               Fact(227 * KB, "B", "cuda-guide", "compute capability 9.0: 228 KB per SM, 227 KB per block"))


def _h100() -> GPU:
    return _hopper("H100 SXM5 80GB", Fact(80 * GB, "B", "h100-datasheet", "HBM3"),
                   Fact(3.35e12, "B/s", "h100-datasheet", "3.35 TB/s"))


def _h200() -> GPU:
    return _hopper("H200 SXM 141GB", Fact(141 * GB, "B", "h200-datasheet", "HBM3e"),
                   Fact(4.8e12, "B/s", "h200-datasheet", "4.8 TB/s"))


def _rtx4090() -> GPU:
    sms = Fact(128, "SMs", "ada-whitepaper")
    clock = Fact(2520e6, "Hz", "ada-whitepaper", "boost clock")
    levels = (
        Level("registers", "per SM", Fact(256 * KB, "B", "cuda-guide", "64K 32-bit registers per SM, compute capability 8.9"),
              Fact(None, "B/s", "ada-whitepaper", "not published"), Fact(None, "cycles", "ada-whitepaper", "not published")),
        Level("shared memory / L1", "per SM", Fact(128 * KB, "B", "ada-whitepaper", "combined L1 and shared memory per SM"),
              _smem_bandwidth(sms, clock), Fact(40, "cycles", "dewing-latency", "L1 hit")),
        Level("L2", "per GPU", Fact(72 * MB, "B", "ada-whitepaper"),
              Fact(None, "B/s", "ada-whitepaper", "not published"), Fact(296, "cycles", "dewing-latency", "L2 hit")),
        Level("HBM", "per GPU", Fact(24 * GB, "B", "ada-whitepaper", "GDDR6X, not HBM"),
              Fact(1008e9, "B/s", "ada-whitepaper", "1,008 GB/s"), Fact(636, "cycles", "dewing-latency", "main memory")),
    )
    peaks = {
        "fp16": Fact(165.2e12, "FLOP/s", "ada-whitepaper", "FP16 Tensor Core with FP32 accumulate, dense"),
        "bf16": Fact(165.2e12, "FLOP/s", "ada-whitepaper", "BF16 Tensor Core with FP32 accumulate, dense"),
        "fp32": Fact(82.6e12, "FLOP/s", "ada-whitepaper", "FP32 (no Tensor Core)"),
    }
    return GPU("GeForce RTX 4090", sms, clock, levels, peaks,
               Fact(99 * KB, "B", "cuda-guide", "compute capability 8.9: 100 KB per SM, 99 KB per block"))


#: The GPUs of the lesson's table, by short name.
GPUS: dict[str, GPU] = {"A100": _a100(), "H100": _h100(), "H200": _h200(), "RTX4090": _rtx4090()}


def get(name: str) -> GPU:
    """A GPU of GPUS by short name ("A100", "H100", "H200", "RTX4090")."""
    try:
        return GPUS[name]
    except KeyError:
        raise KeyError(f"name must be one of {sorted(GPUS)}, got {name!r}") from None


def _fmt_bytes(v: float | None) -> str:
    if v is None:
        return "—"
    for unit, size in (("GB", GB), ("MiB", MB), ("KiB", KB)):
        if v >= size:
            return f"{v / size:g} {unit}"
    return f"{v:g} B"


def _fmt_bw(v: float | None) -> str:
    return "—" if v is None else f"{v / 1e12:.2f} TB/s"


def _fmt_lat(v: float | None) -> str:
    return "—" if v is None else f"{v:g} cycles"


def hierarchy_rows(gpus=None) -> list[dict]:
    """One row per (GPU, level) with formatted size, bandwidth and latency and their sources."""
    rows = []
    for g in (gpus or GPUS.values()):
        for lv in g.levels:
            rows.append({
                "gpu": g.name, "level": lv.name, "scope": lv.scope,
                "size": _fmt_bytes(lv.size_bytes.value) + ("" if lv.scope == "per GPU" else " / SM"),
                "bandwidth": _fmt_bw(lv.bandwidth_Bps.value),
                "latency": _fmt_lat(lv.latency_cycles.value),
                "sources": {"size": lv.size_bytes.cite(), "bandwidth": lv.bandwidth_Bps.cite(),
                            "latency": lv.latency_cycles.cite()},
            })
    return rows


def markdown_table(gpus=None) -> str:
    """The hierarchy as a Markdown table, with numbered source notes below it."""
    notes: list[str] = []

    def ref(fact: Fact) -> str:
        text = fact.cite()
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    lines = ["| GPU | level | size | bandwidth | latency |", "|---|---|---|---|---|"]
    for g in (gpus or GPUS.values()):
        for lv in g.levels:
            size = _fmt_bytes(lv.size_bytes.value) + ("" if lv.scope == "per GPU" else " per SM")
            lines.append(
                f"| {g.name} | {lv.name} | {size} {ref(lv.size_bytes)} | {_fmt_bw(lv.bandwidth_Bps.value)} "
                f"{ref(lv.bandwidth_Bps)} | {_fmt_lat(lv.latency_cycles.value)} {ref(lv.latency_cycles)} |"
            )
        for dt in ("fp16", "fp32"):
            f = g.peak_flops[dt]
            lines.append(f"| {g.name} | peak {dt} | | {f.value / 1e12:g} TFLOP/s {ref(f)} | |")
    lines.append("")
    lines += [f"[{i + 1}] {n}  " for i, n in enumerate(notes)]
    return "\n".join(lines)


# --- The CPU this code runs on -------------------------------------------------------------

def cpu_caches() -> list[dict]:
    """The CPU caches of this machine as the operating system reports them (Linux sysfs):
    level, type, size in bytes and how many logical CPUs share one. Empty elsewhere."""
    base = pathlib.Path("/sys/devices/system/cpu/cpu0/cache")
    out = []
    if not base.exists():
        return out
    for idx in sorted(base.glob("index*")):
        try:
            size = (idx / "size").read_text().strip()
            mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size[-1], 1)
            nbytes = int(size[:-1]) * mult if size[-1] in "KMG" else int(size)
            shared = (idx / "shared_cpu_list").read_text().strip()
            out.append({
                "level": int((idx / "level").read_text()),
                "type": (idx / "type").read_text().strip(),
                "size_bytes": nbytes,
                "shared_cpu_list": shared,
            })
        except (OSError, ValueError):
            continue
    return out


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux, else platform.processor())."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """Logical CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
