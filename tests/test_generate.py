"""Generation: greedy / sampling / top-k / top-p / beam search, the KV cache, bad input."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from gpt.generate import KVCache, filter_logits, generate
from gpt.model import GPT, GPTConfig

V = 11


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=24, vocab_size=V, n_layer=2, n_head=2, n_embd=32, kernels="torch"))
    with torch.no_grad():  # larger weights than GPT-2's init: peaked, tie-free distributions
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m.eval()


def prompt(B=2, T=5):
    return torch.randint(0, V, (B, T))


def uncached_greedy(model, idx, n):
    for _ in range(n):
        logits = model(idx[:, -model.config.block_size :])[0][:, -1]
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], 1)
    return idx


@pytest.mark.parametrize("n_new", [1, 10, 40])  # 40: past block_size=24, the window slides
def test_greedy_with_cache_equals_without(model, n_new):
    idx = prompt()
    ref = uncached_greedy(model, idx, n_new)
    assert torch.equal(generate(model, idx, n_new, greedy=True, use_cache=True), ref)
    assert torch.equal(generate(model, idx, n_new, greedy=True, use_cache=False), ref)
    assert torch.equal(model.generate(idx, n_new, greedy=True), ref)


def test_cached_logits_match_full_forward(model):
    idx = prompt(3, 20)
    full = model(idx)[0]
    cache = KVCache(model.config.n_layer, model.config.block_size)
    parts = [model(idx[:, :12], kv_cache=cache)[0]]
    for t in range(12, 20):
        parts.append(model(idx[:, t : t + 1], kv_cache=cache)[0])
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 20
    with pytest.raises(ValueError, match="block_size"):
        model(prompt(3, 5), kv_cache=cache)  # 20 + 5 > 24


def test_sampling_seed_reproducible_and_top_k_one_is_greedy(model):
    idx = prompt()
    torch.manual_seed(5)
    a = generate(model, idx, 15, temperature=1.3, top_k=5, top_p=0.9)
    torch.manual_seed(5)
    b = generate(model, idx, 15, temperature=1.3, top_k=5, top_p=0.9)
    g = torch.Generator().manual_seed(5)
    c = generate(model, idx, 15, temperature=1.3, top_k=5, top_p=0.9, generator=g)
    assert torch.equal(a, b) and a.shape == (2, 20) and torch.equal(a[:, :5], idx)
    assert c.shape == a.shape
    greedy = generate(model, idx, 15, greedy=True)
    assert torch.equal(generate(model, idx, 15, top_k=1), greedy)
    assert torch.equal(generate(model, idx, 15, top_p=1e-6), greedy)
    assert torch.equal(generate(model, idx, 15, temperature=1e-4), greedy)


def test_sampling_follows_the_filtered_distribution(model):
    """Token frequencies of one sampled step match softmax(filtered logits / T)."""
    idx = prompt(1, 4).repeat(4000, 1)
    out = generate(model, idx, 1, temperature=1.5, top_k=6, top_p=0.95)[:, -1]
    logits = model(idx[:1])[0][:, -1]
    probs = filter_logits(logits, 1.5, 6, 0.95).softmax(-1)[0]
    freq = torch.bincount(out, minlength=V).float() / len(out)
    assert torch.all(freq[probs == 0] == 0)
    assert (freq - probs).abs().max() < 0.03


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    keep = lambda **kw: torch.isfinite(filter_logits(logits, **kw))[0].tolist()  # noqa: E731
    assert keep(top_k=2) == [True, True, False, False]
    assert keep(top_p=0.5) == [True, False, False, False]
    assert keep(top_p=0.79) == [True, True, False, False]
    assert keep(top_p=0.81) == [True, True, True, False]
    assert keep(top_p=1.0) == [True] * 4
    assert keep(top_k=3, top_p=0.99) == [True, True, True, False]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.79))[0].tolist() == [False, True, False, True]


def test_beam_search_finds_the_most_likely_sequence(model):
    """With num_beams = V ** (steps - 1) nothing is pruned: beam search is exhaustive."""
    idx = prompt(1, 3)
    steps = 3
    best, best_lp = None, -math.inf
    for seq in itertools.product(range(V), repeat=steps):
        x = torch.cat([idx, torch.tensor([seq])], 1)
        lp = F.log_softmax(model(x)[0][0, 2:-1].float(), -1)
        total = lp[torch.arange(steps), torch.tensor(seq)].sum().item()
        if total > best_lp:
            best, best_lp = list(seq), total
    out, beams = generate(model, idx, steps, num_beams=V ** (steps - 1), return_beams=True)
    assert out[0, 3:].tolist() == best
    assert beams[0][0][0] == pytest.approx(best_lp / steps, abs=1e-4)
    scores = [s for s, _ in beams[0]]
    assert scores == sorted(scores, reverse=True)


def test_beam_search_cache_equals_no_cache_and_batches(model):
    idx = prompt(3, 4)
    a = generate(model, idx, 12, num_beams=3, use_cache=True)
    b = generate(model, idx, 12, num_beams=3, use_cache=False)
    assert torch.equal(a, b) and a.shape == (3, 16)
    for i in range(3):  # each prompt of a batch gives what it gives alone
        assert torch.equal(generate(model, idx[i : i + 1], 12, num_beams=3), a[i : i + 1])
    # num_beams=1-like check: beam search never scores below greedy
    g = generate(model, idx[:1], 12, greedy=True)

    def logprob(seq):
        lp = F.log_softmax(model(seq)[0][0, 3:-1].float(), -1)
        return lp[torch.arange(12), seq[0, 4:]].sum().item()

    assert logprob(a[:1]) >= logprob(g) - 1e-5


def test_eos_stops_rows_and_beam_search(model):
    idx = prompt(4, 3)
    eos = int(generate(model, idx[:1], 1, greedy=True)[0, -1])  # row 0 emits it first
    out = generate(model, idx, 20, greedy=True, eos_token_id=eos)
    for row in out[:, 3:]:
        hits = (row == eos).nonzero()
        if len(hits):
            assert torch.all(row[hits[0, 0]:] == eos)  # padded after its eos
    assert out[0, 3] == eos
    best, beams = generate(model, idx[:1], 20, num_beams=2, eos_token_id=eos, length_penalty=1.0,
                           return_beams=True)
    assert len(beams[0]) == 2
    for _, seq in beams[0]:
        gen = seq[3:].tolist()
        assert eos not in gen[:-1]  # nothing after eos


def test_kv_cache_reorder():
    cache = KVCache(n_layer=1, max_len=4)
    k = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 1).contiguous()
    cache.update(0, k, k)
    cache.advance(2)
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.k[0, :, 0, :2, 0].tolist() == [[2, 2], [2, 2], [0, 0]]
    with pytest.raises(ValueError, match="holds 4 positions"):
        cache.update(0, torch.zeros(3, 1, 3, 1), torch.zeros(3, 1, 3, 1))


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(idx=torch.zeros(1, 0, dtype=torch.long)), ValueError, "empty prompt"),
    (dict(idx=torch.zeros(1, 25, dtype=torch.long)), ValueError, "block_size"),
    (dict(idx=torch.zeros(1, 2)), TypeError, "integer token ids"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(num_beams=0), ValueError, "num_beams"),
    (dict(num_beams=2, greedy=True), ValueError, "greedy"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
])
def test_bad_arguments(model, kwargs, err, match):
    args = dict(idx=torch.zeros(1, 2, dtype=torch.long), max_new_tokens=3)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        generate(model, **args)


def test_greedy_ignores_temperature_zero(model):
    idx = prompt(1, 3)
    assert torch.equal(generate(model, idx, 4, greedy=True, temperature=0.0), uncached_greedy(model, idx, 4))
