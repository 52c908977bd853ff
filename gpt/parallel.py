"""Past one device: sharding a GPT with FSDP2, and activation checkpointing.

DDP (``train.py`` wraps the model in ``DistributedDataParallel``) keeps a whole copy of the
weights, gradients and AdamW state on every process. FSDP2 (``fully_shard``) keeps 1/N of
each on each of N processes and gathers a block's weights just before the block runs (and
again in backward), so GPT-2 XL's 1.5B parameters, their gradients and AdamW's two moments
(~24 GB in float32) spread over the GPUs. Each transformer block is its own FSDP unit (one
all-gather per block, overlapped with the previous block's compute); the root unit holds the
rest: the embeddings, the final LayerNorm and ``lm_head``, whose weight *is* the token
embedding's (tied), so it is gathered once and its gradient is the sum of both uses.

Mixed precision: the sharded weights stay float32 (the optimizer's master copy); they are
gathered in ``param_dtype`` (bf16) for compute and their gradients are reduce-scattered in
float32.

Activation checkpointing (``GPT.activation_checkpointing = True``) makes the model run each
block under ``torch.utils.checkpoint`` (non-reentrant): only the block's input is kept,
everything inside is recomputed in backward. Attention dropout replays the same mask in the
recomputation because its seed is drawn from torch's RNG, whose state checkpointing restores.
"""

import torch

try:  # torch >= 2.6
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError:  # torch 2.4 / 2.5
    from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard

__all__ = ["shard"]


def shard(model, mesh=None, param_dtype=None, reduce_dtype=torch.float32):
    """Apply FSDP2 to ``model`` (a ``gpt.model.GPT``) in place: one unit per block, then the
    root. ``param_dtype`` None computes in the weights' own dtype (float32)."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype,
                              reduce_dtype=reduce_dtype if param_dtype is not None else None)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model

