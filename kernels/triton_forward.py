"""The FlashAttention-2 forward pass as a Triton kernel.

One program computes one query block Q_i (BLOCK_M rows) of one (batch, head): it loads Q_i once,
streams K_j, V_j block by block (BLOCK_N rows each), keeps the online-softmax state (acc, m, ℓ)
in registers, and writes O_i and L_i once at the end. The grid is (T_r, B·H).

The inner loop body is `attention_block_step`, a @triton.jit function the kernel receives as a
compile-time argument (STEP), so that lesson 03's exercise, the backward pass and the mini-Flex
can call or replace it. Where the kernel differs from kernels.tiled.forward_fa2:

* exp2 instead of exp: the scores are multiplied by qk_scale = scale · log2(e), so
  exp(scale·s − m) = exp2(qk_scale·s − m₂) with m₂ the running max in log2 units. exp2 is one
  hardware instruction (MUFU.EX2); exp is exp2 plus a multiply. L goes back to natural log.
* Causal: the K/V blocks of query block i fall in three groups (kernels.tiled.causal_block_range):
  blocks wholly at or left of the diagonal run with no mask at all; the few blocks that cross the
  diagonal (or the last, partial block) run with the mask; blocks wholly above the diagonal are
  never visited. The mask costs a compare and a select per score, so it is paid only where needed.
* Any N: rows past N_q or N_k are read with masked loads (or TMA, which fills them with zeros) and
  their scores set to -inf; the head dim is padded to BLOCK_D, a power of two, with masks.
* Precision: scores, m, ℓ and acc in fp32; P is rounded to the input dtype for the P·V product
  (tensor cores); fp32 inputs use IEEE fp32 products, not TF32, so fp32 stays fp32-accurate.

Public entry: attention_forward(q, k, v, *, is_causal=False, scale=None) -> (O, L).
On a GPU the block sizes are autotuned per head dim; under the interpreter (CPU) one small
config runs. `launch(...)` exposes the knobs (config, STEP, TMA) for tests, graders and tuning.
"""

from __future__ import annotations

import math
import threading

import torch

from . import device
from .validation import check_qkv, check_scale

if not device.HAS_TRITON:  # ImportError, so that `pytest.importorskip` and optional imports skip cleanly
    raise ImportError("kernels.triton_forward needs the triton package, which is not installed on this platform")

import triton  # noqa: E402  (after kernels.device has set TRITON_INTERPRET when there is no GPU)
import triton.language as tl  # noqa: E402

__all__ = ["attention_forward", "launch", "attention_block_step", "configs_for", "SUPPORTED_HEAD_DIMS"]

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x · log2(e))
LN2 = 0.6931471805599453  # ln(2): log(x) = log2(x) · ln(2)
#: Head dims the kernel accepts (padded inside to the next power of two).
SUPPORTED_HEAD_DIMS = (16, 256)
#: The running max starts here rather than at -inf: a row whose first blocks are all masked then
#: gets exp2(-inf - m) = 0 and exp2(m_old - m_new) = exp2(0) = 1 instead of exp2(-inf + inf) = NaN.
M_INIT = -1.0e30
_M_INIT = tl.constexpr(M_INIT)  # the kernel's copies of the constants (globals a kernel reads must be constexpr)
_LN2 = tl.constexpr(LN2)


# ------------------------------------------------------------------------------------------------
# The inner loop body: fold one K/V block into the online-softmax state.
# ------------------------------------------------------------------------------------------------
@triton.jit
def attention_block_step(acc, m_i, l_i, q, kT, v, offs_m, offs_n, N_k, qk_scale,
                         MASK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """One step of the FA2 inner loop (lesson 03's exercise writes this function).

    acc (BLOCK_M, BLOCK_D) fp32   unnormalised output Σ_j exp2(s_ij − m_i) · v_j so far
    m_i (BLOCK_M,) fp32           running max of the scores, in log2 units (× qk_scale)
    l_i (BLOCK_M,) fp32           running denominator ℓ, relative to m_i
    q   (BLOCK_M, BLOCK_D)        the query tile Q_i (input dtype; padded columns are 0)
    kT  (BLOCK_D, BLOCK_N)        K_jᵀ (rows of K past N_k are 0)
    v   (BLOCK_N, BLOCK_D)        V_j (rows past N_k hold padding: never let them in)
    offs_m (BLOCK_M,), offs_n (BLOCK_N,)  the query rows and key columns of this tile
    N_k                           number of keys; columns >= N_k do not exist
    qk_scale                      scale · log2(e)
    MASK_N  (constexpr)           this block may hold columns >= N_k: mask them
    CAUSAL  (constexpr)           this block crosses the diagonal: mask key j > query i
    Returns the new (acc, m_i, l_i).
    """
    s = block_scores(q, kT)
    return softmax_update(acc, m_i, l_i, s, v, offs_m, offs_n, N_k, qk_scale, MASK_N, CAUSAL)


@triton.jit
def block_scores(q, kT):
    """S_ij = Q_i K_jᵀ, (BLOCK_M, BLOCK_N), accumulated in fp32 on the tensor cores (IEEE fp32
    products for fp32 inputs, not TF32)."""
    if q.dtype == tl.float32:
        s = tl.dot(q, kT, input_precision="ieee")
    else:
        s = tl.dot(q, kT)
    return s


@triton.jit
def softmax_update(acc, m_i, l_i, s, v, offs_m, offs_n, N_k, qk_scale,
                   MASK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Fold the unscaled score tile s = Q_i K_jᵀ and V_j into (acc, m_i, l_i): the online softmax."""
    if MASK_N or CAUSAL:
        allowed = offs_n[None, :] < N_k  # (BLOCK_M, BLOCK_N) after broadcasting
        if CAUSAL:
            allowed = allowed & (offs_n[None, :] <= offs_m[:, None])  # top-left: key j <= query i
        s = tl.where(allowed, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        s = s - m_new[:, None]
    else:
        # no mask: scale inside the max, then one fused multiply-add per score
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        s = s * qk_scale - m_new[:, None]
    p = tl.math.exp2(s)  # P̃_ij, (BLOCK_M, BLOCK_N), in [0, 1]
    alpha = tl.math.exp2(m_i - m_new)  # how much the old state shrinks
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if v.dtype == tl.float32:
        acc = tl.dot(p, v, acc, input_precision="ieee")
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)  # P rounded to fp16/bf16 for the tensor cores
    return acc, m_new, l_i


@triton.jit
def _load_rows(base, rows, n_rows, stride_row, offs_d, stride_d, other,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHECK_ROWS: tl.constexpr):
    """Load a (len(rows), BLOCK_D) tile of a (n_rows, HEAD_DIM) matrix; the masks are compiled in
    only where needed (rows that may be past the end, head-dim padding)."""
    ptrs = base + rows[:, None] * stride_row + offs_d[None, :] * stride_d
    if CHECK_ROWS:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs, mask=rows[:, None] < n_rows, other=other)
        else:
            tile = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=other)
    else:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=other)
    return tile


@triton.jit
def _forward_query_block(
    start_m,  # index i of the query block
    q_base, k_base, v_base, o_base, l_base,  # this (batch, head)'s Q, K, V, O and L rows
    q_desc, k_desc, v_desc, o_desc,  # their TMA descriptors (USE_TMA) or unused
    stride_qn, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_on, stride_od,
    N_q, N_k, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, STEP: tl.constexpr, USE_TMA: tl.constexpr, PAD_V: tl.constexpr,
):
    """O_i and L_i of one query block: the body of forward_fa2's outer loop."""
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query rows i
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,) key offsets inside a block
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    if USE_TMA:
        q = q_desc.load([start_m * BLOCK_M, 0])
    else:
        q = _load_rows(q_base, offs_m, N_q, stride_qn, offs_d, stride_qd, 0.0, HEAD_DIM, BLOCK_D, True)

    # online-softmax state of the BLOCK_M rows, kept in registers for the whole loop
    m_i = tl.full([BLOCK_M], _M_INIT, dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running denominator ℓ
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # unnormalised O_i

    # Which key blocks to visit (same rule as kernels.tiled.causal_block_range):
    # [0, lo_mask) need no mask; [lo_mask, hi) need the bounds and/or causal mask; keys >= hi are
    # never visited (above the diagonal, or past N_k).
    if IS_CAUSAL:
        r_first = start_m * BLOCK_M
        r_last = tl.minimum(r_first + BLOCK_M, N_q) - 1
        hi = tl.minimum(r_last + 1, N_k)
        lo_mask = tl.minimum((r_first + 1) // BLOCK_N, N_k // BLOCK_N) * BLOCK_N
    else:
        hi = N_k
        lo_mask = (N_k // BLOCK_N) * BLOCK_N

    # stage 1: blocks wholly in bounds and at or left of the diagonal: no mask anywhere
    for start_n in range(0, lo_mask, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        if USE_TMA:
            k = k_desc.load([start_n, 0])
            v = v_desc.load([start_n, 0])
        else:
            rows = start_n + offs_n
            k = _load_rows(k_base, rows, N_k, stride_kn, offs_d, stride_kd, 0.0, HEAD_DIM, BLOCK_D, False)
            v = _load_rows(v_base, rows, N_k, stride_vn, offs_d, stride_vd, 0.0, HEAD_DIM, BLOCK_D, False)
        acc, m_i, l_i = STEP(acc, m_i, l_i, q, tl.trans(k), v, offs_m, start_n + offs_n, N_k, qk_scale,
                             False, False)
    # stage 2: the diagonal blocks (causal) and the last, partial block: masked
    for start_n in range(lo_mask, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        if USE_TMA:
            k = k_desc.load([start_n, 0])
            v = v_desc.load([start_n, 0])
        else:
            rows = start_n + offs_n
            k = _load_rows(k_base, rows, N_k, stride_kn, offs_d, stride_kd, 0.0, HEAD_DIM, BLOCK_D, True)
            v = _load_rows(v_base, rows, N_k, stride_vn, offs_d, stride_vd, PAD_V, HEAD_DIM, BLOCK_D, True)
        acc, m_i, l_i = STEP(acc, m_i, l_i, q, tl.trans(k), v, offs_m, start_n + offs_n, N_k, qk_scale,
                             True, IS_CAUSAL)

    # epilogue: O_i = acc / ℓ, L_i = (m + log2 ℓ) · ln 2; a row that saw no key gets O = 0, L = -inf
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    o = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * _LN2, float("-inf"))
    tl.store(l_base + offs_m, lse, mask=offs_m < N_q)
    if USE_TMA:
        o_desc.store([start_m * BLOCK_M, 0], o.to(o_base.dtype.element_ty))
    else:
        o_ptrs = o_base + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od
        o_mask = offs_m[:, None] < N_q
        if HEAD_DIM != BLOCK_D:
            o_mask = o_mask & (offs_d[None, :] < HEAD_DIM)
        tl.store(o_ptrs, o.to(o_base.dtype.element_ty), mask=o_mask)


# N_q, N_k and N_KEY are not specialised on (divisible by 16 or not): one binary serves every length
@triton.jit(do_not_specialize=["N_q", "N_k", "N_KEY"])
def _attention_forward_kernel(
    Q, K, V, O, L,  # pointers: Q (B, H, N_q, d), K and V (B, H, N_k, d), O like Q, L (B, H, N_q) fp32
    stride_qb, stride_qh, stride_qn, stride_qd,  # strides in elements: any layout works
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    H, N_q, N_k,  # heads, number of queries, number of keys
    qk_scale,  # scale · log2(e)
    N_KEY,  # bucket of max(N_q, N_k): not used by the code, only by the autotuner's key
    HEAD_DIM: tl.constexpr,  # d
    BLOCK_D: tl.constexpr,  # d padded to a power of two (tl.arange and tl.dot need one)
    BLOCK_M: tl.constexpr,  # B_r: query rows per query block
    BLOCK_N: tl.constexpr,  # B_c: key rows per inner step
    IS_CAUSAL: tl.constexpr,
    STEP: tl.constexpr,  # the @triton.jit inner-loop body (attention_block_step or a replacement)
    USE_TMA: tl.constexpr,  # move Q, K, V, O tiles with TMA tensor descriptors (Hopper) instead of pointers
    PAD_V: tl.constexpr,  # value read for V rows past N_k (0.0; graders poison it)
    Q_BLOCKS: tl.constexpr = 1,  # query blocks per program: 1, or 2 (causal: block i with T_r-1-i)
):
    T_r = tl.cdiv(N_q, BLOCK_M)
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    # base pointers of this (batch, head), in int64: B·H·N·d may exceed 2³¹
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    l_base = L + bh.to(tl.int64) * N_q
    if USE_TMA:
        # TMA descriptors of this head's (N, d) matrices: the copy engine clips at N and d and fills
        # the outside with zeros, so no masks are needed on loads or on the store
        q_desc = tl.make_tensor_descriptor(q_base, shape=[N_q, HEAD_DIM], strides=[stride_qn, 1],
                                           block_shape=[BLOCK_M, BLOCK_D])
        k_desc = tl.make_tensor_descriptor(k_base, shape=[N_k, HEAD_DIM], strides=[stride_kn, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[N_k, HEAD_DIM], strides=[stride_vn, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
        o_desc = tl.make_tensor_descriptor(o_base, shape=[N_q, HEAD_DIM], strides=[stride_on, 1],
                                           block_shape=[BLOCK_M, BLOCK_D])
    else:  # the pointer path does not use descriptors
        q_desc, k_desc, v_desc, o_desc = q_base, k_base, v_base, o_base

    # Which query blocks this program computes. Causal: the longest rows first (better load balance
    # at the tail); with two blocks per program, block i goes with block T_r-1-i, so that every
    # program does the same amount of work.
    if Q_BLOCKS == 1:
        if IS_CAUSAL:
            first = T_r - 1 - pid
        else:
            first = pid
    else:
        if IS_CAUSAL:
            first = T_r - 1 - pid
            second = pid
        else:
            first = 2 * pid
            second = 2 * pid + 1
    _forward_query_block(first, q_base, k_base, v_base, o_base, l_base, q_desc, k_desc, v_desc, o_desc,
                         stride_qn, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_on, stride_od,
                         N_q, N_k, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, IS_CAUSAL, STEP, USE_TMA, PAD_V)
    if Q_BLOCKS == 2:
        if second != first and second < T_r:
            _forward_query_block(second, q_base, k_base, v_base, o_base, l_base, q_desc, k_desc, v_desc, o_desc,
                                 stride_qn, stride_qd, stride_kn, stride_kd, stride_vn, stride_vd, stride_on,
                                 stride_od, N_q, N_k, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, IS_CAUSAL,
                                 STEP, USE_TMA, PAD_V)


# ------------------------------------------------------------------------------------------------
# Configurations: (BLOCK_M, BLOCK_N, num_warps, num_stages).
# ------------------------------------------------------------------------------------------------
#: The one config under the interpreter: small tiles (tl.dot needs >= 16) so CPU runs stay fast,
#: BLOCK_M = 2·BLOCK_N so that causal query blocks have two diagonal key blocks.
CPU_CONFIG = dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1, Q_BLOCKS=1)

#: Hopper (H100) configs per padded head dim, fp16/bf16: (BLOCK_M, BLOCK_N, num_warps, num_stages
#: [, Q_BLOCKS]). Measured with benchmarks/bench_forward.py --sweep (benchmarks/PERFORMANCE_forward.md):
#: with TMA, BLOCK_M=128 fits in one warpgroup (4 warps) at d <= 64; at d=128 two warpgroups (8 warps)
#: and a 128 x 128 tile with 3 stages win. Q_BLOCKS=2 runs two query blocks per program (causal: a
#: long and a short one). The last entries serve the pointer path (strided inputs), which needs more
#: registers for its address tensors. The autotuner times the list once per (length bucket, causal).
GPU_CONFIGS = {
    16: [(128, 128, 4, 3), (128, 128, 4, 3, 2), (64, 128, 4, 2), (128, 64, 4, 3), (64, 64, 4, 3)],
    32: [(128, 128, 4, 3), (128, 128, 4, 3, 2), (64, 128, 4, 2), (128, 64, 4, 3), (64, 64, 4, 3)],
    64: [(128, 128, 4, 3), (128, 128, 4, 3, 2), (128, 64, 4, 3), (128, 64, 4, 3, 2), (64, 128, 4, 2),
         (128, 64, 4, 4), (64, 64, 4, 3), (128, 64, 8, 3)],
    128: [(128, 128, 8, 3), (128, 128, 8, 3, 2), (128, 64, 4, 2), (128, 64, 4, 2, 2), (128, 64, 8, 3),
          (128, 64, 8, 4), (64, 64, 4, 3)],
    256: [(64, 64, 4, 2), (64, 32, 4, 2), (128, 32, 8, 2)],
}
#: fp32 inputs: IEEE fp32 dot products have no wgmma path and twice the bytes: smaller tiles.
GPU_CONFIGS_FP32 = {
    16: [(64, 64, 4, 2)], 32: [(64, 64, 4, 2)], 64: [(64, 64, 4, 2), (64, 32, 4, 2)],
    128: [(64, 32, 4, 2), (64, 64, 8, 2)], 256: [(32, 32, 4, 1), (64, 32, 8, 1)],
}


def configs_for(block_d: int, dtype: torch.dtype) -> list[dict]:
    """The candidate configs (dicts of BLOCK_M, BLOCK_N, num_warps, num_stages, Q_BLOCKS) for a
    padded head dim and dtype on the GPU."""
    table = GPU_CONFIGS_FP32 if dtype == torch.float32 else GPU_CONFIGS
    return [dict(BLOCK_M=c[0], BLOCK_N=c[1], num_warps=c[2], num_stages=c[3], Q_BLOCKS=c[4] if len(c) > 4 else 1)
            for c in table[block_d]]


_autotuned = {}


def _autotuned_kernel(block_d: int, dtype: torch.dtype):
    """One autotuner per (padded head dim, dtype class), each over its own short config list.
    The key adds the length bucket and causality; the autotuner adds the tensors' dtypes."""
    fp32 = dtype == torch.float32
    if (block_d, fp32) not in _autotuned:
        configs = [
            triton.Config({"BLOCK_M": c["BLOCK_M"], "BLOCK_N": c["BLOCK_N"], "Q_BLOCKS": c["Q_BLOCKS"]},
                          num_warps=c["num_warps"], num_stages=c["num_stages"])
            for c in configs_for(block_d, dtype)
        ]
        _autotuned[(block_d, fp32)] = triton.autotune(configs=configs, key=["N_KEY", "HEAD_DIM", "IS_CAUSAL", "USE_TMA"])(
            _attention_forward_kernel
        )
    return _autotuned[(block_d, fp32)]


_allocator_state = threading.local()  # triton keeps its allocator per thread (a ContextVar)


def _tma_ok(*tensors, explicit: bool = False) -> bool:
    """TMA needs a Hopper-or-newer GPU, fp16/bf16, unit stride along d, and 16-byte aligned
    addresses and row/head/batch strides. Under the interpreter TMA is only used when asked for
    (explicit=True), so that CPU tests can check this path's logic too."""
    if not hasattr(tl, "make_tensor_descriptor"):
        return False
    t0 = tensors[0]
    if t0.dtype not in (torch.float16, torch.bfloat16):
        return False
    if device.TRITON_INTERPRET:
        if not explicit:
            return False
    elif not device.HAS_CUDA or torch.cuda.get_device_capability(t0.device)[0] < 9:
        return False
    for t in tensors:
        size = t.element_size()
        if t.stride(3) != 1 or t.data_ptr() % 16:
            return False
        if any((s * size) % 16 for s in t.stride()[:3]):
            return False
    return True


def _resolve_tma(use_tma: bool | None, *tensors) -> bool:
    """The use_tma argument of the forward and backward entry points: None picks TMA where the GPU
    and the layout allow it, True insists (a clear error where it cannot), False declines. Sets
    triton's allocator for the in-kernel descriptors when TMA is on."""
    if use_tma is None:
        use_tma = _tma_ok(*tensors)
    elif use_tma and not _tma_ok(*tensors, explicit=True):
        raise ValueError("use_tma=True needs a Hopper GPU, fp16/bf16, unit stride along d and 16-byte aligned strides")
    if use_tma and not device.TRITON_INTERPRET:
        _set_allocator()
    return bool(use_tma)


def _set_allocator() -> None:
    """In-kernel TMA descriptors live in a small global scratch buffer that triton asks for.

    Triton looks the allocator up per thread, and autograd runs backward passes on its own
    threads, so each thread that launches a TMA kernel sets it once."""
    if not getattr(_allocator_state, "done", False):
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
        _allocator_state.done = True


def _n_key(n: int) -> int:
    """Autotuning bucket of a sequence length: powers of two from 1024 to 16384."""
    return min(max(triton.next_power_of_2(max(n, 1)), 1024), 16384)


def _check(q, k, v, scale):
    check_qkv(q, k, v, dtypes=(torch.float16, torch.bfloat16, torch.float32))
    check_scale(scale)
    d = q.shape[-1]
    if v.shape[-1] != d:
        raise ValueError(f"value head dim must equal the query's d={d} for the Triton kernel, got value shape {tuple(v.shape)}")
    lo, hi = SUPPORTED_HEAD_DIMS
    if not lo <= d <= hi:
        raise ValueError(f"head dim d must be between {lo} and {hi} for the Triton kernel, got d={d}")
    if device.TRITON_INTERPRET:
        if q.device.type != "cpu":
            raise ValueError(f"under the Triton interpreter (no GPU) the tensors must be on the CPU, got {q.device}")
    elif q.device.type != "cuda":
        raise ValueError(f"the Triton kernel runs on a CUDA GPU: move query, key and value to 'cuda', got {q.device}")


def launch(q, k, v, *, is_causal=False, scale=None, config=None, step=None, use_tma=None, pad_v=0.0):
    """Run the kernel with every knob exposed.

    config: dict with BLOCK_M, BLOCK_N, num_warps, num_stages (and optionally Q_BLOCKS, query blocks
    per program, 1 or 2) to force one configuration (None:
    autotuned on a GPU, CPU_CONFIG under the interpreter). step: the @triton.jit inner-loop body
    (None: attention_block_step). use_tma: None picks TMA when the GPU and the layout allow it.
    pad_v: value loaded for V rows past N_k (graders poison it to catch unmasked padding).
    Returns (O, L): O like q, L (B, H, N_q) float32, natural log.
    """
    _check(q, k, v, scale)
    B, H, N_q, d = q.shape
    N_k = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    O = torch.empty_like(q, memory_format=torch.contiguous_format)  # (B, H, N_q, d)
    L = torch.empty(B, H, N_q, dtype=torch.float32, device=q.device)  # (B, H, N_q)
    if N_q == 0:
        return O, L
    if N_k == 0:  # no key at all: every row is fully masked
        return O.zero_(), L.fill_(float("-inf"))
    block_d = max(16, triton.next_power_of_2(d))
    use_tma = _resolve_tma(use_tma, q, k, v, O)
    args = (
        q, k, v, O, L,
        *q.stride(), *k.stride(), *v.stride(), *O.stride(),
        H, N_q, N_k, scale * LOG2E, _n_key(max(N_q, N_k)),
    )
    meta = dict(HEAD_DIM=d, BLOCK_D=block_d, IS_CAUSAL=bool(is_causal),
                STEP=attention_block_step if step is None else step, USE_TMA=bool(use_tma), PAD_V=float(pad_v))
    if config is None and device.TRITON_INTERPRET:
        config = CPU_CONFIG
    if config is not None:
        q_blocks = config.get("Q_BLOCKS", 1)
        grid = (triton.cdiv(triton.cdiv(N_q, config["BLOCK_M"]), q_blocks), B * H)
        _attention_forward_kernel[grid](*args, **meta, BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"],
                                        Q_BLOCKS=q_blocks, num_warps=config.get("num_warps", 4),
                                        num_stages=config.get("num_stages", 2))
    else:
        grid = lambda meta: (triton.cdiv(triton.cdiv(N_q, meta["BLOCK_M"]), meta["Q_BLOCKS"]), B * H)  # noqa: E731
        _autotuned_kernel(block_d, q.dtype)[grid](*args, **meta)
    return O, L


def attention_forward(q, k, v, *, is_causal=False, scale=None):
    """FlashAttention forward with the Triton kernel.

    q (B, H, N_q, d), k and v (B, H, N_k, d); fp16, bf16 or fp32; 16 <= d <= 256; any strides.
    is_causal: query i attends key j only when j <= i (SDPA's top-left convention).
    scale: defaults to 1/sqrt(d). Returns O (B, H, N_q, d) in the inputs' dtype and the
    log-sum-exp L (B, H, N_q) in float32 (natural log), which the backward pass needs.
    """
    return launch(q, k, v, is_causal=is_causal, scale=scale)
