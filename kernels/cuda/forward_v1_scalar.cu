// forward_v1_scalar.cu: FlashAttention forward, the readable version.
//
// One thread block owns B_r = 32 query rows of one (batch, head). It walks over the keys in
// tiles of B_c = 32: load K_j and V_j into shared memory, compute the raw scores q_i . k_j of the
// tile (all 128 threads), then each row's thread folds the tile into its row's running max m,
// sum ℓ and output accumulator o with online_softmax_step (online_softmax_step.cuh): the online
// softmax, one row per thread. Nothing of size N x N is ever stored; L = m + log ℓ is written
// for the backward pass. Everything is computed in float32 on CUDA cores (no tensor cores):
// see forward_v2_tensor_core.cu for the fast version.
//
// Supports: float32, float16, bfloat16 inputs (float32 arithmetic); any Nq, Nk (Nq != Nk);
// head dim d from 1 to 256; causal with torch SDPA's top-left convention (key j <= query i);
// rows with no key to attend (Nk = 0) give O = 0 and L = -inf.
//
// Compile alone (no torch needed):
//     nvcc -std=c++17 -O3 -arch=sm_90 -c -Xptxas -v forward_v1_scalar.cu -o /dev/null
// Built for PyTorch by kernels/cuda_kernels.py (with torch_binding.cpp).
#include "common.cuh"
#include "online_softmax_step.cuh"

namespace flash {
namespace v1 {

constexpr int B_r = 32;       // query rows per block
constexpr int B_c = 32;       // keys per tile
constexpr int kThreads = 128;
constexpr int kMaxHeadDim = 256;

// Shared memory, all float32 (inputs are converted once, when loaded):
//   Q_s (B_r, d)   K_s (B_c, d + 1)   V_s (B_c, d)   O_s (B_r, d + 1)   S_s (B_r, B_c + 1)
// Rows of K_s, O_s and S_s are padded by one float. In S = Q K^T the 32 lanes of a warp read 32
// rows of K_s at one column, and in the softmax step 32 threads (one per row) walk their rows of
// S_s and O_s in step: with a row stride that is a multiple of 32 floats all 32 would hit the
// same one of the 32 banks and be served one after another; one float of padding spreads them.
inline size_t smem_bytes(int d) {
    return sizeof(float) * (size_t(B_r) * d + size_t(B_c) * (d + 1) + size_t(B_c) * d + size_t(B_r) * (d + 1) +
                            size_t(B_r) * (B_c + 1) + B_r);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(const FwdParams p) {
    extern __shared__ float smem[];
    const int d = p.d;
    const int ldk = d + 1, ldo = d + 1, lds = B_c + 1;
    float* Q_s = smem;                 // (B_r, d)
    float* K_s = Q_s + B_r * d;        // (B_c, d + 1)
    float* V_s = K_s + B_c * ldk;      // (B_c, d)
    float* O_s = V_s + B_c * d;        // (B_r, d + 1): the unnormalised output o of each row
    float* S_s = O_s + B_r * ldo;      // (B_r, B_c + 1): raw scores q_i . k_j of the current tile
    float* ell_s = S_s + B_r * lds;    // (B_r): ℓ of each row, shared at the end for O = o / ℓ

    const int tid = threadIdx.x;
    const int i0 = blockIdx.x * B_r;             // first query row of this block
    const int b = blockIdx.y / p.H, h = blockIdx.y % p.H;
    const int rows = min(B_r, p.Nq - i0);        // valid query rows in this block
    const T* Q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
    const T* K = static_cast<const T*>(p.k) + b * p.k_batch_stride + h * p.k_head_stride;
    const T* V = static_cast<const T*>(p.v) + b * p.v_batch_stride + h * p.v_head_stride;
    T* O = static_cast<T*>(p.o) + b * p.o_batch_stride + h * p.o_head_stride;
    float* L = p.lse + (size_t(b) * p.H + h) * p.Nq;

    // Load the Q tile (zeros past the end) and clear the accumulators.
    for (int idx = tid; idx < B_r * d; idx += kThreads) {
        const int r = idx / d, c = idx % d;
        Q_s[idx] = r < rows ? to_float(Q[(i0 + r) * p.q_row_stride + c]) : 0.f;
        O_s[r * ldo + c] = 0.f;
    }
    // Row tid's running max and sum live in thread tid's registers (threads tid < B_r).
    float m = -INFINITY, ell = 0.f;

    // Causal: the last row of this block, i0 + rows - 1, sees keys up to itself; tiles past it
    // are never loaded.
    const int kv_end = p.causal ? min(p.Nk, i0 + rows) : p.Nk;

    for (int j0 = 0; j0 < kv_end; j0 += B_c) {
        const int cols = min(B_c, p.Nk - j0);  // valid keys in this tile
        __syncthreads();  // everyone is done with the previous K_s, V_s, S_s

        for (int idx = tid; idx < B_c * d; idx += kThreads) {
            const int r = idx / d, c = idx % d;
            const bool valid = r < cols;
            K_s[r * ldk + c] = valid ? to_float(K[(j0 + r) * p.k_row_stride + c]) : 0.f;
            V_s[idx] = valid ? to_float(V[(j0 + r) * p.v_row_stride + c]) : 0.f;
        }
        __syncthreads();

        // Raw scores q_i . k_j, -inf where the key is in the future (causal).
        for (int idx = tid; idx < B_r * B_c; idx += kThreads) {
            const int r = idx / B_c, c = idx % B_c;
            float s = -INFINITY;
            if (r < rows && c < cols && !(p.causal && j0 + c > i0 + r)) {
                s = 0.f;
                for (int k = 0; k < d; ++k) s += Q_s[r * d + k] * K_s[c * ldk + k];
            }
            S_s[r * lds + c] = s;
        }
        __syncthreads();

        // The online softmax: row tid folds this tile into its (m, ℓ, o).
        if (tid < rows) online_softmax_step(S_s + tid * lds, cols, p.scale, V_s, d, d, m, ell, O_s + tid * ldo);
    }
    if (tid < B_r) ell_s[tid] = ell;
    __syncthreads();

    // O = o / ℓ and L = m + log ℓ. A row with no key (ℓ = 0) gets O = 0 and L = -inf.
    for (int idx = tid; idx < rows * d; idx += kThreads) {
        const int r = idx / d, c = idx % d;
        const float ell_r = ell_s[r];
        const float out = ell_r > 0.f ? O_s[r * ldo + c] / ell_r : 0.f;
        O[(i0 + r) * p.o_row_stride + c] = from_float<T>(out);
    }
    if (tid < rows) L[i0 + tid] = ell > 0.f ? m + logf(ell) : -INFINITY;
}

template <typename T>
const char* launch(const FwdParams& p) {
    const size_t smem = smem_bytes(p.d);
    auto kernel = forward_kernel<T>;
    FLASH_CUDA_TRY(allow_smem(kernel, smem));
    const dim3 grid(cdiv(p.Nq, B_r), p.B * p.H);
    kernel<<<grid, kThreads, smem, static_cast<cudaStream_t>(p.stream)>>>(p);
    FLASH_LAUNCH_CHECK(forward_kernel);
    return "";
}

}  // namespace v1

const char* forward_v1(const FwdParams& p) {
    if (p.d < 1 || p.d > v1::kMaxHeadDim)
        return format_error("cuda forward v1 supports head dims 1 to %d; got %d", v1::kMaxHeadDim, p.d);
    if (p.B * p.H == 0 || p.Nq == 0) return "";  // nothing to compute (a grid of 0 blocks is an error)
    if (p.B * p.H > 65535) return format_error("cuda forward v1 supports B*H up to 65535; got %d", p.B * p.H);
    switch (p.dtype) {
        case DType::kFloat32: return v1::launch<float>(p);
        case DType::kFloat16: return v1::launch<__half>(p);
        case DType::kBFloat16: return v1::launch<__nv_bfloat16>(p);
    }
    return format_error("cuda forward v1: unknown dtype %d", static_cast<int>(p.dtype));
}

}  // namespace flash
