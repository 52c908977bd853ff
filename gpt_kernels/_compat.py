"""Work-arounds for known bugs of the Triton versions this project supports.

Triton 3.6's interpreter (``TRITON_INTERPRET=1``) turns a scalar tensor into a Python int
with ``int(handle.data)``, where ``handle.data`` is a one-element numpy array of one
dimension. numpy 2.4 made that an error ("only 0-dimensional arrays can be converted to
Python scalars"), so with Triton 3.6 and numpy >= 2.4 every kernel that uses a scalar
tensor as an index (a ``range`` bound, a shape) fails in the interpreter. Triton 3.9 squeezes
the array first; ``patch_interpreter`` gives older interpreters the same ``__index__``. It
changes nothing on a GPU (the interpreter is not used there) and nothing where the
interpreter already squeezes.
"""

import inspect

__all__ = ["patch_interpreter"]


def patch_interpreter():
    """Make the interpreter's ``tl.tensor.__index__`` squeeze its array (see above). Returns
    True when the patch was applied, False when this Triton does not need it."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_gpt_kernels_patched", False):
        return False
    try:
        source = inspect.getsource(original)
    except (OSError, TypeError):
        return False
    if "int(self.handle.data)" not in source:
        return False  # already squeezes (Triton >= 3.7) or is written another way

    def _patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(())))

    _patch_lang_tensor._gpt_kernels_patched = True
    interpreter._patch_lang_tensor = _patch_lang_tensor
    return True
