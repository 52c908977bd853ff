"""bench.roofline: its counts against PyTorch's FLOP counter on fake tensors and against the
sizes of the tensors the ops read and write; the report and its command line."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from bench import roofline as rl
from gpt.cli import UsageError

SMALL = rl.Shape(B=2, T=48, C=96, H=3, L=2, V=1000)  # odd on purpose: D = 32, T not a power of 2


def counted_flops(fn):
    """FLOPs FlopCounterMode counts for fn() on fake tensors (shapes only, no data)."""
    with FakeTensorMode(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _linear_fwd_bwd(M, K, Nout):
    def run():
        x = torch.randn(M, K, requires_grad=True)
        w = torch.randn(Nout, K, requires_grad=True)
        b = torch.randn(Nout, requires_grad=True)
        F.linear(x, w, b).sum().backward()
    return run


@pytest.mark.parametrize("M, K, Nout", [(96, 96, 288), (7, 100, 13), (4096, 768, 3072)])
def test_linear_flops_match_the_flop_counter(M, K, Nout):
    assert rl.linear_flops(M, K, Nout) == counted_flops(_linear_fwd_bwd(M, K, Nout))


@pytest.mark.parametrize("op, K, mult", [(rl.op_qkv, 1, 3), (rl.op_attn_proj, 1, 1),
                                         (rl.op_mlp_proj, 4, 1), (rl.op_linear_gelu, 1, 4)])
@pytest.mark.parametrize("path", rl.PATHS)
def test_block_matmuls_match_the_flop_counter(op, K, mult, path):
    s = SMALL
    want = counted_flops(_linear_fwd_bwd(s.N, K * s.C, mult * s.C))
    assert op(s, path).flops == want


@pytest.mark.parametrize("path", rl.PATHS)
def test_loss_flops_match_the_flop_counter(path):
    s = SMALL

    def run():
        x = torch.randn(s.N, s.C, requires_grad=True)
        w = torch.randn(s.V, s.C, requires_grad=True)
        F.cross_entropy(x @ w.t(), torch.randint(0, s.V, (s.N,))).backward()
    assert rl.op_loss(s, path).flops == counted_flops(run)


def test_attention_flops_match_the_flop_counter():
    # FlopCounterMode's formulas for SDPA's flash / efficient kernels (a CPU has no such
    # kernel to run under the counter) count full (non-causal) attention: forward 2,
    # backward 5 matmuls of the whole T x T square; causal attention does half of each
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    s = SMALL
    shape = (s.B, s.H, s.T, s.C // s.H)
    full = sdpa_flop_count(shape, shape, shape) + sdpa_backward_flop_count(shape, *[shape] * 3)
    assert rl.op_attention(s, "eager").flops == full / 2
    assert rl.op_attention(s, "compile").flops == full / 2
    # ours recomputes QK^T and dO V^T in its dQ kernel: 7 backward matmuls, not 5
    assert rl.op_attention(s, "triton").flops == full / 2 * 9 / 7


def test_linear_bytes_are_the_tensor_sizes():
    s = SMALL
    x = torch.empty(s.N, s.C, dtype=torch.bfloat16)
    w32 = torch.empty(3 * s.C, s.C)
    y = torch.empty(s.N, 3 * s.C, dtype=torch.bfloat16)
    nbytes = [t.numel() * t.element_size() for t in (x, w32, y)]
    # minimum: x, W (float32 master), y forward; dy, dx, dW (float32) backward
    assert rl.op_qkv(s, "eager").min_bytes == 2 * sum(nbytes)
    op = rl.op_qkv(s, "eager")
    w16 = w32.numel() * 2
    mm = nbytes[0] + w16 + nbytes[2]  # one matmul: A, B read, C written
    cast_w = nbytes[1] + w16
    cast_x = x.numel() * (4 + 2)
    dbias = nbytes[2] + 3 * s.C * 4
    dw32 = w16 + nbytes[1]
    assert op.bytes == cast_w + cast_x + 3 * mm + dbias + dw32
    assert op.launches == 7


def test_flce_counts_before_and_after_issue_20():
    # the numbers the fused linear cross-entropy's docstring quotes (GPT-2 step)
    s = rl.Shape()
    before = rl.flce_counts(s, 128, "before")
    cublas = rl.flce_counts(s, rl.flce_rows(s), "cublas")
    assert rl.flce_rows(s) == 2048
    assert round(before.bytes / 1e9, 1) == 45.4 and before.launches == 394
    assert round(cublas.bytes / 1e9, 1) == 7.3 and cublas.launches == 25
    # the accumulator: read + written once per chunk after the first, never zero-filled
    acc = [k for k in cublas.kernels if k[0].startswith("grad_weight +=")]
    assert len(acc) == 4 and acc[0][1] == 2048 * (50304 + 768) * 2
    with pytest.raises(ValueError, match="version"):
        rl.flce_counts(s, 2048, "cuBLAS")


def test_flce_fused_counts_under_5_gb():
    # issue 20's target: the cross-entropy inside the Triton matmuls moves < 5 GB a step
    s = rl.Shape()
    fused = rl.flce_counts(s, rl.flce_rows(s))
    assert fused.bytes < 5e9 and round(fused.bytes / 1e9, 1) == 4.9
    assert fused.launches == 25  # per chunk: logits, lse, dgrad, wgrad (4 x 4) + 9 around
    # the (N, V) exponentials: one write (logits kernel) and two reads (dgrad, wgrad)
    NV = s.N * s.V * s.e
    writes = sum(k[2] for k in fused.kernels if k[0].startswith("logits"))
    T = -(-s.V // 128)
    assert writes == NV + s.N * T * 4 + s.N * 4  # plus the float32 tile lse, target logit
    grads = [k for k in fused.kernels if k[0].startswith(("grad_x (", "grad_weight +="))]
    n, chunks = rl.flce_rows(s), 4
    assert len(grads) == 2 * chunks
    others = (chunks * s.V * s.C * s.e  # dgrad: W
              + chunks * n * s.C * s.e  # wgrad: x
              + (chunks - 1) * s.V * s.C * 4  # wgrad: the float32 accumulator after chunk 1
              + 2 * chunks * n * (T * 4 + 8 + 4))  # tile lse, target, lse
    assert sum(k[1] for k in grads) - others == 2 * NV
    # the cuBLAS version moved the logits 5 times: 1.6 GB more than the fused one
    cublas = rl.flce_counts(s, rl.flce_rows(s), "cublas")
    assert cublas.bytes - fused.bytes > 2 * NV - 0.1e9
    # the op the triton path counts is this version, with its dlogits formation as alu
    op = rl.op_loss(s, "triton")
    assert op.bytes == fused.bytes and op.launches == fused.launches
    assert op.alu == s.N * s.V * (8 + 2 * 6 * 6)
    assert op.predicted(rl.DEVICES["H100"]) == pytest.approx(op.flops / 790e12 + 25 * 2e-6)


def test_step_sums_and_ratios():
    s = rl.Shape()
    d = rl.DEVICES["H100"]
    sums = {p: rl.step_summary(s, p, d)["total"] for p in rl.PATHS}
    for p, t in sums.items():
        assert t["floor"] <= t["predicted"]
        assert t["tokens_per_s"] == pytest.approx(s.N / t["predicted"])
    # the same model FLOPs on the eager and compile paths; ours adds attention's recompute
    assert sums["eager"]["flops"] == sums["compile"]["flops"] < sums["triton"]["flops"]
    # compile moves fewer bytes than eager (its fusions), and the fused loss fewer than eager
    assert sums["compile"]["bytes"] < sums["eager"]["bytes"]
    assert rl.op_loss(s, "triton").bytes < rl.op_loss(s, "eager").bytes / 2


def test_command_line_report_and_results(tmp_path, capsys):
    results = tmp_path / "gpu.json"
    results.write_text(json.dumps({"train": {"paths": [
        {"path": "triton", "batch_size": 2, "block_size": 64, "step_ms": 12.5},
        {"path": "torch", "batch_size": 2, "block_size": 64, "step_ms": 20.0},
        {"path": "torch", "batch_size": 4, "block_size": 64, "step_ms": 99.0}]}}))
    out = tmp_path / "summary.json"
    rl.main(["--preset=tiny", "--batch_size=2", "--block_size=64", "--device=A100",
             f"--results={results}", f"--out={out}"])
    text = capsys.readouterr().out
    assert "| triton |" in text and "measured ms" in text
    assert "| 12.5 |" in text and "| 20.0 |" in text and "99.0" not in text
    assert set(json.loads(out.read_text())) == {f"A100 SXM 80GB/{p}" for p in rl.PATHS}


def test_bad_options_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="--device=B200: expected"):
        rl.main(["--device=B200"])
    with pytest.raises(UsageError, match="--preset=gpt5: unknown"):
        rl.main(["--preset=gpt5"])
    with pytest.raises(UsageError, match="--results=.*no such file"):
        rl.main([f"--results={tmp_path / 'none.json'}"])
