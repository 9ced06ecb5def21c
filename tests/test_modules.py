"""FlashMultiheadAttention against torch.nn.MultiheadAttention with the same weights.

The torch module's state_dict is loaded into ours; both then run on the same fresh random
inputs and masks, and outputs and gradients (inputs and every parameter) must agree. CPU: the
reference backend in float64 (agreement to 1e-10) and float32, and the Triton kernels under the
interpreter on tiny shapes; GPU: the Triton path.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kernels.api import AttentionConfig
from kernels.grading.core import fresh_generator
from kernels.modules import FlashMultiheadAttention
from kernels.reference import attention as reference_attention
from kernels.triton_sdpa import dropout_keep_mask


def pair(E, H, *, batch_first, kdim=None, vdim=None, bias=True, backend="reference", dtype=torch.float64,
         device="cpu", dropout=0.0, seed=None):
    """(torch module, our module with the torch module's weights)."""
    torch_mha = nn.MultiheadAttention(E, H, dropout=dropout, bias=bias, batch_first=batch_first, kdim=kdim,
                                      vdim=vdim, device=device, dtype=dtype)
    ours = FlashMultiheadAttention(E, H, dropout=dropout, bias=bias, batch_first=batch_first, kdim=kdim, vdim=vdim,
                                   device=device, dtype=dtype, config=AttentionConfig(backend=backend, seed=seed))
    ours.load_state_dict(torch_mha.state_dict())
    return torch_mha, ours


def run_both(torch_mha, ours, q, k, v, g, **masks):
    """Outputs and gradients (of q, k, v and every parameter by name) of both modules."""
    results = []
    dO = None
    for module in (torch_mha, ours):
        qq, kk, vv = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        torch_masks = dict(masks)
        if module is torch_mha and torch_masks.pop("is_causal", False):  # torch needs the mask itself
            seq = -2 if (module.batch_first or qq.dim() == 2) else 0
            Nq, Nk = qq.shape[seq], kk.shape[seq]
            causal = torch.ones(Nq, Nk, dtype=torch.bool, device=q.device).triu(1)  # True = masked
            am = torch_masks.get("attn_mask")
            if am is None:
                torch_masks["attn_mask"] = causal
            elif am.dtype == torch.bool:
                torch_masks["attn_mask"] = am | causal
            else:
                torch_masks["attn_mask"] = am.masked_fill(causal, float("-inf"))
        if module is torch_mha:
            out, _ = module(qq, kk, vv, need_weights=False, **torch_masks)
        else:
            out, _ = module(qq, kk, vv, **torch_masks)
        if dO is None:
            dO = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
        names = [n for n, _ in module.named_parameters()]
        params = [p for _, p in module.named_parameters()]
        grads = torch.autograd.grad(out, [qq, kk, vv, *params], dO)
        results.append((out.detach(), dict(zip(["query", "key", "value", *names], grads))))
    return results


def assert_match(results, tol, where):
    (o1, g1), (o2, g2) = results
    assert not torch.isnan(o2).any(), where
    torch.testing.assert_close(o2, o1, rtol=tol, atol=tol, msg=lambda m: f"{where}: output: {m}")
    assert g1.keys() == g2.keys(), (sorted(g1), sorted(g2))
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=tol, atol=tol, msg=lambda m: f"{where}: grad {name}: {m}")


def inputs(B, Nq, Nk, E, kdim, vdim, batch_first, g, dtype=torch.float64, device="cpu"):
    def t(n, e):
        x = torch.randn(B, n, e, generator=g, dtype=torch.float64)
        return (x if batch_first else x.transpose(0, 1).contiguous()).to(device, dtype)
    return t(Nq, E), t(Nk, kdim or E), t(Nk, vdim or E)


MASK_KINDS = ["none", "bool attn_mask", "float attn_mask", "key_padding_mask", "both + causal", "3-D per-head bool",
              "float key_padding_mask"]


def make_masks(kind, B, H, Nq, Nk, g, dtype, device="cpu"):
    """Masks in nn.MultiheadAttention's convention (bool True = NOT allowed). No row is left
    without keys here (torch would give NaN there): that case has its own test."""
    def no_empty_rows(m):  # keep key 0 visible in every row
        m[..., 0] = False
        return m

    if kind == "none":
        return {}
    if kind == "bool attn_mask":
        return {"attn_mask": no_empty_rows(torch.rand(Nq, Nk, generator=g) > 0.7).to(device)}
    if kind == "float attn_mask":
        return {"attn_mask": torch.randn(Nq, Nk, generator=g, dtype=torch.float64).to(device, dtype)}
    if kind == "key_padding_mask":
        kpm = torch.zeros(B, Nk, dtype=torch.bool)
        kpm[0, -3:] = True
        return {"key_padding_mask": kpm.to(device)}
    if kind == "float key_padding_mask":
        return {"key_padding_mask": torch.randn(B, Nk, generator=g, dtype=torch.float64).to(device, dtype)}
    if kind == "both + causal":
        kpm = torch.zeros(B, Nk, dtype=torch.bool)
        kpm[-1, 1:3] = True
        return {"attn_mask": no_empty_rows(torch.rand(Nq, Nk, generator=g) > 0.8).to(device),
                "key_padding_mask": kpm.to(device), "is_causal": True}
    if kind == "3-D per-head bool":
        return {"attn_mask": no_empty_rows(torch.rand(B * H, Nq, Nk, generator=g) > 0.6).to(device)}
    raise ValueError(kind)


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_matches_torch_float64(batch_first, kind):
    g, seed = fresh_generator()
    E, H, B, Nq, Nk = 24, 4, 3, 9, 11
    torch_mha, ours = pair(E, H, batch_first=batch_first)
    q, k, v = inputs(B, Nq, Nk, E, None, None, batch_first, g)
    if kind == "both + causal":  # self-attention shapes for causal
        k = v = q
    masks = make_masks(kind, B, H, Nq, k.shape[1 if batch_first else 0], g, torch.float64)
    assert_match(run_both(torch_mha, ours, q, k, v, g, **masks), 1e-10, f"{kind} seed={seed}")


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_matches_torch_kdim_vdim(batch_first, bias):
    g, seed = fresh_generator()
    E, H, B, Nq, Nk = 16, 2, 2, 7, 10
    torch_mha, ours = pair(E, H, batch_first=batch_first, kdim=6, vdim=10, bias=bias)
    q, k, v = inputs(B, Nq, Nk, E, 6, 10, batch_first, g)
    masks = make_masks("key_padding_mask", B, H, Nq, Nk, g, torch.float64)
    assert_match(run_both(torch_mha, ours, q, k, v, g, **masks), 1e-10, f"kdim/vdim seed={seed}")


def test_unbatched_input():
    g, seed = fresh_generator()
    torch_mha, ours = pair(16, 4, batch_first=True)
    q = torch.randn(8, 16, generator=g, dtype=torch.float64)
    kv = torch.randn(5, 16, generator=g, dtype=torch.float64)
    kpm = torch.tensor([False, False, True, False, False])
    assert_match(run_both(torch_mha, ours, q, kv, kv, g, key_padding_mask=kpm), 1e-10, f"unbatched seed={seed}")


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
@pytest.mark.parametrize("kind", ["none", "bool attn_mask", "both + causal"])
def test_matches_torch_triton_small(batch_first, kind, needs_triton):
    """The Triton path on tiny shapes: under the interpreter on a CPU, on the GPU when present."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g, seed = fresh_generator()
    E, H, B, Nq, Nk = 32, 2, 2, 20, 20
    torch_mha, ours = pair(E, H, batch_first=batch_first, backend="triton", dtype=torch.float32, device=dev)
    q, k, v = inputs(B, Nq, Nk, E, None, None, batch_first, g, dtype=torch.float32, device=dev)
    masks = make_masks(kind, B, H, Nq, Nk, g, torch.float32, device=dev)
    assert_match(run_both(torch_mha, ours, q, k, v, g, **masks), 1e-4, f"triton {kind} seed={seed}")


def test_fully_masked_rows_give_zeros():
    """A query row whose every key is masked: the attention output is 0, so the module's output
    there is the output projection's bias alone; gradients stay finite."""
    g, _ = fresh_generator()
    ours = FlashMultiheadAttention(16, 4, dtype=torch.float64)
    nn.init.normal_(ours.out_proj.bias)
    x = torch.randn(2, 6, 16, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[2] = True  # row 2 sees nothing
    out, _ = ours(x, x, x, attn_mask=mask)
    out.sum().backward()
    torch.testing.assert_close(out[:, 2], ours.out_proj.bias.detach().expand(2, 16))
    assert torch.isfinite(x.grad).all() and torch.isfinite(ours.in_proj_weight.grad).all()


def test_dropout_in_training_only():
    """Training: the module drops P with the kernels' keep-mask for its seed (checked against the
    reference given that mask); eval: no dropout, equal to torch's module in eval."""
    g, seed = fresh_generator()
    E, H, B, N, p = 16, 2, 2, 12, 0.3
    torch_mha, ours = pair(E, H, batch_first=True, dropout=p, seed=4321)
    x = torch.randn(B, N, E, generator=g, dtype=torch.float64)
    ours.train()
    out, _ = ours(x, x, x)
    q, k, v = (nn.functional.linear(x, w, b).view(B, N, H, E // H).transpose(1, 2)
               for w, b in zip(ours.in_proj_weight.chunk(3), ours.in_proj_bias.chunk(3)))
    keep = dropout_keep_mask(4321, (B, H, N, N), p)
    O = reference_attention(q, k, v, dropout_p=p, dropout_mask=keep)
    want = ours.out_proj(O.transpose(1, 2).reshape(B, N, E))
    torch.testing.assert_close(out, want, msg=f"seed={seed}")
    ours.eval()
    torch_mha.eval()
    assert_match(run_both(torch_mha, ours, x, x, x, g), 1e-10, f"eval seed={seed}")


BAD = [
    ("embed_dim not divisible", lambda: FlashMultiheadAttention(10, 3), ValueError,
     "embed_dim must be divisible by num_heads"),
    ("num_heads zero", lambda: FlashMultiheadAttention(8, 0), ValueError, "num_heads must be a positive int"),
    ("embed_dim float", lambda: FlashMultiheadAttention(8.0, 2), ValueError, "embed_dim must be a positive int"),
    ("dropout 1", lambda: FlashMultiheadAttention(8, 2, dropout=1.0), ValueError, r"dropout must be a float in \[0, 1\)"),
    ("kdim zero", lambda: FlashMultiheadAttention(8, 2, kdim=0), ValueError, "kdim must be a positive int"),
    ("config wrong type", lambda: FlashMultiheadAttention(8, 2, config="triton"), TypeError,
     "config must be an AttentionConfig"),
    ("query wrong features", lambda: FlashMultiheadAttention(8, 2)(torch.randn(2, 3, 4), torch.randn(2, 3, 8),
                                                                   torch.randn(2, 3, 8)),
     ValueError, "query must have 8 features"),
    ("query 4-D", lambda: FlashMultiheadAttention(8, 2)(*(torch.randn(1, 2, 3, 8),) * 3), ValueError,
     r"query must be 3-D \(B, N, E\) or 2-D"),
    ("key rank differs", lambda: FlashMultiheadAttention(8, 2)(torch.randn(2, 3, 8), torch.randn(3, 8),
                                                               torch.randn(3, 8)),
     ValueError, "key must have query's rank 3"),
    ("key/value lengths differ", lambda: FlashMultiheadAttention(8, 2)(torch.randn(2, 3, 8), torch.randn(2, 4, 8),
                                                                       torch.randn(2, 5, 8)),
     ValueError, "key and value must have the same batch and length"),
    ("batch differs", lambda: FlashMultiheadAttention(8, 2)(torch.randn(2, 3, 8), torch.randn(3, 4, 8),
                                                            torch.randn(3, 4, 8)),
     ValueError, "query and key must have the same batch size"),
    ("need_weights", lambda: FlashMultiheadAttention(8, 2)(*(torch.randn(2, 3, 8),) * 3, need_weights=True),
     ValueError, "need_weights=True needs the N×N attention weights"),
    ("attn_mask wrong shape", lambda: FlashMultiheadAttention(8, 2)(*(torch.randn(2, 3, 8),) * 3,
                                                                    attn_mask=torch.zeros(3, 4, dtype=torch.bool)),
     ValueError, r"attn_mask 2-D must have shape \(Nq, Nk\) = \(3, 3\)"),
    ("attn_mask 3-D wrong", lambda: FlashMultiheadAttention(8, 2)(*(torch.randn(2, 3, 8),) * 3,
                                                                  attn_mask=torch.zeros(2, 3, 3, dtype=torch.bool)),
     ValueError, "attn_mask 3-D must have shape"),
    ("attn_mask int", lambda: FlashMultiheadAttention(8, 2)(*(torch.randn(2, 3, 8),) * 3,
                                                            attn_mask=torch.zeros(3, 3, dtype=torch.int32)),
     TypeError, "attn_mask must be bool"),
    ("key_padding_mask wrong shape", lambda: FlashMultiheadAttention(8, 2)(
        *(torch.randn(2, 3, 8),) * 3, key_padding_mask=torch.zeros(3, 3, dtype=torch.bool)),
     ValueError, r"key_padding_mask must have shape \(B, Nk\) = \(2, 3\)"),
    ("is_causal not bool", lambda: FlashMultiheadAttention(8, 2)(*(torch.randn(2, 3, 8),) * 3, is_causal=1),
     TypeError, "is_causal must be a bool"),
]


@pytest.mark.parametrize("name,call,exc,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input(name, call, exc, message):
    with pytest.raises(exc, match=message):
        call()


# ------------------------------------------------------------------------------------------------
# GPU
# ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_gpu_matches_torch_triton(batch_first, kind):
    g, seed = fresh_generator()
    E, H, B, Nq, Nk = 256, 4, 2, 200, 200
    torch_mha, ours = pair(E, H, batch_first=batch_first, backend="triton", dtype=torch.float32, device="cuda")
    q, k, v = inputs(B, Nq, Nk, E, None, None, batch_first, g, dtype=torch.float32, device="cuda")
    masks = make_masks(kind, B, H, Nq, Nk, g, torch.float32, device="cuda")
    assert_match(run_both(torch_mha, ours, q, k, v, g, **masks), 2e-4, f"gpu {kind} seed={seed}")
