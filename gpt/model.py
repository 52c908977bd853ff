"""GPT-2 in one file, built only from the ops in `gpt_kernels`.

The architecture is GPT-2's (Radford et al. 2019) as nanoGPT writes it: learned token and
position embeddings, N pre-norm blocks [LayerNorm -> causal self-attention -> residual,
LayerNorm -> MLP (4x, tanh GELU) -> residual], a final LayerNorm and a language-model head
tied to the token embedding. Parameter names are nanoGPT's / Hugging Face's, so checkpoints
move between this project, nanoGPT and GPT-2 with a plain key map.

Every hot op (attention, LayerNorm, linear+GELU, the loss) is a call into `gpt_kernels` with
`backend=config.kernels`: "torch" runs the plain-PyTorch references, "triton" the hand-written
Triton kernels (registered as `torch.ops.gpt.*` operators), "auto" picks per call (Triton on
CUDA, the reference on CPU).
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

import gpt_kernels
from gpt import flops, hf_checkpoint

# ignored target id in `GPT.forward` (nanoGPT's convention; F.cross_entropy's default is -100)
IGNORE_INDEX = -1


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence (number of position embeddings)
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for fast matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2
    kernels: str = "auto"  # "auto" | "triton" | "torch"
    # False: every position attends to every other, the future included (a teaching
    # contrast: the next token leaks into the input, so the loss falls and samples are garbage)
    causal: bool = True

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.causal, bool):
            raise ValueError(f"GPTConfig.causal must be a bool, got {self.causal!r}")
        if self.kernels not in gpt_kernels.BACKENDS:
            raise ValueError(
                f"GPTConfig.kernels must be one of {gpt_kernels.BACKENDS}, got {self.kernels!r}"
            )

    @classmethod
    def from_preset(cls, name, **overrides):
        """A named size (see PRESETS) with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}


# The four GPT-2 sizes (OpenAI's vocabulary of 50257, context 1024) and small ones for CPUs.
PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, vocab_size=50257, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, vocab_size=50257, block_size=1024),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, vocab_size=50257, block_size=1024),
    # nanoGPT's Shakespeare character recipes (GPU and "small CPU" sizes)
    "shakespeare-char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
    "shakespeare-char-cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32),
}


class LayerNorm(nn.Module):
    """LayerNorm over the last dim with an optional bias (PyTorch's has no bias=False)."""

    def __init__(self, ndim, bias, backend):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.backend = backend

    def forward(self, x):
        """y = layer_norm(x) in x's dtype (ln_f: the loss head takes the float32 stream)."""
        return gpt_kernels.layer_norm(x, self.weight, self.bias, 1e-5, backend=self.backend)

    def add_forward(self, x, branch):
        """(s, y): the residual add s = x + branch (x's dtype) and y = layer_norm(s) in the
        autocast dtype under autocast (the next matmul's), else x's; one fused op
        (gpt_kernels.add_layer_norm). branch None normalises x (s is x)."""
        return gpt_kernels.add_layer_norm(x, branch, self.weight, self.bias, 1e-5,
                                          backend=self.backend)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        # q, k, v projections for all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.backend = config.kernels
        self.causal = config.causal

    def forward(self, x, kv_cache=None, layer=0, qkv=None):
        """x (B, T, C) -> (B, T, C); or, with x None, from qkv = c_attn(x) already computed."""
        qkv = self.c_attn(x) if qkv is None else qkv
        B, T, C = qkv.shape[0], qkv.shape[1], self.n_embd
        q, k, v = qkv.split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs): a strided view; the kernels read strides, no copy
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if kv_cache is not None:
            # keys/values of all positions so far: (B, nh, Tk, hs) with Tk >= T; the causal
            # mask is bottom-right aligned, so the T new queries are the last T positions
            k, v = kv_cache.update(layer, k, v)
        dropout_p = self.dropout if self.training else 0.0
        y = gpt_kernels.flash_attention(q, k, v, causal=self.causal, dropout_p=dropout_p,
                                    backend=self.backend)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.backend = config.kernels

    def forward(self, x):
        # c_fc and the tanh GELU are one fused op; the nn.Linear holds the parameters
        x = gpt_kernels.linear_gelu(x, self.c_fc.weight, self.c_fc.bias, backend=self.backend)
        return self.dropout(self.c_proj(x))


class Block(nn.Module):
    # Triton path: keep the stream and h, recompute LayerNorm outputs and gelu(h) in backward
    # (False: keep them, as eager PyTorch does; the memory meter's tests compare the two)
    recompute = True

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias, config.kernels)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.bias, config.kernels)
        self.mlp = MLP(config)
        self.backend = config.kernels

    def forward(self, x, kv_cache=None, layer=0):
        # x = x + attn(ln_1(x)); the add and ln_2 are one op: one pass over the stream
        # the Triton path recomputes in backward what eager PyTorch keeps (the torch path is
        # eager PyTorch as is: the baseline)
        if not (self.recompute and torch.is_grad_enabled()
                and gpt_kernels.use_triton(self.backend, x)):
            _, y = self.ln_1.add_forward(x, None)
            x, h = self.ln_2.add_forward(x, self.attn(y, kv_cache, layer))
            return x + self.mlp(h)
        # the same function, keeping less for backward (gpt_kernels/recompute.py): c_attn and
        # c_fc keep the stream s instead of the LayerNorm's output, the MLP its
        # pre-activation instead of gelu(h); both are recomputed in backward
        ln_1, ln_2, attn, mlp = self.ln_1, self.ln_2, self.attn, self.mlp
        _, y = ln_1.add_forward(x, None)
        qkv = gpt_kernels.linear_after_norm(y, x, ln_1.weight, ln_1.bias, 1e-5,
                                            attn.c_attn.weight, attn.c_attn.bias)
        x, h = ln_2.add_forward(x, attn(None, kv_cache, layer, qkv=qkv))
        out = gpt_kernels.mlp_after_norm(h, x, ln_2.weight, ln_2.bias, 1e-5, mlp.c_fc.weight,
                                         mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias)
        return x + mlp.dropout(out)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        gpt_kernels.env_backend()  # a bad GPT_KERNELS fails here, not mid-forward
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, config.bias, config.kernels),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # True: each block runs under torch.utils.checkpoint in training (gpt/parallel.py)
        self.activation_checkpointing = False
        # weight tying (Press & Wolf 2017), as GPT-2: one (V, C) matrix embeds and un-embeds
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch's output projection gets std / sqrt(2 * n_layer),
        # so the residual stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=False):
        """Number of parameters (the tied lm_head counted once). With `non_embedding`, the
        position embeddings are left out (the token embedding is the lm_head, so it stays)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None, kv_cache=None, last_only=False):
        """idx (B, T) int64 token ids; targets (B, T) int64 or None (ids equal to -1 are ignored).

        Without targets: returns (logits (B, T, vocab_size), None).
        With targets: returns (None, loss): the loss comes from the fused linear cross-entropy,
        which never materialises the (B*T, vocab_size) logits, so no logits are returned.
        kv_cache (a `gpt.generate.KVCache`): idx continues the cached tokens; their keys and
        values are reused and the new ones appended (generation).
        last_only: without targets, return the logits of the last position only, (B, 1, V):
        all that generation needs, without the (B, T, V) lm_head matmul.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be 2-D (B, T), got shape {tuple(idx.shape)}")
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"idx must hold integer token ids, got dtype {idx.dtype}")
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence length {start + T} exceeds the model's block_size {self.config.block_size}"
            )
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C)
        x = self.transformer.drop(tok_emb + pos_emb)
        for i, block in enumerate(self.transformer.h):
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # keep only the block's input; recompute the inside in backward
                x = checkpoint(block, x, kv_cache, i, use_reentrant=False)
            else:
                x = block(x, kv_cache, i)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.transformer.ln_f(x)

        if targets is None:
            return self.lm_head(x[:, -1:] if last_only else x), None
        if targets.shape != idx.shape:
            raise ValueError(
                f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}"
            )
        loss = gpt_kernels.fused_linear_cross_entropy(
            x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(B * T),
            ignore_index=IGNORE_INDEX, backend=self.config.kernels,
        )
        return None, loss

    @classmethod
    def from_pretrained(cls, name_or_dir, ranks_path=None, **overrides):
        """GPT-2 weights from a local Hugging Face checkpoint folder (config.json +
        model.safetensors or pytorch_model.bin) or, online, by name ("gpt2", "gpt2-medium",
        "gpt2-large", "gpt2-xl"). overrides: kernels, dropout, block_size (to shrink the
        context). GPT-2's tokenizer is attached as `model.tokenizer` (from tiktoken, or the
        ranks file at ranks_path; None with a warning when neither can be had offline)."""
        return hf_checkpoint.from_pretrained(cls, GPTConfig, name_or_dir, ranks_path=ranks_path,
                                             **overrides)

    def save_pretrained(self, folder):
        """Export as a Hugging Face GPT-2 checkpoint that transformers.GPT2LMHeadModel loads."""
        return hf_checkpoint.save_pretrained(self, folder)

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. to fine-tune GPT-2's 1024 at 256): fewer position embeddings."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(
                f"block_size must be in [1, {self.config.block_size}], got {block_size}"
            )
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on 2-D weights (matmuls, embeddings) only; biases and
        LayerNorm gains are not decayed. Fused AdamW (all parameters in one kernel) on CUDA
        and on the CPU, where it is ~4x faster than the per-parameter loop at the small CPU
        recipe's size (0.8M parameters: 0.8 ms vs 3.8 ms a step, one thread)."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        extra = {"fused": True} if device_type in ("cuda", "cpu") else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward): 6N for the matmuls with the weights
        plus 12 * L * T * C for attention's QK^T and AV (PaLM appendix B, as nanoGPT)."""
        return flops.flops_per_token(self.config, seq_len)["total"]

    def estimate_mfu(self, tokens_per_iter, dt, peak_flops, seq_len=None):
        """Model FLOPs utilisation: achieved training FLOP/s over `peak_flops` (FLOP/s)."""
        if not peak_flops or dt <= 0:
            return None
        return self.flops_per_token(seq_len) * tokens_per_iter / dt / peak_flops

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 greedy=False, num_beams=1, use_cache=True, eos_token_id=None, **kwargs):
        """Continue idx (B, T) by max_new_tokens tokens: greedy, sampling (temperature, top_k,
        top_p) or beam search (num_beams), with a KV cache by default. See gpt.generate."""
        from gpt.generate import generate

        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, greedy=greedy, num_beams=num_beams, use_cache=use_cache,
                        eos_token_id=eos_token_id, **kwargs)
