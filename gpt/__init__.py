"""A GPT-2 model, tokenizers, data preparation and sampling on top of the `gpt_kernels` ops."""

from gpt.model import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
