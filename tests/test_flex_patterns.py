"""The pattern library (kernels.flex_patterns) against its dense references, and FlexAttention
against SDPA with the dense mask. CPU: torch's flex_attention runs forward (eager and compiled)
on the CPU; there is no flex backward on CPU, so score_mod gradients are checked by autograd
through the mods against the materialised references."""

import pytest
import torch
import torch.nn.functional as F

from kernels import flex_patterns as fp
from kernels import mini_flex as mf

flex = pytest.importorskip("torch.nn.attention.flex_attention")
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

SIZES = [(1, 1), (16, 16), (37, 37), (64, 64), (100, 100), (29, 70), (70, 29)]
MASK_NAMES = [n for n in fp.PATTERN_NAMES if fp.example_patterns(8, names=(n,))[n].has_mask]
SCORE_NAMES = [n for n in fp.PATTERN_NAMES if fp.example_patterns(8, names=(n,))[n].has_score_mod]


def patterns_for(Nq, Nk, H=3, names=fp.PATTERN_NAMES):
    """Every pattern that can be built for (Nq, Nk): documents need Nq == Nk."""
    names = [n for n in names if Nq == Nk or n != "document"]
    return fp.example_patterns(max(Nq, Nk), H=H, names=names, seed=Nq * 1000 + Nk)


def index_grids(B, H, Nq, Nk):
    """b, h, q_idx, kv_idx broadcastable to (B, H, Nq, Nk): the mods called on every pair at once."""
    return (torch.arange(B)[:, None, None, None], torch.arange(H)[None, :, None, None],
            torch.arange(Nq)[None, None, :, None], torch.arange(Nk)[None, None, None, :])


@pytest.mark.parametrize("Nq,Nk", SIZES)
def test_mask_mods_equal_dense_reference_over_all_pairs(Nq, Nk):
    B, H = 2, 3
    for name, p in patterns_for(Nq, Nk, H).items():
        if not p.has_mask:
            continue
        want = p.dense_mask(B, H, Nq, Nk)
        assert want.shape == (B, H, Nq, Nk) and want.dtype == torch.bool
        # as FlexAttention evaluates it (vmap over b, h, q_idx, kv_idx)
        got = flex.create_mask(p.mask_mod, B, H, Nq, Nk, device="cpu")
        assert torch.equal(got, want), f"{name} ({Nq}, {Nk}): {(got != want).sum()} pairs differ"
        # and called once on broadcast index grids
        got2 = p.mask_mod(*index_grids(B, H, Nq, Nk)).expand(B, H, Nq, Nk)
        assert torch.equal(got2, want), name


def test_dense_references_by_hand():
    """A few masks written out entry by entry, so the references themselves are checked."""
    i, j = torch.arange(6)[:, None], torch.arange(6)[None, :]
    cases = {
        "causal": (fp.causal(), j <= i),
        "window 1": (fp.sliding_window(1), (i - j).abs() <= 1),
        "causal window 2": (fp.causal_sliding_window(2), (j <= i) & (i - j <= 2)),
        "prefix 2": (fp.prefix_lm(2), (j <= i) | (j < 2)),
        "dilated 1x2": (fp.dilated_sliding_window(1, 2), torch.isin((i - j).abs(), torch.tensor([0, 2]))),
        "global 1 + window 0": (fp.global_local(0, 1), (i == j) | (i == 0) | (j == 0)),
    }
    for label, (p, want) in cases.items():
        assert torch.equal(p.dense_mask(1, 1, 6, 6)[0, 0], want), label
    doc = fp.document(fp.document_ids_from_lengths([2, 3, 1]))
    want = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0],
                         [0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(doc.dense_mask(1, 1, 6, 6)[0, 0], want)
    dc = fp.document(fp.document_ids_from_lengths([2, 3, 1]), causal=True)
    assert torch.equal(dc.dense_mask(1, 1, 6, 6)[0, 0], want & (j <= i))


def test_per_batch_prefix_and_documents():
    p = fp.prefix_lm(torch.tensor([0, 3, 7]))
    assert torch.equal(flex.create_mask(p.mask_mod, 3, 1, 9, 9, device="cpu"), p.dense_mask(3, 1, 9, 9))
    ids = torch.stack([fp.document_ids_from_lengths([4, 5]), fp.document_ids_from_lengths([1, 2, 6])])
    for causal in (False, True):
        p = fp.document(ids, causal=causal)
        assert torch.equal(flex.create_mask(p.mask_mod, 2, 1, 9, 9, device="cpu"), p.dense_mask(2, 1, 9, 9))


def brute_force_blocks(mask, B_r, B_c):
    """(partial counts, full counts) per query block row, by looking at every tile in turn."""
    Nq, Nk = mask.shape
    T_r, T_c = -(-Nq // B_r), -(-Nk // B_c)
    partial, full = torch.zeros(T_r, dtype=torch.int32), torch.zeros(T_r, dtype=torch.int32)
    for r in range(T_r):
        for c in range(T_c):
            tile = torch.zeros(B_r, B_c, dtype=torch.bool)  # padding counts as masked
            sub = mask[r * B_r:(r + 1) * B_r, c * B_c:(c + 1) * B_c]
            tile[: sub.shape[0], : sub.shape[1]] = sub
            if tile.all():
                full[r] += 1
            elif tile.any():
                partial[r] += 1
    return partial, full


@pytest.mark.parametrize("Nq,Nk,block", [(64, 64, 16), (100, 100, 16), (37, 37, 32), (29, 70, 16), (130, 130, 64)])
def test_block_mask_sparsity_matches_dense_mask(Nq, Nk, block):
    B, H = 1, 3
    for name, p in patterns_for(Nq, Nk, H).items():
        if not p.has_mask:
            continue
        dense = p.dense_mask(B, H, Nq, Nk)
        ours = mf.block_mask_from_dense(dense, block)
        theirs = p.block_mask(B, H, Nq, Nk, "cpu", BLOCK_SIZE=block)
        partial, full = brute_force_blocks(dense[0, 0], block, block)
        assert torch.equal(ours.kv_num_blocks[0, 0], partial), name
        assert torch.equal(ours.full_kv_num_blocks[0, 0], full), name
        Bt = theirs.kv_num_blocks.shape[0]
        assert torch.equal(ours.kv_num_blocks[:Bt], theirs.kv_num_blocks.expand_as(ours.kv_num_blocks[:Bt])), name
        assert torch.equal(ours.full_kv_num_blocks[:Bt], theirs.full_kv_num_blocks.expand_as(ours.full_kv_num_blocks[:Bt])), name
        # the same set of blocks, and the transposed lists agree with the forward ones
        got = ours.block_map()
        want = (theirs.to_dense() > 0).to(torch.int8)
        assert torch.equal((got[:Bt] > 0).to(torch.int8), want.expand_as(got[:Bt])), name
        assert torch.equal(ours.q_num_blocks.sum(-1), ours.kv_num_blocks.sum(-1)), name
        # sparsity: the skipped tiles are exactly the tiles with no attended pair
        T_r, T_c = ours.shape[-2:]
        assert ours.sparsity() == pytest.approx(1 - float((partial + full).sum()) / (T_r * T_c))


def sdpa_reference(q, k, v, p):
    """SDPA with the pattern's dense mask (and its bias as an additive float mask when the
    score_mod is a bias)."""
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    mask = p.dense_mask(B, H, Nq, Nk)
    if not p.has_score_mod:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    zeros = torch.zeros(B, H, Nq, Nk, dtype=q.dtype)
    bias = p.dense_scores(zeros)  # a bias-type score_mod: score + bias
    bias = bias.masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


@pytest.mark.parametrize("Nq,Nk", [(37, 37), (64, 64), (29, 70)])
def test_flex_eager_forward_matches_sdpa_with_dense_mask(Nq, Nk):
    g = torch.Generator().manual_seed(Nq + Nk)
    B, H, d = 2, 3, 16
    for name, p in patterns_for(Nq, Nk, H).items():
        q, k, v = (torch.randn(B, H, n, d, generator=g, dtype=torch.float64) for n in (Nq, Nk, Nk))
        bm = p.block_mask(B, H, Nq, Nk, "cpu", BLOCK_SIZE=16)
        got = flex.flex_attention(q, k, v, score_mod=p.score_mod, block_mask=bm)
        want = fp.reference_attention(q, k, v, p)
        if name != "softcap":  # SDPA cannot soft-cap; the materialised reference can
            rows = p.dense_mask(B, H, Nq, Nk).any(-1)  # SDPA gives NaN on rows with nothing to attend
            sd = sdpa_reference(q, k, v, p)
            assert torch.allclose(sd[rows], want[rows], atol=1e-12), name
        assert torch.allclose(got, want, atol=1e-6), f"{name}: {(got - want).abs().max():.3g}"


def test_flex_compiled_forward_matches_sdpa_with_dense_mask():
    """torch.compile(flex_attention) on the CPU (C++ codegen): one mask pattern with a captured
    buffer and one bias pattern, float32."""
    compiled = torch.compile(flex.flex_attention)
    g = torch.Generator().manual_seed(0)
    B, H, N, d = 1, 2, 96, 16
    for name, p in fp.example_patterns(N, H=H, names=("document", "alibi")).items():
        q, k, v = (torch.randn(B, H, N, d, generator=g) for _ in range(3))
        bm = p.block_mask(B, H, N, N, "cpu", BLOCK_SIZE=32)
        got = compiled(q, k, v, score_mod=p.score_mod, block_mask=bm)
        want = sdpa_reference(q.double(), k.double(), v.double(), p)
        assert (got.double() - want).abs().max() < 1e-5, name


@pytest.mark.parametrize("name", SCORE_NAMES)
def test_score_mod_gradients_match_materialised_reference(name):
    """Autograd through the score_mod (as flex would trace it) equals autograd through the
    dense reference, for the scores and for a learnable buffer."""
    B, H, Nq, Nk = 2, 3, 21, 34
    p = fp.example_patterns(max(Nq, Nk), H=H, names=(name,), learnable=True)[name]
    g = torch.Generator().manual_seed(1)
    S = (3 * torch.randn(B, H, Nq, Nk, generator=g, dtype=torch.float64)).requires_grad_()
    upstream = torch.randn(B, H, Nq, Nk, generator=g, dtype=torch.float64)
    params = [S] + ([p.score_buffer] if p.learnable else [])

    got = p.score_mod(S, *index_grids(B, H, Nq, Nk))
    got_grads = torch.autograd.grad(got, params, upstream)
    want = p.dense_scores(S)
    want_grads = torch.autograd.grad(want, params, upstream)
    assert torch.allclose(got, want, atol=1e-6)
    for a, b in zip(got_grads, want_grads):
        assert torch.allclose(a.double(), b.double(), atol=1e-5)
    if name == "softcap":  # the closed form: d/dx cap·tanh(x/cap) = 1 - tanh²(x/cap)
        cap = p.params["cap"]
        assert torch.allclose(got_grads[0], upstream * (1 - torch.tanh(S / cap) ** 2), atol=1e-12)
        assert float(got.detach().abs().max()) < cap
    elif name == "relative_bias":  # dtable[h, r] = Σ over pairs at clamped distance r of upstream
        R = p.score_int
        i, j = torch.arange(Nq)[:, None], torch.arange(Nk)[None, :]
        r = (i - j).clamp(-R, R) + R
        want_table = torch.zeros(H, 2 * R + 1, dtype=torch.float64)
        for h in range(H):
            want_table[h].index_add_(0, r.reshape(-1), upstream[:, h].sum(0).reshape(-1))
        assert torch.allclose(got_grads[1].double(), want_table, atol=1e-5)


def test_alibi_slopes():
    s = fp.alibi_slopes(8)
    assert torch.allclose(s, torch.tensor([2.0 ** -(h + 1) for h in range(8)]))
    assert (s[1:] < s[:-1]).all()  # head 0 gets the steepest slope


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="window"):
        fp.sliding_window(-1)
    with pytest.raises(ValueError, match="dilation"):
        fp.dilated_sliding_window(2, 0)
    with pytest.raises(ValueError, match="non-decreasing"):
        fp.document(torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="cap"):
        fp.softcap(0.0)
    with pytest.raises(ValueError, match="table"):
        fp.relative_bias(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="length"):
        fp.document(torch.zeros(8, dtype=torch.int32)).dense_mask(1, 1, 9, 9)
    with pytest.raises(ValueError, match="prefix lengths"):
        fp.prefix_lm(torch.tensor([1, 2])).dense_mask(3, 1, 4, 4)
