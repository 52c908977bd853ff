"""Model level: the GPT with kernels="triton" computes what kernels="torch" computes.

On CPU the Triton kernels run in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), so these are real kernel runs on a small model.
"""

import pytest
import torch

import gpt_kernels
from gpt.model import GPT, GPTConfig
from tests.helpers import assert_close

needs_all = pytest.mark.skipif(gpt_kernels.TRITON_MISSING is not None,
                               reason=f"no Triton: {gpt_kernels.TRITON_MISSING}")


def pair(**kw):
    cfg = dict(block_size=32, vocab_size=67, n_layer=2, n_head=2, n_embd=32)
    cfg.update(kw)
    torch.manual_seed(0)
    ref = GPT(GPTConfig(**cfg, kernels="torch"))
    with torch.no_grad():  # non-trivial LayerNorm parameters and biases
        for name, p in ref.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    tri = GPT(GPTConfig(**cfg, kernels="triton"))
    tri.load_state_dict(ref.state_dict())
    return ref, tri


@needs_all
@pytest.mark.parametrize("T, bias", [(16, True), (13, False)])
def test_triton_model_matches_torch_forward_and_backward(T, bias):
    ref, tri = pair(bias=bias)
    idx = torch.randint(0, 67, (2, T))
    targets = torch.randint(0, 67, (2, T))
    targets[0, :3] = -1  # ignored positions
    losses = []
    for model in (ref, tri):
        model.zero_grad()
        _, loss = model(idx, targets)
        (loss * 3).backward()
        losses.append(loss)
    assert_close(losses[1], losses[0], 1e-5, "loss")
    grads = dict(ref.named_parameters())
    for name, p in tri.named_parameters():
        assert_close(p.grad, grads[name].grad, 1e-4, f"grad {name}")
    # logits path (no targets) too
    assert_close(tri(idx)[0], ref(idx)[0], 1e-5, "logits")


@needs_all
def test_triton_model_generates_like_torch_with_the_kv_cache():
    ref, tri = pair()
    idx = torch.randint(0, 67, (2, 5))
    with torch.no_grad():
        for p in ref.parameters():  # peaked distributions: no near-ties in the argmax
            p.mul_(10)
    tri.load_state_dict(ref.state_dict())
    assert torch.equal(tri.generate(idx, 12, greedy=True), ref.generate(idx, 12, greedy=True))


@needs_all
def test_auto_falls_back_to_the_reference_for_head_dims_without_a_kernel():
    ref, _ = pair(n_embd=48, n_head=2)  # head dim 24: no Triton attention for it
    auto = GPT(GPTConfig(block_size=32, vocab_size=67, n_layer=2, n_head=2, n_embd=48, kernels="auto"))
    auto.load_state_dict(ref.state_dict())
    idx = torch.randint(0, 67, (1, 9))
    assert_close(auto(idx)[0], ref(idx)[0], 1e-5, "logits")
    forced = GPT(GPTConfig(block_size=32, vocab_size=67, n_layer=2, n_head=2, n_embd=48, kernels="triton"))
    with pytest.raises(ValueError, match="head"):
        forced(idx)


@needs_all
def test_triton_model_matches_torch_without_the_causal_mask():
    ref, tri = pair(causal=False)
    idx, targets = torch.randint(0, 67, (2, 11)), torch.randint(0, 67, (2, 11))
    losses = []
    for model in (ref, tri):
        _, loss = model(idx, targets)
        loss.backward()
        losses.append(loss)
    assert_close(losses[1], losses[0], 1e-5, "loss")
    grads = dict(ref.named_parameters())
    for name, p in tri.named_parameters():
        assert_close(p.grad, grads[name].grad, 1e-4, f"grad {name}")
