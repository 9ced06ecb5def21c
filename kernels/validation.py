"""Input checks shared by every public attention function.

Each check raises a ValueError (wrong value or shape) or TypeError (wrong type or dtype) whose
message names the argument and says what was expected, so bad input never reaches a kernel.
"""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_tensor(name: str, t, *, ndim: int = 4, dtypes=FLOAT_DTYPES) -> None:
    """`t` is a tensor of rank `ndim` and one of `dtypes`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D (B, H, N, d), got {t.dim()}-D with shape {_shape(t)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")


def check_qkv(query, key, value, *, enable_gqa: bool = False, dtypes=FLOAT_DTYPES) -> None:
    """query (B, H, Nq, d), key (B, H_kv, Nk, d), value (B, H_kv, Nk, d_v): consistent shapes,
    one dtype, one device. H_kv == H unless enable_gqa, then H % H_kv == 0."""
    check_tensor("query", query, dtypes=dtypes)
    check_tensor("key", key, dtypes=dtypes)
    check_tensor("value", value, dtypes=dtypes)
    B, H, Nq, d = query.shape
    if key.shape[0] != B or value.shape[0] != B:
        raise ValueError(
            f"batch size must match: query has B={B}, key has B={key.shape[0]}, value has B={value.shape[0]}"
        )
    if key.shape[-1] != d:
        raise ValueError(f"key head dim must equal query head dim d={d}, got key shape {_shape(key)}")
    if value.shape[2] != key.shape[2]:
        raise ValueError(
            f"value must have as many rows as key (Nk={key.shape[2]}), got value shape {_shape(value)}"
        )
    if value.shape[1] != key.shape[1]:
        raise ValueError(f"value heads must equal key heads ({key.shape[1]}), got value shape {_shape(value)}")
    Hkv = key.shape[1]
    if enable_gqa:
        if Hkv == 0 or H % Hkv != 0:
            raise ValueError(f"with enable_gqa, query heads H={H} must be a multiple of key heads {Hkv}")
    elif Hkv != H:
        raise ValueError(
            f"key and value must have the query's {H} heads, got {Hkv} (pass enable_gqa=True for GQA/MQA)"
        )
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"query, key and value must share one dtype, got {query.dtype}, {key.dtype}, {value.dtype}"
        )
    if not (query.device == key.device == value.device):
        raise ValueError(
            f"query, key and value must be on one device, got {query.device}, {key.device}, {value.device}"
        )
    if d == 0:
        raise ValueError(f"head dim d must be positive, got query shape {_shape(query)}")


def check_scale(scale) -> None:
    """scale is None (meaning 1/sqrt(d)) or a positive finite number."""
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number (default 1/sqrt(d)), got {scale}")


def check_mask(name: str, mask, target: tuple[int, int, int, int], device, *, allow_float: bool = True) -> None:
    """A boolean (True = attend) or additive float mask broadcastable to `target` (B, H, Nq, Nk)."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not (allow_float and mask.dtype in FLOAT_DTYPES):
        kinds = "bool (True = attend) or a float additive mask" if allow_float else "bool (True = keep)"
        raise TypeError(f"{name} must be {kinds}, got dtype {mask.dtype}")
    if mask.dim() > 4:
        raise ValueError(f"{name} must have at most 4 dims, broadcastable to {target}, got shape {_shape(mask)}")
    shape = (1,) * (4 - mask.dim()) + _shape(mask)
    for have, want in zip(shape, target):
        if have not in (1, want):
            raise ValueError(f"{name} of shape {_shape(mask)} is not broadcastable to (B, H, Nq, Nk) = {target}")
    if mask.device != device:
        raise ValueError(f"{name} must be on {device}, got {mask.device}")


def check_dropout_p(dropout_p) -> None:
    """0 <= dropout_p < 1."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a float in [0, 1), got {type(dropout_p).__name__}")
    if not (0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
