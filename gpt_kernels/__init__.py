"""GPT-2's hot ops: hand-written Triton kernels registered as PyTorch operators, and their
plain-PyTorch references.

Public ops (the same signatures, less ``backend``, in ``gpt_kernels.reference``)::

    flash_attention(q, k, v, causal=True, sm_scale=None, *, dropout_p=0.0, backend="auto")
    layer_norm(x, weight, bias, eps=1e-5, *, backend="auto")
    add_layer_norm(x, branch, weight, bias, eps=1e-5, *, backend="auto")   # -> (x + branch, y)
    linear_gelu(x, weight, bias=None, *, backend="auto")
    cross_entropy(logits, target, ignore_index=-100, reduction="mean", *, backend="auto")
    fused_linear_cross_entropy(x, weight, target, bias=None, ignore_index=-100,
                               reduction="mean", *, backend="auto")

Each lives in its own file (``gpt_kernels/layer_norm.py``, ...): the Triton kernels, their
launchers, the launchers registered as ``torch.library`` ops ``torch.ops.gpt.<op>_fwd`` /
``<op>_bwd`` with autograd, and the public function. ``backend``: "torch" runs the reference,
"triton" the op, "auto" the op where a Triton kernel can run (CUDA tensors, or CPU tensors
under ``TRITON_INTERPRET=1``) and the reference elsewhere; the environment variable
``GPT_KERNELS=torch|triton`` steers "auto". Which device kernel of an op runs is PyTorch's
dispatch (see ``gpt_kernels/_library.py``).

Without Triton (not installed, e.g. macOS) the public functions run the references and
``backend="triton"`` raises.
"""

from gpt_kernels import reference
from gpt_kernels._library import BACKENDS, env_backend, use_triton
from gpt_kernels._validate import REDUCTIONS, SUPPORTED_HEAD_DIMS

OP_NAMES = tuple(reference.__all__)  # the ops, each with its PyTorch twin in reference.py

__all__ = [*OP_NAMES, "use_triton", "env_backend", "BACKENDS", "OP_NAMES", "SUPPORTED_HEAD_DIMS",
           "REDUCTIONS", "TRITON_MISSING", "reference"]

try:
    import triton  # noqa: F401
    TRITON_MISSING = None
except ModuleNotFoundError as err:
    TRITON_MISSING = str(err)

if TRITON_MISSING is None:
    import os

    from gpt_kernels._compat import patch_interpreter

    if os.environ.get("TRITON_INTERPRET") == "1":
        patch_interpreter()  # Triton 3.6's interpreter with numpy >= 2.4
    from gpt_kernels.add_layer_norm import add_layer_norm
    from gpt_kernels.attention import flash_attention
    from gpt_kernels.cross_entropy import cross_entropy
    from gpt_kernels.fused_linear_cross_entropy import fused_linear_cross_entropy
    from gpt_kernels.layer_norm import layer_norm
    from gpt_kernels.linear_gelu import linear_gelu
    from gpt_kernels.recompute import linear_after_norm, mlp_after_norm
else:
    def _reference_only(ref):
        def op(*args, backend="auto", **kwargs):
            if backend == "triton":
                raise RuntimeError(f"backend='triton' needs Triton ({TRITON_MISSING})")
            return ref(*args, **kwargs)
        op.__name__, op.__doc__ = ref.__name__, ref.__doc__
        return op

    flash_attention = _reference_only(reference.flash_attention)
    layer_norm = _reference_only(reference.layer_norm)
    add_layer_norm = _reference_only(reference.add_layer_norm)
    linear_gelu = _reference_only(reference.linear_gelu)
    cross_entropy = _reference_only(reference.cross_entropy)
    fused_linear_cross_entropy = _reference_only(reference.fused_linear_cross_entropy)
