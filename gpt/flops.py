"""What a GPT costs to train, by formula: parameter counts and training FLOPs per token.

The one place these formulas live: `GPT.flops_per_token` (the trainer's MFU), the
scaling-law calculator (`gpt.scaling`) and the benchmarks read them here. `config` is any
object with GPTConfig's fields (n_layer, n_embd, vocab_size, block_size, bias).
"""

__all__ = ["param_counts", "flops_per_token"]


def param_counts(config):
    """Parameters of `GPT(config)` by formula: {"total", "non_embedding", "embedding_tokens",
    "embedding_positions", "per_block", "final_ln"}. The lm_head is tied to the token
    embedding, so it is counted once; non_embedding leaves out the position table only
    (as `GPT.num_params(non_embedding=True)`: the token table is also the output matmul)."""
    C, L = config.n_embd, config.n_layer
    bias = 1 if config.bias else 0
    attention = 3 * C * C + 3 * C * bias + C * C + C * bias   # c_attn (q, k, v) and c_proj
    mlp = 4 * C * C + 4 * C * bias + 4 * C * C + C * bias     # c_fc (C -> 4C) and c_proj (4C -> C)
    layer_norms = 2 * (C + C * bias)                           # ln_1 and ln_2: gain (+ bias)
    per_block = attention + mlp + layer_norms
    final_ln = C + C * bias
    wte, wpe = config.vocab_size * C, config.block_size * C
    total = wte + wpe + L * per_block + final_ln
    return {"total": total, "non_embedding": total - wpe, "embedding_tokens": wte,
            "embedding_positions": wpe, "per_block": per_block, "final_ln": final_ln}


def flops_per_token(config, seq_len=None):
    """Training FLOPs per token, PaLM's convention (Chowdhery et al. 2022, appendix B), as
    nanoGPT: 6 N (forward 2 N + backward 4 N for every weight a token meets, N non-embedding)
    plus 12 * n_layer * T * n_embd for attention's QK^T and AV (the causal mask is not
    subtracted). Returns {"matmul": 6N, "attention": ..., "total": ...}."""
    T = config.block_size if seq_len is None else seq_len
    matmul = 6 * param_counts(config)["non_embedding"]
    attention = 12 * config.n_layer * T * config.n_embd
    return {"matmul": matmul, "attention": attention, "total": matmul + attention}
