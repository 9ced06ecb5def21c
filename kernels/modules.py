"""FlashMultiheadAttention: torch.nn.MultiheadAttention with the course's attention inside.

Multi-head attention is three input projections, attention per head, one output projection:

    Q = query W_qᵀ + b_q,  K = key W_kᵀ + b_k,  V = value W_vᵀ + b_v        (…, N, E)
    split E into num_heads heads of E / num_heads                          (B, H, N, E/H)
    O_h = softmax(Q_h K_hᵀ / sqrt(E/H) + mask) V_h                          kernels.scaled_dot_product_attention
    out = concat_h(O_h) W_oᵀ + b_o                                         (…, N, E)

The parameters have nn.MultiheadAttention's names and shapes (in_proj_weight, in_proj_bias,
out_proj, or q/k/v_proj_weight when kdim or vdim differ from embed_dim), so
`flash.load_state_dict(mha.state_dict())` copies a torch module's weights and the two then agree
in outputs and gradients. The heads are split with views: the attention kernels read the
(B, N, H, E/H) layout through its strides, nothing is copied.

Masks follow nn.MultiheadAttention (note: the opposite of SDPA's boolean convention):
attn_mask (Nq, Nk) or (B·H, Nq, Nk), boolean True = *not* allowed, or float added to the scores;
key_padding_mask (B, Nk), boolean True = ignore this key, or float added. is_causal=True applies
the causal mask itself (torch treats it as a hint that needs attn_mask) and combines with the
masks. Differences: fully masked rows give zeros, not NaN; need_weights=True is refused (the
weights are the N×N matrix flash attention never forms); add_bias_kv and add_zero_attn are not
offered.
"""

from __future__ import annotations


import torch
from torch import nn
from torch.nn import functional as F

from .api import AttentionConfig

__all__ = ["FlashMultiheadAttention"]


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class FlashMultiheadAttention(nn.Module):
    """Multi-head attention, a drop-in for torch.nn.MultiheadAttention (batch_first=True default).

    embed_dim E, num_heads H (E % H == 0), dropout on the attention weights (training only),
    bias on the projections, kdim/vdim the key/value feature sizes (default E). `config` (an
    AttentionConfig) picks the backend, block sizes or a fixed dropout seed; its is_causal and
    dropout_p are ignored (the module's own arguments decide those).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, batch_first=True, kdim=None, vdim=None,
                 device=None, dtype=None, *, config: AttentionConfig | None = None):
        super().__init__()
        _positive_int("embed_dim", embed_dim)
        _positive_int("num_heads", num_heads)
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim must be divisible by num_heads, got embed_dim={embed_dim} and "
                             f"num_heads={num_heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        kdim = embed_dim if kdim is None else kdim
        vdim = embed_dim if vdim is None else vdim
        _positive_int("kdim", kdim)
        _positive_int("vdim", vdim)
        if config is not None and not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be an AttentionConfig or None, got {type(config).__name__}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim, vdim
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.config = config or AttentionConfig()
        self._qkv_same_embed_dim = kdim == embed_dim and vdim == embed_dim
        f = dict(device=device, dtype=dtype)
        if self._qkv_same_embed_dim:  # one (3E, E) matrix, rows [W_q; W_k; W_v]
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **f))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.register_parameter("in_proj_weight", None)
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **f))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, kdim, **f))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, vdim, **f))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **f))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **f)
        self._reset_parameters()

    def _reset_parameters(self):
        """nn.MultiheadAttention's initialisation: Xavier-uniform projections, zero biases."""
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"batch_first={self.batch_first}, kdim={self.kdim}, vdim={self.vdim}")

    # --------------------------------------------------------------------------------------------
    def _projection_weights(self):
        E = self.embed_dim
        if self._qkv_same_embed_dim:
            W_q, W_k, W_v = self.in_proj_weight[:E], self.in_proj_weight[E:2 * E], self.in_proj_weight[2 * E:]
        else:
            W_q, W_k, W_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        if self.in_proj_bias is None:
            return (W_q, None), (W_k, None), (W_v, None)
        b = self.in_proj_bias
        return (W_q, b[:E]), (W_k, b[E:2 * E]), (W_v, b[2 * E:])

    def _check_inputs(self, query, key, value):
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        layout = "(B, N, E)" if self.batch_first else "(N, B, E)"
        if query.dim() not in (2, 3):
            raise ValueError(f"query must be 3-D {layout} or 2-D (N, E) unbatched, got shape {tuple(query.shape)}")
        for name, t in (("key", key), ("value", value)):
            if t.dim() != query.dim():
                raise ValueError(f"{name} must have query's rank {query.dim()}, got shape {tuple(t.shape)}")
        for name, t, want in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if t.shape[-1] != want:
                raise ValueError(f"{name} must have {want} features in its last dim, got shape {tuple(t.shape)}")
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"key and value must have the same batch and length, got {tuple(key.shape)} and "
                             f"{tuple(value.shape)}")
        if query.dim() == 3:
            bdim = 0 if self.batch_first else 1
            if query.shape[bdim] != key.shape[bdim]:
                raise ValueError(f"query and key must have the same batch size, got {tuple(query.shape)} and "
                                 f"{tuple(key.shape)} (batch_first={self.batch_first})")

    def _merged_mask(self, attn_mask, key_padding_mask, B, Nq, Nk, dtype, device):
        """nn.MultiheadAttention's masks as one SDPA mask (True = attend, or additive),
        broadcastable to (B, H, Nq, Nk). A single mask stays a view of the caller's (or its negation
        for booleans); two masks are combined by broadcasting, like torch does."""
        H = self.num_heads
        masks = []
        if attn_mask is not None:
            if not isinstance(attn_mask, torch.Tensor):
                raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
            if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
                raise TypeError(f"attn_mask must be bool (True = not allowed) or float (added), got {attn_mask.dtype}")
            if attn_mask.dim() == 2:
                if tuple(attn_mask.shape) != (Nq, Nk):
                    raise ValueError(f"attn_mask 2-D must have shape (Nq, Nk) = {(Nq, Nk)}, got {tuple(attn_mask.shape)}")
                m = attn_mask  # (Nq, Nk), broadcast over batch and heads
            elif attn_mask.dim() == 3:
                if tuple(attn_mask.shape) != (B * H, Nq, Nk):
                    raise ValueError(f"attn_mask 3-D must have shape (B·num_heads, Nq, Nk) = {(B * H, Nq, Nk)}, "
                                     f"got {tuple(attn_mask.shape)}")
                m = attn_mask.view(B, H, Nq, Nk)
            else:
                raise ValueError(f"attn_mask must be 2-D (Nq, Nk) or 3-D (B·num_heads, Nq, Nk), got shape "
                                 f"{tuple(attn_mask.shape)}")
            masks.append(m)
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, torch.Tensor):
                raise TypeError(f"key_padding_mask must be a torch.Tensor or None, got {type(key_padding_mask).__name__}")
            if key_padding_mask.dtype != torch.bool and not key_padding_mask.is_floating_point():
                raise TypeError(f"key_padding_mask must be bool (True = ignore the key) or float (added), got "
                                f"{key_padding_mask.dtype}")
            if tuple(key_padding_mask.shape) != (B, Nk):
                raise ValueError(f"key_padding_mask must have shape (B, Nk) = {(B, Nk)}, got "
                                 f"{tuple(key_padding_mask.shape)}")
            masks.append(key_padding_mask.view(B, 1, 1, Nk))  # a broadcast mask: one row per batch
        if not masks:
            return None
        for m in masks:
            if m.device != device:
                raise ValueError(f"masks must be on {device}, got {m.device}")
        if all(m.dtype == torch.bool for m in masks):
            allowed = ~masks[0]  # torch: True = masked; SDPA: True = attend
            for m in masks[1:]:
                allowed = allowed & ~m
            return allowed
        additive = None
        for m in masks:
            a = torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(m, float("-inf")) \
                if m.dtype == torch.bool else m.to(dtype)
            additive = a if additive is None else additive + a
        return additive

    def forward(self, query, key, value, attn_mask=None, key_padding_mask=None, is_causal=False, need_weights=False):
        """query (B, Nq, E), key (B, Nk, kdim), value (B, Nk, vdim) with batch_first (else the
        first two dims swapped), or unbatched (N, E). Returns (output like query, None)."""
        if need_weights:
            raise ValueError("need_weights=True needs the N×N attention weights, which flash attention never "
                             "forms; use torch.nn.MultiheadAttention to inspect weights")
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
        self._check_inputs(query, key, value)
        unbatched = query.dim() == 2
        if unbatched:  # (N, E) -> (1, N, E); masks get the batch dim too
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None and isinstance(key_padding_mask, torch.Tensor):
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (N, B, E) -> (B, N, E), a view
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        B, Nq, E = query.shape
        Nk = key.shape[1]
        H, hd = self.num_heads, self.head_dim

        (W_q, b_q), (W_k, b_k), (W_v, b_v) = self._projection_weights()
        # (B, N, E) -> (B, N, H, hd) -> (B, H, N, hd): views, the kernels read these strides
        q = F.linear(query, W_q, b_q).view(B, Nq, H, hd).transpose(1, 2)  # (B, H, Nq, hd)
        k = F.linear(key, W_k, b_k).view(B, Nk, H, hd).transpose(1, 2)  # (B, H, Nk, hd)
        v = F.linear(value, W_v, b_v).view(B, Nk, H, hd).transpose(1, 2)  # (B, H, Nk, hd)

        mask = self._merged_mask(attn_mask, key_padding_mask, B, Nq, Nk, q.dtype, q.device)
        cfg = self.config.replace(is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0)
        O = cfg(q, k, v, attn_mask=mask)  # (B, H, Nq, hd)
        out = self.out_proj(O.transpose(1, 2).reshape(B, Nq, E))  # (B, Nq, E)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, None
