"""Sampled futures that share one prefill, and task predictions from them.

A probability from simulation: for each label row the model reads the patient's history up
to prediction_time and samples N futures through the task's window; the fraction of futures
in which an outcome code occurs in the window is the predicted probability. A future that the
model ends ([EOS]: it learned that records stop, at the end of follow-up) before the window's
end, without the outcome or a death, is censored and left out of the fraction, as a censored
record gives no label row.

The N futures of one row share their history. `evaluate.continue_timeline` prefills N copies
of it (`[prompt] * N`: N x L prompt tokens through the model); `sample_futures` prefills each
history once (L tokens) and copies its keys and values to the N futures (`KVCache.reorder`
with a repeated index), then decodes the futures of many rows in one batch. Rows are batched
with others of the same prompt length (positions are shared across a batch: the model has
absolute position embeddings and no padding mask), up to `max_batch` futures per batch.

Each row draws its tokens from its own generator, seeded by (seed, row): N uniforms per
decoding step, turned into tokens by the inverse CDF of the step's distribution, drawn for
every future of the row whether it is still running or not. A row's futures therefore do
not depend on which rows share its batch or on whether its prefill is shared:
`shared_prefill=False` (N copies, one row at a time, as today's path) gives the same futures
up to float rounding of the logits in different batch shapes.
"""

from __future__ import annotations

import numpy as np
import torch

from gpt.generate import KVCache

DAY_MINUTES = 1440.0


def row_generator(seed, row):
    """The torch.Generator of label row `row` (independent streams per (seed, row))."""
    state = np.random.SeedSequence([int(seed), int(row)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _inverse_cdf(probs, u):
    """Token index per row of probs (B, V) for uniforms u (B,) in [0, 1): the first index whose
    cumulative probability exceeds u (float64, so the draw only depends on the probabilities)."""
    cdf = probs.double().cumsum(-1)
    cdf = cdf / cdf[:, -1:]
    return torch.searchsorted(cdf, u[:, None].to(cdf)).squeeze(1).clamp_max(probs.shape[-1] - 1)


def _groups(prompts, num_samples, shared_prefill, max_batch):
    """Lists of row indices decoded together: rows of equal prompt length, at most max_batch
    futures (at least one row) per group; one row per group without a shared prefill."""
    if not shared_prefill:
        return [[r] for r in range(len(prompts))]
    per = max(1, max_batch // num_samples)
    order = sorted(range(len(prompts)), key=lambda r: (len(prompts[r]), r))
    groups, cur = [], []
    for r in order:
        if cur and (len(prompts[r]) != len(prompts[cur[0]]) or len(cur) == per):
            groups.append(cur)
            cur = []
        cur.append(r)
    return groups + ([cur] if cur else [])


@torch.no_grad()
def _sample_group(model, tok, x, horizons, gens, num_samples, max_new_tokens, temperature,
                  shared_prefill):
    """Futures of R rows of equal prompt length, x (R, L): (R * N, max_new_tokens) token ids
    (-1 after a future's end) and (R * N,) lengths; future j of row r is row r * N + j."""
    block = model.config.block_size
    n_layer = model.config.n_layer
    device = x.device
    R, N = x.shape[0], num_samples
    cache = KVCache(n_layer, block)
    if shared_prefill:
        logits, _ = model(x, kv_cache=cache, last_only=True)  # (R, 1, V): one prefill per row
        expand = torch.arange(R, device=device).repeat_interleave(N)
        cache.reorder(expand)  # each row's keys/values copied to its N futures
        logits = logits[expand]
    else:
        logits, _ = model(x.repeat_interleave(N, 0), kv_cache=cache, last_only=True)
    gap = torch.as_tensor(tok.gap_minutes, dtype=torch.float64, device=device)
    horizon = torch.as_tensor(horizons, dtype=torch.float64, device=device).repeat_interleave(N)
    B = R * N
    rows = torch.arange(B, device=device)  # which future each batch row holds
    seq = x.repeat_interleave(N, 0)  # tokens of each batch row so far (for a context restart)
    clock = torch.zeros(B, dtype=torch.float64, device=device)
    running = torch.ones(B, dtype=torch.bool, device=device)  # per batch row
    new = torch.full((B, max_new_tokens), -1, dtype=torch.long, device=device)
    length = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        # every future's uniform is drawn each step, running or not, so that a row's draws
        # never depend on the others
        u = torch.cat([torch.rand(N, generator=g, dtype=torch.float64) for g in gens]).to(device)
        probs = torch.softmax(logits[:, -1].float() / temperature, dim=-1)
        nxt = _inverse_cdf(probs, u[rows])
        nxt = torch.where(running, nxt, tok.eos_token)
        new[rows[running], step] = nxt[running]
        clock += gap[nxt]
        ended = running & ((nxt == tok.eos_token) | (clock > horizon[rows]))
        length[rows[ended]] = step + 1
        running &= ~ended
        if not bool(running.any()):
            break
        seq = torch.cat([seq, nxt[:, None]], 1)
        if int((~running).sum()) * 4 >= len(rows):  # drop finished futures once they are 1/4
            keep = running.nonzero()[:, 0]
            rows, seq, clock, running, nxt = rows[keep], seq[keep], clock[keep], running[keep], nxt[keep]
            cache.reorder(keep)
        if cache.length >= block:  # context full: restart the cache on the last half window
            cache = KVCache(n_layer, block)
            logits, _ = model(seq[:, -(block // 2):], kv_cache=cache, last_only=True)
        else:
            logits, _ = model(nxt[:, None], kv_cache=cache, last_only=True)
    return new.cpu(), length.cpu()


@torch.no_grad()
def sample_futures(model, tok, prompts, horizons, num_samples, max_new_tokens=256,
                   temperature=1.0, device="cpu", seed=0, shared_prefill=True, max_batch=512,
                   rows=None, on_group=None):
    """num_samples futures of each prompt (a list of token-id lists), each until its clock
    passes horizons[r] minutes (after the prompt's last event), [EOS] or max_new_tokens.

    Returns, per prompt, a list of num_samples token-id lists (the new tokens, up to and
    including the one that ended the future). rows: the label-row numbers that seed each
    prompt's generator (default 0..R-1); on_group(n_rows_done) is called after each batch.
    """
    block = model.config.block_size
    prompts = [list(p)[-(block - 1):] for p in prompts]
    rows = range(len(prompts)) if rows is None else rows
    gens = [row_generator(seed, r) for r in rows]
    out = [None] * len(prompts)
    done = 0
    for group in _groups(prompts, num_samples, shared_prefill, max_batch):
        x = torch.tensor([prompts[r] for r in group], dtype=torch.long, device=device)
        new, length = _sample_group(model, tok, x, [horizons[r] for r in group],
                                    [gens[r] for r in group], num_samples, max_new_tokens,
                                    temperature, shared_prefill)
        new, length = new.tolist(), length.tolist()
        for i, r in enumerate(group):
            out[r] = [new[i * num_samples + j][: length[i * num_samples + j]]
                      for j in range(num_samples)]
        done += len(group)
        if on_group is not None:
            on_group(done)
    return out


# ----------------------------------------------------------------------------------------
# task predictions


def task_prompts(tok, timelines, labels):
    """(prompts, delta_minutes): for each label row, the token ids of the patient's MEDS rows at
    or before prediction_time (without [EOS]: the record goes on), and the minutes from its last
    timed row to prediction_time (a sampled future's clock starts at that row)."""
    prompts, delta = [], np.zeros(len(labels["patient"]))
    for r, (p, n, t_pred) in enumerate(zip(labels["patient"], labels["n_rows"],
                                            labels["prediction_time"])):
        times, codes, values = timelines.patient(int(p))
        static = timelines.static(int(p))
        ids, _ = tok.encode_patient(times[:n], codes[:n], values[:n], static[:n])
        prompts.append(list(ids[:-1]))
        timed = np.flatnonzero(~static[:n])
        last = times[timed[-1]] if timed.size else t_pred
        delta[r] = (int(t_pred) - int(last)) / 60e6
    return prompts, delta


def future_outcome(tok, future, codes, start_minutes, end_minutes, death_code="MEDS_DEATH"):
    """The outcome of one sampled future for a window (start, end] minutes after its first
    token: True if one of `codes` (exact, or prefixes ending in '*') occurs in the window;
    False if it does not and the future is seen to the window's end (its clock passes it) or
    dies first; None if the future stops before ([EOS]: the model ended the record, or the
    token budget) without either, a censored future, like the records labels leave out."""
    from gpt.events.labels import matches

    for t, c, _ in tok.decode_events([tok.timeline_token, *future]):
        if t is None or t > end_minutes:
            continue
        if t > start_minutes and matches(c, codes):
            return True
        if c == death_code:
            return False
    return False if float(tok.gap_minutes[list(future)].sum()) > end_minutes else None


def outcome_fraction(outcomes):
    """The predicted probability of one row from its futures' outcomes (future_outcome): the
    fraction with the outcome among the futures that are not censored (0 when all are)."""
    known = [o for o in outcomes if o is not None]
    return float(np.mean(known)) if known else 0.0


SAMPLERS = ("shared", "copies", "today")


def predict_task(model, tok, timelines, labels, task, num_samples=20, max_new_tokens=256,
                 temperature=1.0, device="cpu", seed=0, sampler="shared", max_batch=512,
                 on_group=None):
    """(probability (R,), futures, prefill_tokens, censored) for the label rows: the fraction
    of each row's sampled futures with an outcome code in the window (prediction_time,
    + window_days], among the futures that are not censored (future_outcome); `censored` is
    the fraction of all futures that were.

    sampler: "shared" (sample_futures: one prefill per row, rows batched), "copies"
    (sample_futures without the shared prefill: the same futures for the same seed) or
    "today" (evaluate.continue_timeline, N prefilled copies per row from torch's global RNG
    seeded with `seed`: the path `gpt.events sample` takes, for timing comparisons).
    prefill_tokens counts the prompt tokens run through the model at the prefills."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    prompts, delta = task_prompts(tok, timelines, labels)
    block = model.config.block_size
    window = task.window_days * DAY_MINUTES
    if sampler == "today":
        from gpt.events.evaluate import continue_timeline

        torch.manual_seed(seed)
        futures = []
        for r, (prompt, d) in enumerate(zip(prompts, delta)):
            futures.append(continue_timeline(model, tok, prompt, num_samples, d + window,
                                             max_new_tokens, temperature, device))
            if on_group is not None:
                on_group(r + 1)
    else:
        futures = sample_futures(model, tok, prompts, delta + window, num_samples,
                                 max_new_tokens, temperature, device, seed,
                                 sampler == "shared", max_batch, on_group=on_group)
    lengths = np.array([min(len(p), block - 1) for p in prompts])
    prefill_tokens = int(lengths.sum()) * (1 if sampler == "shared" else num_samples)
    outcome = tuple(task.outcome)
    outcomes = [[future_outcome(tok, f, outcome, d, d + window, task.death_code) for f in fs]
                for fs, d in zip(futures, delta)]
    prob = np.array([outcome_fraction(o) for o in outcomes])
    censored = float(np.mean([o is None for os_ in outcomes for o in os_]))
    return prob, futures, prefill_tokens, censored


def true_task_probability(process, timelines, labels, task, sims=200, seed=0):
    """(R, sims) bool: whether an outcome code occurs within window_days after prediction_time
    in each of `sims` futures of the true synthetic process, simulated from each row's state
    (its MEDS rows at or before prediction_time replayed; the process is memoryless, so the
    state after the last event is the state at prediction_time). The mean over sims is the
    row's true outcome probability, up to Monte Carlo error."""
    patients = [timelines.patient(int(p)) for p in labels["patient"]]
    _, state = process.replay(patients, stop=[int(n) - 3 for n in labels["n_rows"]])
    R = len(patients)
    rep = np.repeat(np.arange(R), sims)
    rng = np.random.default_rng(seed)
    ev_rows, _, ev_k, _ = process.simulate(state.take(rep), np.zeros(len(rep)),
                                           np.full(len(rep), float(task.window_days)), rng)
    hit = np.zeros(len(rep), dtype=bool)
    from gpt.events.labels import matching

    ks = [process.index[c] for c in matching(process.codes, task.outcome)]
    hit[ev_rows[np.isin(ev_k, ks)]] = True
    return hit.reshape(R, sims)
