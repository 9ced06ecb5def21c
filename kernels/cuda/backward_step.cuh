// backward_step.cuh: one step of the FlashAttention backward for one (query i, key j) pair.
//
// From the forward's log-sum-exp L_i and D_i = rowsum(dO_i * O_i), recompute
//     P_ij  = exp(scale * q_i . k_j - L_i)        (the softmax probability, no max needed)
//     dP_ij = dO_i . v_j
//     dS_ij = P_ij (dP_ij - D_i)                  (the gradient of the score, before scale)
// dV_j += P_ij dO_i, dQ_i += scale dS_ij k_j and dK_j += scale dS_ij q_i use them.
//
// __host__ __device__: backward_v1_scalar.cu calls it for every pair of a tile, and the
// course's exercise 04.cuda_backward_step compiles it (or a learner's version) on the CPU too.
#pragma once

#include <math.h>

#ifndef __CUDACC__
#define __host__
#define __device__
#endif

__host__ __device__ inline void backward_step(const float* q, const float* k, const float* v, const float* dO, int d,
                                              float scale, float L, float D, float& P, float& dS) {
    float s = 0.f, dP = 0.f;
    for (int c = 0; c < d; ++c) {
        s += q[c] * k[c];
        dP += dO[c] * v[c];
    }
    P = expf(scale * s - L);
    dS = P * (dP - D);
}
