"""Exercises of lesson 03: graders, reference solutions and mutants.

03.tiled_forward          the FA2 loop order in PyTorch, exact in float64
03.causal_block_skipping  which K/V blocks a causal query block visits, and which need a mask
03.triton_inner_loop      the body of the Triton kernel's inner loop (online-softmax update),
                          run inside the course's kernel under the interpreter, with poisoned padding
"""

from __future__ import annotations

import contextlib
import inspect
import math

import torch

from .. import device, reference, tiled
from .core import CaseFailure, assert_close, assert_scalar, case, fresh_generator, tolerance
from .registry import exercise


# ================================================================================================
# 03.tiled_forward
# ================================================================================================
def _fa2_buggy(Q, K, V, *, is_causal=False, scale=None, B_r=64, B_c=64, bug=""):
    """forward_fa2 with one plausible bug switched on (the mutants below)."""
    B, H, N_q, d = Q.shape
    N_k = K.shape[2]
    if scale is None:
        scale = 1.0 if bug == "no_scale" else 1.0 / math.sqrt(d)
    O = torch.empty(B, H, N_q, V.shape[-1], dtype=Q.dtype)
    L = torch.empty(B, H, N_q, dtype=Q.dtype)
    T_c = N_k // B_c if bug == "drops_last_partial_block" else -(-N_k // B_c)
    for i in range(-(-N_q // B_r)):
        r0, r1 = i * B_r, min((i + 1) * B_r, N_q)
        rows = torch.arange(r0, r1)
        m = torch.full((B, H, r1 - r0, 1), float("-inf"), dtype=Q.dtype)
        ell = torch.zeros(B, H, r1 - r0, 1, dtype=Q.dtype)
        acc = torch.zeros(B, H, r1 - r0, V.shape[-1], dtype=Q.dtype)
        for j in range(T_c):
            c0, c1 = j * B_c, min((j + 1) * B_c, N_k)
            if bug == "off_by_one_tile_end":
                c1 = min((j + 1) * B_c, N_k) - 1
            if is_causal and c0 > r1 - 1:
                continue
            if is_causal and bug == "skips_diagonal_block" and c1 - 1 > r0:
                continue
            cols = torch.arange(c0, c1)
            S = scale * Q[:, :, r0:r1] @ K[:, :, c0:c1].transpose(-2, -1)
            if is_causal:
                allowed = cols[None, :] < rows[:, None] if bug == "strict_diagonal" else cols[None, :] <= rows[:, None]
                S = S.masked_fill(~allowed, float("-inf"))
            m_new = torch.maximum(m, S.amax(-1, keepdim=True))
            safe = torch.where(torch.isneginf(m_new), 0.0, m_new)
            P = torch.exp(S - safe)
            alpha = torch.exp(m - safe)
            ell = (ell if bug == "no_ell_rescale" else alpha * ell) + P.sum(-1, keepdim=True)
            acc = (acc if bug == "no_rescale" else alpha * acc) + P @ V[:, :, c0:c1]
            m = m_new
        O[:, :, r0:r1] = acc / torch.where(ell == 0, 1.0, ell)
        lse = torch.log(ell) if bug == "lse_without_max" else m + torch.log(ell)
        L[:, :, r0:r1] = lse.squeeze(-1)
    if bug == "lse_keeps_last_dim":
        L = L[..., None]
    return O, L


def _mutant(fn, bug):
    def mutant(*args, **kwargs):
        return fn(*args, **kwargs, bug=bug)

    mutant.__name__ = f"{fn.__name__}[{bug}]"
    return mutant


TILED_BUGS = ("no_rescale", "no_ell_rescale", "no_scale", "drops_last_partial_block", "off_by_one_tile_end",
              "strict_diagonal", "skips_diagonal_block", "lse_without_max", "lse_keeps_last_dim")


def _unpack(result, what="the function"):
    if not (isinstance(result, tuple) and len(result) == 2):
        raise CaseFailure(f"{what} should return a tuple (O, L), got {type(result).__name__}")
    return result


@exercise(
    "03.tiled_forward",
    "The tiled forward pass, FA2 loop order (Q blocks outer, one pass over K/V)",
    solution=tiled.forward_fa2,
    mutants={bug: _mutant(_fa2_buggy, bug) for bug in TILED_BUGS},
)
def grade_tiled_forward(candidate):
    g, seed = fresh_generator()
    # (N_q, N_k, causal, B_r, B_c, scale): N in {1, 17, 100, 257}, N_q != N_k, several block sizes
    cases = [
        (17, 17, False, 16, 16, None),
        (17, 17, True, 16, 16, None),
        (100, 100, True, 32, 16, None),
        (1, 1, True, 16, 16, None),
        (257, 257, False, 64, 32, None),
        (257, 257, True, 16, 64, None),
        (100, 37, True, 16, 8, 0.3),
        (37, 100, True, 8, 16, None),
        (100, 17, False, 7, 5, None),
    ]
    for N_q, N_k, causal, B_r, B_c, scale in cases:
        desc = f"N_q={N_q} N_k={N_k} causal={causal} B_r={B_r} B_c={B_c} scale={scale} (seed {seed})"
        with case(desc):
            Q = torch.randn(1, 2, N_q, 8, generator=g, dtype=torch.float64)  # (B, H, N_q, d)
            K = torch.randn(1, 2, N_k, 8, generator=g, dtype=torch.float64)  # (B, H, N_k, d)
            V = torch.randn(1, 2, N_k, 8, generator=g, dtype=torch.float64)  # (B, H, N_k, d)
            O, L = _unpack(candidate(Q, K, V, is_causal=causal, scale=scale, B_r=B_r, B_c=B_c))
            want_O, want_L = reference.attention(Q, K, V, is_causal=causal, scale=scale, return_lse=True)
            assert_close("O", O, want_O, tolerance(want_O, None, torch.float64))
            assert_close("L (the log-sum-exp, shape (B, H, N_q))", L, want_L, tolerance(want_L, None, torch.float64))
    with case(f"the answer does not depend on the block size (seed {seed})"):
        Q, K, V = (torch.randn(1, 1, 45, 8, generator=g, dtype=torch.float64) for _ in range(3))
        O1, L1 = _unpack(candidate(Q, K, V, is_causal=True, B_r=45, B_c=45))
        O2, L2 = _unpack(candidate(Q, K, V, is_causal=True, B_r=4, B_c=9))
        assert_close("O with B_r=4, B_c=9 vs one block", O2, O1.to(torch.float64), 1e-10)
        assert_close("L with B_r=4, B_c=9 vs one block", L2, L1.to(torch.float64), 1e-10)


# ================================================================================================
# 03.causal_block_skipping
# ================================================================================================
def _brute_force_block_range(i, B_r, B_c, N_q, N_k):
    """(n_full, n_visit) for causal query block i, by testing every (row, key) pair."""
    rows = torch.arange(i * B_r, min((i + 1) * B_r, N_q))
    T_c = -(-N_k // B_c)
    n_visit = n_full = 0
    for j in range(T_c):
        cols = torch.arange(j * B_c, (j + 1) * B_c)  # the whole block, keys past N_k included
        allowed = (cols[None, :] < N_k) & (cols[None, :] <= rows[:, None])
        if bool(allowed.any()):
            n_visit = j + 1  # visited blocks form a prefix, so the last one counts them
        if bool(allowed.all()) and n_full == j:
            n_full = j + 1
    return n_full, n_visit


def _range_buggy(i, B_r, B_c, N_q, N_k, bug=""):
    r_first = i * B_r
    r_last = (i + 1) * B_r - 1 if bug == "ignores_N_q" else min((i + 1) * B_r, N_q) - 1
    T_c = -(-N_k // B_c)
    n_visit = r_last // B_c + (0 if bug == "misses_diagonal_block" else 1)
    if bug != "ignores_N_k":
        n_visit = min(n_visit, T_c)
    n_full = (r_first // B_c) if bug == "full_without_plus_one" else (r_first + 1) // B_c
    if bug != "partial_block_counted_full":
        n_full = min(n_full, N_k // B_c)
    if bug == "block_index_diagonal":  # assumes B_r == B_c and N a multiple of the block
        return i, i + 1
    return min(n_full, n_visit), n_visit


RANGE_BUGS = ("ignores_N_q", "misses_diagonal_block", "ignores_N_k", "full_without_plus_one",
              "partial_block_counted_full", "block_index_diagonal")


@exercise(
    "03.causal_block_skipping",
    "Causal block skipping: which K/V blocks a query block visits, and which need the mask",
    solution=tiled.causal_block_range,
    mutants={bug: _mutant(_range_buggy, bug) for bug in RANGE_BUGS},
)
def grade_causal_block_skipping(candidate):
    g, seed = fresh_generator()
    fixed = [(16, 16, 64, 64), (16, 16, 17, 17), (64, 32, 100, 100), (32, 64, 100, 257), (1, 1, 5, 5),
             (3, 5, 23, 11), (128, 64, 1000, 1000), (7, 4, 30, 100)]
    drawn = [tuple(int(x) for x in (torch.randint(1, 40, (2,), generator=g).tolist()
                                    + torch.randint(1, 150, (2,), generator=g).tolist())) for _ in range(40)]
    for B_r, B_c, N_q, N_k in fixed + drawn:
        with case(f"B_r={B_r} B_c={B_c} N_q={N_q} N_k={N_k} (seed {seed})"):
            for i in range(-(-N_q // B_r)):
                got = candidate(i, B_r, B_c, N_q, N_k)
                if not (isinstance(got, tuple) and len(got) == 2):
                    raise CaseFailure(f"should return a tuple (n_full, n_visit), got {got!r}")
                want_full, want_visit = _brute_force_block_range(i, B_r, B_c, N_q, N_k)
                assert_scalar(f"n_visit for query block i={i}", got[1], want_visit)
                assert_scalar(f"n_full for query block i={i}", got[0], want_full)


# ================================================================================================
# 03.triton_inner_loop (needs triton; the interpreter on a CPU is enough)
# ================================================================================================
POISON = 1.0e4  # what the kernel reads for V rows past N_k while grading: a missing mask shows


@contextlib.contextmanager
def gpu_rules_checked():
    """Under the interpreter, record tl.dot calls on tiles under 16 and tl.arange of a
    non-power-of-two length: the interpreter runs them, a GPU compiler rejects them."""
    problems: list[str] = []
    if not device.TRITON_INTERPRET:  # the real compiler enforces the rules itself
        yield problems
        return
    import triton.language as tl

    orig_dot, orig_arange = tl.dot, tl.arange

    def dot(input, other, *args, **kwargs):
        try:
            (M, K1), (K2, N) = [[int(x) for x in t.shape] for t in (input, other)]
            if min(M, K1, N) < 16:
                problems.append(f"tl.dot on a ({M} x {K1}) @ ({K2} x {N}) product: a GPU needs every dimension >= 16")
        except Exception:
            pass
        return orig_dot(input, other, *args, **kwargs)

    def arange(start, end, *args, **kwargs):
        try:
            n = int(getattr(end, "value", end)) - int(getattr(start, "value", start))
            if n <= 0 or n & (n - 1):
                problems.append(f"tl.arange({start}, {end}): a GPU needs a power-of-two length")
        except Exception:
            pass
        return orig_arange(start, end, *args, **kwargs)

    for fn in (dot, arange):
        fn.__triton_builtin__ = True  # so that the interpreter patches it like the original
    tl.dot, tl.arange = dot, arange
    try:
        yield problems
    finally:
        tl.dot, tl.arange = orig_dot, orig_arange


def _is_triton_function(fn) -> bool:
    return type(fn).__name__ in ("JITFunction", "InterpretedFunction")


def _still_a_stub(fn) -> bool:
    """True when the @triton.jit function still raises NotImplementedError (the student notebook's
    stub). Triton cannot compile a raise, and the interpreter wraps it, so it is read from the source."""
    try:
        src = getattr(fn, "src", None) or inspect.getsource(fn.fn)
    except (OSError, TypeError, AttributeError):
        return False
    return "raise NotImplementedError" in src


if device.HAS_TRITON:
    import triton
    import triton.language as tl

    from .. import triton_forward

    @triton.jit
    def _step_no_rescale(acc, m_i, l_i, q, kT, v, offs_m, offs_n, N_k, qk_scale,
                         MASK_N: tl.constexpr, CAUSAL: tl.constexpr):
        s = tl.dot(q, kT)
        if MASK_N or CAUSAL:
            allowed = offs_n[None, :] < N_k
            if CAUSAL:
                allowed = allowed & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(allowed, s * qk_scale, float("-inf"))
        else:
            s = s * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc)  # bug: acc is not multiplied by alpha first
        return acc, m_new, l_i

    @triton.jit
    def _step_exp_not_exp2(acc, m_i, l_i, q, kT, v, offs_m, offs_n, N_k, qk_scale,
                           MASK_N: tl.constexpr, CAUSAL: tl.constexpr):
        s = tl.dot(q, kT)
        if MASK_N or CAUSAL:
            allowed = offs_n[None, :] < N_k
            if CAUSAL:
                allowed = allowed & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(allowed, s * qk_scale, float("-inf"))
        else:
            s = s * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])  # bug: qk_scale already holds log2(e), so this needs exp2
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        return acc, m_new, l_i

    @triton.jit
    def _step_no_bounds_mask(acc, m_i, l_i, q, kT, v, offs_m, offs_n, N_k, qk_scale,
                             MASK_N: tl.constexpr, CAUSAL: tl.constexpr):
        s = tl.dot(q, kT) * qk_scale
        if CAUSAL:  # bug: columns past N_k are never masked
            s = tl.where(offs_n[None, :] <= offs_m[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        return acc, m_new, l_i

    @triton.jit
    def _step_off_by_one_bound(acc, m_i, l_i, q, kT, v, offs_m, offs_n, N_k, qk_scale,
                               MASK_N: tl.constexpr, CAUSAL: tl.constexpr):
        s = tl.dot(q, kT) * qk_scale
        if MASK_N or CAUSAL:
            allowed = offs_n[None, :] <= N_k  # bug: lets column N_k (one past the end) in
            if CAUSAL:
                allowed = allowed & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        return acc, m_new, l_i

    @triton.jit
    def _step_strict_diagonal(acc, m_i, l_i, q, kT, v, offs_m, offs_n, N_k, qk_scale,
                              MASK_N: tl.constexpr, CAUSAL: tl.constexpr):
        s = tl.dot(q, kT) * qk_scale
        if MASK_N or CAUSAL:
            allowed = offs_n[None, :] < N_k
            if CAUSAL:
                allowed = allowed & (offs_n[None, :] < offs_m[:, None])  # bug: a query must see itself
            s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        return acc, m_new, l_i

    @triton.jit
    def _step_no_softmax_scale(acc, m_i, l_i, q, kT, v, offs_m, offs_n, N_k, qk_scale,
                               MASK_N: tl.constexpr, CAUSAL: tl.constexpr):
        s = tl.dot(q, kT) * 1.4426950408889634  # bug: log2(e) only, the 1/sqrt(d) is lost
        if MASK_N or CAUSAL:
            allowed = offs_n[None, :] < N_k
            if CAUSAL:
                allowed = allowed & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        return acc, m_new, l_i

    @triton.jit
    def _step_ell_not_rescaled(acc, m_i, l_i, q, kT, v, offs_m, offs_n, N_k, qk_scale,
                               MASK_N: tl.constexpr, CAUSAL: tl.constexpr):
        s = tl.dot(q, kT) * qk_scale
        if MASK_N or CAUSAL:
            allowed = offs_n[None, :] < N_k
            if CAUSAL:
                allowed = allowed & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i + tl.sum(p, 1)  # bug: the old denominator is relative to the old max
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        return acc, m_new, l_i

    @triton.jit
    def _step_rowsum_by_thin_dot(acc, m_i, l_i, q, kT, v, offs_m, offs_n, N_k, qk_scale,
                                 MASK_N: tl.constexpr, CAUSAL: tl.constexpr):
        # right numbers, but a (BLOCK_M x BLOCK_N) @ (BLOCK_N x 1) tl.dot that no GPU compiles
        s = tl.dot(q, kT) * qk_scale
        if MASK_N or CAUSAL:
            allowed = offs_n[None, :] < N_k
            if CAUSAL:
                allowed = allowed & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        ones = tl.full([offs_n.shape[0], 1], 1.0, tl.float32)
        l_i = l_i * alpha + tl.reshape(tl.dot(p, ones), [offs_m.shape[0]])
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        return acc, m_new, l_i

    TRITON_MUTANTS = {
        "no_rescale": _step_no_rescale,
        "exp_instead_of_exp2": _step_exp_not_exp2,
        "no_bounds_mask": _step_no_bounds_mask,
        "off_by_one_bound": _step_off_by_one_bound,
        "strict_diagonal": _step_strict_diagonal,
        "no_softmax_scale": _step_no_softmax_scale,
        "ell_not_rescaled": _step_ell_not_rescaled,
        "rowsum_by_thin_dot": _step_rowsum_by_thin_dot,
    }

    @exercise(
        "03.triton_inner_loop",
        "The Triton kernel's inner loop: fold one K/V block into (acc, m, ℓ) with exp2",
        solution=triton_forward.attention_block_step,
        mutants=TRITON_MUTANTS,
        needs="triton",
    )
    def grade_triton_inner_loop(candidate):
        if not _is_triton_function(candidate):
            raise CaseFailure(
                f"the inner loop must be a @triton.jit function (the kernel calls it), got {type(candidate).__name__}"
            )
        if _still_a_stub(candidate):
            raise NotImplementedError
        g, seed = fresh_generator()
        dev = device.default_device()
        # (N_q, N_k, d, causal, dtype, config, scale): N not a multiple of the block, N_q != N_k
        small, tall = dict(BLOCK_M=16, BLOCK_N=16), dict(BLOCK_M=32, BLOCK_N=16)
        # fp32 under the interpreter (exact dot products; its bf16 is wrong); on a GPU bf16 instead,
        # since a plain tl.dot on fp32 tiles is TF32 there and the exercise does not ask for IEEE
        wide = torch.float32 if device.TRITON_INTERPRET else torch.bfloat16
        cases = [
            (40, 40, 16, False, wide, small, None),
            (33, 33, 16, True, wide, tall, None),
            (23, 40, 32, True, torch.float16, small, None),
            (40, 19, 16, False, torch.float16, small, 0.5),
            (17, 17, 32, False, wide, tall, None),
        ]
        for N_q, N_k, d, causal, dtype, config, scale in cases:
            name = str(dtype).replace("torch.", "")
            desc = (f"N_q={N_q} N_k={N_k} d={d} causal={causal} {name} BLOCK_M={config['BLOCK_M']} "
                    f"BLOCK_N={config['BLOCK_N']} scale={scale} (seed {seed})")
            with case(desc):
                q, k, v = (torch.randn(1, 2, n, d, generator=g).to(dev, dtype) for n in (N_q, N_k, N_k))
                with gpu_rules_checked() as problems:
                    O, L = triton_forward.launch(q, k, v, is_causal=causal, scale=scale, config=config,
                                                 step=candidate, use_tma=False, pad_v=POISON)
                if problems:
                    raise CaseFailure(problems[0] + " (the interpreter accepts it; the GPU compiler does not)")
                want_O, want_L = reference.ground_truth(q, k, v, is_causal=causal, scale=scale, return_lse=True)
                naive_O, naive_L = reference.attention(q, k, v, is_causal=causal, scale=scale, return_lse=True)
                assert_close("O", O, want_O, tolerance(want_O, naive_O, dtype))
                assert_close("L", L, want_L, tolerance(want_L, naive_L, dtype))
