// common.cuh: helpers shared by the course's CUDA kernels.
//
//   * error reporting for the launchers (they return a message instead of throwing, so the
//     .cu files need no torch);
//   * conversions between the storage types (float, half, bfloat16) and float, in which all
//     the arithmetic is done;
//   * thin wrappers over the PTX instructions the tensor-core versions use: cp.async (copy
//     global -> shared without passing through registers), ldmatrix (load 8x8 tiles from shared
//     memory straight into the register layout mma wants) and mma.sync m16n8k16.
//
// Fragment layouts of mma.sync.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"), for a
// lane of a warp with g = lane / 4 (its "group", a row) and t = lane % 4 (its column pair):
//   A (16x16, row-major), 4 registers of 2 halves: a0:(g, 2t..2t+1) a1:(g+8, 2t..) a2:(g, 2t+8..)
//     a3:(g+8, 2t+8..)
//   B (16x8, k x n), 2 registers: b0:(k = 2t..2t+1, n = g) b1:(k = 2t+8..2t+9, n = g)
//   C, D (16x8 fp32), 4 floats: c0,c1:(g, 2t..2t+1) c2,c3:(g+8, 2t..2t+1)
// So a row of a C tile lives in the 4 lanes of one quad: row reductions are two shuffles.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>

#include "flash_params.h"

namespace flash {

// ---------------------------------------------------------------------------------------------
// Errors: a launcher returns "" on success or a message (kept in a thread-local buffer).

inline const char* format_error(const char* fmt, ...) {
    static thread_local char buffer[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(buffer, sizeof(buffer), fmt, args);
    va_end(args);
    return buffer;
}

inline const char* cuda_error(cudaError_t err, const char* what) {
    return format_error("%s failed: %s", what, cudaGetErrorString(err));
}

#define FLASH_CUDA_TRY(call)                                     \
    do {                                                         \
        cudaError_t flash_err_ = (call);                         \
        if (flash_err_ != cudaSuccess) return flash::cuda_error(flash_err_, #call); \
    } while (0)

// After a launch: report a bad configuration at once (no device synchronisation).
#define FLASH_LAUNCH_CHECK(kernel_name) FLASH_CUDA_TRY(cudaGetLastError())

inline int cdiv(int a, int b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// Storage types <-> float.

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Two floats -> one 32-bit register holding two 16-bit values (low half = first), the way mma
// operands and paired stores want them.
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}

// ---------------------------------------------------------------------------------------------
// Warp helpers.

// Max and sum over the 4 lanes of a quad (the lanes holding one row of an mma C fragment).
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffff, x, 1);
    return x + __shfl_xor_sync(0xffffffff, x, 2);
}

// ---------------------------------------------------------------------------------------------
// cp.async: 16 bytes global -> shared, asynchronous (sm_80+). With src_bytes = 0 nothing is read
// and the 16 bytes are zero-filled: that is how rows past the end of a sequence become zeros.

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem_dst)),
                 "l"(gmem_src), "r"(src_bytes));
}
// 4 bytes (one float) global -> shared; zero-filled when !valid. For vectors like L and D whose
// rows need not start 16-byte aligned.
__device__ __forceinline__ void cp_async_4(void* smem_dst, const void* gmem_src, bool valid) {
    const int src_bytes = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(smem_dst)),
                 "l"(gmem_src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most `n` committed groups are still in flight.
template <int n> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(n));
}

// ---------------------------------------------------------------------------------------------
// ldmatrix: each lane gives the shared-memory address of one 8-element (16-byte) row; lanes
// 0-7 address matrix 0, 8-15 matrix 1, 16-23 matrix 2, 24-31 matrix 3. Lane l receives, for
// matrix i, register r[i] = elements (row l/4, columns 2(l%4), 2(l%4)+1): the A/B fragment
// layout. The .trans form delivers the transpose: (rows 2(l%4), 2(l%4)+1, column l/4).

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem_row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(smem_row)));
}

// ---------------------------------------------------------------------------------------------
// mma.sync m16n8k16: D = A B + D with A 16x16 and B 16x8 in T (half or bfloat16), D fp32.

template <typename T> __device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <> __device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------------------------------------
// Launch helpers.

// A kernel that wants more than 48 KB of dynamic shared memory must say so first.
template <typename Kernel>
inline cudaError_t allow_smem(Kernel kernel, size_t bytes) {
    if (bytes <= 48 * 1024) return cudaSuccess;
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

constexpr float kLog2e = 1.4426950408889634f;  // log2(e): exp(x) = exp2(x * log2(e))
constexpr float kLn2 = 0.6931471805599453f;    // ln(2)

}  // namespace flash
