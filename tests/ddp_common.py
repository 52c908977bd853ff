"""The model and batches shared by the DDP/FSDP tests and their torchrun workers."""

import torch

from gpt.model import GPT, GPTConfig


def make_model_and_batches(kernels="torch"):
    torch.manual_seed(1234)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32,
                          kernels=kernels))
    batches = [(torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))) for _ in range(4)]
    return model, batches
