// forward_v3_tuned.cu: FlashAttention forward on tensor cores, tuned: the v2 kernel, changed
// where measurements on the H100 said time goes. Diff it against forward_v2_tensor_core.cu;
// benchmarks/PERFORMANCE_cuda.md records what each change bought.
//
// What changes from v2, and why:
//   * Bigger query blocks: B_r = 128 instead of 64. Every K/V tile a block loads is used by
//     twice as many query rows: half the K/V traffic from L2 into shared memory.
//   * Register blocking (kMTiles = 2): a warp owns 2 x 16 query rows, so every K or V fragment
//     it loads with ldmatrix feeds 2 mma instead of 1: half the shared-memory reads per FLOP.
//     Q no longer fits in registers then; it is re-read from shared memory at each k-step.
//     The accumulators (2 x 16 x d floats of O per warp: 128 registers a thread at d = 128)
//     leave room for at most B_c = 64 keys per tile at d = 128, and only if few other values
//     stay live across the main loop (load_tile keeps one copy address per thread).
//   * exp2 with flush-to-zero: ex2.approx.ftz.f32 is one MUFU instruction; exp2f() adds range
//     handling for denormal results (extra compares and multiplies on every score).
//   * Lazy rescaling: the running max m is only moved when a tile's max exceeds it by more than
//     2^8 (log2 units: kRescaleThreshold = 8), and O and ℓ are rescaled only when some row of the
//     warp moved (a warp vote). P = exp2(s - m) is then at most 2^8 = 256, harmless in fp16/bf16
//     and fp32; the result is exactly as accurate (O / ℓ and L = m + log ℓ use the same m). On
//     random data m stops moving after the first tiles, so the D/8*4*kMTiles multiplies per
//     tile disappear. (FlashAttention-4 uses the same trick.)
//   * The masked tiles (partial last tile, causal diagonal) and the unmasked ones run separate
//     instantiations of the tile body: the common path has no branch inside it, which leaves
//     the compiler one long basic block to schedule mma, MUFU and FMA instructions in.
//   * K and V in separate cp.async groups: S = Q K_j^T starts as soon as K_j has landed, while
//     V_j is still in flight; K_{j+1} streams in during the softmax and V_{j+1} during P V_j.
//   * Causal: warps whose rows all come before a tile's first key skip the tile (v2 computed an
//     all-masked S); query blocks are scheduled heaviest first (the last block of a causal row
//     visits all tiles), so the last wave is made of short blocks, not long ones.
//   * Epilogue through shared memory: each warp writes its normalised O tile to shared memory
//     and then to global memory in 16-byte, fully coalesced stores (v2: 4-byte stores).
//   * Optional XOR swizzle (kSwizzle) instead of padding: chunk c of row r stored at c ^ (r % 8).
//     It saves the padding bytes, but its addresses cannot be folded into immediate offsets and
//     cost registers; measured slower than padding here, so the defaults keep padding.
//   * Optional early packing of P (kPackP): P goes to 16-bit pairs (the A operands of P V) right
//     after the softmax, so the fp32 registers of S die before P V rather than k-step by k-step
//     inside it. Same values, same rounding: the output is bit-identical to kPackP = false.
//     Timed on the H100 (benchmarks/PERFORMANCE_cuda.md): 0 to +5 % at d = 128, B_c = 32, -3 to
//     +1 % at B_c = 64 (where nothing spills any more), so the defaults leave it off.
//
// Supports: float16 and bfloat16; head dims 64 and 128; any Nq, Nk; causal (top-left). Same
// alignment needs as v2. Every tile configuration in kCandidates can be timed by name
// (kernels.cuda_kernels.forward(..., version="v3", config=name); benchmarks/bench_cuda.py --sweep).
//
// Compile alone (no torch needed):
//     nvcc -std=c++17 -O3 -arch=sm_90 -c -Xptxas -v forward_v3_tuned.cu -o /dev/null
// Add -DFLASH_V3_SWEEP to compile every candidate configuration (the GPU build does).
#include <type_traits>

#include "common.cuh"

namespace flash {
namespace v3 {

constexpr float kRescaleThreshold = 8.0f;  // log2 units: P may reach 2^8 before m is moved

// A tile configuration: kWarps warps, each owning kMTiles x 16 query rows; B_c keys per tile.
template <int D_, int kWarps_, int kMTiles_, int B_c_, bool kSwizzle_ = false, bool kFastExp_ = true,
          bool kLazyRescale_ = true, bool kSplitMask_ = true, int kSub_ = B_c_, bool kPackP_ = false>
struct Config {
    static constexpr int D = D_;
    static constexpr int kWarps = kWarps_;
    static constexpr int kMTiles = kMTiles_;
    static constexpr int B_c = B_c_;
    static constexpr bool kSwizzle = kSwizzle_;
    static constexpr bool kFastExp = kFastExp_;
    static constexpr bool kLazyRescale = kLazyRescale_;
    static constexpr bool kSplitMask = kSplitMask_;  // separate tile bodies for masked / unmasked tiles
    // Keys computed at a time (<= B_c): a tile of B_c keys is loaded per pair of barriers and
    // computed in B_c / kSub slices, so that S (kMTiles x 16 x kSub floats per warp) fits in
    // registers while the barriers are paid once per B_c keys.
    static constexpr int kSub = kSub_;
    static_assert(B_c % kSub == 0 && kSub % 16 == 0, "B_c must be a multiple of kSub, kSub of 16");
    // Pack P to 16 bits right after the softmax (the A operands of P V), instead of k-step by
    // k-step inside the P V loop: the kMTiles x kSub / 2 fp32 registers of S then die before
    // P V starts and only half as many (the 16-bit pairs) stay live through it. Same values,
    // same rounding: the result is bit-identical.
    static constexpr bool kPackP = kPackP_;
    static constexpr int LD = kSwizzle ? D : D + 8;  // row stride in shared memory (elements)
    static constexpr int kThreads = 32 * kWarps;
    static constexpr int kWarpRows = 16 * kMTiles;
    static constexpr int B_r = kWarps * kWarpRows;
    static constexpr bool kQInRegisters = kMTiles == 1;
    static constexpr size_t kSmemBytes = size_t(B_r + 4 * B_c) * LD * 2;  // Q + 2 x K + 2 x V
    static_assert(!kSwizzle || D % 64 == 0, "the swizzle needs rows of a multiple of 8 chunks of 16 bytes");
};

// Offset (in elements) of row r, column c (c a multiple of 8) of a (rows, D) tile in shared
// memory: swizzled (chunk c/8 stored at chunk (c/8) ^ (r % 8)), or padded (row stride D + 8).
template <typename C>
__device__ __forceinline__ int swz(int r, int c) {
    if constexpr (C::kSwizzle)
        return r * C::D + ((((c >> 3) ^ r) & 7) | ((c >> 3) & ~7)) * 8;
    else
        return r * C::LD + c;
}

__device__ __forceinline__ float exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
template <typename C>
__device__ __forceinline__ float exp2_(float x) {
    if constexpr (C::kFastExp) return exp2_ftz(x);
    else return exp2f(x);
}

template <typename T, typename C, int ROWS>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t row_stride, int row0, int N, int tid) {
    constexpr int kChunks = C::D / 8;                // 16-byte chunks per row
    constexpr int kRowStep = C::kThreads / kChunks;  // rows between two chunks of one thread
    static_assert(C::kThreads % kChunks == 0 && ROWS % kRowStep == 0, "every thread copies the same number of chunks");
    // Chunk tid + it * kThreads (kChunks per row, row-major) is column c of row r + it * kRowStep:
    // one base address per thread plus constant steps. (Computed from scratch per chunk, the
    // chunks' 64-bit offsets were hoisted out of the main loop and spilled at d = 128, B_c = 64.)
    const int r = tid / kChunks, c = (tid % kChunks) * 8;
    const int rows_left = N - row0 - r;  // chunk `it` is valid when it * kRowStep < rows_left
    const T* g = src + (row0 + r) * row_stride + c;
#pragma unroll
    for (int it = 0; it < ROWS / kRowStep; ++it) {
        const bool valid = it * kRowStep < rows_left;
        cp_async_16(dst + swz<C>(r + it * kRowStep, c), valid ? g : src, valid);
        g += kRowStep * row_stride;
    }
}

// The registers one warp carries through the pass.
template <typename C>
struct WarpState {
    float o[C::kMTiles][C::D / 8][4];  // O accumulator, unnormalised
    float m[C::kMTiles][2];            // running max of rows g, g+8 of each m-tile (log2 units)
    float ell[C::kMTiles][2];          // this lane's share of the running sums
};

// S = Q K_j^T for this warp's rows, masking (kMask and need_mask), and the online-softmax
// update: on return s holds P = exp2(scale_log2 * S - m) and o, ell are rescaled to the new m.
template <typename T, typename C, bool kMask>
__device__ __forceinline__ void scores_softmax(float (&s)[C::kMTiles][C::kSub / 8][4], WarpState<C>& st,
                                               const uint32_t (&q_frag)[C::kQInRegisters ? C::D / 16 : 1][4],
                                               const T* Q_s, const T* K_j, int warp, int lane, int j0,
                                               int row_first, const FwdParams& p, float scale_log2,
                                               bool need_mask) {
    constexpr int D = C::D, B_c = C::kSub, kM = C::kMTiles;  // B_c here: the keys of this slice
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int mi = 0; mi < kM; ++mi)
#pragma unroll
        for (int nt = 0; nt < B_c / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[mi][nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t qa[kM][4];
#pragma unroll
        for (int mi = 0; mi < kM; ++mi) {
            if constexpr (C::kQInRegisters) {
#pragma unroll
                for (int x = 0; x < 4; ++x) qa[mi][x] = q_frag[kk][x];
            } else {
                const int r = warp * C::kWarpRows + mi * 16 + lane % 16;
                ldmatrix_x4(qa[mi], Q_s + swz<C>(r, kk * 16 + (lane / 16) * 8));
            }
        }
#pragma unroll
        for (int np = 0; np < B_c / 16; ++np) {
            uint32_t kb[4];
            const int r = np * 16 + (lane & 7) + (lane >> 4) * 8;
            ldmatrix_x4(kb, K_j + swz<C>(r, kk * 16 + ((lane >> 3) & 1) * 8));
#pragma unroll
            for (int mi = 0; mi < kM; ++mi) {
                mma_16816<T>(s[mi][2 * np], qa[mi], kb[0], kb[1]);
                mma_16816<T>(s[mi][2 * np + 1], qa[mi], kb[2], kb[3]);
            }
        }
    }

    if (kMask && need_mask) {
#pragma unroll
        for (int mi = 0; mi < kM; ++mi)
#pragma unroll
            for (int nt = 0; nt < B_c / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int col = j0 + nt * 8 + 2 * t + (e & 1);
                    const int row = row_first + mi * 16 + g + (e / 2) * 8;
                    if (col >= p.Nk || (p.causal && col > row)) s[mi][nt][e] = -INFINITY;
                }
    }

    float alpha[kM][2];
    bool moved = false;
#pragma unroll
    for (int mi = 0; mi < kM; ++mi)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float m_tile = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < B_c / 8; ++nt) m_tile = fmaxf(m_tile, fmaxf(s[mi][nt][2 * r], s[mi][nt][2 * r + 1]));
            m_tile = quad_max(m_tile) * scale_log2;
            const float m_old = st.m[mi][r];
            float m_new;
            if constexpr (C::kLazyRescale) {
                // Keep the stale max unless the tile's max is more than 2^8 above it.
                const bool grow = m_tile > m_old + kRescaleThreshold;  // m_old = -inf: any finite m_tile
                m_new = grow ? m_tile : m_old;
                moved |= grow;
            } else {
                m_new = fmaxf(m_old, m_tile);
                moved = true;
            }
            const float base = m_new == -INFINITY ? 0.f : m_new;
            alpha[mi][r] = exp2_<C>(m_old - base);  // 1 where m did not move
            st.m[mi][r] = m_new;
            float row_sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < B_c / 8; ++nt) {
                s[mi][nt][2 * r] = exp2_<C>(s[mi][nt][2 * r] * scale_log2 - base);
                s[mi][nt][2 * r + 1] = exp2_<C>(s[mi][nt][2 * r + 1] * scale_log2 - base);
                row_sum += s[mi][nt][2 * r] + s[mi][nt][2 * r + 1];
            }
            st.ell[mi][r] = alpha[mi][r] * st.ell[mi][r] + row_sum;
        }
    // Rescale O only when some row of the warp moved its max (a multiply by 1 changes nothing).
    if (!C::kLazyRescale || __any_sync(0xffffffff, moved)) {
#pragma unroll
        for (int mi = 0; mi < kM; ++mi)
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
                for (int e = 0; e < 4; ++e) st.o[mi][dt][e] *= alpha[mi][e / 2];
    }
}

// The A fragments of k-step ks of O += P V: the C fragments of S tiles 2ks and 2ks + 1
// (rows g, g + 8; columns 2t, 2t + 1 of each 8-key n-tile), packed to 16-bit pairs.
template <typename T, typename C>
__device__ __forceinline__ void pack_p(uint32_t (&a)[C::kMTiles][4], const float (&s)[C::kMTiles][C::kSub / 8][4], int ks) {
#pragma unroll
    for (int mi = 0; mi < C::kMTiles; ++mi) {
        a[mi][0] = pack2<T>(s[mi][2 * ks][0], s[mi][2 * ks][1]);
        a[mi][1] = pack2<T>(s[mi][2 * ks][2], s[mi][2 * ks][3]);
        a[mi][2] = pack2<T>(s[mi][2 * ks + 1][0], s[mi][2 * ks + 1][1]);
        a[mi][3] = pack2<T>(s[mi][2 * ks + 1][2], s[mi][2 * ks + 1][3]);
    }
}

template <typename T, typename C>
__global__ void __launch_bounds__(C::kThreads) forward_kernel(const FwdParams p) {
    constexpr int D = C::D, B_r = C::B_r, B_c = C::B_c, kM = C::kMTiles;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* Q_s = reinterpret_cast<T*>(smem_raw);  // (B_r, LD)
    T* K_s = Q_s + B_r * C::LD;               // (2, B_c, LD)
    T* V_s = K_s + 2 * B_c * C::LD;           // (2, B_c, LD)

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    // Causal: heaviest query blocks (last rows, most keys) first.
    const int q_block = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    const int i0 = q_block * B_r;
    const int b = blockIdx.y / p.H, h = blockIdx.y % p.H;
    const T* Q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
    const T* K = static_cast<const T*>(p.k) + b * p.k_batch_stride + h * p.k_head_stride;
    const T* V = static_cast<const T*>(p.v) + b * p.v_batch_stride + h * p.v_head_stride;
    T* O = static_cast<T*>(p.o) + b * p.o_batch_stride + h * p.o_head_stride;
    float* L = p.lse + (size_t(b) * p.H + h) * p.Nq;

    const int kv_end = p.causal ? min(p.Nk, min(p.Nq, i0 + B_r)) : p.Nk;
    const int T_c = (kv_end + B_c - 1) / B_c;
    const int row_first = i0 + warp * C::kWarpRows;  // this warp's query rows
    const int row_last = row_first + C::kWarpRows - 1;

    // Three groups in flight: Q, K_0, V_0.
    load_tile<T, C, B_r>(Q_s, Q, p.q_row_stride, i0, p.Nq, tid);
    cp_async_commit();
    if (T_c > 0) load_tile<T, C, B_c>(K_s, K, p.k_row_stride, 0, p.Nk, tid);
    cp_async_commit();
    if (T_c > 0) load_tile<T, C, B_c>(V_s, V, p.v_row_stride, 0, p.Nk, tid);
    cp_async_commit();

    // Q fragments of this warp: kept in registers when they fit (kMTiles = 1).
    uint32_t q_frag[C::kQInRegisters ? D / 16 : 1][4];
    if constexpr (C::kQInRegisters) {
        cp_async_wait<2>();
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const int r = warp * 16 + lane % 16;
            ldmatrix_x4(q_frag[kk], Q_s + swz<C>(r, kk * 16 + (lane / 16) * 8));
        }
    }

    WarpState<C> st;
#pragma unroll
    for (int mi = 0; mi < kM; ++mi) {
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
            for (int e = 0; e < 4; ++e) st.o[mi][dt][e] = 0.f;
#pragma unroll
        for (int r = 0; r < 2; ++r) st.m[mi][r] = -INFINITY, st.ell[mi][r] = 0.f;
    }
    const float scale_log2 = p.scale * kLog2e;

    for (int j = 0; j < T_c; ++j) {
        const int j0 = j * B_c;
        const int nb = (j + 1) & 1;
        cp_async_wait<1>();  // K_j has landed (V_j may still be in flight)
        __syncthreads();     // for every thread; and everyone is done with K_{j-1}
        if (j + 1 < T_c) load_tile<T, C, B_c>(K_s + nb * B_c * C::LD, K, p.k_row_stride, j0 + B_c, p.Nk, tid);
        cp_async_commit();
        const T* K_j = K_s + (j & 1) * B_c * C::LD;
        const T* V_j = V_s + (j & 1) * B_c * C::LD;

#pragma unroll
        for (int sub = 0; sub < B_c / C::kSub; ++sub) {
            constexpr int kSub = C::kSub;
            const int c0 = j0 + sub * kSub;  // first key of this slice
            // A causal warp whose last row comes before the slice's first key has nothing to do.
            const bool active = !(p.causal && c0 > row_last);
            const bool need_mask = c0 + kSub > p.Nk || (p.causal && c0 + kSub - 1 > row_first);
            const T* K_sub = K_j + sub * kSub * C::LD;

            float s[kM][kSub / 8][4];
            uint32_t p_frag[kSub / 16][kM][4];  // P as the A fragments of P V, one per k-step
            if (active) {
                if (C::kSplitMask && !need_mask)
                    scores_softmax<T, C, false>(s, st, q_frag, Q_s, K_sub, warp, lane, c0, row_first, p, scale_log2, false);
                else
                    scores_softmax<T, C, true>(s, st, q_frag, Q_s, K_sub, warp, lane, c0, row_first, p, scale_log2, need_mask);
                if constexpr (C::kPackP) {  // pack all of P now: s is dead from here on
#pragma unroll
                    for (int ks = 0; ks < kSub / 16; ++ks) pack_p<T, C>(p_frag[ks], s, ks);
                }
            }

            if (sub == 0) {
                cp_async_wait<1>();  // V_j has landed (K_{j+1} may still be in flight)
                __syncthreads();
                if (j + 1 < T_c) load_tile<T, C, B_c>(V_s + nb * B_c * C::LD, V, p.v_row_stride, j0 + B_c, p.Nk, tid);
                cp_async_commit();
            }

            if (active) {
                // O += P V_slice; each V fragment feeds kMTiles mma.
                const T* V_sub = V_j + sub * kSub * C::LD;
#pragma unroll
                for (int ks = 0; ks < kSub / 16; ++ks) {
                    // P's A fragments of this k-step: packed after the softmax (kPackP) or packed now.
                    uint32_t a_now[kM][4];
                    if constexpr (!C::kPackP) pack_p<T, C>(a_now, s, ks);
                    const uint32_t(&a)[kM][4] = C::kPackP ? p_frag[ks] : a_now;
#pragma unroll
                    for (int dp = 0; dp < D / 16; ++dp) {
                        uint32_t vb[4];
                        const int r = ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                        ldmatrix_x4_trans(vb, V_sub + swz<C>(r, dp * 16 + (lane >> 4) * 8));
#pragma unroll
                        for (int mi = 0; mi < kM; ++mi) {
                            mma_16816<T>(st.o[mi][2 * dp], a[mi], vb[0], vb[1]);
                            mma_16816<T>(st.o[mi][2 * dp + 1], a[mi], vb[2], vb[3]);
                        }
                    }
                }
            }
        }
    }
    cp_async_wait<0>();  // no copy of this thread is still writing shared memory ...
    __syncthreads();     // ... nor of any other thread (with Nk = 0 the Q copies were never awaited)

    // Epilogue: normalise, write L, stage O in this warp's rows of Q_s (only this warp reads
    // them), then 16-byte coalesced stores.
    T* O_w = Q_s + warp * C::kWarpRows * C::LD;
#pragma unroll
    for (int mi = 0; mi < kM; ++mi)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float ell_row = quad_sum(st.ell[mi][r]);
            const float inv = ell_row > 0.f ? 1.f / ell_row : 0.f;
            const int local_row = mi * 16 + g + 8 * r;
            const int row = row_first + local_row;
            if (t == 0 && row < p.Nq) L[row] = ell_row > 0.f ? (st.m[mi][r] + log2f(ell_row)) * kLn2 : -INFINITY;
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt)
                *reinterpret_cast<uint32_t*>(O_w + swz<C>(local_row, dt * 8) + 2 * t) =
                    pack2<T>(st.o[mi][dt][2 * r] * inv, st.o[mi][dt][2 * r + 1] * inv);
        }
    __syncwarp();
    constexpr int kChunks = D / 8;
#pragma unroll
    for (int it = 0; it < C::kWarpRows * kChunks / 32; ++it) {
        const int idx = lane + it * 32;
        const int r = idx / kChunks, c = (idx % kChunks) * 8;
        const int row = row_first + r;
        if (row < p.Nq)
            *reinterpret_cast<uint4*>(O + row * p.o_row_stride + c) = *reinterpret_cast<const uint4*>(O_w + swz<C>(r, c));
    }
}

template <typename T, typename C>
const char* launch(const FwdParams& p) {
    auto kernel = forward_kernel<T, C>;
    FLASH_CUDA_TRY(allow_smem(kernel, C::kSmemBytes));
    const dim3 grid(cdiv(p.Nq, C::B_r), p.B * p.H);
    kernel<<<grid, C::kThreads, C::kSmemBytes, static_cast<cudaStream_t>(p.stream)>>>(p);
    FLASH_LAUNCH_CHECK(forward_kernel);
    return "";
}

// The default configuration per head dim, chosen from the sweep recorded in
// benchmarks/results/cuda_sweep_h100.json (see benchmarks/PERFORMANCE_cuda.md): 64 keys per tile
// at d = 128 and 128 keys (computed 64 at a time) at d = 64, both spill-free since load_tile
// keeps one copy address per thread. (Before that fix: Config<64, 4, 2, 64> and
// Config<128, 4, 2, 32>, benchmarks/results/cuda_h100.json.)
using Default64 = Config<64, 4, 2, 128, false, true, true, true, 64>;
using Default128 = Config<128, 4, 2, 64>;

template <typename T>
const char* launch_default(const FwdParams& p) {
    switch (p.d) {
        case 64: return launch<T, Default64>(p);
        case 128: return launch<T, Default128>(p);
    }
    return format_error("cuda forward v3 supports head dims 64, 128; got %d", p.d);
}

struct Candidate {
    const char* name;
    int d;
    const char* (*run)(const FwdParams&);
};

// Candidates other than the defaults are compiled for float16 only (the sweep times fp16).
template <typename C>
const char* run_candidate(const FwdParams& p) {
    constexpr bool is_default = std::is_same<C, Default64>::value || std::is_same<C, Default128>::value;
    if (p.dtype == DType::kFloat16) return launch<__half, C>(p);
    if constexpr (is_default) {
        if (p.dtype == DType::kBFloat16) return launch<__nv_bfloat16, C>(p);
    }
    return format_error("cuda forward v3: this sweep configuration is compiled for float16 only; got %s",
                        dtype_name(p.dtype));
}

// Names: d<head dim>_w<warps>_m<m-tiles per warp>_bc<B_c>, then sub<k> (computed in slices of
// k keys) if any, then pad|swz, then the switches that are off (exp2f: accurate exp2f instead of
// ex2.approx.ftz; eager: rescale every tile; onebody: one tile body with a run-time mask branch
// inside, as in v2), then those that are on (packp: P packed to 16 bits right after the softmax).
const Candidate kCandidates[] = {
    {"d64_w4_m2_bc128_sub64_pad", 64, run_candidate<Default64>},
    {"d128_w4_m2_bc64_pad", 128, run_candidate<Default128>},
#ifdef FLASH_V3_SWEEP
    {"d64_w4_m2_bc64_pad", 64, run_candidate<Config<64, 4, 2, 64>>},
    {"d128_w4_m2_bc32_pad", 128, run_candidate<Config<128, 4, 2, 32>>},
    {"d64_w4_m2_bc64_pad_exp2f_eager_onebody", 64, run_candidate<Config<64, 4, 2, 64, false, false, false, false>>},
    {"d64_w4_m2_bc64_pad_exp2f_eager", 64, run_candidate<Config<64, 4, 2, 64, false, false, false>>},
    {"d64_w4_m2_bc64_pad_eager", 64, run_candidate<Config<64, 4, 2, 64, false, true, false>>},
    {"d64_w4_m2_bc64_swz", 64, run_candidate<Config<64, 4, 2, 64, true>>},
    {"d64_w4_m2_bc128_pad", 64, run_candidate<Config<64, 4, 2, 128>>},
    {"d64_w4_m2_bc32_pad", 64, run_candidate<Config<64, 4, 2, 32>>},
    {"d64_w8_m2_bc64_pad", 64, run_candidate<Config<64, 8, 2, 64>>},
    {"d64_w4_m1_bc64_pad", 64, run_candidate<Config<64, 4, 1, 64>>},
    {"d64_w4_m2_bc128_sub32_pad", 64, run_candidate<Config<64, 4, 2, 128, false, true, true, true, 32>>},
    {"d64_w4_m2_bc64_sub32_pad", 64, run_candidate<Config<64, 4, 2, 64, false, true, true, true, 32>>},
    {"d128_w4_m2_bc32_pad_exp2f_eager_onebody", 128, run_candidate<Config<128, 4, 2, 32, false, false, false, false>>},
    {"d128_w4_m2_bc32_pad_exp2f_eager", 128, run_candidate<Config<128, 4, 2, 32, false, false, false>>},
    {"d128_w4_m2_bc32_pad_eager", 128, run_candidate<Config<128, 4, 2, 32, false, true, false>>},
    {"d128_w4_m2_bc32_swz", 128, run_candidate<Config<128, 4, 2, 32, true>>},
    {"d128_w8_m2_bc32_pad", 128, run_candidate<Config<128, 8, 2, 32>>},
    {"d128_w8_m1_bc64_pad", 128, run_candidate<Config<128, 8, 1, 64>>},
    {"d128_w4_m2_bc64_sub32_pad", 128, run_candidate<Config<128, 4, 2, 64, false, true, true, true, 32>>},
    {"d64_w4_m2_bc64_pad_packp", 64, run_candidate<Config<64, 4, 2, 64, false, true, true, true, 64, true>>},
    {"d64_w4_m2_bc128_pad_packp", 64, run_candidate<Config<64, 4, 2, 128, false, true, true, true, 128, true>>},
    {"d128_w4_m2_bc32_pad_packp", 128, run_candidate<Config<128, 4, 2, 32, false, true, true, true, 32, true>>},
    {"d128_w4_m2_bc64_pad_packp", 128, run_candidate<Config<128, 4, 2, 64, false, true, true, true, 64, true>>},
#endif
};
constexpr int kNumCandidates = sizeof(kCandidates) / sizeof(kCandidates[0]);

}  // namespace v3

static const char* check_v3(const FwdParams& p) {
    if (p.B * p.H > 65535) return format_error("cuda forward v3 supports B*H up to 65535; got %d", p.B * p.H);
    if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
        return format_error("cuda forward v3 supports float16 and bfloat16 (tensor cores); got %s", dtype_name(p.dtype));
    return nullptr;
}

const char* forward_v3(const FwdParams& p) {
    if (p.d != 64 && p.d != 128) return format_error("cuda forward v3 supports head dims 64, 128; got %d", p.d);
    if (const char* err = check_v3(p)) return err;
    if (p.B * p.H == 0 || p.Nq == 0) return "";
    return p.dtype == DType::kFloat16 ? v3::launch_default<__half>(p) : v3::launch_default<__nv_bfloat16>(p);
}

int forward_v3_num_configs() { return v3::kNumCandidates; }

const char* forward_v3_config_name(int config) {
    return config >= 0 && config < v3::kNumCandidates ? v3::kCandidates[config].name : "";
}

const char* forward_v3_config(const FwdParams& p, int config) {
    if (config < 0 || config >= v3::kNumCandidates)
        return format_error("cuda forward v3: config %d out of range [0, %d)", config, v3::kNumCandidates);
    const v3::Candidate& c = v3::kCandidates[config];
    if (p.d != c.d) return format_error("cuda forward v3 config %s is for head dim %d; got %d", c.name, c.d, p.d);
    if (const char* err = check_v3(p)) return err;
    if (p.B * p.H == 0 || p.Nq == 0) return "";
    return c.run(p);
}

}  // namespace flash
