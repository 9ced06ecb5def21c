"""kernels.scaled_dot_product_attention: the course's kernels behind PyTorch's SDPA interface.

    import kernels
    O = kernels.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0,
                                             is_causal=False, scale=None, enable_gqa=False)

The signature and the semantics are torch.nn.functional.scaled_dot_product_attention's:

* query (…, H, Nq, d), key (…, H_kv, Nk, d), value (…, H_kv, Nk, d_v): 4-D (B, H, N, d) or
  3-D (H, N, d). Any strides (a transposed (B, N, H, d) layout works as it is).
* attn_mask: boolean (True = attend) or additive float, broadcastable to (B, H, Nq, Nk). A key
  padding mask of shape (B, Nk) is passed as attn_mask[:, None, None, :], i.e. (B, 1, 1, Nk).
  The Triton kernels read it through its strides: it is never expanded in memory.
* is_causal: query i attends key j only when j <= i, top-left aligned as SDPA does, also when
  Nq != Nk (for Nq > Nk the last rows see every key; for Nq < Nk the last keys are seen by none).
  Unlike torch, it may be combined with attn_mask: a pair is attended when both allow it.
* dropout_p: dropout on the attention weights P, kept entries scaled by 1/(1 - p), applied
  whenever dropout_p > 0 (SDPA has no training flag either). The keep-mask comes from a Philox
  counter keyed by a seed drawn from torch's default generator, so torch.manual_seed(s) makes
  a call reproducible, on every backend (kernels.triton_sdpa.dropout_keep_mask gives the mask).
* scale: defaults to 1/sqrt(d). enable_gqa: H_kv may divide H (GQA; H_kv = 1 is MQA); query
  head h reads key/value head h // (H / H_kv).

Differences from torch, on purpose:

* Rows whose every key is masked give O = 0 and zero gradients, never NaN (torch 2.13 on a CPU
  gives 0 as well; other torch versions and backends have returned NaN there).
* NaN/inf policy: inputs are not scanned by default (that costs a pass over memory and a device
  sync). Non-finite values propagate as in torch: a NaN or inf in key/value row j reaches every
  output row that attends to j, one in query row i reaches row i. In an additive mask -inf means
  "masked"; +inf or NaN there give NaN in that row. AttentionConfig(check_finite=True) checks
  query, key, value and the mask first and raises a ValueError naming the tensor.
* No gradient flows to attn_mask on the Triton path (an error says so if the mask requires grad).

Backends (`backend=`, or AttentionConfig.backend):

    "triton"     kernels.triton_sdpa, forward and backward, every feature. The default for CUDA
                 tensors. On a CPU it runs under the Triton interpreter: correct but slow, only
                 chosen when asked for.
    "reference"  kernels.reference.attention, autograd through the naive formula (N×N memory),
                 every feature, any device; float16/bfloat16 computed in float32. The CPU default.
    "tiled"      kernels.tiled_backward.tiled_attention (lessons 03-04 in PyTorch): causal and
                 scale only (no attn_mask, dropout or GQA).
    "cuda"       the CUDA C++ forward and backward of lessons 03-04 (kernels.cuda_kernels.attention):
                 needs a GPU; causal and scale only, d_v == d, the dtypes and head dims of
                 cuda_kernels.SUPPORT (its own errors say which).

A backend that cannot run the call raises a ValueError (or RuntimeError for missing hardware)
that says why and which backend can.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from . import device as kdev
from .validation import FLOAT_DTYPES, check_dropout_p, check_mask, check_qkv, check_scale

__all__ = [
    "scaled_dot_product_attention", "AttentionConfig", "BACKENDS", "resolve_backend", "draw_dropout_seed",
    "predicted_peak_bytes", "flash_peak_bytes", "naive_peak_bytes", "measure_peak_bytes",
]

# lesson 01's memory estimator, on the public API: predicted and measured peak memory
try:
    from .memory_model import flash_peak_bytes, measure_peak_bytes, naive_peak_bytes, predicted_peak_bytes
except ImportError:  # pragma: no cover - only while lesson 01's module is missing
    flash_peak_bytes = measure_peak_bytes = naive_peak_bytes = predicted_peak_bytes = None

BACKENDS = ("triton", "cuda", "tiled", "reference")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Everything about an attention call except its tensors: a reusable, validated setting.

        cfg = AttentionConfig(is_causal=True, dropout_p=0.1, B_r=64, B_c=32)
        O = cfg(q, k, v)                       # same as scaled_dot_product_attention(...)

    B_r, B_c: query rows / keys per block (powers of two >= 16 for "triton"; any positive int
    for "tiled"; None: the kernel's default). scale: None means 1/sqrt(d). backend: one of
    BACKENDS or None (chosen from the tensors' device). seed: the dropout seed (None: drawn from
    torch's generator on every call). check_finite: scan the inputs for NaN/inf first.
    """

    B_r: int | None = None
    B_c: int | None = None
    scale: float | None = None
    is_causal: bool = False
    dropout_p: float = 0.0
    backend: str | None = None
    seed: int | None = None
    check_finite: bool = False

    def __post_init__(self):
        for name in ("B_r", "B_c"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int (rows per block) or None, got {value!r}")
        check_scale(self.scale)
        _check_flag("is_causal", self.is_causal)
        _check_flag("check_finite", self.check_finite)
        check_dropout_p(self.dropout_p)
        _check_backend_name(self.backend)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be an int in [0, 2**63) or None, got {self.seed!r}")

    def __call__(self, query, key, value, attn_mask=None, enable_gqa=False):
        """Attention with this configuration (see scaled_dot_product_attention)."""
        return _attention(query, key, value, attn_mask, self.dropout_p, self.is_causal, self.scale, enable_gqa, self)

    def replace(self, **changes) -> "AttentionConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _check_flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _check_backend_name(backend):
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None (automatic), got {backend!r}")


def draw_dropout_seed() -> int:
    """The dropout seed the next call with dropout_p > 0 will use: one draw from torch's default
    (CPU) generator, so torch.manual_seed(s) fixes it."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def resolve_backend(backend, query: torch.Tensor) -> str:
    """The backend a call runs on: `backend` itself, or for None "triton" on a CUDA device (when
    triton is installed) and "reference" elsewhere (the interpreter is too slow to be a default)."""
    _check_backend_name(backend)
    if backend is not None:
        return backend
    return "triton" if (query.device.type == "cuda" and kdev.HAS_TRITON) else "reference"


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, backend=None):
    """softmax(scale·QKᵀ + mask) V, differentiable, with the course's kernels.

    Same arguments and result as torch.nn.functional.scaled_dot_product_attention (see the
    module docstring for the conventions and the few deliberate differences). backend picks the
    implementation: "triton", "cuda", "tiled", "reference", or None for automatic.
    Returns (…, H, Nq, d_v) in the inputs' dtype.
    """
    return _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                      AttentionConfig(backend=backend) if backend is not None else _DEFAULT)


_DEFAULT = AttentionConfig()


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------
def _as_4d(query, key, value):
    """(q, k, v, squeeze): 3-D (H, N, d) inputs become (1, H, N, d); the result is squeezed back."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if query.dim() not in (3, 4):
        raise ValueError(f"query must be 4-D (B, H, N, d) or 3-D (H, N, d), got {query.dim()}-D with shape "
                         f"{tuple(query.shape)}")
    for name, t in (("key", key), ("value", value)):
        if t.dim() != query.dim():
            raise ValueError(f"{name} must have query's rank {query.dim()}, got {t.dim()}-D with shape {tuple(t.shape)}")
    if query.dim() == 3:
        return query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0), True
    return query, key, value, False


def _check_finite(query, key, value, attn_mask):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or inf (check_finite=True)")
    if attn_mask is not None and attn_mask.is_floating_point():
        if bool(torch.isnan(attn_mask).any()) or bool(torch.isposinf(attn_mask).any()):
            raise ValueError("attn_mask contains NaN or +inf (check_finite=True; -inf is allowed: it masks)")


def _unsupported(backend, what, instead="'triton' or 'reference'"):
    return ValueError(f"backend={backend!r} does not support {what}; use backend={instead}")


# ------------------------------------------------------------------------------------------------
# Dispatch
# ------------------------------------------------------------------------------------------------
def _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, cfg: AttentionConfig):
    q, k, v, squeeze = _as_4d(query, key, value)
    _check_flag("is_causal", is_causal)
    _check_flag("enable_gqa", enable_gqa)
    check_qkv(q, k, v, enable_gqa=enable_gqa)
    check_scale(scale)
    check_dropout_p(dropout_p)
    B, H, Nq, d = q.shape
    H_kv, Nk = k.shape[1], k.shape[2]
    check_mask("attn_mask", attn_mask, (B, H, Nq, Nk), q.device)
    if cfg.check_finite:
        _check_finite(q, k, v, attn_mask)
    backend = resolve_backend(cfg.backend, q)

    seed = 0
    if dropout_p > 0.0:
        seed = cfg.seed if cfg.seed is not None else draw_dropout_seed()

    if backend == "triton":
        O = _run_triton(q, k, v, attn_mask, dropout_p, is_causal, scale, seed, cfg)
    elif backend == "reference":
        O = _run_reference(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, seed)
    elif backend == "tiled":
        O = _run_tiled(q, k, v, attn_mask, dropout_p, is_causal, scale, cfg)
    else:
        O = _run_cuda(q, k, v, attn_mask, dropout_p, is_causal, scale)
    return O.squeeze(0) if squeeze else O


def _run_triton(q, k, v, attn_mask, dropout_p, is_causal, scale, seed, cfg):
    from . import triton_sdpa

    if not kdev.HAS_TRITON:
        raise RuntimeError("backend='triton' needs the triton package, which is not installed on this platform; "
                           "use backend='reference'")
    if q.dtype not in triton_sdpa.SUPPORTED_DTYPES:
        raise TypeError(f"backend='triton' takes float16, bfloat16 or float32, got {q.dtype}; "
                        "use backend='reference' for float64")
    d, d_v = q.shape[-1], v.shape[-1]
    if max(d, d_v) > triton_sdpa.MAX_HEAD_DIM:
        raise ValueError(f"backend='triton' supports head dims up to {triton_sdpa.MAX_HEAD_DIM}, got d={d}, "
                         f"d_v={d_v}; use backend='reference'")
    if attn_mask is not None and attn_mask.requires_grad and torch.is_grad_enabled():
        raise ValueError("attn_mask requires grad, but backend='triton' computes no gradient for the mask; "
                         "detach it or use backend='reference'")
    for name, b in (("B_r", cfg.B_r), ("B_c", cfg.B_c)):
        if b is not None and (b < 16 or b & (b - 1)):
            raise ValueError(f"{name} must be a power of two >= 16 for backend='triton', got {b}")
    if q.device.type == "cpu" and not kdev.TRITON_INTERPRET:
        raise RuntimeError("backend='triton' with CPU tensors needs the Triton interpreter "
                           "(TRITON_INTERPRET=1 before triton is imported); use backend='reference'")
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        raise TypeError("backend='triton' on the CPU runs under the Triton interpreter, which computes bfloat16 "
                        "wrongly; use float16/float32 or backend='reference'")
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"backend='triton' needs tensors on cuda (or cpu under the interpreter), got {q.device}")
    blocks = None
    if cfg.B_r is not None or cfg.B_c is not None:
        bd = max(16, 1 << (max(d, d_v) - 1).bit_length())
        blocks = triton_sdpa.KernelBlocks.default(bd, q.dtype).with_blocks(cfg.B_r, cfg.B_c)
    return triton_sdpa.sdpa(q, k, v, attn_mask, is_causal=is_causal, scale=scale, dropout_p=dropout_p,
                            seed=seed, blocks=blocks)


def _run_reference(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, seed):
    from .reference import attention
    from .triton_sdpa import dropout_keep_mask

    B, H, Nq, _ = q.shape
    keep = dropout_keep_mask(seed, (B, H, Nq, k.shape[2]), dropout_p, q.device) if dropout_p > 0.0 else None
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):  # compute in float32, round once at the end
        q, k, v = q.float(), k.float(), v.float()
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.float()
    elif attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.to(dtype)
    O = attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, dropout_p=dropout_p,
                  dropout_mask=keep, enable_gqa=enable_gqa)
    return O.to(dtype)


def _run_tiled(q, k, v, attn_mask, dropout_p, is_causal, scale, cfg):
    from .tiled_backward import tiled_attention

    if attn_mask is not None:
        raise _unsupported("tiled", "attn_mask (it implements causal masking only)")
    if dropout_p > 0.0:
        raise _unsupported("tiled", "dropout (dropout_p > 0)")
    if k.shape[1] != q.shape[1]:
        raise _unsupported("tiled", "GQA/MQA (fewer key/value heads than query heads)")
    return tiled_attention(q, k, v, is_causal=is_causal, scale=scale, B_r=cfg.B_r or 64, B_c=cfg.B_c or 64)


def _run_cuda(q, k, v, attn_mask, dropout_p, is_causal, scale):
    if not kdev.HAS_CUDA:
        raise RuntimeError(f"backend='cuda' needs a CUDA GPU; none is present ({kdev.describe()}); "
                           "use backend='reference' or 'tiled'")
    if q.device.type != "cuda":
        raise ValueError(f"backend='cuda' needs query, key and value on a CUDA device, got {q.device}")
    if attn_mask is not None:
        raise _unsupported("cuda", "attn_mask", "'triton'")
    if dropout_p > 0.0:
        raise _unsupported("cuda", "dropout (dropout_p > 0)", "'triton'")
    if k.shape[1] != q.shape[1]:
        raise _unsupported("cuda", "GQA/MQA (fewer key/value heads than query heads)", "'triton'")
    if v.shape[-1] != q.shape[-1]:
        raise _unsupported("cuda", "a value head dim d_v different from d", "'triton'")
    try:
        from . import cuda_kernels
    except ImportError as e:  # pragma: no cover - depends on the CUDA lesson's module
        raise RuntimeError(f"backend='cuda' needs kernels.cuda_kernels, which failed to import: {e}") from e
    # lessons 03-04's CUDA C++ forward and backward; they raise their own errors for the dtypes
    # and head dims they do not cover (see cuda_kernels.SUPPORT)
    return cuda_kernels.attention(q, k, v, is_causal=bool(is_causal), scale=scale)
