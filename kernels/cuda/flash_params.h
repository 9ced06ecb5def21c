// flash_params.h: what the host passes to every CUDA attention kernel of the course.
//
// Plain C++ (no CUDA, no torch): the .cu files include it to define their launchers, and
// torch_binding.cpp includes it to call them. That split is what lets each .cu compile on its
// own with nvcc alone, e.g. on a machine with no GPU and no torch headers:
//
//     nvcc -std=c++17 -arch=sm_90 -c -Xptxas -v forward_v1_scalar.cu -o /dev/null
//
// Tensors are (B, H, N, d) with the last dimension contiguous; the other strides are given in
// elements, so a (B, N, H, d) tensor viewed as (B, H, N, d) needs no copy.
#pragma once

#include <cstdint>

namespace flash {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline const char* dtype_name(DType t) {
    return t == DType::kFloat32 ? "float32" : t == DType::kFloat16 ? "float16" : "bfloat16";
}

// Forward: O = softmax(scale * Q K^T (+ causal mask)) V and L = logsumexp of each row.
struct FwdParams {
    const void* q;  // (B, H, Nq, d), dtype
    const void* k;  // (B, H, Nk, d), dtype
    const void* v;  // (B, H, Nk, d), dtype
    void* o;        // (B, H, Nq, d), dtype, written
    float* lse;     // (B, H, Nq) float32, contiguous, written: natural log, -inf for empty rows

    int64_t q_batch_stride, q_head_stride, q_row_stride;
    int64_t k_batch_stride, k_head_stride, k_row_stride;
    int64_t v_batch_stride, v_head_stride, v_row_stride;
    int64_t o_batch_stride, o_head_stride, o_row_stride;

    int B, H, Nq, Nk, d;
    float scale;  // usually 1/sqrt(d)
    bool causal;  // key j is seen by query i only when j <= i (top-left, as torch SDPA)
    DType dtype;
    void* stream;  // cudaStream_t; nullptr is the default stream
};

// Backward: from Q, K, V, O, L and dO, the gradients dQ, dK, dV (P is recomputed from L).
struct BwdParams {
    const void* q;
    const void* k;
    const void* v;
    const void* o;
    const void* dout;  // dO (B, H, Nq, d)
    const float* lse;  // L (B, H, Nq) float32, contiguous
    float* delta;      // D = rowsum(dO * O), (B, H, Nq) float32, contiguous, scratch
    void* dq;          // (B, H, Nq, d), contiguous, written
    void* dk;          // (B, H, Nk, d), contiguous, written
    void* dv;          // (B, H, Nk, d), contiguous, written
    float* dq_accum;   // (B, H, Nq, d) float32 scratch, used by kernels that accumulate dQ in fp32

    int64_t q_batch_stride, q_head_stride, q_row_stride;
    int64_t k_batch_stride, k_head_stride, k_row_stride;
    int64_t v_batch_stride, v_head_stride, v_row_stride;
    int64_t o_batch_stride, o_head_stride, o_row_stride;
    int64_t do_batch_stride, do_head_stride, do_row_stride;

    int B, H, Nq, Nk, d;
    float scale;
    bool causal;
    DType dtype;
    void* stream;
};

// The launchers, one per numbered version. Each returns an empty string on success, else a
// message saying what is unsupported or which CUDA call failed (the binding raises it).
const char* forward_v1(const FwdParams& p);
const char* forward_v2(const FwdParams& p);
const char* forward_v3(const FwdParams& p);
const char* backward_v1(const BwdParams& p);
const char* backward_v2(const BwdParams& p);

// Tuning entry of v3: the same kernel with one of several tile configurations (see
// forward_v3_tuned.cu), so that one build can time them side by side.
const char* forward_v3_config(const FwdParams& p, int config);
int forward_v3_num_configs();
const char* forward_v3_config_name(int config);

}  // namespace flash
