// backward_v1_scalar.cu: FlashAttention backward, the readable version.
//
// Given Q, K, V, the forward's O and L (log-sum-exp per row) and dO, compute dQ, dK, dV
// without ever storing an N x N matrix. P is recomputed tile by tile from L:
//     P_ij  = exp(scale * q_i . k_j - L_i)          (exactly softmax, no running max needed)
//     dV_j  = Σ_i P_ij dO_i                          dP_ij = dO_i . v_j
//     dS_ij = P_ij (dP_ij - D_i),  D_i = rowsum(dO_i * O_i) = Σ_j P_ij dP_ij
//     dQ_i  = scale Σ_j dS_ij k_j                    dK_j  = scale Σ_i dS_ij q_i
// Three kernels, no atomics:
//   1. preprocess: D = rowsum(dO * O), one warp per row;
//   2. dK, dV: a block owns B_c keys (K/V block outer, as FA2) and walks over the query tiles,
//      accumulating dK_j and dV_j in shared memory;
//   3. dQ: a block owns B_r queries and walks over the key tiles (as the forward), accumulating
//      dQ_i. It recomputes S and dP a second time: the price of needing no atomics.
// Everything is float32 on CUDA cores; inputs may be float32, float16 or bfloat16 (the
// gradients come back in the input dtype). Causal (top-left) skips the tiles that are
// entirely masked: for a key tile, the query tiles before it; for a query tile, the key tiles
// after it.
//
// Supports: any Nq, Nk; head dims 1 to 128; causal or not.
// Compile alone (no torch needed):
//     nvcc -std=c++17 -O3 -arch=sm_90 -c -Xptxas -v backward_v1_scalar.cu -o /dev/null
#include "backward_step.cuh"
#include "common.cuh"

namespace flash {
namespace bwd_v1 {

constexpr int B_r = 32;  // queries per tile
constexpr int B_c = 32;  // keys per tile
constexpr int kThreads = 128;
constexpr int kMaxHeadDim = 128;

// ---------------------------------------------------------------------------------------------
// 1. D_i = Σ_c dO_ic O_ic, one warp per row of (B*H*Nq) rows.
template <typename T>
__global__ void preprocess_kernel(const BwdParams p) {
    const int warps_per_block = blockDim.x / 32;
    const int64_t row = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / 32;
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

// Recompute, for one (query tile, key tile) pair already in shared memory, the probabilities P
// and the score gradients dS = P (dP - D). Masked or out-of-range pairs get P = dS = 0.
//   Q_s, dO_s: (B_r, d)   K_s, V_s: (B_c, d + 1)   L_s, D_s: (B_r)   P_s, dS_s: (B_r, B_c)
__device__ __forceinline__ void recompute_p_ds(const BwdParams& p, const float* Q_s, const float* dO_s,
                                               const float* K_s, const float* V_s, const float* L_s,
                                               const float* D_s, float* P_s, float* dS_s, int i0, int rows,
                                               int j0, int cols) {
    const int d = p.d, ld = d + 1;
    for (int idx = threadIdx.x; idx < B_r * B_c; idx += kThreads) {
        const int r = idx / B_c, c = idx % B_c;
        const bool masked = r >= rows || c >= cols || (p.causal && j0 + c > i0 + r) || L_s[r] == -INFINITY;
        float P = 0.f, dS = 0.f;
        if (!masked)  // P = exp(scale q_i.k_j - L_i), dS = P (dO_i.v_j - D_i): backward_step.cuh
            backward_step(Q_s + r * d, K_s + c * ld, V_s + c * ld, dO_s + r * d, d, p.scale, L_s[r], D_s[r], P, dS);
        P_s[idx] = P;
        dS_s[idx] = dS;
    }
}

// Load rows [row0, row0 + rows) of a (N, d) matrix into shared memory as float32 with row stride
// `ld`; rows past `rows` are zero.
template <typename T>
__device__ __forceinline__ void load_rows(float* dst, int ld, const T* src, int64_t row_stride, int row0, int rows,
                                          int tile_rows, int d) {
    for (int idx = threadIdx.x; idx < tile_rows * d; idx += kThreads) {
        const int r = idx / d, c = idx % d;
        dst[r * ld + c] = r < rows ? to_float(src[(row0 + r) * row_stride + c]) : 0.f;
    }
}

// ---------------------------------------------------------------------------------------------
// 2. dK and dV: one block per (key tile, batch * head).
inline size_t smem_bytes_dkdv(int d) {
    return sizeof(float) * (2 * size_t(B_c) * (d + 1) + 2 * size_t(B_c) * d + 2 * size_t(B_r) * d + 2 * B_r * B_c + 2 * B_r);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) dkdv_kernel(const BwdParams p) {
    extern __shared__ float smem[];
    const int d = p.d, ld = d + 1;
    float* K_s = smem;                 // (B_c, d + 1)
    float* V_s = K_s + B_c * ld;       // (B_c, d + 1)
    float* dK_s = V_s + B_c * ld;      // (B_c, d) accumulator
    float* dV_s = dK_s + B_c * d;      // (B_c, d) accumulator
    float* Q_s = dV_s + B_c * d;       // (B_r, d)
    float* dO_s = Q_s + B_r * d;       // (B_r, d)
    float* P_s = dO_s + B_r * d;       // (B_r, B_c)
    float* dS_s = P_s + B_r * B_c;     // (B_r, B_c)
    float* L_s = dS_s + B_r * B_c;     // (B_r)
    float* D_s = L_s + B_r;            // (B_r)

    const int tid = threadIdx.x;
    const int j0 = blockIdx.x * B_c;
    const int b = blockIdx.y / p.H, h = blockIdx.y % p.H;
    const int cols = min(B_c, p.Nk - j0);
    const T* Q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
    const T* K = static_cast<const T*>(p.k) + b * p.k_batch_stride + h * p.k_head_stride;
    const T* V = static_cast<const T*>(p.v) + b * p.v_batch_stride + h * p.v_head_stride;
    const T* dO = static_cast<const T*>(p.dout) + b * p.do_batch_stride + h * p.do_head_stride;
    const float* L = p.lse + (size_t(b) * p.H + h) * p.Nq;
    const float* Dl = p.delta + (size_t(b) * p.H + h) * p.Nq;
    T* dK = static_cast<T*>(p.dk) + (size_t(b) * p.H + h) * p.Nk * d;
    T* dV = static_cast<T*>(p.dv) + (size_t(b) * p.H + h) * p.Nk * d;

    load_rows(K_s, ld, K, p.k_row_stride, j0, cols, B_c, d);
    load_rows(V_s, ld, V, p.v_row_stride, j0, cols, B_c, d);
    for (int idx = tid; idx < B_c * d; idx += kThreads) dK_s[idx] = dV_s[idx] = 0.f;

    // Causal: query i sees key j only if j <= i, so query tiles ending before j0 are skipped.
    const int i_start = p.causal ? (j0 / B_r) * B_r : 0;
    for (int i0 = i_start; i0 < p.Nq; i0 += B_r) {
        const int rows = min(B_r, p.Nq - i0);
        __syncthreads();  // the previous tile's Q_s, dO_s, P_s, dS_s are no longer read
        load_rows(Q_s, d, Q, p.q_row_stride, i0, rows, B_r, d);
        load_rows(dO_s, d, dO, p.do_row_stride, i0, rows, B_r, d);
        if (tid < B_r) {
            L_s[tid] = tid < rows ? L[i0 + tid] : -INFINITY;
            D_s[tid] = tid < rows ? Dl[i0 + tid] : 0.f;
        }
        __syncthreads();
        recompute_p_ds(p, Q_s, dO_s, K_s, V_s, L_s, D_s, P_s, dS_s, i0, rows, j0, cols);
        __syncthreads();
        // dV_j += Σ_i P_ij dO_i  and  dK_j += scale Σ_i dS_ij Q_i
        for (int idx = tid; idx < B_c * d; idx += kThreads) {
            const int c = idx / d, k = idx % d;
            float dv = 0.f, dk = 0.f;
            for (int r = 0; r < B_r; ++r) {
                dv += P_s[r * B_c + c] * dO_s[r * d + k];
                dk += dS_s[r * B_c + c] * Q_s[r * d + k];
            }
            dV_s[idx] += dv;
            dK_s[idx] += dk * p.scale;
        }
    }
    __syncthreads();
    for (int idx = tid; idx < cols * d; idx += kThreads) {
        dK[size_t(j0) * d + idx] = from_float<T>(dK_s[idx]);
        dV[size_t(j0) * d + idx] = from_float<T>(dV_s[idx]);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. dQ: one block per (query tile, batch * head).
inline size_t smem_bytes_dq(int d) {
    return sizeof(float) * (2 * size_t(B_c) * (d + 1) + 3 * size_t(B_r) * d + 2 * B_r * B_c + 2 * B_r);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) dq_kernel(const BwdParams p) {
    extern __shared__ float smem[];
    const int d = p.d, ld = d + 1;
    float* K_s = smem;                 // (B_c, d + 1)
    float* V_s = K_s + B_c * ld;       // (B_c, d + 1)
    float* Q_s = V_s + B_c * ld;       // (B_r, d)
    float* dO_s = Q_s + B_r * d;       // (B_r, d)
    float* dQ_s = dO_s + B_r * d;      // (B_r, d) accumulator
    float* P_s = dQ_s + B_r * d;       // (B_r, B_c)
    float* dS_s = P_s + B_r * B_c;     // (B_r, B_c)
    float* L_s = dS_s + B_r * B_c;     // (B_r)
    float* D_s = L_s + B_r;            // (B_r)

    const int tid = threadIdx.x;
    const int i0 = blockIdx.x * B_r;
    const int b = blockIdx.y / p.H, h = blockIdx.y % p.H;
    const int rows = min(B_r, p.Nq - i0);
    const T* Q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
    const T* K = static_cast<const T*>(p.k) + b * p.k_batch_stride + h * p.k_head_stride;
    const T* V = static_cast<const T*>(p.v) + b * p.v_batch_stride + h * p.v_head_stride;
    const T* dO = static_cast<const T*>(p.dout) + b * p.do_batch_stride + h * p.do_head_stride;
    const float* L = p.lse + (size_t(b) * p.H + h) * p.Nq;
    const float* Dl = p.delta + (size_t(b) * p.H + h) * p.Nq;
    T* dQ = static_cast<T*>(p.dq) + (size_t(b) * p.H + h) * p.Nq * d;

    load_rows(Q_s, d, Q, p.q_row_stride, i0, rows, B_r, d);
    load_rows(dO_s, d, dO, p.do_row_stride, i0, rows, B_r, d);
    for (int idx = tid; idx < B_r * d; idx += kThreads) dQ_s[idx] = 0.f;
    if (tid < B_r) {
        L_s[tid] = tid < rows ? L[i0 + tid] : -INFINITY;
        D_s[tid] = tid < rows ? Dl[i0 + tid] : 0.f;
    }

    const int kv_end = p.causal ? min(p.Nk, i0 + rows) : p.Nk;
    for (int j0 = 0; j0 < kv_end; j0 += B_c) {
        const int cols = min(B_c, p.Nk - j0);
        __syncthreads();
        load_rows(K_s, ld, K, p.k_row_stride, j0, cols, B_c, d);
        load_rows(V_s, ld, V, p.v_row_stride, j0, cols, B_c, d);
        __syncthreads();
        recompute_p_ds(p, Q_s, dO_s, K_s, V_s, L_s, D_s, P_s, dS_s, i0, rows, j0, cols);
        __syncthreads();
        // dQ_i += scale Σ_j dS_ij K_j
        for (int idx = tid; idx < B_r * d; idx += kThreads) {
            const int r = idx / d, k = idx % d;
            float acc = 0.f;
            for (int c = 0; c < B_c; ++c) acc += dS_s[r * B_c + c] * K_s[c * ld + k];
            dQ_s[idx] += acc * p.scale;
        }
    }
    __syncthreads();
    for (int idx = tid; idx < rows * d; idx += kThreads) dQ[size_t(i0) * d + idx] = from_float<T>(dQ_s[idx]);
}

template <typename T>
const char* launch(const BwdParams& p) {
    const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
    const int64_t total_rows = int64_t(p.B) * p.H * p.Nq;
    if (total_rows > 0) {
        const int warps = 8;
        preprocess_kernel<T><<<static_cast<unsigned>((total_rows + warps - 1) / warps), 32 * warps, 0, stream>>>(p);
        FLASH_LAUNCH_CHECK(preprocess_kernel);
    }
    if (p.Nk > 0) {
        const size_t smem = smem_bytes_dkdv(p.d);
        FLASH_CUDA_TRY(allow_smem(dkdv_kernel<T>, smem));
        dkdv_kernel<T><<<dim3(cdiv(p.Nk, B_c), p.B * p.H), kThreads, smem, stream>>>(p);
        FLASH_LAUNCH_CHECK(dkdv_kernel);
    }
    if (p.Nq > 0) {
        const size_t smem = smem_bytes_dq(p.d);
        FLASH_CUDA_TRY(allow_smem(dq_kernel<T>, smem));
        dq_kernel<T><<<dim3(cdiv(p.Nq, B_r), p.B * p.H), kThreads, smem, stream>>>(p);
        FLASH_LAUNCH_CHECK(dq_kernel);
    }
    return "";
}

}  // namespace bwd_v1

const char* backward_v1(const BwdParams& p) {
    if (p.d < 1 || p.d > bwd_v1::kMaxHeadDim)
        return format_error("cuda backward v1 supports head dims 1 to %d; got %d", bwd_v1::kMaxHeadDim, p.d);
    if (p.B * p.H == 0) return "";
    if (p.B * p.H > 65535) return format_error("cuda backward v1 supports B*H up to 65535; got %d", p.B * p.H);
    switch (p.dtype) {
        case DType::kFloat32: return bwd_v1::launch<float>(p);
        case DType::kFloat16: return bwd_v1::launch<__half>(p);
        case DType::kBFloat16: return bwd_v1::launch<__nv_bfloat16>(p);
    }
    return format_error("cuda backward v1: unknown dtype %d", static_cast<int>(p.dtype));
}

}  // namespace flash
