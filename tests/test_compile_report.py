"""The kernels compiled for real chips in CI: Triton's compiler, no GPU.

``python -m tools.compile_report --subset=ci`` compiles every kernel x dtype at GPT-2 small's
shapes for sm_80 and sm_90, the largest config each autotuner offers per launch (the one
closest to spilling), and fails on a compile error, a register spill or shared memory over
the chip's limit, or on an offered config that the committed full report did not compile
cleanly. It runs in a subprocess without TRITON_INTERPRET (conftest.py sets it for the
interpreter tests; the report must see the configs a GPU run offers). A deliberately bad
config makes the same check fail.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import triton

ROOT = Path(__file__).resolve().parents[1]
NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
pytestmark = pytest.mark.skipif(not (NVIDIA_BIN / "cuobjdump").exists(),
                                reason="this Triton wheel ships no NVIDIA tools (ptxas, cuobjdump)")

DOT_KERNELS = {"_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq", "_linear_gelu_fwd",
               "_linear_gelu_bwd_dx", "_linear_gelu_bwd_dw", "_flce_logits", "_flce_dx",
               "_flce_dw"}


def report(out, cache_dir, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "tools.compile_report", "--subset=ci", f"--out={out}",
           f"--cache_dir={cache_dir}", "--markdown=False", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def ci_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compile")
    cache = folder / "cache"  # empty: everything compiles; the bad-config test reuses it
    proc = report(folder / "ci.json", cache)
    doc = json.loads((folder / "ci.json").read_text()) if (folder / "ci.json").exists() else None
    return SimpleNamespace(proc=proc, doc=doc, cache=cache)


def test_ci_subset_compiles_without_spills_within_shared_memory(ci_report):
    proc, doc = ci_report.proc, ci_report.doc
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    t = doc["totals"]
    assert t["compiles"] > 0
    assert (t["failed"], t["spilling"], t["over_smem"], t["with_problems"]) == (0, 0, 0, 0)
    assert doc["kernels_not_launched"] == []
    for rec in doc["records"]:
        assert rec["ok"] and rec["problems"] == []
        assert rec["shared"] <= rec["smem_limit"] and rec["spill_stores"] == 0
        assert rec["registers"] == rec["cubin_registers"] <= 255
        if rec["smem_estimate"] is not None:  # the pruning's estimate is an upper bound
            assert rec["shared"] <= rec["smem_estimate"]


def test_ci_subset_covers_every_kernel_dtype_and_target(ci_report):
    doc = ci_report.doc
    seen = {(r["kernel"], u["dtype"], r["target"]) for r in doc["records"] for u in r["uses"]}
    kernels = {k for k, _, _ in seen}
    assert DOT_KERNELS | {"_attn_bwd_preprocess", "_layer_norm_fwd",
                          "_layer_norm_bwd_dx", "_layer_norm_bwd_dwdb", "_cross_entropy_fwd",
                          "_cross_entropy_bwd"} <= kernels
    for kernel in kernels:
        for dtype in ("bf16", "fp16", "fp32", "fp32-tf32"):
            for target in ("sm_80", "sm_90"):
                assert (kernel, dtype, target) in seen, (kernel, dtype, target)
    # every offered config was compiled cleanly, here or in the committed full report
    if doc["full_report"] is not None:
        assert doc["not_in_full_report"] == []
    # the autotuners still have real choices at every launch
    choices = {}
    for o in doc["offered"]:
        key = (o["kernel"], o["target"], o["dtype"], json.dumps(o["specialisation"]))
        choices.setdefault(key, []).append(o["config"])
    for key, configs in choices.items():
        if key[0] in DOT_KERNELS:
            assert len(configs) >= 2, key
    # and the dots run on tensor cores (IEEE float32 dots are FMA loops, without)
    for r in doc["records"]:
        if r["kernel"] in DOT_KERNELS and {u["dtype"] for u in r["uses"]} != {"fp32"}:
            assert r["tensor_core"], (r["kernel"], r["target"], r["config"])


def test_a_bad_config_fails_the_check(ci_report, tmp_path):
    """A 256 x 256 attention tile, as if the autotuner offered it: the check must fail."""
    proc = report(tmp_path / "bad.json", ci_report.cache, "--ops=attention", "--dtypes=bf16",
                  "--targets=sm_90", "--inject=_attn_fwd:BLOCK_M=256,BLOCK_N=256,"
                                     "num_warps=4,num_stages=3")
    assert proc.returncode == 1, proc.stdout[-3000:]
    doc = json.loads((tmp_path / "bad.json").read_text())
    bad = [r for r in doc["records"] if r["config"].get("BLOCK_M") == 256]
    assert bad and all(r["problems"] for r in bad)
    assert any("spills" in p or "shared memory" in p or "compile error" in p
               for r in bad for p in r["problems"])
    assert "PROBLEM sm_90 _attn_fwd BLOCK_M=256" in proc.stdout
    # everything else came from the first run's cache: only the bad config compiled
    assert sum(not r.get("cached") for r in doc["records"]) == len(bad)
    assert all(not r["problems"] for r in doc["records"] if r not in bad)


def test_report_refuses_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "tools.compile_report", "--subset=ci"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "python -m tools.compile_report: error: TRITON_INTERPRET=1 is set: the kernels would "
        "offer the interpreter's single config, not what a GPU run offers; unset it"]


@pytest.mark.parametrize("argv, match", [
    (["--targets=sm_70"], "--targets"),
    (["--dtypes=fp8"], "--dtypes"),
    (["--inject=_attn_fwd:BLOCK_M=big"], "--inject"),
    (["--subset=ci", "--update_readme=True"], "--subset=full"),
])
def test_report_usage_errors(argv, match):
    from gpt.errors import UsageError
    from tools.compile_report import cli

    with pytest.raises(UsageError, match=match):
        cli.main(argv)


def test_interpreter_offers_one_config():
    """Under TRITON_INTERPRET=1 (conftest.py on CPU) every autotuner has exactly one config:
    the interpreter cannot benchmark a choice."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the interpreter is off (a CUDA machine)")
    import importlib

    attention = importlib.import_module("gpt_kernels.attention")
    linear_gelu = importlib.import_module("gpt_kernels.linear_gelu")  # the module, not the op
    flce = importlib.import_module("gpt_kernels.fused_linear_cross_entropy")
    for kernel in (attention._attn_fwd, attention._attn_bwd_dkdv, attention._attn_bwd_dq,
                   linear_gelu._linear_gelu_fwd, linear_gelu._linear_gelu_bwd_dx,
                   linear_gelu._linear_gelu_bwd_dw, flce._flce_logits, flce._flce_dx,
                   flce._flce_dw):
        assert len(kernel.configs) == 1


def test_prune_drops_what_the_device_cannot_hold(monkeypatch):
    """The launch-time pruning keeps the listed tiles that fit the device's shared memory,
    and the smallest one when none does."""
    from gpt_kernels import _autotune

    names = ("BLOCK_M", "BLOCK_N")
    tables = {64: [(128, 64, 4, 3), (64, 64, 4, 3)], 128: [(256, 256, 8, 3)]}
    configs = _autotune.configs_from(tables, names)
    smem = lambda c, nargs, kw: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * 8  # noqa: E731
    prune = _autotune.Prune(names, lambda nargs, kw: tables[kw["D"]], smem, "Q")
    q = SimpleNamespace(device=torch.device("cuda", 0))
    scratch = _autotune.SCRATCH  # added to every estimate: Triton's own scratch
    for limit, d, kept in [(232448, 64, [(128, 64), (64, 64)]),
                           (40000 + scratch, 64, [(64, 64)]), (1000, 64, [(64, 64)]),
                           (232448, 128, [(256, 256)])]:
        props = SimpleNamespace(shared_memory_per_block_optin=limit)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
        got = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in prune(configs, {"Q": q}, D=d)]
        assert got == kept, (limit, d)
