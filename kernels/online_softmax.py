"""Online softmax: the running state (m, ℓ) that lets softmax be computed block by block.

softmax(x)_j = exp(x_j) / Σ_k exp(x_k) overflows for large x (exp(89) is inf in float32,
exp(12) in float16). Subtracting the row max m first fixes that, but the max needs its own pass
over x ("safe softmax", three passes: max, sum, normalize). Online softmax keeps, for the part
of the row seen so far,

    m = max_k x_k            the running max
    ℓ = Σ_k exp(x_k - m)     the running sum, relative to that max

and when a new block raises the max from m to m', it rescales ℓ by exp(m - m'). Max and sum
then come out of one sweep (two passes in all), and when the softmax only feeds a weighted sum,
as in attention o = Σ_j softmax(s)_j v_j, the output is accumulated and rescaled the same way
and the whole thing takes one pass. FlashAttention is this idea applied to tiles of S = QKᵀ.

Two states merge exactly (`merge_states`): that is what lets blocks be processed in any order,
or in parallel and combined later (split-KV, flash-decoding). The pair (m, ℓ) carries the same
information as the log-sum-exp L = m + log ℓ, the one number per row that the backward pass keeps.

Conventions, here and in the rest of the course:
* logits run along the last dimension; every leading dimension is a separate row;
* a row whose logits are all -inf (every key masked) has m = -inf, ℓ = 0, softmax 0, L = -inf,
  and never a NaN: the max that gets subtracted is replaced by 0 on such rows, so the code
  computes exp(-inf - 0) = 0 where exp(-inf - (-inf)) would be NaN;
* +inf or NaN logits are not supported (softmax is undefined there);
* with `use_exp2`, log2(e) is folded into the scale so scores come out in base-2 units and
  exp2 replaces exp, as GPU kernels do (exp2 is the hardware instruction; exp costs an extra
  multiply per score). Then m is in base-2 units; ℓ is unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, NamedTuple

import torch

from .validation import check_scale

#: log2(e): exp(x) == exp2(x * LOG2E). Kernels fold it into the softmax scale.
LOG2E = math.log2(math.e)
#: ln(2): a base-2 log-sum-exp times LN2 is the natural one.
LN2 = math.log(2.0)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# Input checks (errors name the argument and what was expected)


def _check_float_tensor(name: str, t, ndim: int | None = None, min_ndim: int = 0) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")


def _check_logits(name: str, x) -> None:
    _check_float_tensor(name, x, min_ndim=1)
    if x.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one logit along the last dimension, got shape {tuple(x.shape)}")


def _check_block_size(block_size) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be a positive int, got {type(block_size).__name__}")
    if block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size}")


def _acc_dtype(dtype: torch.dtype, acc_dtype: torch.dtype | None) -> torch.dtype:
    """The accumulator's dtype: float32 for half-precision inputs (as kernels do), else the input's."""
    if acc_dtype is None:
        return torch.promote_types(dtype, torch.float32)
    if acc_dtype not in FLOAT_DTYPES:
        raise TypeError(f"acc_dtype must be a floating-point dtype or None, got {acc_dtype}")
    return acc_dtype


def _finite_or_zero(m: torch.Tensor) -> torch.Tensor:
    """The max to subtract: m, or 0 on rows that have seen no finite logit (m = -inf).
    exp(x - 0) with x = -inf is 0; exp(-inf - (-inf)) would be NaN."""
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


# --------------------------------------------------------------------------------------------
# The running state (m, ℓ) and its merge


class SoftmaxState(NamedTuple):
    """The running state of an online softmax over the logits seen so far, one entry per row.

    m:   (...,) the running max (-inf when every logit so far was -inf, or none was seen)
    ell: (...,) ℓ = Σ exp(x - m), the sum relative to that max (0 when m = -inf)

    Together they stand for the number exp(m)·ℓ = Σ exp(x) without ever forming it (it would
    overflow). A plain tuple (m, ell) works wherever a SoftmaxState is expected.
    """

    m: torch.Tensor
    ell: torch.Tensor

    @staticmethod
    def empty(shape=(), dtype=torch.float64, device=None) -> "SoftmaxState":
        """The state before any logit: m = -inf, ℓ = 0 (the identity of merge_states)."""
        return SoftmaxState(
            torch.full(shape, float("-inf"), dtype=dtype, device=device),  # (...,)
            torch.zeros(shape, dtype=dtype, device=device),  # (...,)
        )

    @staticmethod
    def of(x: torch.Tensor) -> "SoftmaxState":
        """The state of one block of logits x (..., n), directly: its max and Σ exp(x - max)."""
        _check_logits("x", x)
        m = x.amax(dim=-1)  # (...,)
        ell = torch.exp(x - _finite_or_zero(m)[..., None]).sum(dim=-1)  # (...,)
        return SoftmaxState(m, ell)

    @staticmethod
    def from_lse(L: torch.Tensor) -> "SoftmaxState":
        """The state with log-sum-exp L: m = L, ℓ = 1 (m = -inf, ℓ = 0 where L = -inf).
        (m, ℓ) is not unique: any m with ℓ = exp(L - m) stands for the same sum."""
        _check_float_tensor("L", L)
        return SoftmaxState(L.clone(), torch.where(torch.isneginf(L), torch.zeros_like(L), torch.ones_like(L)))

    def lse(self) -> torch.Tensor:
        """L = m + log ℓ = log Σ exp(x): the state as one number per row (-inf where ℓ = 0)."""
        m, ell = self
        return torch.where(ell > 0, m + torch.log(ell), torch.full_like(m, float("-inf")))

    def update(self, x: torch.Tensor) -> "SoftmaxState":
        """The online step: fold a block of logits x (..., n) into the state.

        m' = max(m, max_j x_j);  ℓ' = ℓ·exp(m - m') + Σ_j exp(x_j - m')
        """
        _check_logits("x", x)
        m, ell = self
        m_new = torch.maximum(m, x.amax(dim=-1))  # (...,)
        ms = _finite_or_zero(m_new)
        ell_new = ell * torch.exp(m - ms) + torch.exp(x - ms[..., None]).sum(dim=-1)
        return SoftmaxState(m_new, ell_new)


def _as_state(name: str, s) -> SoftmaxState:
    if isinstance(s, SoftmaxState):
        m, ell = s
    elif isinstance(s, torch.Tensor):  # a tensor would unpack along its first dim: never meant
        raise TypeError(f"{name} must be a SoftmaxState or a pair (m, ell) of tensors, got one tensor of shape {tuple(s.shape)}")
    else:
        try:
            m, ell = s
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a SoftmaxState or a pair (m, ell) of tensors, got {type(s).__name__}") from None
    _check_float_tensor(f"{name}.m", m)
    _check_float_tensor(f"{name}.ell", ell)
    if m.shape != ell.shape:
        raise ValueError(f"{name}.m and {name}.ell must have one shape, got {tuple(m.shape)} and {tuple(ell.shape)}")
    return SoftmaxState(m, ell)


def merge_states(a, b) -> SoftmaxState:
    """The state of the union of two parts of a row, from the parts' states.

        m = max(m_a, m_b);  ℓ = ℓ_a·exp(m_a - m) + ℓ_b·exp(m_b - m)

    It is (max, +) on the numbers exp(m)·ℓ each state stands for, so it is associative and
    commutative (exactly in real arithmetic; in floating point, up to rounding), with the empty
    state as identity: blocks can be folded in any order or tree. a, b: SoftmaxState or (m, ell)
    pairs with broadcastable shapes.
    """
    a, b = _as_state("a", a), _as_state("b", b)
    try:
        torch.broadcast_shapes(a.m.shape, b.m.shape)
    except RuntimeError:
        raise ValueError(f"states a and b must have broadcastable shapes, got {tuple(a.m.shape)} and {tuple(b.m.shape)}") from None
    m = torch.maximum(a.m, b.m)
    ms = _finite_or_zero(m)
    ell = a.ell * torch.exp(a.m - ms) + b.ell * torch.exp(b.m - ms)
    return SoftmaxState(m, ell)


def merge_outputs(O_a: torch.Tensor, a, O_b: torch.Tensor, b) -> tuple[torch.Tensor, SoftmaxState]:
    """Merge two normalized partial outputs O_a = softmax over part a @ V_a (..., d_v), and the
    same for b, with their states: the attention output over both parts and the merged state.

        O = (ℓ_a·exp(m_a - m)·O_a + ℓ_b·exp(m_b - m)·O_b) / ℓ

    Each part is weighted by its share of the total sum. Parts with ℓ = 0 (all masked) weigh
    nothing; if both are empty, O = 0.
    """
    a, b = _as_state("a", a), _as_state("b", b)
    _check_float_tensor("O_a", O_a, min_ndim=1)
    _check_float_tensor("O_b", O_b, min_ndim=1)
    s = merge_states(a, b)
    ms = _finite_or_zero(s.m)
    w_a = a.ell * torch.exp(a.m - ms)  # (...,) part a's share of ℓ
    w_b = b.ell * torch.exp(b.m - ms)
    ell = torch.where(s.ell > 0, s.ell, torch.ones_like(s.ell))
    O = (w_a[..., None] * O_a + w_b[..., None] * O_b) / ell[..., None]  # (..., d_v)
    return O, s


def merge_lse(L_a: torch.Tensor, L_b: torch.Tensor) -> torch.Tensor:
    """The merge in log-sum-exp form: L = log(exp(L_a) + exp(L_b)), safely (-inf is the identity)."""
    _check_float_tensor("L_a", L_a)
    _check_float_tensor("L_b", L_b)
    m = torch.maximum(L_a, L_b)
    ms = _finite_or_zero(m)
    return m + torch.log(torch.exp(L_a - ms) + torch.exp(L_b - ms))


def merge_outputs_lse(O_a: torch.Tensor, L_a: torch.Tensor, O_b: torch.Tensor, L_b: torch.Tensor):
    """merge_outputs with each part's state given as its log-sum-exp (as split-KV kernels keep it):
    O = exp(L_a - L)·O_a + exp(L_b - L)·O_b with L = merge_lse(L_a, L_b). Returns (O, L)."""
    L = merge_lse(L_a, L_b)
    Ls = _finite_or_zero(L)
    O = torch.exp(L_a - Ls)[..., None] * O_a + torch.exp(L_b - Ls)[..., None] * O_b  # (..., d_v)
    return O, L


# --------------------------------------------------------------------------------------------
# Softmax, three ways


def naive_softmax(x: torch.Tensor) -> torch.Tensor:
    """exp(x) / Σ exp(x) as the formula reads: overflows to inf/inf = NaN for large logits."""
    _check_logits("x", x)
    e = torch.exp(x)
    return e / e.sum(dim=-1, keepdim=True)


def safe_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax along the last dim in three passes over x: the max, the sum, the normalized output.
    Rows of -inf give 0."""
    _check_logits("x", x)
    m = _finite_or_zero(x.amax(dim=-1, keepdim=True))  # pass 1: (..., 1)
    ell = torch.exp(x - m).sum(dim=-1, keepdim=True)  # pass 2: (..., 1)
    ell = torch.where(ell > 0, ell, torch.ones_like(ell))
    return torch.exp(x - m) / ell  # pass 3: (..., N)


def online_normalizer(x: torch.Tensor, block_size: int = 1, acc_dtype: torch.dtype | None = None) -> SoftmaxState:
    """The state (m, ℓ) of the whole row in one pass over x (..., N), block by block
    (block_size = 1 is a stream of single logits)."""
    _check_logits("x", x)
    _check_block_size(block_size)
    acc = _acc_dtype(x.dtype, acc_dtype)
    state = SoftmaxState.empty(x.shape[:-1], acc, x.device)
    N = x.shape[-1]
    for j0 in range(0, N, block_size):
        state = state.update(x[..., j0 : j0 + block_size].to(acc))
    return state


def online_softmax_two_pass(x: torch.Tensor, block_size: int = 1, acc_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Softmax in two passes: one for the state (m, ℓ) (online_normalizer), one to write exp(x - m)/ℓ."""
    m, ell = online_normalizer(x, block_size, acc_dtype)  # pass 1
    m = _finite_or_zero(m)[..., None]
    ell = torch.where(ell > 0, ell, torch.ones_like(ell))[..., None]
    return (torch.exp(x.to(m.dtype) - m) / ell).to(x.dtype)  # pass 2


def online_softmax_stream(blocks: Iterable[torch.Tensor], acc_dtype: torch.dtype | None = None, return_state: bool = False):
    """Softmax of a row that arrives as a stream of blocks x_1, x_2, ... (each (..., n_j)),
    reading each block once.

    The output so far, y = exp(x - m) over the blocks seen, is an accumulator: when a block raises
    the max from m to m', y and ℓ are both multiplied by exp(m - m'), the new block's exp(x_j - m')
    is appended, and y is divided by ℓ once, at the end. This is the same rescaling attention
    applies to its output O; there the output is d numbers per row instead of N, which is why one
    pass pays off there. Returns y (..., N) in the first block's dtype, and the state if asked.
    """
    y = None  # (..., n so far) unnormalized output
    state = None
    out_dtype = None
    for k, x in enumerate(blocks):
        _check_logits(f"block {k}", x)
        if state is None:
            out_dtype = x.dtype
            acc = _acc_dtype(x.dtype, acc_dtype)
            state = SoftmaxState.empty(x.shape[:-1], acc, x.device)
        elif x.shape[:-1] != y.shape[:-1]:
            raise ValueError(f"block {k} has shape {tuple(x.shape)}: every block needs the leading shape {tuple(y.shape[:-1])}")
        x = x.to(acc)
        m_new = torch.maximum(state.m, x.amax(dim=-1))  # (...,)
        ms = _finite_or_zero(m_new)
        alpha = torch.exp(state.m - ms)  # (...,) rescale of everything seen so far
        p = torch.exp(x - ms[..., None])  # (..., n_j)
        state = SoftmaxState(m_new, alpha * state.ell + p.sum(dim=-1))
        y = p if y is None else torch.cat([y * alpha[..., None], p], dim=-1)
    if y is None:
        raise ValueError("blocks must hold at least one block of logits")
    ell = torch.where(state.ell > 0, state.ell, torch.ones_like(state.ell))
    y = (y / ell[..., None]).to(out_dtype)
    return (y, state) if return_state else y


def online_softmax(x: torch.Tensor, block_size: int = 1, acc_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One-pass online softmax of x (..., N), read in blocks of block_size (see online_softmax_stream)."""
    _check_logits("x", x)
    _check_block_size(block_size)
    return online_softmax_stream(x.split(block_size, dim=-1), acc_dtype)


# --------------------------------------------------------------------------------------------
# Online-softmax attention


def _check_row_inputs(q, K, V, mask, scale, block_size) -> None:
    _check_float_tensor("q", q, ndim=1)
    _check_float_tensor("K", K, ndim=2)
    _check_float_tensor("V", V, ndim=2)
    if K.shape[1] != q.shape[0]:
        raise ValueError(f"K must be (N, d) with the query's d={q.shape[0]}, got K shape {tuple(K.shape)}")
    if V.shape[0] != K.shape[0]:
        raise ValueError(f"V must have as many rows as K (N={K.shape[0]}), got V shape {tuple(V.shape)}")
    if K.shape[0] == 0:
        raise ValueError("K must hold at least one key (N >= 1)")
    if q.shape[0] == 0:
        raise ValueError("q must have a positive head dim d")
    if not (q.dtype == K.dtype == V.dtype):
        raise TypeError(f"q, K and V must share one dtype, got {q.dtype}, {K.dtype}, {V.dtype}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = attend) or None, got {getattr(mask, 'dtype', type(mask).__name__)}")
        if tuple(mask.shape) != (K.shape[0],):
            raise ValueError(f"mask must have shape (N,) = ({K.shape[0]},), got {tuple(mask.shape)}")
    check_scale(scale)
    _check_block_size(block_size)


def online_attention_row(
    q: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    block_size: int = 16,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    use_exp2: bool = False,
    acc_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention for one query row, o = softmax(scale·K q) V, in one pass over K and V in blocks
    of block_size keys (B_c), never holding more than one block of scores.

    q (d,), K (N, d), V (N, d_v); mask (N,) bool, True = attend. Returns (o (d_v,), L), L the
    log-sum-exp of the row's scores (natural log; -inf and o = 0 when every key is masked).
    o is in q's dtype; the state, the accumulator and L are in acc_dtype (default float32 for
    half inputs). With use_exp2, scores are scaled by scale·log2(e) and exponentiated with exp2.
    """
    _check_row_inputs(q, K, V, mask, scale, block_size)
    N, d = K.shape
    acc = _acc_dtype(q.dtype, acc_dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    c = scale * LOG2E if use_exp2 else scale  # folded: exp(scale·s) = exp2(scale·log2(e)·s)
    exp = torch.exp2 if use_exp2 else torch.exp
    q = q.to(acc)
    m = torch.tensor(float("-inf"), dtype=acc, device=q.device)  # running max (base 2 with use_exp2)
    ell = torch.tensor(0.0, dtype=acc, device=q.device)  # running Σ p
    o = torch.zeros(V.shape[1], dtype=acc, device=q.device)  # (d_v,) unnormalized accumulator
    for j0 in range(0, N, block_size):
        j1 = min(j0 + block_size, N)
        s = (K[j0:j1].to(acc) @ q) * c  # (B_c,) scores of this block
        if mask is not None:
            s = s.masked_fill(~mask[j0:j1], float("-inf"))
        m_new = torch.maximum(m, s.amax())
        ms = _finite_or_zero(m_new)
        alpha = exp(m - ms)  # rescale of ℓ and o
        p = exp(s - ms)  # (B_c,)
        ell = alpha * ell + p.sum()
        o = alpha * o + p @ V[j0:j1].to(acc)  # (d_v,)
        m = m_new
    if ell > 0:
        o = o / ell
        L = (m + torch.log2(ell)) * LN2 if use_exp2 else m + torch.log(ell)
    else:
        L = torch.tensor(float("-inf"), dtype=acc, device=q.device)
    return o.to(V.dtype), L


# --------------------------------------------------------------------------------------------
# Tiles of queries against tiles of keys: every intermediate, for the worked example


def worked_example(dtype: torch.dtype = torch.float64):
    """Q, K, V (4, 2) of the worked example (seed 003): N = 4, d = 2, tiles of 2 rows."""
    Q = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], dtype=dtype)  # (N, d)
    K = torch.tensor([[0.5, 1.5], [2.5, 3.5], [4.5, 5.5], [6.5, 7.5]], dtype=dtype)  # (N, d)
    V = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]], dtype=dtype)  # (N, d_v)
    return Q, K, V


@dataclasses.dataclass(frozen=True)
class TileStep:
    """One iteration of the online softmax for query tile i against key/value tile j.

    Row vectors have one entry per query row of the tile (B_r); O and O_acc are (B_r, d_v).
    """

    i: int  # query tile (0-based)
    j: int  # key/value tile (0-based)
    rows: range  # query rows of tile i
    cols: range  # key rows of tile j
    S: torch.Tensor  # (B_r, B_c) scaled scores of the tile, scale·Q_i K_jᵀ
    m_prev: torch.Tensor  # (B_r,) running max before this tile
    m_tile: torch.Tensor  # (B_r,) the tile's own row max
    m: torch.Tensor  # (B_r,) running max after: max(m_prev, m_tile)
    rescale: torch.Tensor  # (B_r,) exp(m_prev - m): what the old ℓ and O_acc are multiplied by
    P: torch.Tensor  # (B_r, B_c) P̃ = exp(S - m), relative to the new running max
    ell_prev: torch.Tensor  # (B_r,)
    ell: torch.Tensor  # (B_r,) rescale·ell_prev + rowsum(P)
    O_acc: torch.Tensor  # (B_r, d_v) unnormalized accumulator rescale·O_acc_prev + P V_j (FA2 keeps this)
    O: torch.Tensor  # (B_r, d_v) normalized partial output O_acc / ℓ (FA1 writes this; the seed prints it)


def attention_tile_step(Q_i, K_j, V_j, m_prev, ell_prev, O_prev, scale: float | None = None):
    """One online-softmax iteration for a tile of queries Q_i (B_r, d) against K_j, V_j (B_c, d),
    (B_c, d_v), from the state after the previous tiles: m_prev, ell_prev (B_r,) and the
    normalized partial output O_prev (B_r, d_v). From the empty state (m = -inf, ℓ = 0, O = 0)
    it is the first iteration.

    Returns (S, m, rescale, ell, O), O normalized:
        O = (rescale·ℓ_prev·O_prev + P̃ V_j) / ℓ     (FlashAttention-1's update)
    """
    _check_float_tensor("Q_i", Q_i, ndim=2)
    _check_float_tensor("V_j", V_j, ndim=2)
    B_r = Q_i.shape[0]
    for name, t in (("m_prev", m_prev), ("ell_prev", ell_prev)):
        _check_float_tensor(name, t, ndim=1)
        if t.shape[0] != B_r:
            raise ValueError(f"{name} must have shape (B_r,) = ({B_r},), got {tuple(t.shape)}")
    _check_float_tensor("O_prev", O_prev, ndim=2)
    if O_prev.shape != (B_r, V_j.shape[-1]):
        raise ValueError(f"O_prev must have shape (B_r, d_v) = ({B_r}, {V_j.shape[-1]}), got {tuple(O_prev.shape)}")
    step = _tile_step(0, 0, range(Q_i.shape[0]), range(K_j.shape[0]), Q_i, K_j, V_j, m_prev, ell_prev, O_prev * ell_prev[:, None], scale)
    return step.S, step.m, step.rescale, step.ell, step.O


def _tile_step(i, j, rows, cols, Q_i, K_j, V_j, m_prev, ell_prev, O_acc_prev, scale) -> TileStep:
    _check_float_tensor("Q_i", Q_i, ndim=2)
    _check_float_tensor("K_j", K_j, ndim=2)
    _check_float_tensor("V_j", V_j, ndim=2)
    if K_j.shape[1] != Q_i.shape[1] or V_j.shape[0] != K_j.shape[0]:
        raise ValueError(
            f"need Q_i (B_r, d), K_j (B_c, d), V_j (B_c, d_v); got {tuple(Q_i.shape)}, {tuple(K_j.shape)}, {tuple(V_j.shape)}"
        )
    check_scale(scale)
    if scale is None:
        scale = 1.0 / math.sqrt(Q_i.shape[1])
    S = (Q_i @ K_j.T) * scale  # (B_r, B_c)
    m_tile = S.amax(dim=-1)  # (B_r,)
    m = torch.maximum(m_prev, m_tile)
    ms = _finite_or_zero(m)
    rescale = torch.exp(m_prev - ms)  # (B_r,)
    P = torch.exp(S - ms[:, None])  # (B_r, B_c)
    ell = rescale * ell_prev + P.sum(dim=-1)
    O_acc = rescale[:, None] * O_acc_prev + P @ V_j  # (B_r, d_v)
    O = O_acc / torch.where(ell > 0, ell, torch.ones_like(ell))[:, None]
    return TileStep(i, j, rows, cols, S, m_prev, m_tile, m, rescale, P, ell_prev, ell, O_acc, O)


def online_attention_trace(Q, K, V, block_rows: int, block_cols: int, scale: float | None = None) -> list[TileStep]:
    """Online-softmax attention of Q (N_q, d) against K (N_k, d), V (N_k, d_v) in tiles of
    block_rows (B_r) queries and block_cols (B_c) keys, query tiles outer (FlashAttention-2's
    order), recording every intermediate. The last step of each query tile holds its output O
    and state (m, ℓ). Meant for small examples: it keeps everything."""
    _check_float_tensor("Q", Q, ndim=2)
    _check_float_tensor("K", K, ndim=2)
    _check_float_tensor("V", V, ndim=2)
    if K.shape[1] != Q.shape[1] or V.shape[0] != K.shape[0]:
        raise ValueError(f"need Q (N_q, d), K (N_k, d), V (N_k, d_v); got {tuple(Q.shape)}, {tuple(K.shape)}, {tuple(V.shape)}")
    _check_block_size(block_rows)
    _check_block_size(block_cols)
    steps = []
    for i, r0 in enumerate(range(0, Q.shape[0], block_rows)):
        rows = range(r0, min(r0 + block_rows, Q.shape[0]))
        Q_i = Q[rows.start : rows.stop]  # (B_r, d)
        m, ell = SoftmaxState.empty((len(rows),), Q.dtype, Q.device)
        O_acc = torch.zeros(len(rows), V.shape[1], dtype=V.dtype, device=V.device)  # (B_r, d_v)
        for j, c0 in enumerate(range(0, K.shape[0], block_cols)):
            cols = range(c0, min(c0 + block_cols, K.shape[0]))
            step = _tile_step(i, j, rows, cols, Q_i, K[cols.start : cols.stop], V[cols.start : cols.stop], m, ell, O_acc, scale)
            steps.append(step)
            m, ell, O_acc = step.m, step.ell, step.O_acc
    return steps


__all__ = [
    "LOG2E", "LN2", "SoftmaxState", "merge_states", "merge_outputs", "merge_lse", "merge_outputs_lse",
    "naive_softmax", "safe_softmax", "online_normalizer", "online_softmax_two_pass", "online_softmax_stream",
    "online_softmax", "online_attention_row", "worked_example", "TileStep", "attention_tile_step", "online_attention_trace",
]
