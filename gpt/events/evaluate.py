"""Scoring a trained event model: next-event metrics and sampled futures.

`next_event_metrics` runs the model over held-out patients (windows of block_size tokens,
sliding by half a window for long patients, so every token sees at least half a window of
context) and reports:

- perplexity: exp of the mean negative log-likelihood of every held-out token (after [BOS]),
  with the mean per token kind (time, code, value, special);
- next-event accuracy: at the position before each event's first code token, the model's
  distribution over the tokens a code can start with (renormalized: "given that a code comes
  next") ranks the real one; top-1 and top-10 accuracy and the negative log-likelihood, next
  to the frequency baseline (training-split code frequencies, one fixed ranking) and, on the
  synthetic dataset, the true process (`SyntheticEHR.replay`): its accuracy is the best any
  model can reach, and KL(true || model) per event is 0 only for a perfect model.

`outcome_auroc` continues held-out timelines: for each eligible patient the prompt is the
record up to the last event at or before `landmark_days` after the record's start; the model
samples `num_samples` futures until `days` have passed (or [EOS]); for each code of interest
the fraction of futures in which it occurs estimates its probability, and the AUROC of that
estimate against what really followed is reported (and, on the synthetic dataset, the AUROC of
the true probability, estimated by simulating the true process from each patient's state).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gpt.generate import KVCache


def auroc(scores, labels):
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting
    1/2 (the Mann-Whitney U statistic over n_pos * n_neg). NaN without both classes."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each tie group
    ranks = mid_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ----------------------------------------------------------------------------------------
# next-token distributions over whole patients


def _windows(offsets, block_size):
    """(input start, input end, first target kept) windows covering every patient's tokens."""
    out = []
    half = max(block_size // 2, 1)
    for s, e in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        n_in = e - 1 - s  # inputs s .. e-2 predict targets s+1 .. e-1
        if n_in <= block_size:
            out.append((s, e - 1, s + 1))
            continue
        a = s
        out.append((a, a + block_size, s + 1))
        while a + block_size < e - 1:
            a = min(a + half, e - 1 - block_size)
            out.append((a, a + block_size, out[-1][1] + 1))
    return out


@torch.no_grad()
def token_logprobs(model, ids, offsets, batch_size=32, device="cpu"):
    """(n_tokens, V) float32: row g is the model's log-distribution of token g given the tokens
    of its patient before it (NaN rows for each patient's first token)."""
    block = model.config.block_size
    V = model.config.vocab_size
    out = np.full((len(ids), V), np.nan, dtype=np.float32)
    windows = _windows(np.asarray(offsets), block)
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        width = max(e - s for s, e, _ in chunk)
        x = torch.zeros((len(chunk), width), dtype=torch.long)  # right padding never reaches
        for r, (s, e, _) in enumerate(chunk):  # earlier positions (causal attention)
            x[r, : e - s] = ids_t[s:e]
        logits, _ = model(x.to(device))
        logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        for r, (s, e, keep) in enumerate(chunk):
            first = keep - (s + 1)  # position in the window that predicts target `keep`
            out[keep:e + 1] = logp[r, first:e - s]
    return out


def _ranks(logp, target):
    """Rank (0 = best) of target[i] in row i of logp (ties broken against the target)."""
    return (logp > logp[np.arange(len(target)), target][:, None]).sum(axis=1)


def next_event_metrics(model, tok, timelines, batch_size=32, device="cpu", truth=None,
                       events=None):
    """Metrics of the module docstring on a Timelines. truth: optional (n_events, K) true
    next-code distributions with `truth_codes` (K code strings) for the evaluated events;
    events: bool mask of the rows (events) to score (default: every timed event)."""
    enc = tok.encode_timelines(timelines)
    logp = token_logprobs(model, enc.ids, enc.offsets, batch_size, device)
    ids = enc.ids.astype(np.int64)
    predicted = np.ones(len(ids), dtype=bool)
    predicted[enc.offsets[:-1]] = False  # [BOS] is given, not predicted
    nll = -logp[predicted, ids[predicted]]
    kinds = np.full(tok.vocab_size, "code", dtype=object)
    kinds[: tok.time0] = "special"
    kinds[tok.time0:tok.value0] = "time"
    kinds[tok.value0:tok.code0] = "value"
    kinds[tok.unk_token] = "code"
    by_kind = {k: float(nll[kinds[ids[predicted]] == k].mean()) for k in ("code", "time", "value", "special")
               if (kinds[ids[predicted]] == k).any()}
    result = {"patients": len(timelines), "tokens": int(predicted.sum()),
              "perplexity": float(math.exp(nll.mean())), "nll_per_token": float(nll.mean()),
              "nll_by_kind": by_kind}

    events = ~timelines.time_null if events is None else np.asarray(events)
    pos = enc.code_pos[events]
    target = ids[pos]
    starts = np.flatnonzero(tok.is_code_start)
    col = np.full(tok.vocab_size, -1)
    col[starts] = np.arange(len(starts))
    lm = logp[pos][:, starts].astype(np.float64)
    lm -= np.logaddexp.reduce(lm, axis=1, keepdims=True)  # given that a code comes next
    t = col[target]
    freq = np.log(tok.code_counts[starts] + 1.0)
    freq -= np.logaddexp.reduce(freq)
    lf = np.broadcast_to(freq, lm.shape)
    result["events"] = int(len(pos))
    result["model"] = _scores(lm, t)
    result["frequency"] = _scores(lf, t)
    if truth is not None:
        probs, codes = truth
        onto = np.array([col[tok.code_ids(c)[0]] for c in codes])
        pt = np.zeros((len(probs), len(starts)))
        for k, c in enumerate(onto):  # codes sharing a first token add up
            pt[:, c] += probs[:, k]
        result["truth"] = _scores(np.log(np.maximum(pt, 1e-300)), t)
        result["model"]["kl_from_truth"] = float(kl_divergence(pt, lm).mean())
        result["frequency"]["kl_from_truth"] = float(kl_divergence(pt, lf).mean())
    return result


def kl_divergence(p, logq):
    """KL(p || q) per row, in nats: sum_k p_k (log p_k - log q_k), terms with p_k = 0 are 0."""
    p = np.asarray(p, dtype=np.float64)
    logp = np.log(np.where(p > 0, p, 1.0))
    return (p * np.where(p > 0, logp - logq, 0.0)).sum(axis=-1)


def _scores(logp, target):
    rank = _ranks(logp, target)
    return {"top1": float((rank < 1).mean()), "top10": float((rank < 10).mean()),
            "nll": float(-logp[np.arange(len(target)), target].mean())}


# ----------------------------------------------------------------------------------------
# sampled futures


@torch.no_grad()
def continue_timeline(model, tok, prompt, num_samples, horizon_minutes, max_new_tokens=256,
                      temperature=1.0, device="cpu"):
    """num_samples continuations of one prompt (token ids), each until its clock passes
    horizon_minutes, [EOS] or max_new_tokens. Returns a list of token-id lists (the new tokens,
    up to and including the one that ended the row)."""
    block = model.config.block_size
    prompt = list(prompt)[-(block - 1):]
    gap = torch.as_tensor(tok.gap_minutes, device=device)
    x = torch.tensor([prompt] * num_samples, dtype=torch.long, device=device)
    cache = KVCache(model.config.n_layer, block)
    logits, _ = model(x, kv_cache=cache, last_only=True)
    clock = torch.zeros(num_samples, dtype=torch.float64, device=device)
    done = torch.zeros(num_samples, dtype=torch.bool, device=device)
    length = torch.full((num_samples,), max_new_tokens, dtype=torch.long, device=device)
    new = []
    for step in range(max_new_tokens):
        probs = torch.softmax(logits[:, -1].float() / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1)[:, 0]
        new.append(nxt)
        clock += gap[nxt]
        ended = ~done & ((nxt == tok.eos_token) | (clock > horizon_minutes))
        length[ended] = step + 1
        done |= ended
        if bool(done.all()):
            break
        if cache.length >= block:  # context full: restart the cache on the last half window
            ctx = torch.cat([x, torch.stack(new, 1)], 1)[:, -(block // 2):]
            cache = KVCache(model.config.n_layer, block)
            logits, _ = model(ctx, kv_cache=cache, last_only=True)
        else:
            logits, _ = model(nxt[:, None], kv_cache=cache, last_only=True)
    new = torch.stack(new, 1).cpu().tolist()
    return [row[:n] for row, n in zip(new, length.cpu().tolist())]


def codes_within(tok, new_ids, horizon_minutes):
    """The set of codes among the events of a continuation within the horizon."""
    events = tok.decode_events([tok.timeline_token, *new_ids])
    return {c for t, c, _ in events if t is not None and t <= horizon_minutes}


def landmarks(timelines, landmark_days, days, death_code="MEDS_DEATH", skip=("MEDS_BIRTH",)):
    """For each patient: the number of rows in the prompt (its record up to the last event at
    or before `landmark_days` after its first timed row not in `skip`), or 0 when it is not
    eligible: dead by then, or its record neither lasts `days` beyond the prompt's last event
    nor ends in death within them."""
    out = np.zeros(len(timelines), dtype=np.int64)
    for i in range(len(timelines)):
        times, codes, _ = timelines.patient(i)
        static = timelines.static(i)
        real = np.flatnonzero(~static & ~np.isin(codes, skip))
        if not real.size:
            continue
        cut = times[real[0]] + int(landmark_days * 86_400e6)
        n = int(np.searchsorted(np.where(static, np.iinfo(np.int64).min, times), cut, side="right"))
        t_p = times[n - 1]
        if death_code in set(codes[:n]) or n >= len(codes):
            continue
        end = t_p + int(days * 86_400e6)
        if times[-1] >= end or (codes[-1] == death_code and times[-1] <= end):
            out[i] = n
    return out


def outcome_auroc(model, tok, timelines, codes, days=365.0, landmark_days=365.0, num_samples=20,
                  max_new_tokens=256, temperature=1.0, device="cpu", process=None, truth_sims=0,
                  seed=0, on_patient=None):
    """P(code within `days` after each eligible patient's landmark prompt), for each code of
    `codes` from the same sampled futures: the model's estimate (fraction of futures with the
    code), the real outcome, AUROC and Brier score; with `process` (a SyntheticEHR) also the
    true probability from `truth_sims` simulated futures of the true process per patient.
    on_patient(i, prompt_ids, futures) is called for each patient (e.g. to print some)."""
    codes = list(codes)
    cut = landmarks(timelines, landmark_days, days)
    rows = np.flatnonzero(cut > 0)
    horizon = days * 1440.0
    estimate = np.zeros((len(rows), len(codes)))
    label = np.zeros((len(rows), len(codes)), dtype=bool)
    for r, i in enumerate(rows):
        times, cs, values = timelines.patient(i)
        n = int(cut[i])
        ids, _ = tok.encode_patient(times[:n], cs[:n], values[:n], timelines.static(i)[:n])
        prompt = ids[:-1]  # without [EOS]: the record goes on
        futures = continue_timeline(model, tok, prompt, num_samples, horizon, max_new_tokens,
                                    temperature, device)
        seen = [codes_within(tok, f, horizon) for f in futures]
        estimate[r] = [np.mean([c in s for s in seen]) for c in codes]
        t_p = times[n - 1]
        later = set(cs[n:][(times[n:] > t_p) & (times[n:] <= t_p + int(days * 86_400e6))])
        label[r] = [c in later for c in codes]
        if on_patient is not None:
            on_patient(i, prompt, futures)
    truth = None
    if process is not None and truth_sims > 0 and len(rows):
        hits = true_outcome_probability(process, timelines, rows, cut[rows], codes, days,
                                        max(truth_sims, num_samples), seed)
        truth = hits.mean(axis=1)
        # the truth seen through as few futures as the model gets: what sampling noise costs
        truth_k = hits[:, :num_samples].mean(axis=1)
    outcomes = {}
    for k, code in enumerate(codes):
        e, y = estimate[:, k], label[:, k]
        o = {"positives": int(y.sum()), "observed_rate": _mean(y), "mean_estimate": _mean(e),
             "auroc_model": auroc(e, y), "brier_model": _mean((e - y) ** 2)}
        if truth is not None:
            t = truth[:, k]
            o |= {"mean_truth": _mean(t), "auroc_truth": auroc(t, y),
                  "auroc_truth_same_samples": auroc(truth_k[:, k], y),
                  "brier_truth": _mean((t - y) ** 2),
                  "corr_model_truth": float(np.corrcoef(e, t)[0, 1])
                  if e.std() > 0 and t.std() > 0 else float("nan")}
        outcomes[code] = o
    return {"days": days, "landmark_days": landmark_days, "num_samples": num_samples,
            "truth_sims": truth_sims if truth is not None else 0, "patients": int(len(rows)),
            "outcomes": outcomes}


def _mean(x):
    return float(np.mean(x)) if len(x) else float("nan")


def true_outcome_probability(process, timelines, rows, n_rows, codes, days, sims, seed=0):
    """(len(rows), sims, len(codes)) bool: whether each code occurs within `days` after row
    n_rows[i] - 1 of patient rows[i] in each of `sims` futures simulated by the true synthetic
    process from the patient's replayed state; the mean over sims is the true probability (up
    to Monte Carlo error: the process is memoryless, nothing else is needed)."""
    patients = [timelines.patient(i) for i in rows]
    _, state = process.replay(patients, stop=[n - 3 for n in n_rows])
    rep = np.repeat(np.arange(len(rows)), sims)
    rng = np.random.default_rng(seed)
    ev_rows, _, ev_k, _ = process.simulate(state.take(rep), np.zeros(len(rep)),
                                           np.full(len(rep), float(days)), rng)
    hits = np.zeros((len(rows), sims, len(codes)), dtype=bool)
    for j, code in enumerate(codes):
        hit = np.zeros(len(rep), dtype=bool)
        if code in process.index:
            hit[ev_rows[ev_k == process.index[code]]] = True
        hits[:, :, j] = hit.reshape(len(rows), sims)
    return hits
