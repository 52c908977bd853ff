"""Comparison helpers for kernel tests."""

import math

import torch

# Relative-norm tolerance ||out - ref|| / ||ref|| per dtype, against an upcast reference.
TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 1e-2,
}


def rel_error(out, ref):
    """||out - ref|| / ||ref|| in float64 (the plain norm of the difference when ref is 0)."""
    out, ref = out.detach().double(), ref.detach().double()
    diff = torch.linalg.vector_norm(out - ref).item()
    scale = torch.linalg.vector_norm(ref).item()
    return diff / scale if scale > 0 else diff


def assert_close(out, ref, rtol_norm, name="out", atol=0.0, n_show=5):
    """Fail unless ||out - ref|| <= rtol_norm * ||ref|| + atol * sqrt(numel).

    ``atol`` (an rms floor, 0 by default) is for references that are zero up to rounding,
    e.g. a gradient that vanishes exactly.

    The message gives the relative error, any NaN/inf in ``out`` that ``ref`` does not have,
    and the first elements whose error stands out (|out - ref| > rtol_norm * (|ref| + rms(ref))).
    """
    assert isinstance(out, torch.Tensor), f"{name}: expected a tensor, got {type(out).__name__}"
    assert tuple(out.shape) == tuple(ref.shape), (
        f"{name}: shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}"
    )
    o, r = out.detach().double().cpu(), ref.detach().double().cpu()
    problems = []
    bad_o, bad_r = ~torch.isfinite(o), ~torch.isfinite(r)
    if (bad_o & ~bad_r).any():
        n_nan = int((torch.isnan(o) & ~bad_r).sum())
        n_inf = int((torch.isinf(o) & ~bad_r).sum())
        problems.append(f"{n_nan} NaN and {n_inf} inf where the reference is finite")
    if (bad_r & ~bad_o).any():
        problems.append(f"{int((bad_r & ~bad_o).sum())} finite where the reference is NaN/inf")
    both = bad_o & bad_r
    same = (torch.isnan(o) & torch.isnan(r)) | (o == r)
    if (both & ~same).any():
        problems.append(f"{int((both & ~same).sum())} non-finite values differ from the reference's")
    fin = ~(bad_o | bad_r)
    diff = torch.linalg.vector_norm(o[fin] - r[fin]).item()
    scale = torch.linalg.vector_norm(r[fin]).item()
    if diff > rtol_norm * scale + atol * fin.sum().item() ** 0.5:
        err = diff / scale if scale > 0 else math.inf
        problems.append(f"relative error {err:.3e} > {rtol_norm:.1e} (||out - ref|| = {diff:.3e})")
    if not problems:
        return
    rms = r[fin].pow(2).mean().sqrt().item() if fin.any() else 0.0
    tol = rtol_norm * (r.abs() + rms)
    mismatch = (bad_o ^ bad_r) | (fin & ((o - r).abs() > tol))
    idx = mismatch.nonzero()[:n_show].tolist()
    lines = [f"  [{', '.join(map(str, i))}]: got {o[tuple(i)].item():.6g}, "
             f"expected {r[tuple(i)].item():.6g}" for i in idx]
    raise AssertionError(
        f"{name} (shape {tuple(out.shape)}, dtype {out.dtype}): " + "; ".join(problems)
        + f"\n  {int(mismatch.sum())} of {o.numel()} elements stand out"
        + ("; first:\n" + "\n".join(lines) if lines else "")
    )
