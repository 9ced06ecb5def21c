// online_softmax_step.cuh: one step of the FlashAttention forward for one query row.
//
// The row has seen some key tiles; its state is the running max m (of the scaled scores), the
// running sum ℓ = Σ exp(scale*s_j - m) and the unnormalised output o = Σ exp(scale*s_j - m) v_j.
// A new tile of n keys brings raw scores s (q . k_j, -inf where masked) and values V (n rows of
// d, row stride ldv). Folding it in:
//     m_new = max(m, max_j scale*s_j)
//     alpha = exp(m - m_new)                 shrink what was summed under the old max
//     ℓ     = alpha*ℓ + Σ_j exp(scale*s_j - m_new)
//     o     = alpha*o + Σ_j exp(scale*s_j - m_new) v_j
// After the last tile: O = o / ℓ and L = m + log ℓ.
//
// __host__ __device__: forward_v1_scalar.cu calls it, one thread per row, and the course's
// exercise 03.cuda_online_softmax_step compiles it (or a learner's version) on the CPU too.
#pragma once

#include <math.h>

#ifndef __CUDACC__
#define __host__
#define __device__
#endif

__host__ __device__ inline void online_softmax_step(const float* s, int n, float scale, const float* V, int ldv, int d,
                                                    float& m, float& ell, float* o) {
    float m_tile = -INFINITY;
    for (int j = 0; j < n; ++j) m_tile = fmaxf(m_tile, scale * s[j]);
    const float m_new = fmaxf(m, m_tile);
    // A row that has seen only masked keys keeps m = -inf: subtract 0 instead, so that every
    // exp below is exp(-inf) = 0 and never exp(-inf - (-inf)) = NaN.
    const float base = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = expf(m - base);
    ell *= alpha;
    for (int c = 0; c < d; ++c) o[c] *= alpha;
    for (int j = 0; j < n; ++j) {
        const float p = expf(scale * s[j] - base);
        ell += p;
        for (int c = 0; c < d; ++c) o[c] += p * V[j * ldv + c];
    }
    m = m_new;
}
