"""The benchmark suite on the CPU: smoke runs of bench.kernels and bench.train (every kernel x
provider x mode, every training path, time to quality), the results schema, the refusal to
time without a GPU, and bench.report on a synthetic full-results file.

The smoke runs go in-process (one import of torch and the kernels); on a machine without CUDA
conftest.py has set TRITON_INTERPRET=1, so the Triton provider runs in the interpreter.
"""

import json
import os

import pytest
import torch

from gpt.cli import UsageError

from bench import common, nanogpt_cpu, report
from bench import generate as bench_generate
from bench import kernels as bench_kernels
from bench import train as bench_train

SMOKE_TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
              "All:\nSpeak, speak.\n\n") * 40


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    """bench.kernels and bench.train in smoke mode, both into one results file."""
    if torch.cuda.is_available():
        pytest.skip("smoke mode is the CPU check; this machine has a GPU")
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "smoke.json"
    data = folder / "input.txt"
    data.write_text(SMOKE_TEXT)
    bench_kernels.main(["--smoke=True", f"--out={out}"])
    bench_train.main(["--smoke=True", f"--out={out}", "--time_to_quality=True", f"--data={data}"])
    return out, json.loads(out.read_text())


def test_results_metadata(smoke_results):
    _, doc = smoke_results
    assert doc["smoke"] is True and doc["device"] == "cpu" and doc["device_slug"] == "cpu"
    assert doc["schema"] == common.SCHEMA_VERSION
    for key in ("torch", "triton", "cuda", "python"):
        assert key in doc["versions"]
    assert doc["versions"]["torch"] == torch.__version__
    assert "commit" in doc and "date" in doc
    assert set(doc["ceilings"]) >= {"copy_gbps", "matmul_tflops", "smoke"}
    assert doc["ceilings"]["copy_gbps"] > 0 and doc["ceilings"]["matmul_tflops"] > 0


def test_kernels_smoke_covers_every_path(smoke_results):
    _, doc = smoke_results
    recs = doc["kernels"]["measurements"]
    seen = {(r["kernel"], r["provider"], r["mode"]) for r in recs}
    for op in bench_kernels.OPS:
        for provider in bench_kernels.providers_for(op):
            for mode in bench_kernels.MODES:
                assert (op, provider, mode) in seen, (op, provider, mode)
    for r in recs:
        assert {"kernel", "provider", "mode", "dtype", "shape", "skipped"} <= set(r)
        assert isinstance(r["shape"], dict) and r["shape"]
        if r["skipped"]:
            assert r["reason"]
        else:
            assert 0 <= r["ms_p20"] <= r["ms"] <= r["ms_p80"]
            assert r["metric"] in ("tflops", "gbps") and r[r["metric"]] == r["value"]
            assert "peak_mem_bytes" in r and "fraction_of_ceiling" in r
    # the kernels themselves (interpreter), eager and compile all ran; only SDPA backends the
    # CPU lacks may be skipped
    ran = {(r["kernel"], r["provider"]) for r in recs if not r["skipped"]}
    for op in bench_kernels.OPS:
        for provider in ("triton", "torch", "compile"):
            if provider == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
                continue
            assert (op, provider) in ran, (op, provider)
    assert ("flash_attention", "naive") in ran and ("flash_attention", "sdpa") in ran


def test_train_smoke_covers_every_path(smoke_results):
    _, doc = smoke_results
    t = doc["train"]
    assert "SDPA" in t["torch_attention"] or "not SDPA" in t["torch_attention"]
    paths = {r["path"]: r for r in t["paths"]}
    assert set(paths) == set(bench_train.PATHS)
    for name, r in paths.items():
        if name == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
            assert r["skipped"] and r["reason"]
            continue
        assert not r["skipped"], r
        assert r["tokens_per_sec"] > 0 and r["step_ms"] > 0 and "peak_mem_bytes" in r
        assert r["max_batch"]["batch_size"] == r["max_batch"]["limit"]  # the CPU never OOMs
    ttq = {r["path"]: r for r in t["time_to_quality"]}
    assert set(ttq) == set(bench_train.PATHS)
    for r in ttq.values():
        if r["skipped"]:
            continue
        # smoke target: any loss counts, so the first evaluation reaches it at t = 0
        assert r["reached"] and r["iter"] == 0 and r["seconds"] == 0.0
        assert [e["iter"] for e in r["evals"]] == [0, 2, 4]


def test_report_on_smoke_results(smoke_results, tmp_path):
    path, _ = smoke_results
    with pytest.raises(UsageError, match="smoke run"):
        report.main([f"--results={path}", f"--out_dir={tmp_path}"])
    out = report.main([f"--results={path}", "--include_smoke=True", f"--out_dir={tmp_path}"])
    assert out["markdown"].startswith(report.SMOKE_BANNER)
    assert (tmp_path / "smoke.md").exists()
    for png in out["images"].values():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{report.START}\nold\n{report.END}\ny\n")
    with pytest.raises(UsageError, match="smoke"):
        report.main([f"--results={path}", "--include_smoke=True", f"--out_dir={tmp_path}",
                     "--update_readme=True", f"--readme={readme}"])
    assert "old" in readme.read_text()


# ----------------------------------------------------------------------------- refusal

@pytest.mark.parametrize("module", [bench_kernels, bench_train], ids=["kernels", "train"])
def test_refuses_without_cuda(module, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="no CUDA GPU.*--smoke=True"):
        module.main([])


@pytest.mark.parametrize("module", [bench_kernels, bench_train], ids=["kernels", "train"])
def test_refuses_under_the_interpreter(module, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UsageError, match="TRITON_INTERPRET=1.*interpreter"):
        module.main([])


def test_unknown_option_is_an_error():
    with pytest.raises(UsageError, match="unknown option --no_such_option"):
        bench_kernels.main(["--smoke=True", "--no_such_option=1"])
    with pytest.raises(UsageError, match="--ops='attention': unknown attention"):
        bench_kernels.main(["--smoke=True", "--ops=attention"])
    with pytest.raises(UsageError, match="--paths='triton,jax': unknown jax"):
        bench_train.main(["--smoke=True", "--paths=triton,jax"])


# ----------------------------------------------------------------------------- pieces

def test_shapes_come_from_the_presets():
    from gpt.model import PRESETS

    assert [bench_kernels.HIDDEN[p] for p in bench_kernels.MODEL_SIZES] == [
        PRESETS[p]["n_embd"] for p in ("gpt2", "gpt2-medium", "gpt2-xl")]
    cases = bench_kernels.build_cases(bench_kernels.OPS, ("bfloat16",), smoke=False, quick=False)
    attn = [c.shape for c in cases if c.op == "flash_attention"]
    assert {s["T"] for s in attn} == {1024, 2048, 4096, 8192}
    assert {s["D"] for s in attn} == {64, 128}
    assert all(s["H"] * s["D"] in bench_kernels.HIDDEN.values() for s in attn)
    ce = [c.shape for c in cases if c.op == "cross_entropy"]
    assert {s["V"] for s in ce} == {50304} and {s["N"] for s in ce} == {4096, 8192, 16384}


def test_work_counts():
    c = bench_kernels.attention_case(2, 3, 128, 64, "bfloat16")
    fwd = 4 * 2 * 3 * 128 * 128 * 64 / 2
    assert c.work("fwd") == ("tflops", fwd)
    assert c.work("bwd") == ("tflops", 2.5 * fwd)
    assert c.work("fwd+bwd") == ("tflops", 3.5 * fwd)
    lg = bench_kernels.linear_gelu_case(16, 8, "float16")
    assert lg.work("fwd") == ("tflops", 2 * 16 * 32 * 8)
    ln = bench_kernels.layer_norm_case(10, 4, "float32")
    assert ln.work("fwd") == ("gbps", 2 * 10 * 4 * 4 + 2 * 4 * 4)


def test_largest_batch_search():
    calls = []

    def fits_upto(n):
        def fits(b):
            calls.append(b)
            return b <= n
        return fits

    assert bench_train.largest_batch(fits_upto(37), 12, 512)[0] == 37
    assert calls[:3] == [12, 24, 48]  # doubling, then bisection between 24 and 48
    assert bench_train.largest_batch(fits_upto(0), 12, 512)[0] == 0
    best, note = bench_train.largest_batch(fits_upto(10**6), 12, 100)
    assert best == 100 and "limit" in note


def test_oom_is_a_skip_not_a_crash():
    err = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert bench_train._is_oom(err)
    assert common.failure_reason(err).startswith("out of memory")
    assert not bench_train._is_oom(ValueError("bad"))


def test_write_results_merges_sections(tmp_path):
    meta = dict(schema=1, smoke=True, device="cpu", device_slug="cpu", date="2000-01-01")
    out = tmp_path / "r.json"
    common.write_results(out, meta, "kernels", {"measurements": []}, {"copy_gbps": 1.0})
    common.write_results(out, meta, "train", {"paths": []})
    doc = json.loads(out.read_text())
    assert doc["kernels"] == {"measurements": []} and doc["train"] == {"paths": []}
    assert doc["ceilings"] == {"copy_gbps": 1.0}
    assert not list(tmp_path.glob("*.tmp"))
    other = dict(meta, device="another")
    common.write_results(out, other, "train", {"paths": [1]})
    assert "kernels" not in json.loads(out.read_text())  # a different device starts afresh


# ----------------------------------------------------------------------------- report

def fake_results():
    """A made-up full results file: every number here is FAKE, for the report's tests only."""
    meta = dict(schema=1, smoke=False, device="FAKE GPU (test fixture, not a measurement)",
                device_slug="fake-gpu", date="2000-01-02", updated="2000-01-02T00:00:00+00:00",
                versions=dict(python="3", torch="0.0-fake", triton="0.0-fake", cuda="0.0",
                              cudnn=None),
                commit="0" * 40, dirty=False,
                ceilings=dict(copy_gbps=1000.0, copy_bytes=1, copy_ms=1.0, matmul_tflops=100.0,
                              matmul_shape=[8, 8, 8], matmul_dtype="bfloat16", matmul_ms=1.0,
                              smoke=False))

    def rec(kernel, provider, label, ms, mode="fwd+bwd", metric="tflops", skipped=False):
        base = dict(kernel=kernel, provider=provider, dtype="bfloat16", mode=mode,
                    shape={"label": label}, label=label, size="")
        if skipped:
            return dict(base, skipped=True, reason="RuntimeError: fake reason")
        value = 10.0 / ms
        return dict(base, skipped=False, ms=ms, ms_p20=ms * 0.9, ms_p80=ms * 1.1, metric=metric,
                    value=value, **{metric: value}, fraction_of_ceiling=value / 100.0,
                    peak_mem_bytes=int(2**20 * ms))

    ms = [
        rec("flash_attention", "triton", "T=1024", 1.0),
        rec("flash_attention", "torch", "T=1024", 4.0),
        rec("flash_attention", "compile", "T=1024", 2.0),
        rec("flash_attention", "sdpa-flash", "T=1024", 0.8),
        rec("flash_attention", "sdpa-cudnn", "T=1024", 0.5),
        rec("flash_attention", "sdpa-efficient", "T=1024", 0, skipped=True),
        rec("flash_attention", "triton", "T=2048", 2.0),
        rec("flash_attention", "torch", "T=2048", 16.0),
        rec("layer_norm", "triton", "N=4096", 1.0, metric="gbps"),
        rec("layer_norm", "torch", "N=4096", 3.0, metric="gbps"),
        rec("layer_norm", "compile", "N=4096", 1.5, metric="gbps"),
    ]
    train = dict(
        config=dict(steps=20, warmup=5), model=dict(n_layer=12, n_embd=768, vocab_size=50304,
                                                    block_size=1024),
        n_params=124_000_000, dtype="bfloat16", optimizer="fake", torch_attention="fake",
        paths=[
            dict(path="triton", kernels="triton", compile=False, skipped=False, batch_size=12,
                 block_size=1024, step_ms=100.0, tokens_per_sec=122880.0, mfu=0.5,
                 mfu_datasheet=0.45, peak_mem_bytes=10 * 2**30,
                 max_batch=dict(batch_size=40, limit=512, note="41 does not fit")),
            dict(path="torch", kernels="torch", compile=False, skipped=False, batch_size=12,
                 block_size=1024, step_ms=200.0, tokens_per_sec=61440.0, mfu=0.25,
                 mfu_datasheet=None, peak_mem_bytes=30 * 2**30,
                 max_batch=dict(batch_size=16, limit=512, note="17 does not fit")),
            dict(path="compile", skipped=True, reason="out of memory: fake"),
        ],
        time_to_quality=[
            dict(path="triton", skipped=False, reached=True, seconds=123.4, iter=4750,
                 target_loss=1.47, best_val_loss=1.4690, total_seconds=130.0),
            dict(path="torch", skipped=False, reached=False, seconds=None, iter=None,
                 target_loss=1.47, best_val_loss=1.4801, total_seconds=300.0),
        ],
    )
    return dict(meta, kernels=dict(measurements=ms), train=train)


def test_report_on_synthetic_results(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    path = results / "fake-gpu-2000-01-02.json"
    path.write_text(json.dumps(fake_results()))
    smoke = dict(fake_results(), smoke=True, date="2999-01-01")  # newer, but a smoke run
    (results / "cpu-2999-01-01-smoke.json").write_text(json.dumps(smoke))
    (results / "generate-cuda-2000-01-03.json").write_text(json.dumps({"benchmark": "generate"}))
    assert report.find_results(results) == path
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{report.START}\nold table\n{report.END}\n\nafter\n")

    out = report.main([f"--results_dir={results}", "--update_readme=True", f"--readme={readme}"])
    md = out["markdown"]
    assert "FAKE GPU" in md and "SMOKE" not in md
    # attention T=1024: eager 4.0 / 1.0, compile 2.0 / 1.0, best SDPA (cuDNN) 0.5 / 1.0
    assert "| flash_attention | T=1024 | bfloat16 | fwd+bwd | 1.000 |" in md
    assert "4.00x | 2.00x | 0.50x" in md
    # geometric mean over T=1024 (4x) and T=2048 (8x) vs eager
    assert "5.66x (4.00-8.00)" in md
    assert "flash_attention / sdpa-efficient: RuntimeError: fake reason" in md
    assert "| triton | Triton flash | 12 x 1024 | 100.0 | 122,880 | 50.0% | 45.0% | 10.00 | 40 |" in md
    assert "skipped: out of memory: fake" in md
    assert "| triton | 123 | 4750 | 1.4690 |" in md and "not reached" in md
    for name in ("fake-gpu-2000-01-02-kernels.png", "fake-gpu-2000-01-02-train.png"):
        assert (results / name).read_bytes()[:4] == b"\x89PNG"
    assert (results / "fake-gpu-2000-01-02.md").read_text() == md

    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n" + report.START)
    assert text.endswith(report.END + "\n\nafter\n")
    assert "old table" not in text and "5.66x" in text
    assert "(results/fake-gpu-2000-01-02-kernels.png)" in text
    assert "Every kernel measurement" not in text  # the per-shape table stays out of the README
    assert "[fake-gpu-2000-01-02.md](results/fake-gpu-2000-01-02.md)" in text


def test_report_without_results(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.START}\n{report.END}\n")
    assert report.main([f"--results_dir={tmp_path}", "--update_readme=True",
                        f"--readme={readme}"]) is None
    assert "No GPU benchmark results recorded yet" in capsys.readouterr().out
    assert "GPU figures pending" in readme.read_text()
    readme.write_text("no markers\n")
    with pytest.raises(UsageError, match="results:start"):
        report.main([f"--results_dir={tmp_path}", "--update_readme=True", f"--readme={readme}"])


# ----------------------------------------------------------------------------- generate

def test_generate_refuses_the_cpu_unless_asked(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    with pytest.raises(UsageError, match="no CUDA GPU: pass --device=cpu"):
        bench_generate.main([])
    with pytest.raises(UsageError, match="--prompt \\+ --new_tokens"):
        bench_generate.main(["--device=cpu", "--prompt=1000", "--new_tokens=100"])
    assert not list(tmp_path.iterdir())


def test_generate_smoke_never_overwrites_a_result(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    # kernels=torch: the conftest's TRITON_INTERPRET=1 would send "auto" to the interpreter
    first = bench_generate.main(["--smoke=True", "--kernels=torch"])
    second = bench_generate.main(["--smoke=True", "--kernels=torch"])
    assert first["smoke"] and first["same_output"] and second["same_output"]
    names = sorted(p.name for p in tmp_path.iterdir())
    day = first["date"]
    assert names == [f"generate-cpu-{day}-smoke-2.json", f"generate-cpu-{day}-smoke.json"]


def test_unique_path(tmp_path):
    path = tmp_path / "r.json"
    assert common.unique_path(path) == path
    path.write_text("{}")
    assert common.unique_path(path) == tmp_path / "r-2.json"
    (tmp_path / "r-2.json").write_text("{}")
    assert common.unique_path(path) == tmp_path / "r-3.json"


# ----------------------------------------------------------------------------- nanogpt_cpu

FAKE_NANOGPT_TRAIN = """
import sys
args = dict(a[2:].split("=", 1) for a in sys.argv[2:])
print("step 0: train loss 4.1000, val loss 4.2000")
for i in range(int(args["max_iters"]) + 1):  # nanoGPT's loop: iterations 0..max_iters
    print(f"iter {i}: loss {4.0 - i / 100:.4f}, time 1.00ms, mfu -100.00%")
"""
FAKE_PREPARE = """
from pathlib import Path
here = Path(__file__).parent
(here / "train.bin").write_bytes((here / "input.txt").read_bytes())
"""


def test_nanogpt_cpu_side_by_side_on_a_stand_in_checkout(tmp_path, monkeypatch):
    """The comparison's plumbing with a stand-in for nanoGPT (a script that prints nanoGPT's
    log lines) and the real train.py, one short run each."""
    nano = tmp_path / "nanoGPT"
    (nano / "config").mkdir(parents=True)
    (nano / "data" / "shakespeare_char").mkdir(parents=True)
    (nano / "train.py").write_text(FAKE_NANOGPT_TRAIN)
    (nano / "model.py").write_text("")
    (nano / "configurator.py").write_text("")
    (nano / "config" / "train_shakespeare_char.py").write_text("")
    (nano / "data" / "shakespeare_char" / "prepare.py").write_text(FAKE_PREPARE)
    text = tmp_path / "input.txt"
    text.write_text(SMOKE_TEXT)
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    (tmp_path / "results").mkdir()
    day = nanogpt_cpu.date.today().isoformat()
    (tmp_path / "results" / f"nanogpt-cpu-{day}.json").write_text("{}")  # a committed result

    doc = nanogpt_cpu.main([f"--nanogpt={nano}", f"--input={text}", "--repeats=1",
                            "--max_iters=2", "--eval_iters=1"])
    sides = doc["sides"]
    assert sides["nanoGPT"]["steps"] == sides["gpt-triton"]["steps"] == 3
    assert sides["nanoGPT"]["final_loss"] == 3.98 and sides["gpt-triton"]["final_loss"] > 0
    assert all(r["cpu_s"] > 0 and r["step0_val_loss"] for r in doc["runs"])
    assert doc["ratio"] == pytest.approx(sides["gpt-triton"]["cpu_s"] / sides["nanoGPT"]["cpu_s"])
    assert "--plot=False" in doc["commands"]["gpt-triton"]
    written = json.loads((tmp_path / "results" / f"nanogpt-cpu-{day}-2.json").read_text())
    assert written["ratio"] == doc["ratio"]
    assert (tmp_path / "results" / f"nanogpt-cpu-{day}.json").read_text() == "{}"


def test_profile_smoke_groups_every_kernel(tmp_path):
    from bench import profile

    out = tmp_path / "prof.json"
    (rec,) = profile.main(["--smoke=True", "--paths=torch", "--warmup=0", "--steps=1",
                           "--top=3", f"--out={out}"])
    assert len(rec["kernels"]) == 3 and rec["total_ms"] > 0
    # the groups partition the kernels: their times add up to the total
    assert abs(sum(g["us"] for g in rec["groups"]) / 1e3 - rec["total_ms"]) < 1e-6
    assert json.loads(out.read_text())["paths"][0]["path"] == "torch"
    assert profile.group_of("_linear_gelu_bwd_dw") == "linear+gelu"
    assert profile.group_of("cudnn_generated_fort_native_sdpa_sm90_flash_bprop") == "attention"
    assert profile.group_of("void at::native::cunn_SoftMaxForward<4, float>") == "cross-entropy"
    assert profile.group_of("nvjet_sm90_tst_192x128_64x5") == "matmul"


def test_kernels_keep_other_ops_and_record_what_the_budget_left_out(tmp_path):
    """A run replaces only its own kernels' measurements (gpu_check runs attention, then the
    other ops, into one file), and shapes not started within --budget_s are recorded as not
    run, not silently dropped."""
    if torch.cuda.is_available():
        pytest.skip("smoke mode is the CPU check; this machine has a GPU")
    out = tmp_path / "r.json"
    bench_kernels.main(["--smoke=True", f"--out={out}", "--ops=layer_norm",
                        "--providers=torch", "--modes=fwd"])
    bench_kernels.main(["--smoke=True", f"--out={out}", "--ops=cross_entropy",
                        "--providers=torch", "--modes=fwd", "--budget_s=0.000001"])
    recs = json.loads(out.read_text())["kernels"]["measurements"]
    ln = [r for r in recs if r["kernel"] == "layer_norm"]
    ce = [r for r in recs if r["kernel"] == "cross_entropy"]
    assert len(ln) == 1 and not ln[0]["skipped"]
    assert ce and all(r["skipped"] and "--budget_s" in r["reason"] for r in ce)
    assert json.loads(out.read_text())["kernels"]["complete"] is True


def test_older_tritons_get_the_tiles_they_compile_cleanly(monkeypatch):
    from gpt_kernels import _autotune
    import importlib

    attention = importlib.import_module("gpt_kernels.attention")
    tables = {(128, "ieee"): [(16, 32, 4, 2, True), (16, 32, 8, 2, True)],
              (64, "ieee"): [(32, 64, 8, 2, True)], (128, "16"): [(16, 64, 4, 2, True)]}
    changes = {(128, "ieee"): {(16, 32, 8, 2): None}, (64, "ieee"): {(32, 64, 8, 2): "no dropout"},
               (128, "16"): {(16, 64, 4, 2): (16, 32, 4, 2, True)}}
    monkeypatch.setattr(_autotune, "_TRITON", (3, 9))
    assert attention._before_3_9(tables, changes) is tables
    monkeypatch.setattr(_autotune, "_TRITON", (3, 6))
    assert attention._before_3_9(tables, changes) == {
        (128, "ieee"): [(16, 32, 4, 2, True)], (64, "ieee"): [(32, 64, 8, 2, False)],
        (128, "16"): [(16, 32, 4, 2, True)]}
