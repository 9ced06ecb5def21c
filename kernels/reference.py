"""Naive attention: the ground truth every grader and test compares against.

It follows torch.nn.functional.scaled_dot_product_attention's conventions:

* query (B, H, Nq, d), key (B, H_kv, Nk, d), value (B, H_kv, Nk, d_v); H_kv == H unless
  enable_gqa (then query head h reads key/value head h // (H / H_kv)).
* attn_mask: boolean (True = attend) or additive float, broadcastable to (B, H, Nq, Nk).
* is_causal: query i attends key j only when j <= i (SDPA's top-left alignment, also when
  Nq != Nk). It may be combined with attn_mask; both must allow a pair for it to be attended.
* scale: defaults to 1/sqrt(d).
* dropout: given an explicit keep-mask (True = keep), P is multiplied by keep / (1 - dropout_p).

Policy for rows with every key masked: O is 0 and L is -inf (SDPA's math path returns NaN there;
the course's kernels return 0, so the reference does too).

It computes S and P in full, in the inputs' dtype: in float64 it is the ground truth; in
float16/bfloat16/float32 it is the "naive error" yardstick that tolerances are multiples of.
"""

from __future__ import annotations

import math

import torch

from .validation import check_dropout_p, check_mask, check_qkv, check_scale


def causal_mask(Nq: int, Nk: int, device=None) -> torch.Tensor:
    """(Nq, Nk) boolean, True where key j <= query i (SDPA's top-left convention)."""
    i = torch.arange(Nq, device=device)[:, None]
    j = torch.arange(Nk, device=device)[None, :]
    return j <= i


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    dropout_mask: torch.Tensor | None = None,
    enable_gqa: bool = False,
    return_lse: bool = False,
):
    """Naive attention O = softmax(scale·QKᵀ + mask)·V in the inputs' dtype.

    Returns O (B, H, Nq, d_v), or (O, L) with the log-sum-exp L (B, H, Nq) when return_lse.
    L is of the scaled, masked scores before dropout: L_i = log Σ_j exp(S_ij).
    """
    check_qkv(query, key, value, enable_gqa=enable_gqa)
    check_scale(scale)
    check_dropout_p(dropout_p)
    B, H, Nq, d = query.shape
    Nk = key.shape[2]
    check_mask("attn_mask", attn_mask, (B, H, Nq, Nk), query.device)
    if dropout_p > 0.0:
        if dropout_mask is None:
            raise ValueError("dropout_mask is required when dropout_p > 0: the reference takes the keep-mask explicitly")
        check_mask("dropout_mask", dropout_mask, (B, H, Nq, Nk), query.device, allow_float=False)
    elif dropout_mask is not None:
        raise ValueError("dropout_mask was given but dropout_p is 0; pass the dropout_p the mask was drawn with")
    if scale is None:
        scale = 1.0 / math.sqrt(d)

    if key.shape[1] != H:  # GQA / MQA: each group of H / H_kv query heads shares one K/V head
        group = H // key.shape[1]
        key = key.repeat_interleave(group, dim=1)
        value = value.repeat_interleave(group, dim=1)

    if Nk == 0:  # no keys at all: every row is fully masked
        O = query.new_zeros(B, H, Nq, value.shape[-1])
        return (O, query.new_full((B, H, Nq), float("-inf"))) if return_lse else O

    S = (query @ key.transpose(-2, -1)) * scale  # (B, H, Nq, Nk)
    allowed = None  # (…, Nq, Nk) bool, broadcastable
    if is_causal:
        allowed = causal_mask(Nq, Nk, query.device)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else (allowed & attn_mask)
        else:
            S = S + attn_mask.to(S.dtype)
    if allowed is not None:
        S = S.masked_fill(~allowed, float("-inf"))

    m = S.amax(dim=-1, keepdim=True).detach()  # (B, H, Nq, 1); O does not depend on m, so no gradient
    empty = torch.isneginf(m)  # rows where every key is masked
    m = torch.where(empty, torch.zeros_like(m), m)
    E = torch.exp(S - m)  # (B, H, Nq, Nk), 0 where masked
    ell = E.sum(dim=-1, keepdim=True)  # (B, H, Nq, 1)
    P = E / torch.where(empty, torch.ones_like(ell), ell)
    if dropout_p > 0.0:
        P = P * dropout_mask.to(P.dtype) / (1.0 - dropout_p)
    O = P @ value  # (B, H, Nq, d_v)
    if not return_lse:
        return O
    L = torch.where(empty, torch.full_like(m, float("-inf")), m + torch.log(ell)).squeeze(-1)  # (B, H, Nq)
    return O, L


def ground_truth(query, key, value, **kwargs):
    """attention() on float64 copies of the inputs: the answer every grader measures against."""
    up = lambda t: t.detach().to(torch.float64) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
    mask = kwargs.get("attn_mask")
    if mask is not None and mask.is_floating_point():
        kwargs = {**kwargs, "attn_mask": up(mask)}
    return attention(up(query), up(key), up(value), **kwargs)


def attention_backward(query, key, value, dO, **kwargs):
    """Gradients (dQ, dK, dV) of attention() by autograd through the naive formula, in the
    inputs' dtype. With float64 inputs this is the ground truth for every backward kernel."""
    q = query.detach().clone().requires_grad_(True)
    k = key.detach().clone().requires_grad_(True)
    v = value.detach().clone().requires_grad_(True)
    O = attention(q, k, v, **kwargs)
    dQ, dK, dV = torch.autograd.grad(O, (q, k, v), dO)
    return dQ, dK, dV
