"""gpt.attention_maps: attention weights are proper causal distributions and reproduce the model."""

import pytest
import torch

from gpt import attention_maps
from gpt.cli import UsageError
from gpt.model import GPT, GPTConfig
from tests.test_sample import trained  # noqa: F401  (module fixture: a tiny trained model)
from tests.test_train import corpus  # noqa: F401


def test_weights_are_causal_distributions_and_reproduce_the_output():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=30, n_layer=3, n_head=2, n_embd=16,
                          kernels="torch")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    idx = torch.randint(0, 30, (2, 13))
    weights = attention_maps.attention_weights(model, idx)
    assert len(weights) == 3
    for w in weights:
        assert w.shape == (2, 2, 13, 13)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 13))
        assert torch.all(w.triu(diagonal=1) == 0)
        assert torch.all(w >= 0)
    # weights @ v is what the attention layer fed to c_proj
    seen = {}
    blk = model.transformer.h[1].attn
    h1 = blk.c_proj.register_forward_hook(lambda m, i, o: seen.setdefault("y", i[0]))
    h2 = blk.c_attn.register_forward_hook(lambda m, i, o: seen.setdefault("qkv", o))
    model(idx)
    h1.remove(), h2.remove()
    v = seen["qkv"].split(16, 2)[2].view(2, 13, 2, 8).transpose(1, 2)
    y = (weights[1] @ v).transpose(1, 2).reshape(2, 13, 16)
    torch.testing.assert_close(y, seen["y"], rtol=1e-5, atol=1e-5)


def test_cli_writes_png(trained, tmp_path):  # noqa: F811
    png = attention_maps.main([f"--out_dir={trained}", "--text=First Citizen:", "--layer=all",
                          f"--png={tmp_path / 'a.png'}"])
    assert (tmp_path / "a.png").stat().st_size > 10_000 and png.endswith("a.png")
    attention_maps.main([f"--out_dir={trained}", "--text=All:", "--layer=-1", f"--png={tmp_path / 'b.png'}"])
    assert (tmp_path / "b.png").exists()
    with pytest.raises(UsageError, match="--layer must be in"):
        attention_maps.main([f"--out_dir={trained}", "--layer=7", f"--png={tmp_path / 'c.png'}"])
    with pytest.raises(UsageError, match="--layer must be an int or all"):
        attention_maps.main([f"--out_dir={trained}", "--layer=first", f"--png={tmp_path / 'c.png'}"])
    with pytest.raises(UsageError, match="--text has 40 tokens"):
        attention_maps.main([f"--out_dir={trained}", "--text=" + "a" * 40, f"--png={tmp_path / 'c.png'}"])
    with pytest.raises(UsageError, match="--out_dir=.*no ckpt.pt"):
        attention_maps.main([f"--out_dir={tmp_path}"])
    assert not (tmp_path / "c.png").exists()


def test_text_escapes_and_readable_labels():
    assert attention_maps.unescape(r"ROMEO:\nBut\tsoft \\n") == "ROMEO:\nBut\tsoft \\n"
    assert attention_maps.unescape("no escapes") == "no escapes"

    class Chars:
        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    labels = attention_maps.token_labels(Chars(), [ord(c) for c in "a \n\t"])
    assert labels == ["a", "\u2423", "\\n", "\\t"]
