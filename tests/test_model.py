"""The GPT model: shapes, parameter counts, init, causality, loss at init, optimizer groups."""

import math

import pytest
import torch
import torch.nn.functional as F

import gpt_kernels
from gpt.model import GPT, GPTConfig, PRESETS


def small_config(**kw):
    args = dict(block_size=16, vocab_size=67, n_layer=2, n_head=2, n_embd=32, kernels="torch")
    return GPTConfig(**{**args, **kw})


def expected_params(V, T, L, C, bias=True):
    """Independent count: embeddings, per block 2 LNs + qkv + proj + fc + proj, final LN."""
    b = 1 if bias else 0
    ln = C + b * C
    block = 2 * ln + (3 * C * C + b * 3 * C) + (C * C + b * C) + (4 * C * C + b * 4 * C) + (4 * C * C + b * C)
    return V * C + T * C + L * block + ln


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_gpt2_parameter_counts(name):
    with torch.device("meta"):  # no memory, no init cost
        model = GPT(GPTConfig.from_preset(name))
    p = PRESETS[name]
    assert model.num_params() == expected_params(p["vocab_size"], p["block_size"], p["n_layer"], p["n_embd"])
    if name == "gpt2":
        assert model.num_params() == 124_439_808  # GPT-2 small with tied embeddings
        assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768


def test_weight_tying_and_names():
    model = GPT(small_config())
    assert model.lm_head.weight is model.transformer.wte.weight
    names = set(model.state_dict())
    for n in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
              "transformer.h.0.ln_1.bias", "transformer.h.0.attn.c_attn.weight",
              "transformer.h.0.attn.c_attn.bias", "transformer.h.0.attn.c_proj.weight",
              "transformer.h.1.ln_2.weight", "transformer.h.1.mlp.c_fc.weight",
              "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f.weight", "lm_head.weight"]:
        assert n in names, n
    assert model.num_params() == expected_params(67, 16, 2, 32)
    nobias = GPT(small_config(bias=False))
    assert nobias.transformer.ln_f.bias is None
    assert nobias.num_params() == expected_params(67, 16, 2, 32, bias=False)


def test_gpt2_init_scaled_residual_projections():
    torch.manual_seed(0)
    L = 8
    model = GPT(GPTConfig(block_size=64, vocab_size=512, n_layer=L, n_head=4, n_embd=256, kernels="torch"))
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in model.transformer.h]
                     + [b.mlp.c_proj.weight.flatten() for b in model.transformer.h])
    fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.transformer.h])
    assert abs(proj.std().item() - 0.02 / math.sqrt(2 * L)) < 5e-4
    assert abs(fc.std().item() - 0.02) < 5e-4
    assert abs(model.transformer.wpe.weight.std().item() - 0.02) < 1e-3
    assert torch.all(model.transformer.h[0].attn.c_attn.bias == 0)
    assert torch.all(model.transformer.h[0].ln_1.weight == 1)


def test_forward_shapes_and_loss_at_init():
    torch.manual_seed(0)
    cfg = small_config(vocab_size=97)
    model = GPT(cfg)
    idx = torch.randint(0, 97, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 97) and loss is None
    logits2, loss = model(idx, torch.randint(0, 97, (3, 16)))
    assert logits2 is None and loss.shape == () and loss.dtype == torch.float32
    # small init -> nearly uniform predictions -> loss close to ln(vocab)
    assert abs(loss.item() - math.log(97)) < 0.1


def test_loss_equals_cross_entropy_of_logits_and_ignores_minus_one():
    torch.manual_seed(1)
    model = GPT(small_config())
    idx = torch.randint(0, 67, (2, 16))
    targets = torch.randint(0, 67, (2, 16))
    targets[0, :5] = -1
    logits, _ = model(idx)
    _, loss = model(idx, targets)
    ref = F.cross_entropy(logits.view(-1, 67), targets.view(-1), ignore_index=-1)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


def test_causal_future_tokens_do_not_change_past_logits():
    torch.manual_seed(2)
    model = GPT(small_config()).eval()
    idx = torch.randint(0, 67, (2, 16))
    logits, _ = model(idx)
    for t in [0, 5, 15]:
        changed = idx.clone()
        changed[:, t:] = (changed[:, t:] + 1 + torch.randint(0, 60, changed[:, t:].shape)) % 67
        logits2, _ = model(changed)
        assert torch.equal(logits[:, :t], logits2[:, :t])
        if t < 16:
            assert not torch.allclose(logits[:, t:], logits2[:, t:])


def test_every_parameter_gets_a_gradient():
    model = GPT(small_config(dropout=0.1))
    idx = torch.randint(0, 67, (2, 16))
    _, loss = model(idx, torch.randint(0, 67, (2, 16)))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_model_is_built_from_kernel_ops(monkeypatch):
    calls = {}
    for name in ["flash_attention", "layer_norm", "add_layer_norm", "linear_gelu",
                 "fused_linear_cross_entropy"]:
        fn = getattr(gpt_kernels, name)

        def wrap(*a, _fn=fn, _name=name, **k):
            calls[_name] = calls.get(_name, 0) + 1
            assert k["backend"] == "torch"
            return _fn(*a, **k)

        monkeypatch.setattr(gpt_kernels, name, wrap)
    model = GPT(small_config(n_layer=3, kernels="torch"))
    model(torch.randint(0, 67, (1, 8)), torch.randint(0, 67, (1, 8)))
    # per block ln_1, and ln_2 fused with the attention residual's add; ln_f plain
    assert calls == {"add_layer_norm": 6, "layer_norm": 1, "flash_attention": 3,
                     "linear_gelu": 3,
                     "fused_linear_cross_entropy": 1}


def test_kernels_torch_and_auto_agree_on_cpu():
    torch.manual_seed(3)
    a = GPT(small_config(kernels="torch"))
    b = GPT(small_config(kernels="auto"))
    b.load_state_dict(a.state_dict())
    idx, tgt = torch.randint(0, 67, (2, 16)), torch.randint(0, 67, (2, 16))
    torch.testing.assert_close(a(idx, tgt)[1], b(idx, tgt)[1])


def test_eval_is_deterministic_and_dropout_is_active_in_training():
    model = GPT(small_config(dropout=0.5))
    idx = torch.randint(0, 67, (2, 16))
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])


def test_optimizer_decay_groups():
    model = GPT(small_config())
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_flops_and_mfu():
    model = GPT(small_config())
    n = model.num_params(non_embedding=True)
    assert model.flops_per_token() == 6 * n + 12 * 2 * 32 * 16
    assert model.flops_per_token(seq_len=8) == 6 * n + 12 * 2 * 32 * 8
    mfu = model.estimate_mfu(tokens_per_iter=1000, dt=0.5, peak_flops=1e12)
    assert mfu == pytest.approx(model.flops_per_token() * 1000 / 0.5 / 1e12)
    assert model.estimate_mfu(1000, 0.5, None) is None


def test_generate_shapes_seed_and_top_k_one_is_greedy():
    torch.manual_seed(4)
    model = GPT(small_config()).eval()
    idx = torch.randint(0, 67, (2, 5))
    torch.manual_seed(7)
    a = model.generate(idx, 20, temperature=0.9, top_k=10)
    torch.manual_seed(7)
    b = model.generate(idx, 20, temperature=0.9, top_k=10)
    assert a.shape == (2, 25) and torch.equal(a, b) and torch.equal(a[:, :5], idx)
    # top_k=1 always picks the argmax (context grows past block_size=16: cropped)
    g = model.generate(idx, 15, top_k=1)
    x = idx
    for _ in range(15):
        nxt = model(x[:, -16:])[0][:, -1].argmax(-1, keepdim=True)
        x = torch.cat([x, nxt], 1)
    assert torch.equal(g, x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_generate_bad_arguments(kwargs, match):
    model = GPT(small_config())
    args = dict(max_new_tokens=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        model.generate(torch.zeros(1, 2, dtype=torch.long), **args)
    with pytest.raises(ValueError, match="idx"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)


def test_crop_block_size():
    model = GPT(small_config())
    model.crop_block_size(8)
    assert model.transformer.wpe.weight.shape == (8, 32)
    assert model(torch.zeros(1, 8, dtype=torch.long))[0].shape == (1, 8, 67)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_embd=30, n_head=4), "divisible"),
    (dict(kernels="cuda"), "kernels"),
    (dict(dropout=1.0), "dropout"),
    (dict(n_layer=0), "n_layer"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_config(**kwargs)


def test_bad_inputs():
    model = GPT(small_config())
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="idx"):
        model(torch.zeros(16, dtype=torch.long))
    with pytest.raises(TypeError, match="idx"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="preset"):
        GPTConfig.from_preset("gpt3")


def test_bidirectional_model_sees_the_future_and_matches_unmasked_attention():
    torch.manual_seed(5)
    model = GPT(small_config(causal=False)).eval()
    idx = torch.randint(0, 67, (2, 16))
    logits, _ = model(idx)
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 67
    # without the mask the last token reaches every position
    assert not torch.allclose(model(changed)[0][:, 0], logits[:, 0])
    # an independent float64 forward of the same weights with plain, unmasked softmax attention
    sd = {k: v.double() for k, v in model.state_dict().items()}
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:16]
    for i in range(2):
        p = f"transformer.h.{i}."
        h = F.layer_norm(x, (32,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        q, k, v = F.linear(h, sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]).split(32, -1)
        q, k, v = (t.view(2, 16, 2, 16).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
        x = x + F.linear(att.transpose(1, 2).reshape(2, 16, 32), sd[p + "attn.c_proj.weight"],
                         sd[p + "attn.c_proj.bias"])
        h = F.layer_norm(x, (32,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]), approximate="tanh")
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    x = F.layer_norm(x, (32,), sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])
    torch.testing.assert_close(logits.double(), x @ sd["lm_head.weight"].T, rtol=1e-5, atol=1e-5)


def test_bidirectional_model_generates_without_a_stale_kv_cache():
    torch.manual_seed(6)
    model = GPT(small_config(causal=False)).eval()
    idx = torch.randint(0, 67, (2, 3))
    cached = model.generate(idx, 8, greedy=True, use_cache=True)
    assert torch.equal(cached, model.generate(idx, 8, greedy=True, use_cache=False))
    with pytest.raises(ValueError, match="causal"):
        small_config(causal="no")
