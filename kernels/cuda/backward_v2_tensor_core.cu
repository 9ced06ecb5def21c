// backward_v2_tensor_core.cu: FlashAttention backward on tensor cores (mma.sync).
//
// The algorithm of backward_v1_scalar.cu (preprocess D, a dK/dV kernel with K/V block outer, a
// dQ kernel with Q block outer, no atomics), with every product on tensor cores and every
// tile in registers, the way forward_v2 does it. The trick that makes it work without any
// shared-memory transposes: in the dK/dV kernel a warp owns 16 *keys* and computes the
// transposed tiles
//     S^T = K Q^T      P^T = exp(scale S^T - L)      dP^T = V dO^T      dS^T = P^T (dP^T - D)
//     dV += P^T dO     dK += dS^T Q
// so P^T and dS^T, produced as mma accumulators, are already the A operands of the next mma
// (as P is in the forward), and Q and dO are B operands read with ldmatrix (plain for
// S^T and dP^T, .trans for dV and dK). In the dQ kernel a warp owns 16 queries:
//     S = Q K^T     P = exp(scale S - L)     dP = dO V^T     dS = P (dP - D)     dQ += dS K
// Both kernels double-buffer the tiles they stream (Q, dO, L, D; or K, V) with cp.async.
// L and D are per query: the dK/dV kernel reads them per column from shared memory, the dQ
// kernel per row into registers.
//
// P^T and dS^T are rounded to fp16/bf16 before their products, as in FlashAttention-2.
// Supports: float16 and bfloat16; head dims 64 and 128; any Nq, Nk; causal (top-left).
// Compile alone (no torch needed):
//     nvcc -std=c++17 -O3 -arch=sm_90 -c -Xptxas -v backward_v2_tensor_core.cu -o /dev/null
#include "common.cuh"

namespace flash {
namespace bwd_v2 {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int B_r = 64;  // queries per tile
constexpr int B_c = 64;  // keys per tile

template <int D> __host__ __device__ constexpr int padded() { return D + 8; }
// Fragments of the warp's own 16 rows (K, V in dK/dV; Q, dO in dQ) stay in registers at d = 64;
// at d = 128 they would take 64 registers and are re-read from shared memory instead.
template <int D> __host__ __device__ constexpr bool frags_in_registers() { return D <= 64; }

template <typename T, int D, int ROWS>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t row_stride, int row0, int N, int tid) {
    constexpr int kChunks = D / 8;
    static_assert(ROWS * kChunks % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int it = 0; it < ROWS * kChunks / kThreads; ++it) {
        const int idx = tid + it * kThreads;
        const int r = idx / kChunks, c = idx % kChunks;
        const bool valid = row0 + r < N;
        const T* g = valid ? src + (row0 + r) * row_stride + c * 8 : src;
        cp_async_16(dst + r * padded<D>() + c * 8, g, valid);
    }
}

// A fragments (16 rows x 16 columns starting at column kk*16) of rows [row, row + 16) of a
// padded shared-memory tile.
template <int D>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const void* tile, int row, int kk, int lane) {
    const auto* base = static_cast<const unsigned char*>(tile);
    ldmatrix_x4(a, base + 2 * ((row + lane % 16) * padded<D>() + kk * 16 + (lane / 16) * 8));
}
// B fragments of two n8 tiles (rows n0..n0+15 of the tile are the n index, columns kk*16.. the
// k index): for products X Y^T where Y's rows are in shared memory.
template <int D>
__device__ __forceinline__ void load_b_rows(uint32_t (&b)[4], const void* tile, int n0, int kk, int lane) {
    const auto* base = static_cast<const unsigned char*>(tile);
    ldmatrix_x4(b, base + 2 * ((n0 + (lane & 7) + (lane >> 4) * 8) * padded<D>() + kk * 16 + ((lane >> 3) & 1) * 8));
}
// B fragments of two n8 tiles for products X Y where Y (k rows, n columns) is in shared memory:
// rows k0..k0+15, columns n0..n0+15, through ldmatrix.trans.
template <int D>
__device__ __forceinline__ void load_b_trans(uint32_t (&b)[4], const void* tile, int k0, int n0, int lane) {
    const auto* base = static_cast<const unsigned char*>(tile);
    ldmatrix_x4_trans(b, base + 2 * ((k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * padded<D>() + n0 + (lane >> 4) * 8));
}

template <typename T>
__device__ __forceinline__ void pack_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = pack2<T>(c0[0], c0[1]);
    a[1] = pack2<T>(c0[2], c0[3]);
    a[2] = pack2<T>(c1[0], c1[1]);
    a[3] = pack2<T>(c1[2], c1[3]);
}

// ---------------------------------------------------------------------------------------------
// D = rowsum(dO * O), one warp per row.
template <typename T>
__global__ void preprocess_kernel(const BwdParams p) {
    const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= int64_t(p.B) * p.H * p.Nq) return;
    const int i = row % p.Nq;
    const int bh = row / p.Nq;
    const int b = bh / p.H, h = bh % p.H;
    const T* O = static_cast<const T*>(p.o) + b * p.o_batch_stride + h * p.o_head_stride + i * p.o_row_stride;
    const T* dO = static_cast<const T*>(p.dout) + b * p.do_batch_stride + h * p.do_head_stride + i * p.do_row_stride;
    float acc = 0.f;
    for (int c = lane; c < p.d; c += 32) acc += to_float(dO[c]) * to_float(O[c]);
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffff, acc, offset);
    if (lane == 0) p.delta[row] = acc;
}

// ---------------------------------------------------------------------------------------------
// dK, dV: a block owns B_c keys (4 warps x 16) and streams the query tiles.
template <int D>
constexpr size_t smem_bytes_dkdv() {  // K, V (B_c) + 2 x Q, 2 x dO (B_r), 2 x L, 2 x D
    return size_t(2 * B_c + 4 * B_r) * padded<D>() * 2 + 4 * B_r * sizeof(float);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) dkdv_kernel(const BwdParams p) {
    constexpr int LD = padded<D>();
    constexpr bool kRegs = frags_in_registers<D>();
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* K_s = reinterpret_cast<T*>(smem_raw);  // (B_c, LD)
    T* V_s = K_s + B_c * LD;                  // (B_c, LD)
    T* Q_s = V_s + B_c * LD;                  // (2, B_r, LD)
    T* dO_s = Q_s + 2 * B_r * LD;             // (2, B_r, LD)
    float* L_s = reinterpret_cast<float*>(dO_s + 2 * B_r * LD);  // (2, B_r)
    float* D_s = L_s + 2 * B_r;                                  // (2, B_r)

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int j0 = blockIdx.x * B_c;
    const int b = blockIdx.y / p.H, h = blockIdx.y % p.H;
    const T* Q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
    const T* K = static_cast<const T*>(p.k) + b * p.k_batch_stride + h * p.k_head_stride;
    const T* V = static_cast<const T*>(p.v) + b * p.v_batch_stride + h * p.v_head_stride;
    const T* dO = static_cast<const T*>(p.dout) + b * p.do_batch_stride + h * p.do_head_stride;
    const float* L = p.lse + (size_t(b) * p.H + h) * p.Nq;
    const float* Dl = p.delta + (size_t(b) * p.H + h) * p.Nq;
    T* dK = static_cast<T*>(p.dk) + (size_t(b) * p.H + h) * p.Nk * D;
    T* dV = static_cast<T*>(p.dv) + (size_t(b) * p.H + h) * p.Nk * D;

    // Causal: query i sees key j only when j <= i: start at the query tile holding row j0.
    const int i_start = p.causal ? (j0 / B_r) * B_r : 0;
    const int T_r = i_start < p.Nq ? (p.Nq - i_start + B_r - 1) / B_r : 0;

    auto load_query_tile = [&](int it, int buf) {
        const int i0 = i_start + it * B_r;
        load_tile<T, D, B_r>(Q_s + buf * B_r * LD, Q, p.q_row_stride, i0, p.Nq, tid);
        load_tile<T, D, B_r>(dO_s + buf * B_r * LD, dO, p.do_row_stride, i0, p.Nq, tid);
        if (tid < B_r) {
            const bool valid = i0 + tid < p.Nq;
            cp_async_4(L_s + buf * B_r + tid, valid ? L + i0 + tid : L, valid);
        } else {
            const int r = tid - B_r;
            const bool valid = i0 + r < p.Nq;
            cp_async_4(D_s + buf * B_r + r, valid ? Dl + i0 + r : Dl, valid);
        }
    };

    load_tile<T, D, B_c>(K_s, K, p.k_row_stride, j0, p.Nk, tid);
    load_tile<T, D, B_c>(V_s, V, p.v_row_stride, j0, p.Nk, tid);
    cp_async_commit();
    if (T_r > 0) load_query_tile(0, 0);
    cp_async_commit();

    cp_async_wait<1>();
    __syncthreads();
    uint32_t k_frag[kRegs ? D / 16 : 1][4], v_frag[kRegs ? D / 16 : 1][4];
    if constexpr (kRegs) {
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            load_a<D>(k_frag[kk], K_s, warp * 16, kk, lane);
            load_a<D>(v_frag[kk], V_s, warp * 16, kk, lane);
        }
    }

    float dk[D / 8][4] = {}, dv[D / 8][4] = {};
    const float scale_log2 = p.scale * kLog2e;
    const int key0 = j0 + warp * 16 + g;  // this lane's keys: key0, key0 + 8

    for (int it = 0; it < T_r; ++it) {
        cp_async_wait<0>();
        __syncthreads();
        if (it + 1 < T_r) load_query_tile(it + 1, (it + 1) & 1);
        cp_async_commit();
        const int buf = it & 1;
        const int i0 = i_start + it * B_r;
        const T* Q_t = Q_s + buf * B_r * LD;
        const T* dO_t = dO_s + buf * B_r * LD;
        const float* L_t = L_s + buf * B_r;
        const float* D_t = D_s + buf * B_r;
        // Causal: a warp whose first key is after the tile's last query has nothing to add.
        if (p.causal && i0 + B_r - 1 < j0 + warp * 16) continue;

        // S^T = K Q^T: 16 keys x B_r queries.
        float st[B_r / 8][4] = {};
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            uint32_t a[4];
            if constexpr (kRegs) {
#pragma unroll
                for (int x = 0; x < 4; ++x) a[x] = k_frag[kk][x];
            } else {
                load_a<D>(a, K_s, warp * 16, kk, lane);
            }
#pragma unroll
            for (int np = 0; np < B_r / 16; ++np) {
                uint32_t qb[4];
                load_b_rows<D>(qb, Q_t, np * 16, kk, lane);
                mma_16816<T>(st[2 * np], a, qb[0], qb[1]);
                mma_16816<T>(st[2 * np + 1], a, qb[2], qb[3]);
            }
        }

        // P^T = exp(scale S^T - L), L per query (column). A query with no key (L = -inf) has
        // P = 0; masked pairs (future keys, queries past the end) too.
        const bool need_mask = i0 + B_r > p.Nq || (p.causal && i0 < j0 + warp * 16 + 15);
#pragma unroll
        for (int nt = 0; nt < B_r / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = nt * 8 + 2 * t + (e & 1);
                const float l = L_t[col];
                const float l2 = l == -INFINITY ? INFINITY : l * kLog2e;
                float pv = exp2f(st[nt][e] * scale_log2 - l2);
                if (need_mask) {
                    const int query = i0 + col, key = key0 + (e / 2) * 8;
                    if (query >= p.Nq || (p.causal && query < key)) pv = 0.f;
                }
                st[nt][e] = pv;
            }

        // dV += P^T dO: k runs over the tile's queries.
#pragma unroll
        for (int ks = 0; ks < B_r / 16; ++ks) {
            uint32_t a[4];
            pack_a<T>(a, st[2 * ks], st[2 * ks + 1]);
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t ob[4];
                load_b_trans<D>(ob, dO_t, ks * 16, dp * 16, lane);
                mma_16816<T>(dv[2 * dp], a, ob[0], ob[1]);
                mma_16816<T>(dv[2 * dp + 1], a, ob[2], ob[3]);
            }
        }

        // dP^T = V dO^T: 16 keys x B_r queries.
        float dpt[B_r / 8][4] = {};
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            uint32_t a[4];
            if constexpr (kRegs) {
#pragma unroll
                for (int x = 0; x < 4; ++x) a[x] = v_frag[kk][x];
            } else {
                load_a<D>(a, V_s, warp * 16, kk, lane);
            }
#pragma unroll
            for (int np = 0; np < B_r / 16; ++np) {
                uint32_t ob[4];
                load_b_rows<D>(ob, dO_t, np * 16, kk, lane);
                mma_16816<T>(dpt[2 * np], a, ob[0], ob[1]);
                mma_16816<T>(dpt[2 * np + 1], a, ob[2], ob[3]);
            }
        }

        // dS^T = P^T (dP^T - D), D per query (column).
#pragma unroll
        for (int nt = 0; nt < B_r / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) dpt[nt][e] = st[nt][e] * (dpt[nt][e] - D_t[nt * 8 + 2 * t + (e & 1)]);

        // dK += dS^T Q (the scale is applied once, at the end).
#pragma unroll
        for (int ks = 0; ks < B_r / 16; ++ks) {
            uint32_t a[4];
            pack_a<T>(a, dpt[2 * ks], dpt[2 * ks + 1]);
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t qb[4];
                load_b_trans<D>(qb, Q_t, ks * 16, dp * 16, lane);
                mma_16816<T>(dk[2 * dp], a, qb[0], qb[1]);
                mma_16816<T>(dk[2 * dp + 1], a, qb[2], qb[3]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int key = key0 + 8 * r;
        if (key >= p.Nk) continue;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            const int c = dt * 8 + 2 * t;
            *reinterpret_cast<uint32_t*>(dK + size_t(key) * D + c) = pack2<T>(dk[dt][2 * r] * p.scale, dk[dt][2 * r + 1] * p.scale);
            *reinterpret_cast<uint32_t*>(dV + size_t(key) * D + c) = pack2<T>(dv[dt][2 * r], dv[dt][2 * r + 1]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dQ: a block owns B_r queries (4 warps x 16) and streams the key tiles.
template <int D>
constexpr size_t smem_bytes_dq() {  // Q, dO (B_r) + 2 x K, 2 x V (B_c)
    return size_t(2 * B_r + 4 * B_c) * padded<D>() * 2;
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) dq_kernel(const BwdParams p) {
    constexpr int LD = padded<D>();
    constexpr bool kRegs = frags_in_registers<D>();
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* Q_s = reinterpret_cast<T*>(smem_raw);  // (B_r, LD)
    T* dO_s = Q_s + B_r * LD;                 // (B_r, LD)
    T* K_s = dO_s + B_r * LD;                 // (2, B_c, LD)
    T* V_s = K_s + 2 * B_c * LD;              // (2, B_c, LD)

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int i0 = blockIdx.x * B_r;
    const int b = blockIdx.y / p.H, h = blockIdx.y % p.H;
    const T* Q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
    const T* K = static_cast<const T*>(p.k) + b * p.k_batch_stride + h * p.k_head_stride;
    const T* V = static_cast<const T*>(p.v) + b * p.v_batch_stride + h * p.v_head_stride;
    const T* dO = static_cast<const T*>(p.dout) + b * p.do_batch_stride + h * p.do_head_stride;
    const float* L = p.lse + (size_t(b) * p.H + h) * p.Nq;
    const float* Dl = p.delta + (size_t(b) * p.H + h) * p.Nq;
    T* dQ = static_cast<T*>(p.dq) + (size_t(b) * p.H + h) * p.Nq * D;

    const int kv_end = p.causal ? min(p.Nk, min(p.Nq, i0 + B_r)) : p.Nk;
    const int T_c = (kv_end + B_c - 1) / B_c;

    load_tile<T, D, B_r>(Q_s, Q, p.q_row_stride, i0, p.Nq, tid);
    load_tile<T, D, B_r>(dO_s, dO, p.do_row_stride, i0, p.Nq, tid);
    cp_async_commit();
    if (T_c > 0) {
        load_tile<T, D, B_c>(K_s, K, p.k_row_stride, 0, p.Nk, tid);
        load_tile<T, D, B_c>(V_s, V, p.v_row_stride, 0, p.Nk, tid);
    }
    cp_async_commit();

    // L (in log2 units; +inf for rows with no key, so that P = 0) and D of this lane's 2 rows.
    const int row0 = i0 + warp * 16 + g;
    float l2[2], drow[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + 8 * r;
        const float l = row < p.Nq ? L[row] : -INFINITY;
        l2[r] = l == -INFINITY ? INFINITY : l * kLog2e;
        drow[r] = row < p.Nq ? Dl[row] : 0.f;
    }

    cp_async_wait<1>();
    __syncthreads();
    uint32_t q_frag[kRegs ? D / 16 : 1][4], do_frag[kRegs ? D / 16 : 1][4];
    if constexpr (kRegs) {
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            load_a<D>(q_frag[kk], Q_s, warp * 16, kk, lane);
            load_a<D>(do_frag[kk], dO_s, warp * 16, kk, lane);
        }
    }

    float dq[D / 8][4] = {};
    const float scale_log2 = p.scale * kLog2e;

    for (int j = 0; j < T_c; ++j) {
        cp_async_wait<0>();
        __syncthreads();
        if (j + 1 < T_c) {
            const int nb = (j + 1) & 1;
            load_tile<T, D, B_c>(K_s + nb * B_c * LD, K, p.k_row_stride, (j + 1) * B_c, p.Nk, tid);
            load_tile<T, D, B_c>(V_s + nb * B_c * LD, V, p.v_row_stride, (j + 1) * B_c, p.Nk, tid);
        }
        cp_async_commit();
        const int j0 = j * B_c;
        const T* K_j = K_s + (j & 1) * B_c * LD;
        const T* V_j = V_s + (j & 1) * B_c * LD;
        if (p.causal && j0 > i0 + warp * 16 + 15) continue;  // every key of the tile is in this warp's future

        // S = Q K_j^T and dP = dO V_j^T, 16 queries x B_c keys each.
        float s[B_c / 8][4] = {}, dp[B_c / 8][4] = {};
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            uint32_t qa[4], oa[4];
            if constexpr (kRegs) {
#pragma unroll
                for (int x = 0; x < 4; ++x) qa[x] = q_frag[kk][x], oa[x] = do_frag[kk][x];
            } else {
                load_a<D>(qa, Q_s, warp * 16, kk, lane);
                load_a<D>(oa, dO_s, warp * 16, kk, lane);
            }
#pragma unroll
            for (int np = 0; np < B_c / 16; ++np) {
                uint32_t kb[4], vb[4];
                load_b_rows<D>(kb, K_j, np * 16, kk, lane);
                load_b_rows<D>(vb, V_j, np * 16, kk, lane);
                mma_16816<T>(s[2 * np], qa, kb[0], kb[1]);
                mma_16816<T>(s[2 * np + 1], qa, kb[2], kb[3]);
                mma_16816<T>(dp[2 * np], oa, vb[0], vb[1]);
                mma_16816<T>(dp[2 * np + 1], oa, vb[2], vb[3]);
            }
        }

        // P = exp(scale S - L); dS = P (dP - D). Masked pairs get P = 0, hence dS = 0.
        const bool need_mask = j0 + B_c > p.Nk || (p.causal && j0 + B_c - 1 > i0 + warp * 16);
#pragma unroll
        for (int nt = 0; nt < B_c / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e / 2;
                float pv = exp2f(s[nt][e] * scale_log2 - l2[r]);
                if (need_mask) {
                    const int key = j0 + nt * 8 + 2 * t + (e & 1), query = row0 + 8 * r;
                    if (key >= p.Nk || (p.causal && key > query)) pv = 0.f;
                }
                dp[nt][e] = pv * (dp[nt][e] - drow[r]);
            }

        // dQ += dS K_j: k runs over the tile's keys.
#pragma unroll
        for (int ks = 0; ks < B_c / 16; ++ks) {
            uint32_t a[4];
            pack_a<T>(a, dp[2 * ks], dp[2 * ks + 1]);
#pragma unroll
            for (int dt2 = 0; dt2 < D / 16; ++dt2) {
                uint32_t kb[4];
                load_b_trans<D>(kb, K_j, ks * 16, dt2 * 16, lane);
                mma_16816<T>(dq[2 * dt2], a, kb[0], kb[1]);
                mma_16816<T>(dq[2 * dt2 + 1], a, kb[2], kb[3]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + 8 * r;
        if (row >= p.Nq) continue;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt)
            *reinterpret_cast<uint32_t*>(dQ + size_t(row) * D + dt * 8 + 2 * t) =
                pack2<T>(dq[dt][2 * r] * p.scale, dq[dt][2 * r + 1] * p.scale);
    }
}

template <typename T, int D>
const char* launch(const BwdParams& p) {
    const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
    const int64_t total_rows = int64_t(p.B) * p.H * p.Nq;
    if (total_rows > 0) {
        const int warps = 8;
        preprocess_kernel<T><<<static_cast<unsigned>((total_rows + warps - 1) / warps), 32 * warps, 0, stream>>>(p);
        FLASH_LAUNCH_CHECK(preprocess_kernel);
    }
    if (p.Nk > 0) {
        constexpr size_t smem = smem_bytes_dkdv<D>();
        FLASH_CUDA_TRY(allow_smem(dkdv_kernel<T, D>, smem));
        dkdv_kernel<T, D><<<dim3(cdiv(p.Nk, B_c), p.B * p.H), kThreads, smem, stream>>>(p);
        FLASH_LAUNCH_CHECK(dkdv_kernel);
    }
    if (p.Nq > 0) {
        constexpr size_t smem = smem_bytes_dq<D>();
        FLASH_CUDA_TRY(allow_smem(dq_kernel<T, D>, smem));
        dq_kernel<T, D><<<dim3(cdiv(p.Nq, B_r), p.B * p.H), kThreads, smem, stream>>>(p);
        FLASH_LAUNCH_CHECK(dq_kernel);
    }
    return "";
}

template <typename T>
const char* dispatch_head_dim(const BwdParams& p) {
    switch (p.d) {
        case 64: return launch<T, 64>(p);
        case 128: return launch<T, 128>(p);
    }
    return format_error("cuda backward v2 supports head dims 64, 128; got %d", p.d);
}

}  // namespace bwd_v2

const char* backward_v2(const BwdParams& p) {
    if (p.d != 64 && p.d != 128) return format_error("cuda backward v2 supports head dims 64, 128; got %d", p.d);
    if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
        return format_error("cuda backward v2 supports float16 and bfloat16 (tensor cores); got %s", dtype_name(p.dtype));
    if (p.B * p.H == 0) return "";
    if (p.B * p.H > 65535) return format_error("cuda backward v2 supports B*H up to 65535; got %d", p.B * p.H);
    return p.dtype == DType::kFloat16 ? bwd_v2::dispatch_head_dim<__half>(p) : bwd_v2::dispatch_head_dim<__nv_bfloat16>(p);
}

}  // namespace flash
