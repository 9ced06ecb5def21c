// forward_v2_tensor_core.cu: FlashAttention forward on tensor cores (mma.sync).
//
// The same algorithm as v1 (Q block outer, one pass over the K/V tiles, online softmax), with
// the work moved where the GPU is fast:
//   * S = Q K_j^T and O += P V_j run on tensor cores: mma.sync.m16n8k16, fp16/bf16 inputs,
//     fp32 accumulators (v1: float FMAs on CUDA cores, ~15x less peak throughput);
//   * each of the 4 warps owns 16 query rows; S, P and O stay in registers, in the mma
//     fragment layout, for the whole pass: no shared-memory round trip for S or O (v1 keeps them
//     in shared memory);
//   * a row of an S fragment lives in the 4 lanes of a quad, so the row max and row sum of the
//     online softmax are two shuffles; ℓ is even kept per lane and summed once at the end;
//   * P goes from the S accumulator registers straight into the A operand of the next mma
//     (the C layout of two n8 tiles is the A layout of one k16 step): P never leaves registers;
//   * shared memory holds Q, K_j, V_j in fp16/bf16, loaded with cp.async (global -> shared,
//     no registers) and double-buffered: K_{j+1}, V_{j+1} arrive while tile j is computed;
//   * ldmatrix loads mma fragments from shared memory, 4 8x8 tiles per instruction (.trans for
//     V, whose fragments are the transpose of its rows); rows are padded by 8 elements (16
//     bytes) so the 8 rows an ldmatrix phase reads fall in different banks;
//   * exp2 with the scale folded in: exp(scale*s - m) = exp2(s*scale*log2(e) - m'), one FFMA
//     and one MUFU.EX2 per score;
//   * masking only on the tiles that need it (the last, partial tile and, when causal, the
//     tiles that cross the diagonal); tiles above the diagonal are never loaded.
//
// Supports: float16 and bfloat16; head dims 32, 64, 80, 96, 128; any Nq, Nk; causal (top-left).
// Needs: last dimension contiguous, row strides a multiple of 8 elements, 16-byte aligned
// pointers (cp.async moves 16 bytes); the Python wrapper copies inputs that are not.
//
// Compile alone (no torch needed):
//     nvcc -std=c++17 -O3 -arch=sm_90 -c -Xptxas -v forward_v2_tensor_core.cu -o /dev/null
#include "common.cuh"

namespace flash {
namespace v2 {

constexpr int B_r = 64;      // query rows per block: 4 warps x 16 rows
constexpr int B_c = 64;      // keys per tile
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;

template <int D> __host__ __device__ constexpr int padded() { return D + 8; }  // row stride in shared memory (elements)

template <int D>
constexpr size_t smem_bytes() {  // Q (B_r rows) + 2 x K (B_c) + 2 x V (B_c), fp16/bf16
    return size_t(B_r + 4 * B_c) * padded<D>() * 2;
}

// Copy rows [row0, row0 + ROWS) of a (N, D) matrix into shared memory, 16 bytes per cp.async;
// rows at or past N are zero-filled (they must not be garbage: 0 * NaN is NaN in P V).
template <typename T, int D, int ROWS>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t row_stride, int row0, int N, int tid) {
    constexpr int kChunks = D / 8;  // 16-byte chunks per row
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

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) forward_kernel(const FwdParams p) {
    static_assert(D % 16 == 0, "head dim must be a multiple of 16 (one mma k-step)");
    constexpr int LD = padded<D>();
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* Q_s = reinterpret_cast<T*>(smem_raw);  // (B_r, LD)
    T* K_s = Q_s + B_r * LD;                  // (2, B_c, LD): double buffer
    T* V_s = K_s + 2 * B_c * LD;              // (2, B_c, LD)

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;  // this lane's row within 8, column pair within 8
    const int i0 = blockIdx.x * B_r;
    const int b = blockIdx.y / p.H, h = blockIdx.y % p.H;
    const T* Q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
    const T* K = static_cast<const T*>(p.k) + b * p.k_batch_stride + h * p.k_head_stride;
    const T* V = static_cast<const T*>(p.v) + b * p.v_batch_stride + h * p.v_head_stride;
    T* O = static_cast<T*>(p.o) + b * p.o_batch_stride + h * p.o_head_stride;
    float* L = p.lse + (size_t(b) * p.H + h) * p.Nq;

    // Causal: keys past the block's last row are never needed.
    const int kv_end = p.causal ? min(p.Nk, min(p.Nq, i0 + B_r)) : p.Nk;
    const int T_c = (kv_end + B_c - 1) / B_c;  // key tiles to visit

    // Q, then K_0 and V_0, in flight together.
    load_tile<T, D, B_r>(Q_s, Q, p.q_row_stride, i0, p.Nq, tid);
    cp_async_commit();
    if (T_c > 0) {
        load_tile<T, D, B_c>(K_s, K, p.k_row_stride, 0, p.Nk, tid);
        load_tile<T, D, B_c>(V_s, V, p.v_row_stride, 0, p.Nk, tid);
    }
    cp_async_commit();

    // This warp's 16 rows of Q as mma A fragments, kept in registers for the whole pass.
    cp_async_wait<1>();  // the Q group has landed (K_0, V_0 may still be in flight)
    __syncthreads();
    uint32_t q_frag[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)  // lanes 0-15 address rows 0-15 at column 0, lanes 16-31 at column 8
        ldmatrix_x4(q_frag[kk], Q_s + (warp * 16 + lane % 16) * LD + kk * 16 + (lane / 16) * 8);

    float o[D / 8][4] = {};                     // O accumulator: 16 rows x D, D/8 mma C tiles
    float m[2] = {-INFINITY, -INFINITY};        // running max of rows g and g+8, in log2 units
    float ell[2] = {0.f, 0.f};                  // this lane's share of the running sums
    const float scale_log2 = p.scale * kLog2e;  // exp(scale*s) = exp2(scale_log2*s)
    const int row0 = i0 + warp * 16 + g;        // the two query rows this lane holds: row0, row0 + 8

    for (int j = 0; j < T_c; ++j) {
        cp_async_wait<0>();  // K_j, V_j have landed (for this thread's copies) ...
        __syncthreads();     // ... and for everyone's; everyone is also done with tile j-1
        if (j + 1 < T_c) {   // prefetch tile j+1 into the other buffer while tile j is computed
            const int nb = (j + 1) & 1;
            load_tile<T, D, B_c>(K_s + nb * B_c * LD, K, p.k_row_stride, (j + 1) * B_c, p.Nk, tid);
            load_tile<T, D, B_c>(V_s + nb * B_c * LD, V, p.v_row_stride, (j + 1) * B_c, p.Nk, tid);
            cp_async_commit();
        }
        const T* K_j = K_s + (j & 1) * B_c * LD;
        const T* V_j = V_s + (j & 1) * B_c * LD;
        const int j0 = j * B_c;

        // S = Q K_j^T: 16 x B_c per warp, B_c/8 C tiles. One ldmatrix.x4 gives the B fragments
        // of two n8 tiles: matrices (keys 0-7, dims 0-7), (keys 0-7, dims 8-15), (keys 8-15, ...).
        float s[B_c / 8][4] = {};
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int np = 0; np < B_c / 16; ++np) {
                uint32_t kb[4];
                ldmatrix_x4(kb, K_j + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
                mma_16816<T>(s[2 * np], q_frag[kk], kb[0], kb[1]);
                mma_16816<T>(s[2 * np + 1], q_frag[kk], kb[2], kb[3]);
            }
        }

        // Mask keys past the end, and future keys when causal (only tiles that can have any).
        const bool need_mask = j0 + B_c > p.Nk || (p.causal && j0 + B_c - 1 > i0);
        if (need_mask) {
#pragma unroll
            for (int nt = 0; nt < B_c / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int col = j0 + nt * 8 + 2 * t + (e & 1);
                    const int row = row0 + (e / 2) * 8;
                    if (col >= p.Nk || (p.causal && col > row)) s[nt][e] = -INFINITY;
                }
        }

        // Online softmax for rows g (r = 0) and g+8 (r = 1).
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float m_tile = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < B_c / 8; ++nt) m_tile = fmaxf(m_tile, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
            m_tile = quad_max(m_tile) * scale_log2;
            const float m_new = fmaxf(m[r], m_tile);
            const float base = m_new == -INFINITY ? 0.f : m_new;  // no exp(-inf - (-inf)) = NaN
            const float alpha = exp2f(m[r] - base);
            m[r] = m_new;
            float row_sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < B_c / 8; ++nt) {
                s[nt][2 * r] = exp2f(s[nt][2 * r] * scale_log2 - base);  // s now holds P
                s[nt][2 * r + 1] = exp2f(s[nt][2 * r + 1] * scale_log2 - base);
                row_sum += s[nt][2 * r] + s[nt][2 * r + 1];
            }
            ell[r] = alpha * ell[r] + row_sum;
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt) {
                o[dt][2 * r] *= alpha;
                o[dt][2 * r + 1] *= alpha;
            }
        }

        // O += P V_j. The C fragments of S tiles 2ks and 2ks+1 are the A fragment of k-step ks;
        // ldmatrix.trans gives V's B fragments: (keys 0-7, dims 0-7), (keys 8-15, dims 0-7), ...
#pragma unroll
        for (int ks = 0; ks < B_c / 16; ++ks) {
            const uint32_t a[4] = {pack2<T>(s[2 * ks][0], s[2 * ks][1]), pack2<T>(s[2 * ks][2], s[2 * ks][3]),
                                   pack2<T>(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                                   pack2<T>(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t vb[4];
                ldmatrix_x4_trans(vb, V_j + (ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8);
                mma_16816<T>(o[2 * dp], a, vb[0], vb[1]);
                mma_16816<T>(o[2 * dp + 1], a, vb[2], vb[3]);
            }
        }
    }

    // O = O / ℓ, L = (m + log2 ℓ) ln 2. A row with no key (ℓ = 0) gets O = 0 and L = -inf.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float ell_row = quad_sum(ell[r]);
        const int row = row0 + 8 * r;
        if (row >= p.Nq) continue;
        const float inv = ell_row > 0.f ? 1.f / ell_row : 0.f;
        T* O_row = O + row * p.o_row_stride;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt)
            *reinterpret_cast<uint32_t*>(O_row + dt * 8 + 2 * t) = pack2<T>(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
        if (t == 0) L[row] = ell_row > 0.f ? (m[r] + log2f(ell_row)) * kLn2 : -INFINITY;
    }
}

template <typename T, int D>
const char* launch(const FwdParams& p) {
    constexpr size_t smem = smem_bytes<D>();
    auto kernel = forward_kernel<T, D>;
    FLASH_CUDA_TRY(allow_smem(kernel, smem));
    const dim3 grid(cdiv(p.Nq, B_r), p.B * p.H);
    kernel<<<grid, kThreads, smem, static_cast<cudaStream_t>(p.stream)>>>(p);
    FLASH_LAUNCH_CHECK(forward_kernel);
    return "";
}

template <typename T>
const char* dispatch_head_dim(const FwdParams& p) {
    switch (p.d) {
        case 32: return launch<T, 32>(p);
        case 64: return launch<T, 64>(p);
        case 80: return launch<T, 80>(p);
        case 96: return launch<T, 96>(p);
        case 128: return launch<T, 128>(p);
    }
    return format_error("cuda forward v2 supports head dims 32, 64, 80, 96, 128; got %d", p.d);
}

}  // namespace v2

const char* forward_v2(const FwdParams& p) {
    if (p.B * p.H == 0 || p.Nq == 0) return "";
    if (p.B * p.H > 65535) return format_error("cuda forward v2 supports B*H up to 65535; got %d", p.B * p.H);
    switch (p.dtype) {
        case DType::kFloat16: return v2::dispatch_head_dim<__half>(p);
        case DType::kBFloat16: return v2::dispatch_head_dim<__nv_bfloat16>(p);
        default: break;
    }
    return format_error("cuda forward v2 supports float16 and bfloat16 (tensor cores); got %s", dtype_name(p.dtype));
}

}  // namespace flash
