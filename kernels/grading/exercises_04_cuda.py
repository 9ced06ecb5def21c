"""Exercises of lesson 04 on the CUDA C++ backward: graders, solutions and mutants.

04.cuda_backward_step   one step of the CUDA backward kernel: for one (query i, key j) pair,
                        recompute P_ij from L_i and form dS_ij = P_ij (dP_ij - D_i), written as a
                        __host__ __device__ function in CUDA C++

As for 03.cuda_online_softmax_step, the learner's source is compiled with nvcc into a host
program (no GPU needed), run on fresh random pairs, and compared with a float64 reference; with
a GPU it also runs as device code. The solution is the function backward_v1_scalar.cu calls:
kernels/cuda/backward_step.cuh.
"""

from __future__ import annotations

import math

import torch

from .. import device
from .core import CaseFailure, case, fresh_generator
from .exercises_03_cuda import candidate_source, compile_harness, fmt, function_source, run_harness, source_mutant
from .registry import exercise

BWD_SIGNATURE = (
    "__host__ __device__ inline void backward_step(const float* q, const float* k, const float* v, "
    "const float* dO, int d, float scale, float L, float D, float& P, float& dS)"
)

# Input: pairs; per pair: d scale L D q[d] k[d] v[d] dO[d]. Output: P dS per pair.
BWD_HARNESS = r"""
#include <cmath>
#include <cstdio>
#include <vector>

/*CANDIDATE*/

#ifdef ON_GPU
__global__ void run_pairs(const float* in, const int* offsets, const int* dims, int pairs, float* out) {
    for (int i = 0; i < pairs; ++i) {  // one thread: the point is to run it as device code
        const float* x = in + offsets[i];
        const int d = dims[i];
        backward_step(x + 4, x + 4 + d, x + 4 + 2 * d, x + 4 + 3 * d, d, x[0], x[1], x[2], out[2 * i], out[2 * i + 1]);
    }
}
#endif

int main() {
    int pairs;
    if (scanf("%d", &pairs) != 1) return 2;
    std::vector<float> in;
    std::vector<int> offsets, dims;
    for (int i = 0; i < pairs; ++i) {
        int d;
        if (scanf("%d", &d) != 1) return 2;
        offsets.push_back((int)in.size());
        dims.push_back(d);
        for (int j = 0; j < 4 + 4 * d; ++j) {  // scale, L, D, (unused), q, k, v, dO
            float x;
            if (j == 3) { in.push_back(0.f); continue; }
            if (scanf("%f", &x) != 1) return 2;
            in.push_back(x);
        }
    }
    std::vector<float> out(2 * pairs);
#ifdef ON_GPU
    float *d_in, *d_out; int *d_off, *d_dims;
    cudaMalloc(&d_in, (in.size() + 1) * sizeof(float));
    cudaMalloc(&d_out, (out.size() + 1) * sizeof(float));
    cudaMalloc(&d_off, (pairs + 1) * sizeof(int));
    cudaMalloc(&d_dims, (pairs + 1) * sizeof(int));
    cudaMemcpy(d_in, in.data(), in.size() * sizeof(float), cudaMemcpyHostToDevice);
    cudaMemcpy(d_off, offsets.data(), pairs * sizeof(int), cudaMemcpyHostToDevice);
    cudaMemcpy(d_dims, dims.data(), pairs * sizeof(int), cudaMemcpyHostToDevice);
    run_pairs<<<1, 1>>>(d_in, d_off, d_dims, pairs, d_out);
    if (cudaDeviceSynchronize() != cudaSuccess) { fprintf(stderr, "kernel failed\n"); return 3; }
    cudaMemcpy(out.data(), d_out, out.size() * sizeof(float), cudaMemcpyDeviceToHost);
#else
    for (int i = 0; i < pairs; ++i) {
        const float* x = in.data() + offsets[i];
        const int d = dims[i];
        backward_step(x + 4, x + 4 + d, x + 4 + 2 * d, x + 4 + 3 * d, d, x[0], x[1], x[2], out[2 * i], out[2 * i + 1]);
    }
#endif
    for (float x : out) printf("%.9g\n", x);
    return 0;
}
"""


def backward_step_solution() -> str:
    """The course's function (the one backward_v1_scalar.cu runs), as source text."""
    return function_source("backward_step.cuh", "backward_step")


def _mutant(name: str, old: str, new: str):
    return source_mutant(backward_step_solution, "backward_step.cuh", "backward_step", name, old, new)


BWD_MUTANTS = {
    "no_scale": _mutant("no_scale", "P = expf(scale * s - L);", "P = expf(s - L);"),
    "forgets_L": _mutant("forgets_L", "P = expf(scale * s - L);", "P = expf(scale * s);"),
    "wrong_D_term": _mutant("wrong_D_term", "dS = P * (dP - D);", "dS = P * dP;"),
    "D_added": _mutant("D_added", "dS = P * (dP - D);", "dS = P * (dP + D);"),
    "no_P_factor": _mutant("no_P_factor", "dS = P * (dP - D);", "dS = dP - D;"),
    "dP_from_k": _mutant("dP_from_k", "dP += dO[c] * v[c];", "dP += dO[c] * k[c];"),
    "log2_L": _mutant("log2_L", "P = expf(scale * s - L);", "P = exp2f(scale * s - L);"),
}


def _pairs(g):
    """Fresh (description, d, scale, L, D, q, k, v, dO) in float32, with L and D consistent with
    a real attention row: L = logsumexp of the row's scores, D = Σ_j P_ij dP_ij."""
    out = []
    for desc, d, scale, n, shift in (
        ("d = 64, a row of 40 keys", 64, 0.125, 40, 0.0),
        ("d = 16, scale 0.9, large scores", 16, 0.9, 25, 3.0),
        ("d = 1", 1, 1.7, 9, 0.0),
        ("d = 128, a row of 200 keys", 128, 1 / math.sqrt(128), 200, 0.0),
    ):
        q = (torch.randn(d, generator=g) + shift).float()
        K = torch.randn(n, d, generator=g).float()
        V = torch.randn(n, d, generator=g).float()
        S = scale * (K.double() @ q.double())
        L = float(torch.logsumexp(S, 0))
        P = torch.exp(S - L)
        # dO leans on O, so that D = dO . O is far from 0 and a missing D term shows.
        dO = (2 * (P @ V.double()) + 0.5 * torch.randn(d, generator=g, dtype=torch.float64)).float()
        D = float((P * (V.double() @ dO.double())).sum())  # = rowsum(dO * O)
        for j in range(min(n, 6)):  # several keys of the row, the largest-probability one first
            jj = int(P.argmax()) if j == 0 else j
            out.append((f"{desc}, key {jj}", d, scale, L, D, q, K[jj], V[jj], dO))
    return out


@exercise(
    "04.cuda_backward_step",
    "CUDA: P and dS for one (query, key) pair of the backward (compiled with nvcc, run on the CPU)",
    solution=backward_step_solution,
    mutants=BWD_MUTANTS,
    needs="nvcc",
)
def grade_backward_step(candidate):
    src = candidate_source(candidate)
    if "backward_step" not in src:
        raise CaseFailure(f"the source must define {BWD_SIGNATURE}")
    g, seed = fresh_generator()
    pairs = _pairs(g)
    lines = [str(len(pairs))]
    for _, d, scale, L, D, q, k, v, dO in pairs:
        lines.append(f"{d} {fmt([scale, L, D])} {fmt(q.tolist())} {fmt(k.tolist())} {fmt(v.tolist())} {fmt(dO.tolist())}")
    stdin = "\n".join(lines) + "\n"
    runs = [("CPU (host code)", False)] + ([("GPU (device code)", True)] if device.HAS_CUDA else [])
    for where, on_gpu in runs:
        with case(f"compile with nvcc for the {where}"):
            program = BWD_HARNESS.replace("/*CANDIDATE*/", ("#define ON_GPU\n" if on_gpu else "") + src)
            exe = compile_harness("04.cuda_backward_step", program, on_gpu)
        out = run_harness(exe, stdin)
        if len(out) != 2 * len(pairs):
            raise CaseFailure(f"the test program printed {len(out)} numbers, expected {2 * len(pairs)}")
        for i, (desc, d, scale, L, D, q, k, v, dO) in enumerate(pairs):
            with case(f"{desc} [{where}, seed {seed}]"):
                s = float(q.double() @ k.double())
                P = math.exp(scale * s - L)
                dP = float(dO.double() @ v.double())
                dS = P * (dP - D)
                gP, gdS = out[2 * i], out[2 * i + 1]
                if not abs(gP - P) <= 1e-4 * max(P, 1e-4):
                    raise CaseFailure(f"P = {gP:.7g}, expected exp(scale * q.k - L) = {P:.7g} (L = {L:.5g}, scale = {scale:.4g})")
                tol = 1e-4 * max(abs(dS), P * (abs(dP) + abs(D)), 1e-4)
                if not abs(gdS - dS) <= tol:
                    raise CaseFailure(f"dS = {gdS:.7g}, expected P (dP - D) = {dS:.7g} (P = {P:.5g}, dP = dO.v = {dP:.5g}, D = {D:.5g})")
