"""The project's import names live beside transformers and every other installed distribution.

Our kernels package was once named ``kernels``; Hugging Face's kernel hub (a dependency of
transformers >= 5.2x) has the same import name, and whichever came first on ``sys.path`` won:
from the repository root ours did, and ``transformers`` failed on
``from kernels import CUDAProperties``. These tests make the next such collision fail CI.
"""

import importlib.metadata as md
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the names this checkout puts on sys.path: the two packages, and bench/, tools/ and train.py at the root
OURS = ("gpt", "gpt_kernels", "bench", "tools", "train")
OUR_DISTRIBUTION = "gpt-triton"


def _canonical(name):
    return name.replace("_", "-").lower()


def test_no_other_distribution_provides_our_import_names():
    """``importlib.metadata.packages_distributions()`` maps each importable top-level name to
    the installed distributions that ship it; only this project may ship ours."""
    provided = md.packages_distributions()
    clashes = {name: sorted({d for d in provided.get(name, [])
                             if _canonical(d) != OUR_DISTRIBUTION})
               for name in OURS}
    clashes = {name: dists for name, dists in clashes.items() if dists}
    assert not clashes, "; ".join(
        f"the import name {name!r} is this project's ({REPO / name}) and also "
        f"provided by {', '.join(dists)} as well: one shadows the other"
        for name, dists in clashes.items())


def test_our_names_are_what_is_on_the_path():
    """Each of our names imports from this checkout, not from another distribution."""
    for name in OURS:
        module = __import__(name)
        assert Path(module.__file__).resolve().is_relative_to(REPO), (name, module.__file__)


# A fresh interpreter with the repository root first on sys.path, as `python train.py` has it:
# our packages, then transformers' GPT-2 (whose import reaches Hugging Face's `kernels` on
# recent versions), then a small GPT-2 checkpoint loaded both ways.
_BOTH_WAYS = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import torch
    import gpt_kernels
    from gpt.model import GPT, GPTConfig
    from gpt.pretrained import save_pretrained
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = sys.argv[2]
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=61, n_positions=16, n_layer=2, n_head=2,
                                    n_embd=16, activation_function="gelu_new")).eval()
    hf.save_pretrained(folder + "/hf")
    ours = GPT.from_pretrained(folder + "/hf", kernels="torch").eval()
    idx = torch.randint(0, 61, (2, 16))
    with torch.no_grad():
        a = (ours(idx)[0] - hf(idx).logits).abs().max().item()
    save_pretrained(ours, folder + "/ours")
    back = GPT2LMHeadModel.from_pretrained(folder + "/ours").eval()
    with torch.no_grad():
        b = (ours(idx)[0] - back(idx).logits).abs().max().item()
    assert a < 1e-4 and b < 1e-4, (a, b)
    print("ok", gpt_kernels.__file__)
""")


def test_gpt_and_transformers_in_one_process(tmp_path):
    pytest.importorskip("transformers")
    proc = subprocess.run([sys.executable, "-c", _BOTH_WAYS, str(REPO), str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok ") and str(REPO) in proc.stdout
