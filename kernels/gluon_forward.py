"""The FlashAttention forward pass in Gluon, written the way FlashAttention-3 runs on the H100.

Why another forward kernel
--------------------------
`kernels.triton_forward` computes, for each key block j, the serial chain

    S_j = Q_i K_jᵀ  (tensor cores)  →  m, P_j = exp2(S_j − m), ℓ  (MUFU + FMA)  →  O += P_j V_j  (tensor cores)

and Triton's Hopper backend waits for every `wgmma` with `pendings = 0` before the next step. Inside
one warpgroup the tensor cores therefore idle during the softmax and the exponential unit idles
during the matmuls: at d = 64 the two take about as long, so the ceiling is half the tensor-core
peak (benchmarks/PERFORMANCE_forward.md, "Where the kernel sits on the roofline"). Triton does not
warp-specialise on sm_90 either, so the warps that compute also issue every load.

Gluon (`triton.experimental.gluon`) is Triton one level down: we pick the register layouts, the
shared-memory buffers, the mbarriers and the `wgmma` waits ourselves. This file uses that control
for FlashAttention-3's two ideas:

1. Intra-warpgroup overlap (both variants). The loop is software-pipelined by one step: iteration j
   issues S_j = Q K_jᵀ *and* O += P_{j-1} V_{j-1} as asynchronous `wgmma`s, then waits with
   `warpgroup_mma_wait(num_outstanding=1)`, which returns as soon as S_j is done (wgmma groups
   complete in issue order) while P_{j-1} V_{j-1} still runs. The softmax of S_j then executes on the
   FMA/MUFU pipes *while the tensor cores finish P_{j-1} V_{j-1}*. Only then do we wait for the P·V
   product (num_outstanding=0) and rescale O by α_j = exp2(m_{j-1} − m_j).

2. Producer / consumer warp specialisation (variant "ws"). `gl.warp_specialize` splits the CTA into
   partitions that run different code: a 1-warp *producer* that only issues TMA copies of K_j and
   V_j into a ring of STAGES shared-memory slots, and two *consumer* warpgroups (three at d = 64)
   that only compute. They talk through mbarriers, two per slot and direction:

       k_ready[s] / v_ready[s]   producer → consumers: "the TMA bytes of K_j / V_j have landed"
                                 (mbarrier.expect sets the byte count; the TMA engine completes it)
       k_empty[s] / v_empty[s]   consumers → producer: "every warpgroup is done reading slot s"
                                 (one arrive per consumer warpgroup, once its wgmma has read it)

   A barrier's phase bit flips each time it completes, so the j-th use of slot s = j mod STAGES waits
   for phase (j div STAGES) mod 2; the producer waits on the *empty* barriers with the opposite
   parity, which lets its first pass through the ring go through without waiting. Each consumer
   warpgroup owns its own B_r query rows and runs its own loop on the shared K/V stream: when
   one is in its softmax another can be in its matmuls. By default the warp schedulers decide the
   order; PINGPONG=True (two consumers) forces FA3's "ping-pong" with two more mbarriers, turn0 and
   turn1: a consumer issues its wgmmas only after the other has issued its own (measured -5 to +5 %,
   off; benchmarks/PERFORMANCE_forward.md, step 11). At d = 64 a third consumer warpgroup (192-row
   tiles) gives each warp scheduler a third computing warp: 1.03-1.17x the Triton kernel, where two
   were 0.93-1.03x. The producer needs almost no registers, so the consumers can be given more
   (`worker_num_regs`, setmaxnreg).

What the compiled code really does (tools/gluon_forward_compile.py, column ex2_in_overlap): with
triton 3.6's ptxas, the exponentials end up *after* the `wait 0` in the SASS, although the PTX has
them between the two waits. The PTX wait names no registers, so ptxas may issue it as early as it
likes, and it does: the wait unblocks the fp16 rounding of P̃_j, which reuses the registers the
in-flight P·V wgmma reads. The intra-warpgroup overlap (1) is therefore lost in the machine code; what
remains is the overlap *between* warpgroups that (2) gives and the decoupled TMA producer.
`FENCE=True` restores (1): a wait on an mbarrier that has already completed, placed before the
`wait 0`, never blocks but ends a basic block, and ptxas then keeps the whole softmax between the two
waits. Measured on the H100 it does not pay (0.93-1.03x of the kernel without it), so it is off by
default; the GPU A/Bs (benchmarks/gluon_forward_ab.py, --fence) hold both measurements.

Variant "overlap" keeps (1) and drops (2): the computing warps issue the TMA copies themselves,
refilling a slot as soon as the P·V product that read it has been waited for.

Everything else follows kernels/triton_forward.py: exp2 with qk_scale = scale·log2(e), fp32 m, ℓ
and O accumulator, P rounded to the input dtype for the P·V product, key blocks past the diagonal
never visited (causal), masks compiled in only for the diagonal blocks and the last partial block,
L = (m + log2 ℓ)·ln 2 (natural log) stored as fp32 (B, H, N).

TMA does the bounds: the descriptors are 3-D, (B·H, N, d), so a tile that runs past row N of one
head is clipped there and filled with zeros rather than read from the next head, and the O store is
clipped the same way. Keys ≥ N are masked with -inf in the last block.

Public entry: attention_forward_gluon(q, k, v, *, is_causal=False, scale=None, variant="ws").
Needs an sm_90 GPU to run; tools/gluon_forward_compile.py compiles every variant without one.
"""

from __future__ import annotations

import math

import torch

from . import device
from .validation import check_qkv, check_scale

if not device.HAS_TRITON:  # ImportError, so that `pytest.importorskip` and optional imports skip cleanly
    raise ImportError("kernels.gluon_forward needs the triton package, which is not installed on this platform")

try:
    import triton  # noqa: E402
    from triton.experimental import gluon  # noqa: E402
    from triton.experimental.gluon import language as gl  # noqa: E402
    from triton.experimental.gluon.language.nvidia.hopper import (  # noqa: E402
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: E402
except ImportError as exc:  # older triton (< 3.5) has no Gluon, or a Hopper part of it is missing
    raise ImportError(
        "kernels.gluon_forward needs triton.experimental.gluon with the Hopper ops (triton >= 3.5); "
        f"this triton ({getattr(triton, '__version__', '?')}) lacks it: {exc}"
    ) from exc

__all__ = ["attention_forward_gluon", "usable", "resolve_config", "CONFIGS", "TWO_CONSUMERS", "VARIANTS", "SUPPORTED_HEAD_DIMS",
           "DEFAULT_HEAD_DIMS", "make_descriptors", "shared_layouts", "launch_meta", "attention_forward_kernel"]

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x · log2(e))
LN2 = 0.6931471805599453  # ln(2): log(x) = log2(x) · ln(2)
#: Running max start: finite, so exp2(M_INIT − m) = 0 and exp2(m_old − m_new) never sees -inf + inf.
M_INIT = -1.0e30
_M_INIT = gl.constexpr(M_INIT)
#: bar.sync over the CTA's (or the partition's) warps: `thread_barrier` in triton 3.6, `barrier` later
_cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
#: TMA copies: triton 3.6 names them async_copy_global_to_shared / async_copy_shared_to_global, later
#: versions async_load / async_store (same arguments)
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
_LN2 = gl.constexpr(LN2)

SUPPORTED_HEAD_DIMS = (64, 128)
VARIANTS = ("overlap", "ws")
#: Head dims at which kernels.triton_backward.flash_attention runs this kernel ("ws") instead of lesson
#: 03's Triton kernel: where it measured faster on the H100 (fp16, B = 4, N = 4k-16k: the gluon_forward_*ab*
#: files in benchmarks/results and benchmark runs 6-10; benchmarks/PERFORMANCE_forward.md, steps 11 and 12).
#: d = 128: 1.01-1.19x the Triton kernel (one 0.94x, the low point of PERFORMANCE.md section 6). d = 64, three consumer
#: warpgroups: 1.03-1.17x without a mask and causal from N = 8192; causal at N = 4096, 0.95-1.08x in five
#: measurements, so one rule for every N.
DEFAULT_HEAD_DIMS = (64, 128)

# ------------------------------------------------------------------------------------------------
# Tile configurations per (d, variant).
#
#   BLOCK_M  B_r: query rows of ONE consumer warpgroup (a CTA has NUM_WG · BLOCK_M rows)
#   BLOCK_N  B_c: keys per step
#   STAGES   depth of the K/V ring in shared memory
#   NUM_WG   consumer warpgroups (4 warps each); "ws" adds one producer warp
#   LOADER_REGS / CONSUMER_REGS  registers per thread asked for the worker partitions ("ws")
#   ALIGN_END  (default on) tiles counted back from row N: the ragged tile is the first (see the kernel)
#
# Budget (H100, per SM): 228 KB shared memory (227 KB usable by one CTA), 64 K 32-bit registers.
# Shared memory: Q tiles NUM_WG·BLOCK_M·d·2 B, plus STAGES·2·BLOCK_N·d·2 B for the K and V ring
# (the O tile reuses Q's buffer). d = 64:  Q 16 KB + 3 × 32 KB = 112 KB ("ws"), 16 + 2 × 32 = 80 KB
# ("overlap"). d = 128: Q 32 KB + 2 × 64 KB = 160 KB; a third stage would make 224 KB, at the limit.
# Registers, per thread of a consumer warpgroup with BLOCK_M = 64 rows (16 rows per warp):
# S is 64·BLOCK_N/128 fp32 = 64 at B_c = 128, O is 64·d/128 = 32 (d = 64) or 64 (d = 128), P in
# fp16 pairs is 32, and the overlap keeps S_j, P_{j-1} and O live at once: ~130–170 + addressing,
# under the 240 that setmaxnreg can give two consumer warpgroups (2 × 128 × 240 + 32 × 24 < 64 K).
# Three consumer warpgroups (d = 64): Gluon pads the producer to 4 warps, 16 warps share the 64 K
# registers, and a consumer gets 160 (168 for the default partition): 4 × 32 × 24 + 2 × 128 × 160 +
# 128 × 168 = 64 K. At d = 64 (O is 32 registers) that compiles without spills with triton 3.6.
# "overlap" with NUM_WG = 2 is one 8-warp tensor of 128 rows: the same per-thread counts.
# ------------------------------------------------------------------------------------------------
CONFIGS = {
    (64, "overlap"): dict(BLOCK_M=64, BLOCK_N=128, STAGES=2, NUM_WG=2),
    (64, "ws"): dict(BLOCK_M=64, BLOCK_N=128, STAGES=3, NUM_WG=3, LOADER_REGS=24, CONSUMER_REGS=160),
    (128, "overlap"): dict(BLOCK_M=64, BLOCK_N=128, STAGES=2, NUM_WG=2),
    (128, "ws"): dict(BLOCK_M=64, BLOCK_N=128, STAGES=2, NUM_WG=2, LOADER_REGS=24, CONSUMER_REGS=240),
}
#: config entries for "ws" with two consumer warpgroups at d = 64 (its default has three): the tile of
#: the d = 64 measurements before the third (step 9 of benchmarks/PERFORMANCE_forward.md), and what
#: PINGPONG needs. d = 128's default already is this.
TWO_CONSUMERS = dict(NUM_WG=2, CONSUMER_REGS=240)


# ------------------------------------------------------------------------------------------------
# Device code
# ------------------------------------------------------------------------------------------------
@gluon.jit
def _kv_blocks(row0, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """Key blocks of the query rows [row0, row0 + BLOCK_M): returns (n_full, n_total).

    Blocks [0, n_full) need no mask (wholly in bounds and, causal, at or left of the diagonal);
    blocks [n_full, n_total) need one; blocks >= n_total are never visited (past N or above the
    diagonal). Same rule as kernels.tiled.causal_block_range."""
    if IS_CAUSAL:
        # row0 <= -B_r for a warpgroup of ALIGN_END's first tile: its rows see no key. Clamped, so it
        # still runs block 0 (all masked) and the pipeline keeps its shape.
        hi = gl.maximum(gl.minimum(row0 + BLOCK_M, N), 1)
        n_full = gl.maximum(gl.minimum((row0 + 1) // BLOCK_N, N // BLOCK_N), 0)
    else:
        hi = N
        n_full = N // BLOCK_N
    n_total = (hi + BLOCK_N - 1) // BLOCK_N
    return n_full, n_total


@gluon.jit
def _softmax_block(s, m_i, l_i, offs_m, start_n, N, qk_scale,
                   BLOCK_N: gl.constexpr, s_layout: gl.constexpr, MASK: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """Online softmax of one score tile S_j (B_r, B_c) fp32.

    Returns P̃_j = exp2(S_j·qk_scale − m_new) (fp32, B_r × B_c), the new running max m_new (log2
    units), the new ℓ, and α = exp2(m_old − m_new), the factor the caller applies to O once the
    previous P·V product has landed. MASK (constexpr) compiles the bounds / causal mask in."""
    if MASK:
        offs_n = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))  # (B_c,) key index
        cols = gl.expand_dims(offs_n, 0)  # (1, B_c)
        if IS_CAUSAL:
            # key j <= query i (top-left). That also keeps j < N for every row i < N (N_q = N_k); rows
            # i >= N only exist in the last tile, see finite zero-filled keys, and are never stored.
            allowed = cols <= gl.expand_dims(offs_m, 1)
        else:
            allowed = cols < N
        s = gl.where(allowed, s * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        s = s - gl.expand_dims(m_new, 1)
    else:
        # no mask: scale inside the max, then one fused multiply-add per score
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        s = s * qk_scale - gl.expand_dims(m_new, 1)
    p = gl.exp2(s)  # (B_r, B_c), in [0, 1]
    alpha = gl.exp2(m_i - m_new)  # (B_r,)
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, m_new, l_i, alpha


@gluon.jit
def _refill(k_desc, v_desc, k_ring, v_ring, k_ready, v_ready, bh, j, n_total,
            BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """("overlap" only) Issue the TMA copies of K_j and V_j into slot j mod STAGES, if j < n_total.
    The caller has made sure nobody still reads that slot."""
    slot = j % STAGES
    pred = j < n_total
    mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes, pred=pred)
    _tma_load(k_desc, [bh, j * BLOCK_N, 0], k_ready.index(slot), k_ring.index(slot), pred=pred)
    mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes, pred=pred)
    _tma_load(v_desc, [bh, j * BLOCK_N, 0], v_ready.index(slot), v_ring.index(slot), pred=pred)


@gluon.jit
def _turn_wait(my_turn, t, PINGPONG: gl.constexpr, ME: gl.constexpr):
    """(PINGPONG) Wait until it is this consumer warpgroup's turn to issue its t-th group of wgmmas.

    The two consumers take turns: 0 issues group t, then 1 issues group t, then 0 issues group t + 1.
    my_turn completes one phase per arrive of the other consumer, so group t waits for phase t - 1 of
    it (consumer 0) or phase t (consumer 1). Consumer 0's group 0 waits for parity 1 of a fresh
    barrier, which counts as complete: it goes first."""
    if PINGPONG:
        mbarrier.wait(my_turn, (t & 1) ^ (1 - ME))


@gluon.jit
def _turn_pass(other_turn, PINGPONG: gl.constexpr):
    """(PINGPONG) This consumer's wgmmas are issued: the other consumer may queue its own behind them."""
    if PINGPONG:
        mbarrier.arrive(other_turn, count=1)


@gluon.jit
def _step(q_bar, j, acc, m_i, l_i, p_op, q2d, zero_s, offs_m, N, qk_scale, n_total,
          k_desc, v_desc, k_ring, v_ring, k_ready, v_ready, k_empty, v_empty, bh, my_turn, other_turn,
          BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
          s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr,
          MASK: gl.constexpr, IS_CAUSAL: gl.constexpr, WS: gl.constexpr, SYNC_WGS: gl.constexpr,
          FENCE: gl.constexpr, PINGPONG: gl.constexpr, ME: gl.constexpr):
    """One pipelined iteration j >= 1: S_j = Q K_jᵀ and O += P_{j-1} V_{j-1} in flight together,
    softmax of S_j while P_{j-1} V_{j-1} finishes, then O *= α_j.

    acc (B_r, d) fp32 is O rescaled to m_{j-1}, p_op (B_r, B_c) is P̃_{j-1} in the input dtype
    (wgmma A-operand layout). q_bar is the Q tile's mbarrier, whose only phase completed before the
    loop: waiting on it again is a no-op that step 5 uses as a scheduling fence for ptxas."""
    slot = j % STAGES
    slot_prev = (j - 1) % STAGES
    # 1. S_j = Q K_jᵀ, async. K_j sits (B_c, d) in shared memory; the permuted view is K_jᵀ (d, B_c).
    mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
    _turn_wait(my_turn, j, PINGPONG, ME)
    k_t = k_ring.index(slot).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0))
    s_tok = warpgroup_mma(q2d, k_t, zero_s, use_acc=False, is_async=True)
    # 2. O += P_{j-1} V_{j-1}, async, queued behind S_j on the tensor cores.
    mbarrier.wait(v_ready.index(slot_prev), ((j - 1) // STAGES) & 1)
    v_prev = v_ring.index(slot_prev).reshape([BLOCK_N, HEAD_DIM])
    o_tok = warpgroup_mma(p_op, v_prev, acc, is_async=True)
    _turn_pass(other_turn, PINGPONG)
    # 3. wait until at most one wgmma group (the P·V product) is outstanding: S_j is ready.
    s = warpgroup_mma_wait(num_outstanding=1, deps=[s_tok])
    if WS and not FENCE:
        mbarrier.arrive(k_empty.index(slot), count=1)  # K_j is no longer read: the producer may refill
    # 4. softmax of S_j on the FMA / MUFU pipes while the tensor cores finish P_{j-1} V_{j-1}
    p, m_new, l_i, alpha = _softmax_block(s, m_i, l_i, offs_m, j * BLOCK_N, N, qk_scale,
                                          BLOCK_N, s_layout, MASK, IS_CAUSAL)
    # 5. wait for P_{j-1} V_{j-1}; its operands (P registers, V_{j-1} slot) are then free. The new
    #    fp32 P̃_j goes through the wait as well: that pins its rounding to fp16/bf16 (which writes
    #    the registers the in-flight wgmma still reads) after the wait; otherwise the compiler
    #    hoists the rounding into the softmax and ptxas must hoist the wait with it (no overlap).
    #    That alone is not enough: the PTX wait has no register operands (deps only order the LLVM
    #    IR), so ptxas's scheduler is free to issue the `wait 0` as early as right after `wait 1`
    #    (it does: the wait looks free and unblocks the fp16 rounding, which reuses P_{j-1}'s
    #    registers), and the exponentials follow it. Hence the fence: a wait on q_bar, whose phase 0
    #    completed before the loop, so it never blocks, but its try-wait loop ends a basic block, and
    #    ptxas moves neither the softmax below that branch nor the wgmma wait above it
    #    (tools/gluon_forward_compile.py --fence, ex2_in_overlap: 66 per step = 64 P̃ + 2 α, else 0).
    #    Measured, the fence does not pay (results/gluon_forward_fence_ab_h100.json: "ws" 0.98-1.03x at
    #    d = 64 and 0.93-1.02x at d = 128 of the kernel without it), so FENCE is off by default.
    if FENCE:
        mbarrier.wait(q_bar, 0)
        if WS:
            # K_j is no longer read: the producer may refill. After the fence, not right after step 3:
            # an arrive just before the fence's mbarrier read makes Triton add a bar.sync between them
            mbarrier.arrive(k_empty.index(slot), count=1)
    acc, p_op, p = warpgroup_mma_wait(num_outstanding=0, deps=[o_tok, p_op, p])
    if not WS:
        if SYNC_WGS:
            _cta_barrier()  # both warpgroups of the tensor are past their P·V before the slot is overwritten
        _refill(k_desc, v_desc, k_ring, v_ring, k_ready, v_ready, bh, j - 1 + STAGES, n_total, BLOCK_N, STAGES)
    # 6. O *= α_j (O now holds Σ_{i<j} P̃_i V_i relative to m_{j-1})
    alpha_o = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))
    acc = acc * gl.expand_dims(alpha_o, 1)
    p_op = gl.convert_layout(p.to(k_ring.dtype), p_layout)
    if WS:
        mbarrier.arrive(v_empty.index(slot_prev), count=1)  # V_{j-1} no longer read
    return acc, m_new, l_i, p_op


@gluon.jit
def _consumer(q_desc, k_desc, v_desc, o_desc, L, q_smem, q_bar, k_ring, v_ring, k_ready, v_ready, k_empty, v_empty,
              bh, row0, N, qk_scale, n_loaded, my_turn, other_turn,
              HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              WARPS: gl.constexpr, IS_CAUSAL: gl.constexpr, WS: gl.constexpr, FENCE: gl.constexpr,
              PINGPONG: gl.constexpr, ME: gl.constexpr):
    """The compute of one query tile Q_i (rows [row0, row0 + BLOCK_M)) with WARPS warps.

    WS: K/V slots arrive from the producer partition and are handed back through k_empty / v_empty;
    the drain at the end hands back the slots of blocks the producer loaded for another warpgroup
    (n_loaded > this tile's n_total only for the warpgroups above the last one in a causal tile, and
    for the warpgroups of rows below 0 in ALIGN_END's first tile).
    Not WS: this function issues the K/V copies itself (prologue: the first STAGES blocks)."""
    dtype: gl.constexpr = k_ring.dtype
    # Register layouts. wgmma: each warp owns 16 rows of the tile; instr_shape [16, n, 16] with n the
    # full width, so one wgmma instruction per 16-row slice and per 16-wide k step.
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    # P as the register A operand of P·V: two fp16/bf16 per 32-bit register (k_width = 2)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    SYNC_WGS: gl.constexpr = WARPS > 4

    n_full, n_total = _kv_blocks(row0, N, BLOCK_M, BLOCK_N, IS_CAUSAL)
    if not WS:
        for jj in gl.static_range(STAGES):  # prologue: fill the ring
            _refill(k_desc, v_desc, k_ring, v_ring, k_ready, v_ready, bh, jj, n_total, BLOCK_N, STAGES)

    offs_m = row0 + gl.arange(0, BLOCK_M, layout=row_s)  # (B_r,) query rows i
    m_i = gl.full([BLOCK_M], _M_INIT, gl.float32, layout=row_s)  # running max m (log2 units)
    l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_s)  # running denominator ℓ
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, layout=o_layout)  # unnormalised O_i
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)  # accumulator operand, ignored (use_acc=False)
    q2d = q_smem.reshape([BLOCK_M, HEAD_DIM])  # Q_i (B_r, d) in shared memory: wgmma reads it from there

    mbarrier.wait(q_bar, 0)
    # ---- block 0 (pipeline prologue): S_0, its softmax, P_0; nothing to overlap with yet
    mbarrier.wait(k_ready.index(0), 0)
    _turn_wait(my_turn, 0, PINGPONG, ME)
    k_t = k_ring.index(0).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0))
    s_tok = warpgroup_mma(q2d, k_t, zero_s, use_acc=False, is_async=True)
    _turn_pass(other_turn, PINGPONG)
    s = warpgroup_mma_wait(num_outstanding=0, deps=[s_tok])
    if WS:
        mbarrier.arrive(k_empty.index(0), count=1)
    if n_full > 0:
        p, m_i, l_i, alpha = _softmax_block(s, m_i, l_i, offs_m, 0, N, qk_scale, BLOCK_N, s_layout, False, IS_CAUSAL)
    else:
        p, m_i, l_i, alpha = _softmax_block(s, m_i, l_i, offs_m, 0, N, qk_scale, BLOCK_N, s_layout, True, IS_CAUSAL)
    p_op = gl.convert_layout(p.to(dtype), p_layout)

    # ---- blocks 1 .. n_full-1: no mask
    for j in range(1, n_full):
        acc, m_i, l_i, p_op = _step(q_bar, j, acc, m_i, l_i, p_op, q2d, zero_s, offs_m, N, qk_scale, n_total,
                                    k_desc, v_desc, k_ring, v_ring, k_ready, v_ready, k_empty, v_empty, bh,
                                    my_turn, other_turn, BLOCK_N, HEAD_DIM, STAGES, s_layout, o_layout, p_layout,
                                    False, IS_CAUSAL, WS, SYNC_WGS, FENCE, PINGPONG, ME)
    # ---- the diagonal block(s) and the last partial block: masked
    for j in range(gl.maximum(n_full, 1), n_total):
        acc, m_i, l_i, p_op = _step(q_bar, j, acc, m_i, l_i, p_op, q2d, zero_s, offs_m, N, qk_scale, n_total,
                                    k_desc, v_desc, k_ring, v_ring, k_ready, v_ready, k_empty, v_empty, bh,
                                    my_turn, other_turn, BLOCK_N, HEAD_DIM, STAGES, s_layout, o_layout, p_layout,
                                    True, IS_CAUSAL, WS, SYNC_WGS, FENCE, PINGPONG, ME)

    # ---- pipeline epilogue: the last P·V product
    j_last = n_total - 1
    slot = j_last % STAGES
    mbarrier.wait(v_ready.index(slot), (j_last // STAGES) & 1)
    _turn_wait(my_turn, n_total, PINGPONG, ME)
    o_tok = warpgroup_mma(p_op, v_ring.index(slot).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
    _turn_pass(other_turn, PINGPONG)
    acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=[o_tok, p_op])
    if WS:
        mbarrier.arrive(v_empty.index(slot), count=1)
        # hand back the slots loaded for the other warpgroup's longer (causal) range, in order; with
        # PINGPONG also take the turns its extra groups of wgmmas wait for (group j + 1 for block j)
        for j in range(n_total, n_loaded):
            _turn_wait(my_turn, j + 1, PINGPONG, ME)
            _turn_pass(other_turn, PINGPONG)
            slot = j % STAGES
            phase = (j // STAGES) & 1
            mbarrier.wait(k_ready.index(slot), phase)
            mbarrier.arrive(k_empty.index(slot), count=1)
            mbarrier.wait(v_ready.index(slot), phase)
            mbarrier.arrive(v_empty.index(slot), count=1)

    # ---- O_i = acc / ℓ, L_i = (m + log2 ℓ)·ln 2; a row that saw no key gets O = 0, L = -inf
    seen = l_i > 0.0
    l_safe = gl.where(seen, l_i, 1.0)
    lse = gl.where(seen, (m_i + gl.log2(l_safe)) * _LN2, float("-inf"))
    gl.store(L + bh.to(gl.int64) * N + offs_m, lse, mask=(offs_m >= 0) & (offs_m < N))
    o = acc / gl.expand_dims(gl.convert_layout(l_safe, row_o), 1)
    # Q_i is no longer read (every S wgmma has been waited for): its buffer stages O_i for the TMA store
    q2d.store(o.to(dtype))
    fence_async_shared()  # make the generic-proxy writes visible to the TMA engine (async proxy)
    _cta_barrier()  # every warp has written its rows before one thread issues the store
    if row0 >= 0:  # rows below 0 (ALIGN_END's first tile) are not stored
        _tma_store(o_desc, [bh, row0, 0], q_smem)  # clipped at row N by the descriptor
        tma.store_wait(pendings=0)


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, q_bars, k_ring, v_ring, k_ready, v_ready, k_empty, v_empty,
              bh, row0, n_loaded,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, NUM_WG: gl.constexpr):
    """The 1-warp TMA partition ("ws"): Q tiles once, then K_j, V_j for j < n_loaded through the ring."""
    for w in gl.static_range(NUM_WG):
        mbarrier.expect(q_bars.index(w), q_desc.block_type.nbytes)
        # max(., 0): a warpgroup of rows below 0 (ALIGN_END's first tile) loads rows [0, B_r), never stored
        _tma_load(q_desc, [bh, gl.maximum(row0 + w * BLOCK_M, 0), 0], q_bars.index(w), q_smem.index(w))
    for j in range(n_loaded):
        slot = j % STAGES
        # wait until the consumers released this slot's previous block (j - STAGES); the first
        # pass waits for parity 1 of a fresh barrier, which counts as already complete
        phase = ((j // STAGES) & 1) ^ 1
        mbarrier.wait(k_empty.index(slot), phase)
        mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)  # full box bytes, also when clipped
        _tma_load(k_desc, [bh, j * BLOCK_N, 0], k_ready.index(slot), k_ring.index(slot))
        mbarrier.wait(v_empty.index(slot), phase)
        mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
        _tma_load(v_desc, [bh, j * BLOCK_N, 0], v_ready.index(slot), v_ring.index(slot))


@gluon.jit(do_not_specialize=["N"])
def attention_forward_kernel(
    q_desc, k_desc, v_desc, o_desc,  # TMA descriptors of (B·H, N, d) views; blocks [1, B_r, d] / [1, B_c, d]
    L,  # (B, H, N) fp32 log-sum-exp, natural log
    N,  # sequence length (N_q == N_k)
    qk_scale,  # scale · log2(e)
    HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
    NUM_WG: gl.constexpr, IS_CAUSAL: gl.constexpr, WS: gl.constexpr,
    LOADER_REGS: gl.constexpr = 24, CONSUMER_REGS: gl.constexpr = 240, FENCE: gl.constexpr = False,
    PINGPONG: gl.constexpr = False, ALIGN_END: gl.constexpr = True,
):
    """Grid (ceil(N / (NUM_WG·B_r)), B·H). "overlap" (WS=False): num_warps = 4·NUM_WG, one tile of
    NUM_WG·B_r rows. "ws" (WS=True): num_warps = 4 (consumer warpgroup 0, the default partition),
    plus a 1-warp producer partition and NUM_WG - 1 more 4-warp consumer partitions (NUM_WG = 2 or 3).

    ALIGN_END ("ws"): tiles are counted back from the end of the last warpgroup's rows (N rounded up to
    B_r), so when NUM_WG·B_r does not divide N the ragged tile is the first, where causal attention
    costs one key block, not the last, which costs all of them. Its warpgroups whose rows all lie below
    0 load rows [0, B_r) instead (a TMA coordinate below 0 stopped the H100 with an illegal
    instruction), see no key (causal) and store nothing. Off, or "overlap": tiles from row 0."""
    ROWS: gl.constexpr = NUM_WG * BLOCK_M
    n_tiles = (N + ROWS - 1) // ROWS
    pid = gl.program_id(0)
    bh = gl.program_id(1)
    if ALIGN_END and WS:
        n_end = (N + BLOCK_M - 1) // BLOCK_M * BLOCK_M  # a multiple of B_r: no warpgroup straddles row 0
        row0 = n_end - (pid + 1) * ROWS  # pid 0 ends at row N: causal, the longest rows come first
    elif IS_CAUSAL:
        row0 = (n_tiles - 1 - pid) * ROWS  # longest rows first: better balance at the tail of the grid
    else:
        row0 = pid * ROWS
    dtype: gl.constexpr = k_desc.dtype

    # Shared memory. Q: one [1, B_r, d] tile per consumer warpgroup (reused for O at the end);
    # K, V: rings of STAGES [1, B_c, d] slots. Layouts are the descriptors' (NVMMA, 128 B swizzle).
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    k_ring = gl.allocate_shared_memory(dtype, [STAGES, 1, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_ring = gl.allocate_shared_memory(dtype, [STAGES, 1, BLOCK_N, HEAD_DIM], v_desc.layout)
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    for s in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(s), count=1)  # completed by the producer's expect + TMA bytes
        mbarrier.init(v_ready.index(s), count=1)
        mbarrier.init(k_empty.index(s), count=NUM_WG)  # one arrive per consumer warpgroup
        mbarrier.init(v_empty.index(s), count=NUM_WG)

    if WS:
        q_smem = gl.allocate_shared_memory(dtype, [NUM_WG, 1, BLOCK_M, HEAD_DIM], q_desc.layout)
        q_bars = gl.allocate_shared_memory(gl.int64, [NUM_WG, 1], bar_layout)
        for w in gl.static_range(NUM_WG):
            mbarrier.init(q_bars.index(w), count=1)
        # PINGPONG: consumer w waits on turn_w and arrives on the other's. Two allocations, not one of
        # two slots: an arrive and a later wait on the same allocation make Triton add a bar.sync.
        turn0 = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
        turn1 = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
        mbarrier.init(turn0, count=1)
        mbarrier.init(turn1, count=1)
        fence_async_shared()  # barrier inits visible to the async proxy before any TMA uses them
        # every block any consumer warpgroup needs: the last (lowest) warpgroup's range is the longest
        _, n_loaded = _kv_blocks(row0 + (NUM_WG - 1) * BLOCK_M, N, BLOCK_M, BLOCK_N, IS_CAUSAL)
        # one consumer warpgroup with its own producer measured 0.7-0.8x of two (gluon_forward_sweep_h100.json)
        gl.static_assert(NUM_WG == 2 or NUM_WG == 3, "ws runs two or three consumer warpgroups")
        if NUM_WG == 2:
            gl.warp_specialize([
                (_consumer, (q_desc, k_desc, v_desc, o_desc, L, q_smem.index(0), q_bars.index(0), k_ring, v_ring,
                             k_ready, v_ready, k_empty, v_empty, bh, row0, N, qk_scale, n_loaded, turn0, turn1,
                             HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, 4, IS_CAUSAL, True, FENCE, PINGPONG, 0)),
                (_producer, (q_desc, k_desc, v_desc, q_smem, q_bars, k_ring, v_ring, k_ready, v_ready, k_empty,
                             v_empty, bh, row0, n_loaded, BLOCK_M, BLOCK_N, STAGES, NUM_WG)),
                (_consumer, (q_desc, k_desc, v_desc, o_desc, L, q_smem.index(1), q_bars.index(1), k_ring, v_ring,
                             k_ready, v_ready, k_empty, v_empty, bh, row0 + BLOCK_M, N, qk_scale, n_loaded,
                             turn1, turn0, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, 4, IS_CAUSAL, True, FENCE, PINGPONG, 1)),
            ], [1, 4], [LOADER_REGS, CONSUMER_REGS])
        else:
            # three consumer warpgroups (FlashAttention-3's 192-row tile at d = 64): three warps per
            # scheduler to hide the softmax's latencies. The producer is padded to 4 warps, so 16 warps
            # share the 64 K registers: 24 for the producer's, CONSUMER_REGS (160) for the two worker
            # consumers and the rest (168) for the default one. No turn-taking among three. (The
            # partitions are written out in each call: bound to names first, triton 3.6 compiled the
            # kernel without any warp specialisation.)
            gl.static_assert(not PINGPONG, "PINGPONG takes turns between two consumer warpgroups")
            gl.warp_specialize([
                (_consumer, (q_desc, k_desc, v_desc, o_desc, L, q_smem.index(0), q_bars.index(0), k_ring, v_ring,
                             k_ready, v_ready, k_empty, v_empty, bh, row0, N, qk_scale, n_loaded, turn0, turn1,
                             HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, 4, IS_CAUSAL, True, FENCE, False, 0)),
                (_producer, (q_desc, k_desc, v_desc, q_smem, q_bars, k_ring, v_ring, k_ready, v_ready, k_empty,
                             v_empty, bh, row0, n_loaded, BLOCK_M, BLOCK_N, STAGES, NUM_WG)),
                (_consumer, (q_desc, k_desc, v_desc, o_desc, L, q_smem.index(1), q_bars.index(1), k_ring, v_ring,
                             k_ready, v_ready, k_empty, v_empty, bh, row0 + BLOCK_M, N, qk_scale, n_loaded,
                             turn1, turn0, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, 4, IS_CAUSAL, True, FENCE, False, 1)),
                (_consumer, (q_desc, k_desc, v_desc, o_desc, L, q_smem.index(2), q_bars.index(2), k_ring, v_ring,
                             k_ready, v_ready, k_empty, v_empty, bh, row0 + 2 * BLOCK_M, N, qk_scale, n_loaded,
                             turn1, turn0, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, 4, IS_CAUSAL, True, FENCE, False, 1)),
            ], [1, 4, 4], [LOADER_REGS, CONSUMER_REGS, CONSUMER_REGS])
    else:
        # one tile of ROWS rows computed by all 4·NUM_WG warps, which also issue the copies
        q_smem = gl.allocate_shared_memory(dtype, [1, ROWS, HEAD_DIM], q_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
        mbarrier.init(q_bar, count=1)
        fence_async_shared()
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        _tma_load(q_desc, [bh, row0, 0], q_bar, q_smem)
        gl.static_assert(not PINGPONG, "PINGPONG needs the two consumer partitions of 'ws'")
        _consumer(q_desc, k_desc, v_desc, o_desc, L, q_smem, q_bar, k_ring, v_ring, k_ready, v_ready,
                  k_empty, v_empty, bh, row0, N, qk_scale, 0, q_bar, q_bar,  # (no turns to take)
                  HEAD_DIM, ROWS, BLOCK_N, STAGES, 4 * NUM_WG, IS_CAUSAL, False, FENCE, False, 0)


# ------------------------------------------------------------------------------------------------
# Host side
# ------------------------------------------------------------------------------------------------
_GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}


def _check(q, k, v, is_causal, scale, variant):
    check_qkv(q, k, v, dtypes=(torch.float16, torch.bfloat16))
    check_scale(scale)
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    d = q.shape[-1]
    if d not in SUPPORTED_HEAD_DIMS or v.shape[-1] != d:
        raise ValueError(f"head dim d must be one of {SUPPORTED_HEAD_DIMS} for the Gluon kernel (query, key and "
                         f"value alike), got query d={d}, value d={v.shape[-1]}")
    if k.shape[2] != q.shape[2]:
        raise ValueError(f"the Gluon kernel needs N_q == N_k, got query N={q.shape[2]}, key N={k.shape[2]}")
    if q.shape[2] < 1:
        raise ValueError(f"sequence length N must be >= 1, got query shape {tuple(q.shape)}")
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (B, H, N, d) for the Gluon kernel's TMA descriptors, "
                             f"got strides {t.stride()}; call .contiguous()")
        if t.data_ptr() % 16:
            raise ValueError(f"{name} must start at a 16-byte aligned address for TMA")
    if q.device.type != "cuda":
        raise ValueError(f"the Gluon kernel runs on a CUDA GPU (sm_90): move query, key and value to 'cuda', "
                         f"got {q.device}")
    if torch.cuda.get_device_capability(q.device)[0] != 9:
        raise ValueError(f"the Gluon kernel is written for Hopper (sm_90: wgmma, TMA), got compute capability "
                         f"{torch.cuda.get_device_capability(q.device)}")


def resolve_config(d: int, variant: str, config: dict | None = None) -> dict:
    """CONFIGS[(d, variant)] with `config`'s entries on top, checked: tile sizes powers of two the wgmma
    shapes allow, at least one stage, two or three consumer warpgroups for "ws" (PINGPONG: two)."""
    cfg = dict(CONFIGS[(d, variant)], **(config or {}))
    unknown = set(cfg) - {"BLOCK_M", "BLOCK_N", "STAGES", "NUM_WG", "LOADER_REGS", "CONSUMER_REGS", "FENCE", "PINGPONG",
                          "ALIGN_END"}
    if unknown:
        raise ValueError(f"config has unknown keys {sorted(unknown)}")
    for name, lo in (("BLOCK_M", 64), ("BLOCK_N", 16)):
        b = cfg[name]
        if not isinstance(b, int) or b < lo or b & (b - 1):
            raise ValueError(f"config {name} must be a power of two >= {lo}, got {b!r}")
    if not isinstance(cfg["STAGES"], int) or cfg["STAGES"] < 1:
        raise ValueError(f"config STAGES must be an int >= 1, got {cfg['STAGES']!r}")
    if variant == "ws" and cfg["NUM_WG"] not in (2, 3):
        raise ValueError(f"config NUM_WG must be 2 or 3 for variant 'ws' (consumer warpgroups), got {cfg['NUM_WG']}")
    if cfg.get("PINGPONG") and cfg["NUM_WG"] != 2:
        raise ValueError(f"config PINGPONG takes turns between NUM_WG = 2 consumer warpgroups, got NUM_WG={cfg['NUM_WG']}")
    if variant == "overlap" and cfg.get("PINGPONG"):
        raise ValueError("config PINGPONG needs variant 'ws' (two consumer partitions to take turns)")
    if variant == "overlap" and cfg["NUM_WG"] not in (1, 2):
        raise ValueError(f"config NUM_WG must be 1 or 2 for variant 'overlap', got {cfg['NUM_WG']}")
    return cfg


def usable(q, k, v) -> bool:
    """Whether the kernel takes these inputs as they are (no error, no copy): everything `_check` asks
    (a Hopper GPU, contiguous 16-byte aligned fp16/bf16 (B, H, N, d) tensors, d in SUPPORTED_HEAD_DIMS,
    N_q == N_k >= 1)."""
    try:
        _check(q, k, v, False, None, "ws")
    except (TypeError, ValueError):
        return False
    return True


def shared_layouts(d: int, cfg: dict, variant: str, gdt) -> tuple:
    """(rows of a Q/O tile, its shared-memory layout, the K/V tiles' layout) of a launch: "ws" loads one
    Q tile per consumer warpgroup, "overlap" one tile for all warps. gdt: gl.float16 or gl.bfloat16."""
    q_rows = cfg["BLOCK_M"] if variant == "ws" else cfg["NUM_WG"] * cfg["BLOCK_M"]
    return (q_rows, gl.NVMMASharedLayout.get_default_for([1, q_rows, d], gdt),
            gl.NVMMASharedLayout.get_default_for([1, cfg["BLOCK_N"], d], gdt))


def launch_meta(d: int, cfg: dict, variant: str, is_causal: bool) -> dict:
    """The kernel's compile-time arguments and num_warps for a launch (resolved cfg); the offline
    compile tool (tools/gluon_forward_compile.py) builds exactly what a launch builds from it."""
    ws = variant == "ws"
    return dict(HEAD_DIM=d, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], STAGES=cfg["STAGES"],
                NUM_WG=cfg["NUM_WG"], IS_CAUSAL=bool(is_causal), WS=ws,
                LOADER_REGS=cfg.get("LOADER_REGS", 24), CONSUMER_REGS=cfg.get("CONSUMER_REGS", 240),
                FENCE=bool(cfg.get("FENCE", False)), PINGPONG=bool(cfg.get("PINGPONG", False)),
                ALIGN_END=bool(cfg.get("ALIGN_END", True)),
                num_warps=4 if ws else 4 * cfg["NUM_WG"])


def make_descriptors(q, k, v, o, cfg: dict, variant: str):
    """Host TMA descriptors over the (B·H, N, d) views: a box is [1, rows, d], so TMA clips at the end
    of each head's N rows (zero fill on loads, no write on stores)."""
    B, H, N, d = q.shape
    q_rows, q_layout, kv_layout = shared_layouts(d, cfg, variant, _GL_DTYPES[q.dtype])

    def desc(t, rows, layout):
        t3 = t.view(B * H, N, d)
        return TensorDescriptor(t3, list(t3.shape), list(t3.stride()), [1, rows, d], layout)

    return (desc(q, q_rows, q_layout), desc(k, cfg["BLOCK_N"], kv_layout), desc(v, cfg["BLOCK_N"], kv_layout),
            desc(o, q_rows, q_layout))


def attention_forward_gluon(q, k, v, *, is_causal=False, scale=None, variant="ws", config=None):
    """FlashAttention forward with the Gluon kernel (H100 / sm_90 only).

    q, k, v: contiguous (B, H, N, d) fp16 or bf16 CUDA tensors, d in {64, 128}, same N.
    is_causal: query i attends key j only when j <= i. scale: defaults to 1/sqrt(d).
    variant: "ws" (producer warp + consumer warpgroups) or "overlap" (no warp specialisation).
    config: optional dict overriding CONFIGS[(d, variant)] (BLOCK_M, BLOCK_N, STAGES, NUM_WG, ...).
    Returns O (B, H, N, d) in the input dtype and L (B, H, N) fp32, the natural-log log-sum-exp.
    """
    _check(q, k, v, is_causal, scale, variant)
    B, H, N, d = q.shape
    cfg = resolve_config(d, variant, config)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    O = torch.empty_like(q)
    L = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
    q_desc, k_desc, v_desc, o_desc = make_descriptors(q, k, v, O, cfg, variant)
    grid = (triton.cdiv(N, cfg["NUM_WG"] * cfg["BLOCK_M"]), B * H)
    attention_forward_kernel[grid](q_desc, k_desc, v_desc, o_desc, L, N, scale * LOG2E,
                                   **launch_meta(d, cfg, variant, is_causal))
    return O, L
