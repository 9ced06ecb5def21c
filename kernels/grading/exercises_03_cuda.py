"""Exercises of lesson 03 on the CUDA C++ kernels: graders, solutions and mutants.

03.cuda_online_softmax_step   one step of the CUDA forward kernel: the per-row online-softmax
                              update, written as a __host__ __device__ function in CUDA C++

The learner's answer is CUDA C++ source text. The grader compiles it with nvcc into a small
host program (nvcc compiles host code too, so no GPU is needed), feeds it fresh random tiles
on stdin, and compares the state it prints after every step with a float64 reference computed
in Python. With a GPU, the same function also runs inside a one-thread kernel. The solution is
the function forward_v1_scalar.cu itself calls: kernels/cuda/online_softmax_step.cuh.
"""

from __future__ import annotations

import hashlib
import math
import os
import pathlib
import re
import subprocess
import tempfile

import torch

from .. import device
from .core import CaseFailure, case, fresh_generator
from .registry import exercise

CUDA_DIR = pathlib.Path(__file__).resolve().parents[1] / "cuda"


# ------------------------------------------------------------------------------------------------
# Compiling and running a learner's function (shared with exercises_04_cuda)

def function_source(header: str, name: str) -> str:
    """The text of function `name` in kernels/cuda/<header>, from its signature to its closing brace."""
    text = (CUDA_DIR / header).read_text()
    start = text.index("__host__ __device__ inline void " + name)
    end = text.index("\n}\n", start) + 3
    return text[start:end]


def candidate_source(candidate) -> str:
    """A candidate is the source text, or a function returning it (the notebook's form)."""
    src = candidate() if callable(candidate) else candidate
    if not isinstance(src, str):
        raise CaseFailure(f"the answer should be CUDA C++ source text (a str), got {type(src).__name__}")
    return src


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("FLASH_COURSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flash-attention-course")
    return pathlib.Path(root) / "exercises"


def require_nvcc(exercise_id: str) -> str:
    if device.NVCC is None:
        raise RuntimeError(
            f"{exercise_id} compiles your CUDA source with nvcc, and nvcc was not found on this machine "
            "(install the CUDA toolkit, or set CUDA_HOME). The exercise cannot be graded here."
        )
    return device.NVCC


def compile_harness(exercise_id: str, program: str, on_gpu: bool = False) -> pathlib.Path:
    """Compile a test program with nvcc (cached by its text); return the executable's path.
    A compile error is the candidate's fault: it becomes a CaseFailure with nvcc's messages."""
    nvcc = require_nvcc(exercise_id)
    flags = ["-std=c++17", "-O1"] + (["-arch=native"] if on_gpu else [])
    key = hashlib.sha256((program + " ".join(flags)).encode()).hexdigest()[:24]
    exe = _cache_dir() / f"{exercise_id.replace('.', '_')}-{key}"
    if exe.exists():
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "harness.cu"
        src.write_text(program)
        out = pathlib.Path(tmp) / "harness"
        res = subprocess.run([nvcc, *flags, str(src), "-o", str(out)], capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            msg = re.sub(r"\S*/harness\.cu", "your source", res.stderr.strip())
            raise CaseFailure(f"nvcc could not compile your function:\n{msg[-3000:]}")
        os.replace(out, exe)
    return exe


def run_harness(exe: pathlib.Path, stdin: str) -> list[float]:
    res = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise CaseFailure(f"the test program crashed (exit {res.returncode}): {res.stderr.strip()[-2000:]}")
    try:
        return [float(x) for x in res.stdout.split()]
    except ValueError:
        raise CaseFailure(f"the test program printed something that is not a number: {res.stdout[:500]!r}") from None


def fmt(values) -> str:
    """Floats as text nvcc's scanf reads back exactly (-inf included)."""
    out = []
    for x in values:
        x = float(x)
        out.append("-inf" if x == -math.inf else ("inf" if x == math.inf else repr(x)))
    return " ".join(out)


# ------------------------------------------------------------------------------------------------
# 03.cuda_online_softmax_step

STEP_SIGNATURE = (
    "__host__ __device__ inline void online_softmax_step(const float* s, int n, float scale, const float* V, "
    "int ldv, int d, float& m, float& ell, float* o)"
)

# The host program: reads cases from stdin, runs each step, prints m, ℓ and o after each step.
# Input: cases; per case: d, steps, scale; per step: n, s[n], V[n*d].
STEP_HARNESS = r"""
#include <cmath>
#include <cstdio>
#include <vector>

/*CANDIDATE*/

#ifdef ON_GPU
__global__ void run_steps(const int* ns, const float* s, const float* V, int steps, int d, float scale, float* state) {
    // state: (steps, 2 + d): m, ell, o after each step. One thread: the point is to run the
    // function as device code, as the kernel does.
    float m = -INFINITY, ell = 0.f;
    float* o = state + steps * (2 + d);  // scratch row after the outputs
    for (int c = 0; c < d; ++c) o[c] = 0.f;
    int off_s = 0, off_v = 0;
    for (int t = 0; t < steps; ++t) {
        online_softmax_step(s + off_s, ns[t], scale, V + off_v, d, d, m, ell, o);
        float* out = state + t * (2 + d);
        out[0] = m; out[1] = ell;
        for (int c = 0; c < d; ++c) out[2 + c] = o[c];
        off_s += ns[t]; off_v += ns[t] * d;
    }
}
#endif

int main() {
    int cases;
    if (scanf("%d", &cases) != 1) return 2;
    for (int cs = 0; cs < cases; ++cs) {
        int d, steps; float scale;
        if (scanf("%d %d %f", &d, &steps, &scale) != 3) return 2;
        std::vector<int> ns(steps);
        std::vector<float> s, V;
        for (int t = 0; t < steps; ++t) {
            if (scanf("%d", &ns[t]) != 1) return 2;
            for (int j = 0; j < ns[t]; ++j) { float x; if (scanf("%f", &x) != 1) return 2; s.push_back(x); }
            for (int j = 0; j < ns[t] * d; ++j) { float x; if (scanf("%f", &x) != 1) return 2; V.push_back(x); }
        }
        std::vector<float> state(steps * (2 + d));
#ifdef ON_GPU
        int *d_ns; float *d_s, *d_V, *d_state;
        cudaMalloc(&d_ns, steps * sizeof(int));
        cudaMalloc(&d_s, (s.size() + 1) * sizeof(float));
        cudaMalloc(&d_V, (V.size() + 1) * sizeof(float));
        cudaMalloc(&d_state, (steps + 1) * (2 + d) * sizeof(float));
        cudaMemcpy(d_ns, ns.data(), steps * sizeof(int), cudaMemcpyHostToDevice);
        cudaMemcpy(d_s, s.data(), s.size() * sizeof(float), cudaMemcpyHostToDevice);
        cudaMemcpy(d_V, V.data(), V.size() * sizeof(float), cudaMemcpyHostToDevice);
        run_steps<<<1, 1>>>(d_ns, d_s, d_V, steps, d, scale, d_state);
        if (cudaDeviceSynchronize() != cudaSuccess) { fprintf(stderr, "kernel failed\n"); return 3; }
        cudaMemcpy(state.data(), d_state, state.size() * sizeof(float), cudaMemcpyDeviceToHost);
        cudaFree(d_ns); cudaFree(d_s); cudaFree(d_V); cudaFree(d_state);
#else
        float m = -INFINITY, ell = 0.f;
        std::vector<float> o(d, 0.f);
        int off_s = 0, off_v = 0;
        for (int t = 0; t < steps; ++t) {
            online_softmax_step(s.data() + off_s, ns[t], scale, V.data() + off_v, d, d, m, ell, o.data());
            state[t * (2 + d)] = m; state[t * (2 + d) + 1] = ell;
            for (int c = 0; c < d; ++c) state[t * (2 + d) + 2 + c] = o[c];
            off_s += ns[t]; off_v += ns[t] * d;
        }
#endif
        for (float x : state) printf("%.9g\n", x);
    }
    return 0;
}
"""


def step_solution() -> str:
    """The course's function (the one forward_v1_scalar.cu runs), as source text."""
    return function_source("online_softmax_step.cuh", "online_softmax_step")


def source_mutant(solution, header: str, function: str, name: str, old: str, new: str):
    """A mutant whose source is the solution's with `old` replaced by `new`."""

    def mutant() -> str:
        src = solution()
        if old not in src:  # keep mutants in step with the solution: a stale one must not pass silently
            raise RuntimeError(f"mutant {name}: {old!r} no longer occurs in {header}")
        return src.replace(old, new)

    mutant.__name__ = f"{function}[{name}]"
    return mutant


def _step_mutant(name: str, old: str, new: str):
    return source_mutant(step_solution, "online_softmax_step.cuh", "online_softmax_step", name, old, new)


STEP_MUTANTS = {
    "no_ell_rescale": _step_mutant("no_ell_rescale", "ell *= alpha;", ""),
    "no_o_rescale": _step_mutant("no_o_rescale", "for (int c = 0; c < d; ++c) o[c] *= alpha;", ""),
    # exp taken against the old max, and the max updated afterwards
    "max_after_exp": _step_mutant("max_after_exp", "const float base = m_new == -INFINITY ? 0.f : m_new;",
                                  "const float base = m == -INFINITY ? 0.f : m;"),
    "max_of_unscaled_scores": _step_mutant("max_of_unscaled_scores", "m_tile = fmaxf(m_tile, scale * s[j]);",
                                           "m_tile = fmaxf(m_tile, s[j]);"),
    "scale_missing_in_exp": _step_mutant("scale_missing_in_exp", "expf(scale * s[j] - base)", "expf(s[j] - base)"),
    "no_minus_inf_guard": _step_mutant("no_minus_inf_guard", "const float base = m_new == -INFINITY ? 0.f : m_new;",
                                       "const float base = m_new;"),
    "alpha_inverted": _step_mutant("alpha_inverted", "const float alpha = expf(m - base);",
                                   "const float alpha = m == -INFINITY ? 0.f : expf(base - m);"),
    "max_not_kept": _step_mutant("max_not_kept", "    m = m_new;\n", "    m = m_tile;\n"),
    # seed 003's picture: O divided by the tile's sum at every step
    "normalises_every_step": _step_mutant(
        "normalises_every_step", "        for (int c = 0; c < d; ++c) o[c] += p * V[j * ldv + c];\n    }\n",
        "        for (int c = 0; c < d; ++c) o[c] += p * V[j * ldv + c];\n    }\n"
        "    for (int c = 0; c < d; ++c) o[c] /= ell;\n"),
}


def _reference_states(tiles, scale):
    """float64 state (m, ℓ, o) after each tile, from the float32 inputs."""
    m, ell, o = -math.inf, 0.0, None
    states = []
    seen_s, seen_v = [], []
    for s, V in tiles:
        seen_s.append(s.double())
        seen_v.append(V.double())
        S = torch.cat(seen_s) * scale
        Vall = torch.cat(seen_v)
        m = float(S.max()) if S.numel() else -math.inf
        if m == -math.inf:
            ell, o = 0.0, torch.zeros(V.shape[1], dtype=torch.float64)
        else:
            P = torch.exp(S - m)
            ell, o = float(P.sum()), P @ Vall
        states.append((m, ell, o))
    return states


def _step_cases(g):
    """(description, d, scale, tiles): each tile (s (n,), V (n, d)) float32, drawn fresh."""
    def tile(n, d, shift=0.0, spread=1.0, masked=()):
        s = torch.randn(n, generator=g) * spread + shift
        for j in masked:
            s[j] = -math.inf
        return s.float(), torch.randn(n, d, generator=g).float()

    cases = []
    d = 8
    cases.append(("one tile from the empty state", d, 0.35, [tile(16, d)]))
    # the max grows: tile 2 is shifted up, so the old ℓ and o must shrink by exp(m_old - m_new)
    cases.append(("three tiles, the max grows", d, 0.5, [tile(16, d), tile(16, d, shift=6.0), tile(7, d, shift=11.0)]))
    cases.append(("the max shrinks: later tiles below it", d, 0.5, [tile(12, d, shift=8.0), tile(12, d), tile(5, d, shift=-3)]))
    cases.append(("a fully masked first tile (causal rows, N past the end)", d, 0.3,
                  [tile(8, d, masked=range(8)), tile(8, d, masked=(0, 3)), tile(8, d, shift=4.0)]))
    cases.append(("large logits: exp overflows in float32 without the max", 16, 1.0,
                  [tile(10, 16, shift=120.0, spread=10.0), tile(10, 16, shift=150.0, spread=10.0)]))
    cases.append(("scale far from 1", 4, 3.0, [tile(9, 4), tile(9, 4, shift=2.0)]))
    cases.append(("a tile of one key, d = 1", 1, 0.7, [tile(1, 1), tile(1, 1, shift=3.0), tile(3, 1)]))
    return cases


def _check_states(desc, got, states, d):
    per = 2 + d
    for t, (m, ell, o) in enumerate(states):
        gm, gell = got[t * per], got[t * per + 1]
        go = torch.tensor(got[t * per + 2:(t + 1) * per], dtype=torch.float64)
        where = f"after step {t + 1}"
        if any(math.isnan(x) for x in got[t * per:(t + 1) * per]):
            raise CaseFailure(f"{where}: NaN in the state (m={gm}, ℓ={gell}); a row of masked keys must leave m = -inf, ℓ = 0, o = 0")
        if m == -math.inf:
            if gm != -math.inf or gell != 0.0 or bool((go != 0).any()):
                raise CaseFailure(f"{where}: every key so far is masked, expected m = -inf, ℓ = 0, o = 0; got m={gm}, ℓ={gell}, max|o|={float(go.abs().max()):.3g}")
            continue
        if not abs(gm - m) <= 1e-5 * max(1.0, abs(m)):
            raise CaseFailure(f"{where}: m = {gm:.7g}, expected the running max of scale*s = {m:.7g}")
        if not abs(gell - ell) <= 1e-4 * max(1.0, ell):
            raise CaseFailure(f"{where}: ℓ = {gell:.7g}, expected {ell:.7g} (= Σ exp(scale*s_j - m) over every key so far)")
        tol = 1e-4 * max(1.0, float(o.abs().max()), ell)
        err = float((go - o).abs().max())
        if not err <= tol:
            j = int((go - o).abs().argmax())
            raise CaseFailure(f"{where}: o[{j}] = {float(go[j]):.7g}, expected {float(o[j]):.7g} (unnormalised Σ exp(scale*s_j - m) v_j); tolerance {tol:.2g}")


@exercise(
    "03.cuda_online_softmax_step",
    "CUDA: one online-softmax step of a query row (compiled with nvcc, run on the CPU)",
    solution=step_solution,
    mutants=STEP_MUTANTS,
    needs="nvcc",
)
def grade_online_softmax_step(candidate):
    src = candidate_source(candidate)
    if "online_softmax_step" not in src:
        raise CaseFailure(f"the source must define {STEP_SIGNATURE}")
    g, seed = fresh_generator()
    cases = _step_cases(g)
    stdin = [str(len(cases))]
    for _, d, scale, tiles in cases:
        stdin.append(f"{d} {len(tiles)} {scale!r}")
        for s, V in tiles:
            stdin.append(f"{len(s)} {fmt(s.tolist())} {fmt(V.reshape(-1).tolist())}")
    stdin = "\n".join(stdin) + "\n"
    runs = [("CPU (host code)", False)] + ([("GPU (device code)", True)] if device.HAS_CUDA else [])
    for where, on_gpu in runs:
        with case(f"compile with nvcc for the {where}"):
            program = STEP_HARNESS.replace("/*CANDIDATE*/", ("#define ON_GPU\n" if on_gpu else "") + src)
            exe = compile_harness("03.cuda_online_softmax_step", program, on_gpu)
        out = run_harness(exe, stdin)
        pos = 0
        for desc, d, scale, tiles in cases:
            n_out = len(tiles) * (2 + d)
            with case(f"{desc} [{where}, d={d}, scale={scale}, seed {seed}]"):
                if len(out) < pos + n_out:
                    raise CaseFailure("the test program printed fewer numbers than expected")
                _check_states(desc, out[pos:pos + n_out], _reference_states(tiles, scale), d)
            pos += n_out
