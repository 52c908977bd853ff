"""Real GPT-2 weights in and out: Hugging Face GPT-2 checkpoints <-> `gpt.model.GPT`.

    model = GPT.from_pretrained("gpt2")                        # downloads through huggingface_hub
    model = GPT.from_pretrained("path/to/hf_dir", kernels="triton", dropout=0.1)
    model.save_pretrained("export_dir")                        # opens with transformers.GPT2LMHeadModel

This module is the checkpoint format only and does not import `gpt.model`: GPT's
`from_pretrained` and `save_pretrained` call into it (passing the model class), and the check
command `python -m gpt.pretrained` sits above both.

A Hugging Face GPT-2 checkpoint is a folder with `config.json` and `model.safetensors` (or
`pytorch_model.bin`, read with `torch.load(weights_only=True)`). The parameter names are the
same as ours; what differs: GPT-2's attention and MLP projections are `Conv1D` layers whose
weights are stored transposed, (in, out) instead of nn.Linear's (out, in); older checkpoints
carry the causal-mask buffers `attn.bias` / `attn.masked_bias` (skipped); `lm_head.weight`
may be absent (it is tied to `transformer.wte.weight`).
"""

import json
import warnings
from pathlib import Path

import torch

from gpt.files import atomic_path

HF_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# Conv1D weights, stored (in, out): transposed on the way in and out
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def resolve_dir(name_or_dir):
    """The checkpoint folder: `name_or_dir` itself, or GPT-2's download by name."""
    path = Path(name_or_dir)
    if path.is_dir():
        return path
    if name_or_dir not in HF_NAMES:
        raise ValueError(
            f"name_or_dir must be a local Hugging Face checkpoint folder or one of {HF_NAMES}, "
            f"got {name_or_dir!r}"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(
            repo_id=f"openai-community/{name_or_dir}",
            allow_patterns=["config.json", "model.safetensors"],
        ))
    except Exception as err:  # offline, no huggingface_hub, hub error
        raise RuntimeError(
            f"could not download {name_or_dir!r} from the Hugging Face Hub ({err}); download it "
            f"elsewhere and pass the folder with config.json and model.safetensors instead"
        ) from err


def _config_from_hf(hf, overrides):
    for key, expected in (("layer_norm_epsilon", 1e-5),):
        if abs(hf.get(key, expected) - expected) > 1e-12:
            raise ValueError(f"config.json has {key}={hf[key]}; this model uses {expected}")
    act = hf.get("activation_function", "gelu_new")
    if act not in GELU_TANH:
        raise ValueError(f"config.json has activation_function={act!r}; this model uses tanh GELU "
                         f"({', '.join(GELU_TANH)})")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise ValueError(f"config.json sets {flag}, a GPT-2 variant this model does not implement")
    if not hf.get("scale_attn_weights", True):
        raise ValueError("config.json sets scale_attn_weights=false; this model scales by 1/sqrt(head_dim)")
    args = dict(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                block_size=hf["n_positions"], vocab_size=hf["vocab_size"], bias=True, dropout=0.0)
    allowed = {"kernels", "dropout", "block_size"}
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(f"from_pretrained overrides may only set {sorted(allowed)}, got {sorted(unknown)}")
    if overrides.get("block_size", args["block_size"]) > args["block_size"]:
        raise ValueError(f"block_size can only shrink the checkpoint's {args['block_size']}")
    return args, overrides.pop("block_size", None)


def load_hf_state_dict(folder):
    """The tensors of a Hugging Face checkpoint folder, keyed with our names."""
    folder = Path(folder)
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        raw = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").exists():
        # weights_only: a checkpoint from the internet must not be able to run code
        raw = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder} has neither model.safetensors nor pytorch_model.bin")
    sd = {}
    for key, value in raw.items():
        if key.endswith(("attn.bias", "attn.masked_bias")) and value.dim() > 1:
            continue  # causal-mask buffers of older checkpoints, not parameters
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key  # saved from GPT2Model: no "transformer." prefix
        if key.endswith(TRANSPOSED):
            value = value.t()
        sd[key] = value.contiguous()
    return sd


def from_pretrained(model_class, config_class, name_or_dir, ranks_path=None, **overrides):
    """`model_class(config_class(...))` (GPT, GPTConfig) with a Hugging Face GPT-2
    checkpoint's weights; see GPT.from_pretrained, which calls this."""
    folder = resolve_dir(name_or_dir)
    hf = json.loads((folder / "config.json").read_text())
    args, block_size = _config_from_hf(hf, dict(overrides))
    args.update({k: v for k, v in overrides.items() if k != "block_size"})
    model = model_class(config_class(**args))
    sd = load_hf_state_dict(folder)
    sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
    if not torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"]):
        raise ValueError("the checkpoint's lm_head.weight differs from wte.weight; this model ties them")
    ours = model.state_dict()
    missing = sorted(set(ours) - set(sd))
    unexpected = sorted(set(sd) - set(ours))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match GPT-2's layout: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for k, v in sd.items():
        if v.shape != ours[k].shape:
            raise ValueError(f"{k}: checkpoint shape {tuple(v.shape)}, model expects {tuple(ours[k].shape)}")
    with torch.no_grad():
        for k, p in ours.items():
            p.copy_(sd[k])
    if block_size is not None:
        model.crop_block_size(block_size)
    model.tokenizer = _gpt2_tokenizer(ranks_path)
    return model


def _gpt2_tokenizer(ranks_path):
    """GPT-2's tokenizer (tiktoken), or None with a warning when it cannot be had offline."""
    from gpt.tokenizer import GPT2Tokenizer

    try:
        return GPT2Tokenizer(ranks_path)
    except (ValueError, OSError) as err:  # UsageError (offline, no copy), a bad ranks file
        warnings.warn(f"model loaded without its GPT-2 tokenizer: {err}")
        return None


def save_pretrained(model, folder):
    """Write `model` as a Hugging Face GPT-2 checkpoint (config.json + model.safetensors)
    that `transformers.GPT2LMHeadModel.from_pretrained(folder)` opens. A model trained with
    bias=False gets zero biases (the same function)."""
    from safetensors.torch import save_file

    cfg = model.config
    if not cfg.causal:
        raise ValueError("save_pretrained writes GPT-2, a causal model; this one has causal=False")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied: transformers re-ties it to wte on load
        if key.endswith(TRANSPOSED):
            value = value.t()
        tensors[key] = value.detach().to("cpu", torch.float32).contiguous()
    if not cfg.bias:
        for name, module in model.named_modules():
            if hasattr(module, "weight") and getattr(module, "bias", 0) is None:
                tensors[f"{name}.bias"] = torch.zeros(module.weight.shape[0])  # Linear (out, in) or LN (C,)
        tensors.pop("lm_head.bias", None)
    hf = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_layer=cfg.n_layer,
              n_head=cfg.n_head, n_embd=cfg.n_embd, n_positions=cfg.block_size, n_ctx=cfg.block_size,
              vocab_size=cfg.vocab_size, activation_function="gelu_new", layer_norm_epsilon=1e-5,
              resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
              initializer_range=0.02, tie_word_embeddings=True, bos_token_id=50256, eos_token_id=50256)
    for name, write in (("model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"})),
                        ("config.json", lambda p: p.write_text(json.dumps(hf, indent=2)))):
        with atomic_path(folder / name) as tmp:
            write(tmp)
    return folder
