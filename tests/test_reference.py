"""The naive reference: it agrees with torch's SDPA math, computes the log-sum-exp, follows the
documented conventions (top-left causal, zeros for fully masked rows, explicit dropout mask, GQA)
and rejects bad input with an error that names the argument."""

import pytest
import torch
import torch.nn.functional as F

from kernels import reference

f64 = torch.float64


def rand(*shape, dtype=f64, g=None):
    return torch.randn(*shape, dtype=dtype, generator=g)


@pytest.mark.parametrize("Nq,Nk", [(1, 1), (5, 5), (17, 33), (33, 17)])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_sdpa_math(Nq, Nk, causal):
    q, k, v = rand(2, 3, Nq, 8), rand(2, 3, Nk, 8), rand(2, 3, Nk, 6)
    got = reference.attention(q, k, v, is_causal=causal)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_lse_is_log_sum_exp_of_scaled_scores():
    q, k, v = rand(2, 2, 7, 4), rand(2, 2, 9, 4), rand(2, 2, 9, 4)
    _, L = reference.attention(q, k, v, scale=0.3, return_lse=True)
    S = 0.3 * q @ k.transpose(-1, -2)
    assert L.shape == (2, 2, 7)
    torch.testing.assert_close(L, torch.logsumexp(S, -1), rtol=0, atol=1e-12)


def test_default_scale_is_inverse_sqrt_d():
    q, k, v = rand(1, 1, 4, 9), rand(1, 1, 4, 9), rand(1, 1, 4, 9)
    torch.testing.assert_close(reference.attention(q, k, v), reference.attention(q, k, v, scale=1 / 3.0))


def test_causal_is_top_left_when_nq_differs_from_nk():
    q, k, v = rand(1, 1, 3, 4), rand(1, 1, 5, 4), rand(1, 1, 5, 4)
    mask = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(
        reference.attention(q, k, v, is_causal=True), reference.attention(q, k, v, attn_mask=mask)
    )


def test_boolean_and_additive_masks_agree_and_broadcast():
    q, k, v = rand(2, 3, 6, 4), rand(2, 3, 7, 4), rand(2, 3, 7, 4)
    keep = torch.rand(2, 1, 6, 7) > 0.3
    keep[..., 0] = True
    additive = torch.zeros(2, 1, 6, 7, dtype=f64).masked_fill(~keep, float("-inf"))
    a = reference.attention(q, k, v, attn_mask=keep)
    b = reference.attention(q, k, v, attn_mask=additive)
    c = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_fully_masked_rows_give_zero_output_and_minus_inf_lse():
    q, k, v = rand(1, 2, 4, 4), rand(1, 2, 5, 4), rand(1, 2, 5, 4)
    keep = torch.ones(4, 5, dtype=torch.bool)
    keep[2] = False
    O, L = reference.attention(q, k, v, attn_mask=keep, return_lse=True)
    assert torch.all(O[:, :, 2] == 0) and torch.all(torch.isneginf(L[:, :, 2]))
    assert torch.isfinite(O).all()
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    reference.attention(qq, kk, vv, attn_mask=keep).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (qq, kk, vv))


def test_no_keys_at_all_is_a_fully_masked_row():
    O, L = reference.attention(rand(2, 3, 4, 5), rand(2, 3, 0, 5), rand(2, 3, 0, 7), return_lse=True)
    assert O.shape == (2, 3, 4, 7) and torch.all(O == 0) and torch.all(torch.isneginf(L))


def test_dropout_uses_the_given_keep_mask():
    q, k, v = rand(1, 2, 5, 4), rand(1, 2, 6, 4), rand(1, 2, 6, 4)
    keep = torch.rand(1, 2, 5, 6) > 0.25
    P = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1)
    want = (P * keep / 0.75) @ v
    torch.testing.assert_close(reference.attention(q, k, v, dropout_p=0.25, dropout_mask=keep), want)


def test_gqa_shares_kv_heads_in_groups():
    q, k, v = rand(2, 6, 5, 4), rand(2, 2, 7, 4), rand(2, 2, 7, 4)
    got = reference.attention(q, k, v, enable_gqa=True)
    want = reference.attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1))
    torch.testing.assert_close(got, want)


def test_low_precision_computes_in_that_dtype():
    q, k, v = (rand(1, 1, 64, 32, dtype=torch.float16) for _ in range(3))
    O = reference.attention(q, k, v)
    assert O.dtype == torch.float16
    truth = reference.ground_truth(q, k, v)
    assert truth.dtype == f64
    err = (O.double() - truth).abs().max().item()
    assert 0 < err < 1e-2  # fp16 rounding is visible, and small


def test_backward_matches_sdpa_autograd():
    q, k, v = rand(1, 2, 9, 4), rand(1, 2, 11, 4), rand(1, 2, 11, 4)
    dO = rand(1, 2, 9, 4)
    dq, dk, dv = reference.attention_backward(q, k, v, dO, is_causal=True)
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    F.scaled_dot_product_attention(qq, kk, vv, is_causal=True).backward(dO)
    for a, b in [(dq, qq.grad), (dk, kk.grad), (dv, vv.grad)]:
        torch.testing.assert_close(a, b)


q0, k0, v0 = rand(2, 3, 5, 4), rand(2, 3, 6, 4), rand(2, 3, 6, 4)

BAD_INPUTS = [
    ("query rank", dict(query=rand(3, 5, 4)), ValueError, r"query must be 4-D \(B, H, N, d\), got 3-D"),
    ("key rank", dict(key=rand(2, 3, 6, 4, 1)), ValueError, r"key must be 4-D"),
    ("not a tensor", dict(value=[[1.0]]), TypeError, r"value must be a torch.Tensor, got list"),
    ("batch mismatch", dict(key=rand(1, 3, 6, 4), value=rand(1, 3, 6, 4)), ValueError, r"batch size must match"),
    ("head dim mismatch", dict(key=rand(2, 3, 6, 5)), ValueError, r"key head dim must equal query head dim d=4"),
    ("kv length mismatch", dict(value=rand(2, 3, 7, 4)), ValueError, r"value must have as many rows as key \(Nk=6\)"),
    ("heads mismatch", dict(key=rand(2, 1, 6, 4), value=rand(2, 1, 6, 4)), ValueError, r"enable_gqa"),
    ("integer dtype", dict(query=torch.ones(2, 3, 5, 4, dtype=torch.int64)), TypeError, r"query must have dtype in"),
    ("mixed dtypes", dict(query=q0.float()), TypeError, r"share one dtype"),
    ("mask wrong shape", dict(attn_mask=torch.ones(5, 5, dtype=torch.bool)), ValueError, r"attn_mask of shape \(5, 5\) is not broadcastable to \(B, H, Nq, Nk\) = \(2, 3, 5, 6\)"),
    ("mask wrong dtype", dict(attn_mask=torch.ones(5, 6, dtype=torch.int32)), TypeError, r"attn_mask must be bool"),
    ("mask too many dims", dict(attn_mask=torch.ones(1, 2, 3, 5, 6, dtype=torch.bool)), ValueError, r"at most 4 dims"),
    ("negative scale", dict(scale=-0.5), ValueError, r"scale must be a positive finite number"),
    ("nan scale", dict(scale=float("nan")), ValueError, r"scale must be a positive finite number"),
    ("string scale", dict(scale="0.5"), TypeError, r"scale must be a float or None"),
    ("dropout_p out of range", dict(dropout_p=1.0, dropout_mask=torch.ones(5, 6, dtype=torch.bool)), ValueError, r"dropout_p must be in \[0, 1\)"),
    ("dropout without mask", dict(dropout_p=0.1), ValueError, r"dropout_mask is required"),
    ("mask without dropout", dict(dropout_mask=torch.ones(5, 6, dtype=torch.bool)), ValueError, r"dropout_p is 0"),
    ("float dropout mask", dict(dropout_p=0.1, dropout_mask=torch.ones(5, 6)), TypeError, r"dropout_mask must be bool"),
]


@pytest.mark.parametrize("name,override,exc,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_the_argument(name, override, exc, message):
    kwargs = dict(query=q0, key=k0, value=v0)
    kwargs.update(override)
    with pytest.raises(exc, match=message):
        reference.attention(**kwargs)


def test_gqa_heads_must_divide():
    with pytest.raises(ValueError, match=r"query heads H=3 must be a multiple of key heads 2"):
        reference.attention(q0, rand(2, 2, 6, 4), rand(2, 2, 6, 4), enable_gqa=True)


def test_scale_validation_accepts_python_ints():
    torch.testing.assert_close(reference.attention(q0, k0, v0, scale=1), reference.attention(q0, k0, v0, scale=1.0))
