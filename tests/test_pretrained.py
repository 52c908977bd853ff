"""Loading Hugging Face GPT-2 checkpoints and exporting to them, checked against transformers."""

import json
from pathlib import Path

import pytest
import torch

import gpt_kernels
from gpt.model import GPT, GPTConfig
from gpt.pretrained import save_pretrained

transformers = pytest.importorskip("transformers")

RANKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "r50k_base.tiktoken"
# the GPT-2 tokenizer from the shared ranks file when present (no network look-up)
RANKS_PATH = str(RANKS) if RANKS.exists() else None
pytestmark = pytest.mark.filterwarnings("ignore:model loaded without its GPT-2 tokenizer")


def hf_model(vocab=101, n_positions=32, n_layer=2, n_head=2, n_embd=32):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=n_positions, n_layer=n_layer,
                                  n_head=n_head, n_embd=n_embd, activation_function="gelu_new",
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorm gains, so a wrong transpose shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.normal_(0.0, 0.1).add_(1.0 if name.endswith("weight") else 0.0)
    return model


def save_bin(model, folder):
    """The pre-safetensors layout: config.json + pytorch_model.bin (a pickled state dict)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")


def hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_from_pretrained_matches_transformers(tmp_path, fmt):
    hf = hf_model()
    folder = tmp_path / fmt
    if fmt == "safetensors":
        hf.save_pretrained(folder)
        assert (folder / "model.safetensors").exists()
    else:
        save_bin(hf, folder)
    model = GPT.from_pretrained(str(folder), RANKS_PATH, kernels="torch").eval()
    assert model.config.n_layer == 2 and model.config.vocab_size == 101 and model.config.bias
    assert model.lm_head.weight is model.transformer.wte.weight
    idx = torch.randint(0, 101, (2, 32))
    diff = (model(idx)[0] - hf_logits(hf, idx)).abs().max().item()
    assert diff < 1e-4, diff


def test_from_pretrained_with_triton_kernels(tmp_path, monkeypatch):
    if gpt_kernels.TRITON_MISSING is not None:
        pytest.skip(f"no Triton: {gpt_kernels.TRITON_MISSING}")
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path), RANKS_PATH, kernels="triton").eval()
    idx = torch.randint(0, 101, (1, 17))
    diff = (model(idx)[0] - hf_logits(hf, idx)).abs().max().item()
    assert diff < 1e-4, diff


def test_overrides_and_tokenizer(tmp_path):
    hf_model().save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path), kernels="torch", dropout=0.1, block_size=16,
                                ranks_path=RANKS_PATH)
    assert model.config.dropout == 0.1 and model.config.block_size == 16
    assert model.transformer.wpe.weight.shape[0] == 16
    if RANKS.exists():
        assert model.tokenizer.encode("Hello world") == [15496, 995]
    with pytest.raises(ValueError, match="overrides may only set"):
        GPT.from_pretrained(str(tmp_path), n_layer=3)
    with pytest.raises(ValueError, match="block_size can only shrink"):
        GPT.from_pretrained(str(tmp_path), block_size=64)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="name_or_dir"):
        GPT.from_pretrained("gpt5")
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        GPT.from_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["activation_function"] = "relu"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="activation_function"):
        GPT.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("bias", [True, False])
def test_export_opens_in_transformers(tmp_path, bias):
    torch.manual_seed(1)
    model = GPT(GPTConfig(block_size=24, vocab_size=77, n_layer=2, n_head=4, n_embd=32, bias=bias,
                          kernels="torch")).eval()
    save_pretrained(model, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 77, (3, 24))
    diff = (model(idx)[0] - hf_logits(hf, idx)).abs().max().item()
    assert diff < 1e-4, diff
    # and back again
    again = GPT.from_pretrained(str(tmp_path), RANKS_PATH, kernels="torch").eval()
    torch.testing.assert_close(again(idx)[0], model(idx)[0], rtol=1e-5, atol=1e-5)
