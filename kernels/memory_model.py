"""How many bytes attention moves and how much memory it needs: a model you can check.

Notation (the FlashAttention papers'): B batch, H heads, N sequence length, d head dim,
e = bytes per element of the inputs' dtype, M = SRAM size in elements, B_r × B_c tiles,
T_r = ⌈N/B_r⌉ and T_c = ⌈N/B_c⌉ tiles along the queries and the keys.

Four questions, one section each:

1. **FLOPs.** QKᵀ and PV are two N×N×d matmuls, 2·N²·d FLOPs each: 4·B·H·N²·d forward. The
   backward has five such matmuls when S is recomputed (FlashAttention), 2.5× the forward.
2. **HBM traffic (IO complexity).** Standard attention writes S and P to HBM and reads them
   back: Θ(Nd + N²) elements per head. FlashAttention keeps each tile on chip: with
   B_c = ⌈M/4d⌉ and B_r = min(B_c, d) it reads K and V once per Q block, Θ(N²d²/M).
3. **Peak memory.** Standard attention holds S and P (N×N each) at once; flash attention holds
   only O (N×d) and the row statistics L (N). For a given implementation, add its workspace.
4. **Roofline.** Arithmetic intensity I = FLOPs / bytes moved decides whether a step is bound
   by memory bandwidth (I below the machine's ridge point peak/bandwidth) or by arithmetic.

The last section measures peak memory (torch.cuda.max_memory_allocated on a GPU, the
profiler's allocation events on a CPU), so every prediction here can be checked.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os

import torch

from .validation import check_qkv, check_scale

__all__ = [
    "element_size", "attention_flops", "matmul_flops", "softmax_flops",
    "standard_attention_hbm_bytes", "flash_attention_hbm_bytes", "compulsory_hbm_bytes",
    "block_sizes", "tile_working_set_bytes", "largest_tiles",
    "naive_peak_bytes", "flash_peak_bytes", "peak_memory_bytes", "memory_savings_ratio", "predicted_peak_bytes",
    "IMPLEMENTATIONS", "DEVICES", "arithmetic_intensity", "matmul_intensity", "softmax_intensity", "Step",
    "attention_steps", "ridge_point", "attainable_flops", "roofline_time", "bound",
    "standard_attention", "measure_peak_bytes",
]

# --- Inputs ----------------------------------------------------------------------------------

_DTYPE_NAMES = {
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
}


def as_dtype(dtype) -> torch.dtype:
    """A torch floating dtype from a torch.dtype or a name ("fp16", "bf16", "fp32", "fp64")."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.lower()]
    raise TypeError(f"dtype must be a torch floating dtype or one of {sorted(_DTYPE_NAMES)}, got {dtype!r}")


def element_size(dtype) -> int:
    """Bytes per element: 2 for fp16/bf16, 4 for fp32, 8 for fp64 (bits / 8, not bits)."""
    return as_dtype(dtype).itemsize


def _count(name: str, value, minimum: int = 1) -> int:
    """`value` as an int >= minimum, or an error naming the argument."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _shape(B, H, N, d):
    return _count("B", B), _count("H", H), _count("N", N), _count("d", d)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, m: int) -> int:
    return _ceil_div(a, m) * m


# --- 1. FLOPs ---------------------------------------------------------------------------------

def matmul_flops(M: int, N: int, K: int) -> int:
    """(M×K)·(K×N): M·N dot products of length K, one multiply and one add each: 2·M·N·K."""
    return 2 * _count("M", M) * _count("N", N) * _count("K", K)


#: Operations per score in a row softmax: compare (max), subtract, exp, add (sum), divide.
SOFTMAX_FLOPS_PER_ELEMENT = 5


def softmax_flops(rows: int, cols: int) -> int:
    """A row softmax of a rows×cols matrix, counting SOFTMAX_FLOPS_PER_ELEMENT per element."""
    return SOFTMAX_FLOPS_PER_ELEMENT * _count("rows", rows) * _count("cols", cols)


def attention_flops(B: int, H: int, N: int, d: int, *, causal: bool = False, pass_: str = "forward") -> int:
    """Matmul FLOPs of attention, the convention benchmarks use (softmax not counted).

    forward: QKᵀ and PV, 4·B·H·N²·d. backward: five matmuls (S = QKᵀ recomputed, dV = PᵀdO,
    dP = dO Vᵀ, dQ = dS K, dK = dSᵀ Q), 2.5 × forward. causal halves both.
    pass_ is "forward", "backward" or "forward+backward".
    """
    B, H, N, d = _shape(B, H, N, d)
    fwd = 4 * B * H * N * N * d
    factor = {"forward": 1.0, "backward": 2.5, "forward+backward": 3.5}.get(pass_)
    if factor is None:
        raise ValueError(f"pass_ must be 'forward', 'backward' or 'forward+backward', got {pass_!r}")
    return int(fwd * factor * (0.5 if causal else 1.0))


# --- 2. HBM traffic ---------------------------------------------------------------------------

def standard_attention_hbm_bytes(B: int, H: int, N: int, d: int, dtype, *, backward: bool = False) -> int:
    """HBM bytes of standard attention (Algorithm 0 of the FlashAttention paper), per its steps:

    forward                                   read        write
      S = QKᵀ          (Q, K in; S out)       2Nd         N²
      P = softmax(S)   (S in; P out)          N²          N²
      O = PV           (P, V in; O out)       N² + Nd     Nd
      total                                   4Nd + 4N² elements

    backward (its Algorithm 3): dV = PᵀdO, dP = dO Vᵀ, dS = P∘(dP − rowsum(P∘dP)),
    dQ = dS K, dK = dSᵀQ: reads 5N² + 5Nd, writes 2N² + 3Nd, total 7N² + 8Nd elements.
    """
    B, H, N, d = _shape(B, H, N, d)
    e = element_size(dtype)
    per_head = (8 * N * d + 7 * N * N) if backward else (4 * N * d + 4 * N * N)
    return B * H * per_head * e


def compulsory_hbm_bytes(B: int, H: int, N: int, d: int, dtype) -> int:
    """The least any attention can move: read Q, K, V once and write O once, 4·N·d elements
    per head. A fused kernel whose K/V re-reads hit the L2 cache comes close to this."""
    B, H, N, d = _shape(B, H, N, d)
    return 4 * B * H * N * d * element_size(dtype)


def block_sizes(sram_bytes: int, d: int, dtype) -> tuple[int, int]:
    """(B_r, B_c) of FlashAttention (Algorithm 1, line 1) for an SRAM of `sram_bytes`.

    The SRAM holds M = sram_bytes // e elements. Q_i, K_j, V_j and O_i tiles must fit, four
    arrays with d columns, so B_c = ⌈M / 4d⌉; B_r = min(B_c, d) keeps the B_r × B_c score tile
    no larger than the d-wide ones.
    """
    sram_bytes, d = _count("sram_bytes", sram_bytes), _count("d", d)
    M = sram_bytes // element_size(dtype)
    if M < 1:
        raise ValueError(f"sram_bytes={sram_bytes} holds no element of {as_dtype(dtype)}")
    B_c = _ceil_div(M, 4 * d)
    return min(B_c, d), B_c


def flash_attention_hbm_bytes(B: int, H: int, N: int, d: int, dtype, *, sram_bytes: int | None = None,
                              B_r: int | None = None, B_c: int | None = None, order: str = "fa2",
                              backward: bool = False, stats_bytes: int = 4) -> int:
    """HBM bytes of tiled (flash) attention when nothing but one set of tiles stays on chip.

    Give either sram_bytes (then B_r, B_c = block_sizes(sram_bytes, d, dtype)) or B_r and B_c.
    Row statistics (m, ℓ, L, D) are stats_bytes each (fp32 in real kernels).

    order="fa1" (KV blocks outer, the FlashAttention paper's Algorithm 1): O, ℓ, m are
    initialised in HBM, then for each of the T_c KV blocks every Q block reads Q_i, O_i, ℓ_i,
    m_i and writes O_i, ℓ_i, m_i back:
        Nd + 2N (init) + 2Nd (K, V once) + T_c·(3Nd + 4N).
    order="fa2" (Q blocks outer, FlashAttention-2): each Q block reads Q_i once, all of K and
    V, and writes O_i and L_i once:
        Nd + T_r·2Nd + Nd + N.
    Both are Θ(N²d²/M) since T = N/B with B ∝ M/d.

    backward (FA2, KV blocks outer): D = rowsum(dO∘O) reads 2Nd, writes N; then K_j, V_j once
    (2Nd), and for each (j, i) pair Q_i, dO_i, L_i, D_i read and dQ_i read and written
    (T_c·(4Nd + 2N)); dK_j, dV_j written once (2Nd). Row statistics use stats_bytes.

    This counts what one thread block's schedule moves between SRAM and HBM. On a real GPU the
    L2 cache serves many of the K/V re-reads, so measured HBM traffic lies between this and
    compulsory_hbm_bytes.
    """
    B, H, N, d = _shape(B, H, N, d)
    e = element_size(dtype)
    s = _count("stats_bytes", stats_bytes)
    if sram_bytes is not None:
        if B_r is not None or B_c is not None:
            raise ValueError("give sram_bytes or (B_r, B_c), not both")
        B_r, B_c = block_sizes(sram_bytes, d, dtype)
    elif B_r is None or B_c is None:
        raise ValueError("give sram_bytes, or both B_r and B_c")
    B_r, B_c = _count("B_r", B_r), _count("B_c", B_c)
    T_r, T_c = _ceil_div(N, B_r), _ceil_div(N, B_c)
    Nd = N * d
    if backward:
        per_head = (2 * Nd * e + N * s) + 2 * Nd * e + T_c * (4 * Nd * e + 2 * N * s) + 2 * Nd * e
    elif order == "fa2":
        per_head = Nd * e + T_r * 2 * Nd * e + Nd * e + N * s
    elif order == "fa1":
        per_head = (Nd * e + 2 * N * s) + 2 * Nd * e + T_c * (3 * Nd * e + 4 * N * s)
    else:
        raise ValueError(f"order must be 'fa1' or 'fa2', got {order!r}")
    return B * H * per_head


def tile_working_set_bytes(B_r: int, B_c: int, d: int, dtype, *, acc_bytes: int = 4) -> int:
    """On-chip bytes of one FlashAttention thread block: Q_i (B_r×d), K_j and V_j (B_c×d) in the
    inputs' dtype, the score/probability tile S_ij (B_r×B_c) and the output accumulator O_i
    (B_r×d) in acc_bytes (fp32), and the row statistics m, ℓ (B_r each). On a GPU the
    accumulators live in registers and the tiles in shared memory; both are on-chip SRAM."""
    B_r, B_c, d = _count("B_r", B_r), _count("B_c", B_c), _count("d", d)
    e = element_size(dtype)
    return (B_r * d + 2 * B_c * d) * e + (B_r * B_c + B_r * d + 2 * B_r) * _count("acc_bytes", acc_bytes)


def largest_tiles(sram_bytes: int, d: int, dtype, *, candidates=(16, 32, 64, 128, 256)) -> tuple[int, int]:
    """The largest power-of-two (B_r, B_c), B_r >= B_c, whose tile_working_set_bytes fits in
    sram_bytes (real kernels use powers of two: tensor-core tile shapes and tl.arange need them).
    Returns (0, 0) when not even 16×16 fits."""
    sram_bytes, d = _count("sram_bytes", sram_bytes), _count("d", d)
    best = (0, 0)
    for B_r in candidates:
        for B_c in candidates:
            if B_c <= B_r and tile_working_set_bytes(B_r, B_c, d, dtype) <= sram_bytes:
                if B_r * B_c > best[0] * best[1] or (B_r * B_c == best[0] * best[1] and B_r > best[0]):
                    best = (B_r, B_c)
    return best


# --- 3. Peak memory ---------------------------------------------------------------------------

def naive_peak_bytes(B: int, H: int, N: int, d: int, dtype) -> int:
    """Peak extra memory of standard attention's forward, beyond Q, K, V: S and P, both N×N
    per head, are alive together while P = softmax(S) is computed: 2·B·H·N²·e."""
    B, H, N, d = _shape(B, H, N, d)
    return 2 * B * H * N * N * element_size(dtype)


def flash_peak_bytes(B: int, H: int, N: int, d: int, dtype, *, stats_bytes: int = 4) -> int:
    """Peak extra memory of flash attention's forward, beyond Q, K, V: the output O (N×d per
    head, inputs' dtype) and the log-sum-exp L (N per head, fp32): B·H·(N·d·e + 4·N).
    The B_r×B_c tiles live on chip, not in HBM."""
    B, H, N, d = _shape(B, H, N, d)
    return B * H * (N * d * element_size(dtype) + N * _count("stats_bytes", stats_bytes))


def peak_memory_bytes(B: int, H: int, N: int, d: int, dtype) -> tuple[int, int]:
    """(naive_peak_bytes, flash_peak_bytes): the forward's peak extra memory both ways."""
    return naive_peak_bytes(B, H, N, d, dtype), flash_peak_bytes(B, H, N, d, dtype)


def memory_savings_ratio(B: int, H: int, N: int, d: int, dtype) -> float:
    """naive_peak_bytes / flash_peak_bytes: grows linearly in N (about 2N/d for fp32)."""
    return naive_peak_bytes(B, H, N, d, dtype) / flash_peak_bytes(B, H, N, d, dtype)


def _sdpa_cpu_splits(N: int) -> tuple[int, int]:
    """Query and key block sizes torch's CPU flash kernel picks (FlashAttentionKernel.cpp)."""
    q_split = 256 if N >= 768 else 64 if N >= 192 else 32
    return min(q_split, N), min(512, N)


#: The devices predicted_peak_bytes tells apart, and the implementations that run on one only.
DEVICES = ("cpu", "cuda")
_IMPL_DEVICE = {"sdpa_cpu": "cpu", "sdpa_flash": "cuda"}


def _device_type(device) -> str:
    """"cpu" or "cuda" from a torch.device or a name ("cpu", "cuda", "cuda:0"), by its type."""
    kind = None
    if isinstance(device, torch.device):
        kind = device.type
    elif isinstance(device, str):
        try:
            kind = torch.device(device).type
        except (RuntimeError, ValueError):
            kind = None
    if kind not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)} (a name such as 'cuda:0' or a torch.device "
                         f"of those types), got {device!r}")
    return kind


def predicted_peak_bytes(impl: str, B: int, H: int, N: int, d: int, dtype, *, backward: bool = False,
                         threads: int | None = None, B_r: int = 64, B_c: int = 64, device: str = "cpu") -> int:
    """Predicted peak memory beyond the inputs (Q, K, V, and dO when backward) of one
    implementation, forward (backward=False) or forward then backward (backward=True).

    Each implementation's peak is the algorithm's own state plus what that code allocates on
    the side; the docstring of each branch below names the tensors alive at the peak.

    impl:
      "naive"       standard_attention() below, with autograd when backward
      "sdpa_cpu"    torch's CPU flash kernel (F.scaled_dot_product_attention on a CPU)
      "sdpa_flash"  torch's CUDA FlashAttention-2 backend
      "triton"      the course's Triton forward (kernels.triton_forward): O and L only
      "tiled"       the course's PyTorch tiled forward (kernels.tiled.forward_fa2)
      "minimal"     the algorithm alone: O, L (+ dQ, dK, dV, D backward)
    threads: CPU threads (torch.get_num_threads() when None), for "sdpa_cpu".
    device: where the code runs, "cpu" or "cuda" (a torch.device or "cuda:0" counts by its
      type). Only "naive" with backward=True differs between the two: torch's CUDA softmax
      backward allocates one more N×N temporary than its CPU kernel (see that branch). The
      other predictions are the same on both; "sdpa_cpu" runs only on "cpu" and "sdpa_flash"
      only on "cuda", and naming the other device is a ValueError.
    """
    B, H, N, d = _shape(B, H, N, d)
    dt = as_dtype(dtype)
    e = dt.itemsize
    BH = B * H
    Nd, NN = N * d, N * N
    acc = 8 if dt == torch.float64 else 4  # accumulation dtype of the kernels
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {sorted(IMPLEMENTATIONS)}, got {impl!r}")
    device = _device_type(device)
    if _IMPL_DEVICE.get(impl, device) != device:
        raise ValueError(f"impl={impl!r} runs only on device={_IMPL_DEVICE[impl]!r}, got device={device!r}")

    if impl == "naive":
        # Qs = Q·scale, S = Qs Kᵀ, P = softmax(S), del S, O = P V (see standard_attention).
        if not backward:
            # Qs+S during the matmul, S+P during the softmax, P+O during the last matmul; the
            # same on a CPU and on a GPU (measured on both).
            return BH * e * max(Nd + NN, 2 * NN, NN + Nd)
        # Autograd saves Qs (for dK) and P (for softmax and PV backward); S is freed.
        fwd = Nd + 2 * NN  # Qs, S, P during the softmax
        # PV backward makes dP = dO Vᵀ (N²) and dV = PᵀdO (Nd) while Qs, P and O are alive; the
        # softmax backward then makes dS = P∘(dP − rowsum(dP∘P)) (N²) while dP and P are still
        # alive: Qs, P, O, dP, dV, dS. torch's CPU kernel takes each row's sum of dP∘P and
        # writes dS row by row, with no N×N temporary.
        soft_bwd = 3 * NN + 3 * Nd
        if device == "cuda":
            # torch's CUDA softmax backward (softmax_backward_cuda_out in SoftMax.cu) first
            # materialises dP∘P as a whole N×N tensor (at::mul), then its kernel takes the row
            # sums rowsum(dP∘P) from it and writes dS = dP∘P − P∘rowsum(dP∘P); the temporary
            # is freed when the op returns. So at the peak four N×N tensors are alive: P, dP,
            # dS and dP∘P. Found by replaying the CUDA caching allocator's trace
            # (tools/naive_peak_diag.py; benchmarks/results/naive_peak_diag_h100.txt).
            soft_bwd += NN
        # QsKᵀ backward: dS, dQs, dKᵀ, with Qs, O, dV alive; dK is then copied contiguous.
        mm_bwd = NN + 5 * Nd
        return BH * e * max(fwd, soft_bwd, mm_bwd)

    if impl == "minimal":
        fwd = BH * (Nd * e + N * 4)  # O, L
        return fwd if not backward else fwd + BH * (3 * Nd * e + N * 4)  # + dQ, dK, dV, D

    if impl == "triton":
        if backward:
            raise ValueError("impl='triton' models the forward kernel only (backward=False)")
        return BH * (Nd * e + N * 4)  # O (inputs' dtype), L (fp32)

    if impl == "sdpa_flash":
        # forward (flash_api.cpp mha_fwd): O and the fp32 log-sum-exp.
        fwd = BH * (Nd * e + N * 4)
        if not backward:
            return fwd
        # backward (attention_backward.cu, mha_bwd): contiguous copies of dO and O in the
        # (B, N, H, d) layout, dQ, dK, dV, the fp32 D = rowsum(dO∘O) and an fp32 dQ
        # accumulator, with N rounded up to 128 and d to 32 (64 above 128).
        N_r = _round_up(N, 128)
        d_r = _round_up(d, 32 if d <= 128 else 64)
        return fwd + BH * (5 * Nd * e + N_r * 4 + N_r * d_r * 4)

    if impl == "sdpa_cpu":
        T = _count("threads", threads if threads is not None else torch.get_num_threads())
        q_s, kv_s = _sdpa_cpu_splits(N)
        reduced = e < 4  # fp16/bf16 keep a second copy of the score tile in their own dtype
        # forward (cpu_flash_attention): O, L (fp32) and per thread a score tile (q_s×kv_s),
        # its row max and sum, and an output tile (q_s×d), all in the accumulation dtype.
        fwd = BH * (Nd * e + N * acc) + T * ((q_s * kv_s + 2 * q_s + q_s * d) * acc + (q_s * kv_s * e if reduced else 0))
        if not backward:
            return fwd
        # backward (cpu_flash_attention_backward): O and L saved, dQ, dK, dV, a contiguous
        # copy of dO, and per thread two score tiles (P and dP) and the row sums D.
        bwd = BH * (Nd * e + N * acc) + BH * 4 * Nd * e + T * (2 * q_s * kv_s * acc + q_s * acc
                                                               + (2 * q_s * kv_s * e if reduced else 0))
        # then autograd copies each gradient into Q's (B, H, N, d) layout: O, dQ, dK, dV + 1 copy
        grads = BH * (Nd * e + N * acc) + BH * 4 * Nd * e
        return max(fwd, bwd, grads)

    # impl == "tiled": kernels.tiled.forward_fa2, which computes in fp32 (fp64 for fp64).
    if backward:
        raise ValueError("impl='tiled' models the forward (kernels.tiled.forward_fa2) only")
    B_r, B_c = _count("B_r", B_r), _count("B_c", B_c)
    b_r, b_c = min(B_r, N), min(B_c, N)
    state = BH * (Nd + N) * acc  # O and L, full size, in the accumulation dtype
    upcast = 3 * BH * Nd * acc if acc != e else 0  # Q, K, V copied to fp32
    # Per Q block, at most: the previous step's S_ij and P̃_ij are still referenced while the
    # next S_ij (two B_r×B_c tensors: QKᵀ, then scaled) or P̃_ij (S − m, then exp) is made,
    # four tiles and O_i (three on the first step); or S_ij and P̃_ij with four B_r×d tensors
    # (O_i, P̃V, α·O_i and their sum). Plus the row vectors m, ℓ, m_new, α and the int64
    # row and column indices.
    n_tiles = 4 if _ceil_div(N, b_c) >= 2 else 3
    tiles = BH * acc * (max(n_tiles * b_r * b_c + b_r * d, 2 * b_r * b_c + 4 * b_r * d) + 4 * b_r) + 8 * (b_r + b_c)
    if acc == e:
        return state + upcast + tiles
    # O.to(dtype) at the end, while the last block's S_ij, P̃_ij and O_i are still referenced
    r_last, c_last = N - (_ceil_div(N, b_r) - 1) * b_r, N - (_ceil_div(N, b_c) - 1) * b_c
    cast_back = BH * Nd * e + BH * acc * (2 * r_last * c_last + r_last * d)
    return state + upcast + max(tiles, cast_back)


IMPLEMENTATIONS = {
    "naive": "standard attention (S and P materialised), kernels.memory_model.standard_attention",
    "sdpa_cpu": "torch.nn.functional.scaled_dot_product_attention on a CPU (its flash kernel)",
    "sdpa_flash": "torch SDPA, FlashAttention-2 backend (CUDA)",
    "triton": "the course's Triton forward, kernels.triton_forward.attention_forward",
    "tiled": "the course's PyTorch tiled forward, kernels.tiled.forward_fa2",
    "minimal": "the algorithm's state alone (O, L; + dQ, dK, dV, D backward)",
}


# --- 4. Arithmetic intensity and the roofline --------------------------------------------------

def arithmetic_intensity(flops: float, nbytes: float) -> float:
    """FLOPs per byte moved to or from memory."""
    return _positive("flops", flops) / _positive("nbytes", nbytes)


def matmul_intensity(M: int, N: int, K: int, dtype) -> float:
    """C = A·B with A (M×K), B (K×N), C (M×N): 2·M·N·K FLOPs over (MK + KN + MN)·e bytes
    (read A and B once, write C once)."""
    M, N, K = _count("M", M), _count("N", N), _count("K", K)
    return 2 * M * N * K / ((M * K + K * N + M * N) * element_size(dtype))


def softmax_intensity(dtype) -> float:
    """Row softmax reads and writes each element once: 5 FLOPs per 2·e bytes, whatever the size."""
    return SOFTMAX_FLOPS_PER_ELEMENT / (2 * element_size(dtype))


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of an attention algorithm, to place on a roofline."""

    name: str
    flops: float
    nbytes: float

    @property
    def intensity(self) -> float:
        return self.flops / self.nbytes


def attention_steps(B: int, H: int, N: int, d: int, dtype, *, B_r: int = 128, B_c: int = 128) -> list[Step]:
    """The steps of standard attention and of one fused flash attention kernel (forward).

    Standard: S = QKᵀ, P = softmax(S), O = PV, each moving its inputs and outputs through HBM.
    Flash: one kernel, 4·B·H·N²·d FLOPs (+ the softmax's), with two byte counts: the tile
    schedule's (flash_attention_hbm_bytes, no cache) and the compulsory 4·N·d per head.
    """
    B, H, N, d = _shape(B, H, N, d)
    e, BH = element_size(dtype), B * H
    sm = BH * softmax_flops(N, N)
    return [
        Step("naive: S = QKᵀ", BH * matmul_flops(N, N, d), BH * (2 * N * d + N * N) * e),
        Step("naive: P = softmax(S)", sm, BH * 2 * N * N * e),
        Step("naive: O = PV", BH * matmul_flops(N, d, N), BH * (N * N + 2 * N * d) * e),
        Step("flash: fused (tile schedule, no cache)", attention_flops(B, H, N, d) + sm,
             flash_attention_hbm_bytes(B, H, N, d, dtype, B_r=B_r, B_c=B_c)),
        Step("flash: fused (compulsory bytes)", attention_flops(B, H, N, d) + sm,
             compulsory_hbm_bytes(B, H, N, d, dtype) + BH * N * 4),
    ]


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """The intensity where the roofline bends: below it, bandwidth limits; above, arithmetic."""
    return _positive("peak_flops", peak_flops) / _positive("bandwidth", bandwidth)


def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """The roofline: min(peak FLOP/s, intensity × bandwidth)."""
    return min(_positive("peak_flops", peak_flops), _positive("intensity", intensity) * _positive("bandwidth", bandwidth))


def roofline_time(flops: float, nbytes: float, peak_flops: float, bandwidth: float) -> float:
    """Lower bound on run time: the larger of compute time and memory time."""
    return max(_positive("flops", flops) / _positive("peak_flops", peak_flops),
               _positive("nbytes", nbytes) / _positive("bandwidth", bandwidth))


def bound(intensity: float, peak_flops: float, bandwidth: float) -> str:
    """'memory' when intensity is below the ridge point, else 'compute'."""
    return "memory" if _positive("intensity", intensity) < ridge_point(peak_flops, bandwidth) else "compute"


# --- The implementation the naive figures describe, and measuring ------------------------------

def standard_attention(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Standard attention, the three steps materialised: S = (scale·Q)Kᵀ, P = softmax(S),
    O = PV. Q, K, V (B, H, N, d). The memory model's "naive" figures describe this function:
    S and P (B, H, N, N) are alive together during the softmax."""
    check_qkv(Q, K, V)
    check_scale(scale)
    scale = 1.0 / math.sqrt(Q.shape[-1]) if scale is None else scale
    S = (Q * scale) @ K.transpose(-2, -1)  # (B, H, N, N)
    P = torch.softmax(S, dim=-1)  # (B, H, N, N)
    del S  # autograd keeps P (softmax saves its output), not S
    return P @ V  # (B, H, N, d)


def _cpu_peak(fn):
    """Peak bytes held by torch's CPU allocator while fn() runs, from the profiler's
    allocation events (each event: +bytes on allocation, -bytes on free)."""
    from torch.profiler import ProfilerActivity, profile

    # Kineto (the profiler's backend) logs every start and stop on stderr at its default level;
    # level 6 keeps it quiet. Read when the profiler first starts; a value the user set wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    from torch._C._profiler import _EventType

    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        ev = stack.pop()
        if ev.tag == _EventType.Allocation:
            events.append((ev.start_time_ns, ev.extra_fields.alloc_size))
        stack.extend(ev.children)
    events.sort()
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak, result


def measure_peak_bytes(fn, device=None):
    """Run fn() and return (peak extra bytes, fn's result): the most memory allocated at any
    moment while fn ran, beyond what was allocated before it started.

    On a CUDA device this is torch.cuda.max_memory_allocated minus memory_allocated before the
    call (after a synchronize). On a CPU torch keeps no such counter, so the allocator's events
    are recorded with torch.profiler (profile_memory=True) and replayed in time order. Both
    count tensors of torch's allocator (what the model predicts), not memory that libraries
    such as BLAS allocate on their own. Run fn once before measuring so that one-time
    allocations (a BLAS workspace, compiled kernels) are not counted, and make its inputs
    before the call: on a CPU, freeing inside fn a tensor made before it is not seen.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, result
    if device.type != "cpu":
        raise ValueError(f"device must be a cpu or cuda device, got {device}")
    return _cpu_peak(fn)
