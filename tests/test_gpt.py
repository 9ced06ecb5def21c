"""The capstone's pieces: the shipped corpus, the tokenizer, and the GPT whose loss curve with
the course's attention matches the same model with torch SDPA (same seed, same batches)."""

import pytest
import torch

from kernels import data, device, gpt


def corpus():
    text = data.load_text()
    tok = gpt.CharTokenizer(text)
    return text, tok, tok.encode(text)


def test_shipped_corpus_is_the_generators_output_and_small():
    text = data.load_text()
    assert text == data.generate(), "tiny_tales.txt differs from kernels.data.generate(): run python -m kernels.data"
    assert 50_000 <= len(text.encode()) <= 200_000


def test_tokenizer_round_trip():
    text, tok, ids = corpus()
    assert tok.decode(tok.encode(text[:500])) == text[:500]
    assert ids.dtype == torch.long and int(ids.max()) < tok.vocab_size


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="attention"):
        gpt.GPTConfig(vocab_size=10, attention="flash3")
    with pytest.raises(ValueError, match="multiple of n_head"):
        gpt.GPTConfig(vocab_size=10, n_embd=30, n_head=4)


def test_sequence_longer_than_block_size_is_rejected():
    model = gpt.GPT(gpt.GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=16, attention="sdpa"))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))


def _curves(attention, dev, steps, amp=None, seed=0, **model):
    _, tok, ids = corpus()
    cfg = gpt.GPTConfig(vocab_size=tok.vocab_size, attention=attention, **model)
    return gpt.train(cfg, ids, steps=steps, batch_size=8, lr=3e-3, seed=seed, dev=dev, amp_dtype=amp)["losses"]


def test_tiled_attention_trains_like_sdpa_on_cpu():
    small = dict(block_size=32, n_layer=1, n_head=2, n_embd=32, tile=16)
    course = _curves("tiled", "cpu", 25, **small)
    sdpa = _curves("sdpa", "cpu", 25, **small)
    other_seed = _curves("sdpa", "cpu", 25, seed=1, **small)
    gap = max(abs(a - b) for a, b in zip(course, sdpa))
    seed_gap = max(abs(a - b) for a, b in zip(sdpa, other_seed))
    assert gap < 1e-4, f"course vs SDPA loss gap {gap:.2e}"
    assert gap < seed_gap / 100, "the kernels should agree far more closely than two seeds"
    assert sum(course[-5:]) / 5 < course[0] - 0.5, "the loss should fall"


def test_train_stops_at_the_time_budget():
    _, tok, ids = corpus()
    cfg = gpt.GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, attention="sdpa")
    r = gpt.train(cfg, ids, steps=10_000, batch_size=2, seed=0, dev="cpu", time_budget_s=0.0)
    assert r["stopped_early"] and len(r["losses"]) == 1


@pytest.mark.gpu
def test_triton_attention_trains_like_sdpa_on_gpu():
    pytest.importorskip("kernels.triton_forward")
    small = dict(block_size=128, n_layer=2, n_head=4, n_embd=256)
    course = _curves("triton", "cuda", 30, amp=torch.bfloat16, **small)
    sdpa = _curves("sdpa", "cuda", 30, amp=torch.bfloat16, **small)
    other_seed = _curves("sdpa", "cuda", 30, amp=torch.bfloat16, seed=1, **small)
    assert all(torch.isfinite(torch.tensor(course)))
    gap = sum(abs(a - b) for a, b in zip(course[15:], sdpa[15:])) / 15
    seed_gap = sum(abs(a - b) for a, b in zip(sdpa[15:], other_seed[15:])) / 15
    assert gap < seed_gap / 3, f"course vs SDPA {gap:.3g}, seed 0 vs 1 {seed_gap:.3g}"


def test_course_attention_picks_the_device_path():
    assert gpt.attention_fn("course", torch.device("cpu")) is not None
    if device.HAS_CUDA:
        assert gpt.attention_fn("course", torch.device("cuda")) is not None
