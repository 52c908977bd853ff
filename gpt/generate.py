"""Text generation: greedy, temperature / top-k / top-p sampling, beam search, a KV cache.

    from gpt.generate import generate
    out = generate(model, idx, max_new_tokens=100, temperature=0.8, top_k=200)   # sampling
    out = generate(model, idx, 50, greedy=True)                                  # argmax
    out = generate(model, idx, 50, num_beams=4, eos_token_id=50256)              # beam search

With `use_cache=True` (the default) the prompt runs once through the model (prefill), filling
preallocated per-layer key/value buffers, and every later step feeds only the newest token:
its query attends to the cached keys through `gpt_kernels.flash_attention` with Tq < Tk
(bottom-right causal alignment). Without the cache every step re-runs the whole context.

Context-length policy: the model has `block_size` position embeddings. Once prompt + generated
tokens exceed it, each further step slides the window: it re-runs the last `block_size`
tokens from scratch (positions 0..block_size-1), exactly as the uncached path and nanoGPT do,
so cached and uncached outputs stay identical; only those steps lose the cache's speed-up.
"""


import torch
import torch.nn.functional as F


class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    Buffers are (n_layer, B, n_head, max_len, head_dim), allocated on the first `update` with
    the dtype of the keys (bf16 under autocast). `length` is how many positions are filled.
    """

    def __init__(self, n_layer, max_len):
        self.n_layer, self.max_len = n_layer, max_len
        self.k = self.v = None
        self.length = 0

    def update(self, layer, k, v):
        """Write k, v (B, H, T, D) at positions [length, length + T); return the keys and
        values of positions [0, length + T) of this layer (views, no copy)."""
        B, H, T, D = k.shape
        if self.k is None:
            shape = (self.n_layer, B, H, self.max_len, D)
            self.k = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.v = torch.empty(shape, dtype=v.dtype, device=v.device)
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n):
        """Mark n more positions as filled (the model calls this after its last layer)."""
        self.length += n

    def reorder(self, rows):
        """Keep batch rows `rows` (a 1-D index tensor), e.g. the surviving beams of a step."""
        if self.k is not None:
            self.k = self.k.index_select(1, rows)
            self.v = self.v.index_select(1, rows)


def _check_args(model, idx, max_new_tokens, temperature, top_k, top_p, greedy, num_beams):
    if not torch.is_tensor(idx) or idx.dim() != 2 or idx.shape[1] == 0:
        shape = tuple(idx.shape) if torch.is_tensor(idx) else type(idx).__name__
        raise ValueError(f"idx must be a non-empty (B, T) tensor of token ids (an empty prompt "
                         f"has nothing to continue), got {shape}")
    if idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"idx must hold integer token ids, got dtype {idx.dtype}")
    if idx.shape[1] > model.config.block_size:
        raise ValueError(f"the prompt has {idx.shape[1]} tokens, more than the model's "
                         f"block_size {model.config.block_size}; shorten it")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not greedy and num_beams == 1 and not temperature > 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature!r} "
                         f"(use greedy=True for argmax decoding)")
    if top_k is not None and (not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
    if num_beams > 1 and greedy:
        raise ValueError("greedy=True and num_beams > 1 are different strategies; pick one")


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None):
    """(B, V) logits -> (B, V) float32 logits with the unwanted tokens at -inf.

    temperature divides the logits; top_k keeps the k largest; top_p (nucleus) keeps the
    smallest set of most likely tokens whose probabilities sum to at least top_p (the most
    likely token always stays). Applied in that order, as Hugging Face does.
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already reach top_p
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class _Stepper:
    """Next-token logits for a growing batch of sequences, with or without the KV cache."""

    def __init__(self, model, use_cache):
        # A bidirectional model (causal=False) changes every earlier position's keys when a
        # token is appended, so cached keys would be stale: it always re-runs the context.
        use_cache = use_cache and getattr(model.config, "causal", True)
        self.model, self.use_cache = model, use_cache
        self.block_size = model.config.block_size
        self.cache = KVCache(model.config.n_layer, self.block_size) if use_cache else None
        self.fed = 0  # tokens of the current sequences already in the cache

    def logits(self, idx):
        """Logits (B, V) for the token after idx (B, T)."""
        T = idx.shape[1]
        if self.cache is None or T > self.block_size:
            # uncached, or past the context: re-run the last block_size tokens (sliding window)
            self.cache = None
            return self.model(idx[:, -self.block_size :], last_only=True)[0][:, -1, :]
        new = idx[:, self.fed :]  # the whole prompt at prefill, then one token per step
        self.fed = T
        return self.model(new, kv_cache=self.cache, last_only=True)[0][:, -1, :]

    def reorder(self, rows):
        if self.cache is not None:
            self.cache.reorder(rows)


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False,
             num_beams=1, use_cache=True, eos_token_id=None, length_penalty=1.0,
             return_beams=False, generator=None):
    """Continue idx (B, T) by up to max_new_tokens tokens; returns (B, T + n) token ids.

    greedy: argmax each step. Otherwise sampling with temperature / top_k / top_p (any
    combination), drawing from `generator` (or torch's global RNG, so torch.manual_seed gives
    the same text). num_beams > 1: beam search (see `beam_search`). With eos_token_id, a row
    that produced it stops and is padded with eos_token_id; generation ends when all rows have.
    """
    _check_args(model, idx, max_new_tokens, temperature, top_k, top_p, greedy, num_beams)
    was_training = model.training
    model.eval()
    try:
        if num_beams > 1:
            return beam_search(model, idx, max_new_tokens, num_beams, use_cache=use_cache,
                               eos_token_id=eos_token_id, length_penalty=length_penalty,
                               return_beams=return_beams)
        stepper = _Stepper(model, use_cache)
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            logits = stepper.logits(idx)
            if greedy:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
                nxt = torch.multinomial(probs, num_samples=1, generator=generator)
            if eos_token_id is not None:
                nxt = nxt.masked_fill(done.unsqueeze(1), eos_token_id)
                done = done | (nxt.squeeze(1) == eos_token_id)
            idx = torch.cat((idx, nxt.to(idx.dtype)), dim=1)
            if eos_token_id is not None and bool(done.all()):
                break
        return idx
    finally:
        model.train(was_training)


@torch.no_grad()
def beam_search(model, idx, max_new_tokens, num_beams, use_cache=True, eos_token_id=None,
                length_penalty=1.0, return_beams=False):
    """Beam search: keep the num_beams most likely continuations of each prompt.

    A hypothesis that emits eos_token_id is finished; its score is its summed log-probability
    divided by (number of generated tokens) ** length_penalty (> 1 favours longer outputs).
    A prompt stops early once it has num_beams finished hypotheses and none of its running
    beams can beat the worst of them. Returns the best sequence per prompt, (B, T + n), padded
    with eos_token_id (or 0 without one); with return_beams also, per prompt, a list of
    (score, sequence) for all kept hypotheses, best first.
    """
    B, T0 = idx.shape
    device = idx.device
    beams = idx.repeat_interleave(num_beams, dim=0)  # (B * nb, T)
    # only the first copy of each prompt is live at the start, so the first step does not
    # pick the same token num_beams times
    scores = torch.full((B, num_beams), float("-inf"), device=device)
    scores[:, 0] = 0.0
    scores = scores.view(-1)
    finished = [[] for _ in range(B)]  # (normalised score, tokens) per prompt
    stepper = _Stepper(model, use_cache)

    def norm(score, n_new):
        return score / (max(n_new, 1) ** length_penalty)

    for step in range(max_new_tokens):
        logprobs = F.log_softmax(stepper.logits(beams).float(), dim=-1)  # (B * nb, V)
        V = logprobs.shape[-1]
        cand = (scores.unsqueeze(1) + logprobs).view(B, num_beams * V)
        top_scores, top_ids = cand.topk(2 * num_beams, dim=1)  # room for eos candidates
        new_rows, new_tokens, new_scores = [], [], []
        for b in range(B):
            picked = 0
            for s, flat in zip(top_scores[b].tolist(), top_ids[b].tolist()):
                beam, token = divmod(flat, V)
                row = b * num_beams + beam
                if eos_token_id is not None and token == eos_token_id:
                    if len(finished[b]) < num_beams or norm(s, step + 1) > finished[b][-1][0]:
                        finished[b].append((norm(s, step + 1), beams[row].tolist() + [token]))
                        finished[b].sort(key=lambda h: -h[0])
                        del finished[b][num_beams:]
                    continue
                new_rows.append(row)
                new_tokens.append(token)
                new_scores.append(s)
                picked += 1
                if picked == num_beams:
                    break
        rows = torch.tensor(new_rows, device=device)
        beams = torch.cat([beams[rows], torch.tensor(new_tokens, device=device).unsqueeze(1).to(beams.dtype)], 1)
        scores = torch.tensor(new_scores, device=device)
        stepper.reorder(rows)
        if eos_token_id is not None and all(
            len(finished[b]) == num_beams
            and norm(scores[b * num_beams].item(), step + 1) <= finished[b][-1][0]
            for b in range(B)
        ):
            break

    n_new = beams.shape[1] - T0
    results = []
    for b in range(B):
        hyps = list(finished[b])
        for j in range(num_beams):  # running beams compete with the finished ones
            hyps.append((norm(scores[b * num_beams + j].item(), n_new), beams[b * num_beams + j].tolist()))
        hyps.sort(key=lambda h: -h[0])
        results.append(hyps[:num_beams])
    pad = eos_token_id if eos_token_id is not None else 0
    width = max(len(h[0][1]) for h in results)
    best = torch.full((B, width), pad, dtype=idx.dtype, device=device)
    for b, hyps in enumerate(results):
        best[b, : len(hyps[0][1])] = torch.tensor(hyps[0][1], dtype=idx.dtype, device=device)
    if return_beams:
        return best, [[(s, torch.tensor(t, dtype=idx.dtype)) for s, t in hyps] for hyps in results]
    return best
