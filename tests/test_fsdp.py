"""Past one device: FSDP2 on CPU with Gloo, activation checkpointing, sharded checkpoints.

Two processes under torchrun against one process on the same global batch; the Triton
kernels run in the interpreter (TRITON_INTERPRET=1 is inherited from tests/conftest.py).
"""

import json
import os
import shutil
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

import gpt_kernels
import train
from gpt import checkpoint as gckpt
from gpt import train_config, trainer
from gpt.cli import UsageError, parse
from tests.ddp_common import make_model_and_batches

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
interpreter = pytest.mark.skipif(not gpt_kernels.use_triton("auto", torch.empty(0)),
                                 reason="the Triton kernels need CUDA or TRITON_INTERPRET=1")


def torchrun(args, cwd, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def single_process_grads(backend):
    model, batches = make_model_and_batches(kernels=backend)
    it = iter(batches)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = trainer.forward_backward(model, lambda: next(it), 4, nullcontext(), scaler)
    return loss, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("backend, ac", [
    ("torch", "0"),
    pytest.param("triton", "1", marks=interpreter),
])
def test_fsdp_two_processes_match_single_process(backend, ac, tmp_path):
    out = tmp_path / "fsdp.pt"
    torchrun([str(ROOT / "tests" / "fsdp_worker.py"), str(out), backend, ac], tmp_path)
    got = torch.load(out, weights_only=True)
    assert got["tied"], "lm_head and the token embedding must stay one parameter"
    _, ref = single_process_grads(backend)
    assert got["grads"].keys() == ref.keys()
    for name, g in ref.items():  # every gradient, the tied embedding's included
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-5, atol=1e-7, msg=name)


@interpreter
def test_activation_checkpointing_same_gradients_with_dropout():
    grads = []
    for ac in (False, True):
        model, batches = make_model_and_batches(kernels="triton")
        for m in model.modules():  # dropout everywhere, attention included
            if hasattr(m, "p"):
                m.p = 0.2
            if hasattr(m, "dropout") and isinstance(m.dropout, float):
                m.dropout = 0.2
        model.activation_checkpointing = ac
        torch.manual_seed(7)
        _, loss = model(*batches[0])
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.equal(grads[1][name], g), f"{name}: recomputation drew other dropout masks"


# --------------------------------------------------------------------------- train.py + DCP

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    text = SHARED.read_text()[:60_000] if SHARED.exists() else None
    if text is None:
        from gpt.data import load_text

        text = load_text("shakespeare")[:60_000]
    path = tmp_path_factory.mktemp("corpus") / "input.txt"
    path.write_text(text)
    return path


def run_args(corpus, out, **kw):
    cfg = dict(dataset=str(corpus), data_dir=str(out.parent / "data"), out_dir=str(out),
               n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, max_iters=8,
               lr_decay_iters=8, warmup_iters=2, eval_interval=4, eval_iters=10, log_interval=1,
               learning_rate=3e-3, kernels="torch", num_samples=0, device="cpu",
               always_save_checkpoint=True, gradient_accumulation_steps=2, fsdp=True)
    cfg.update(kw)
    return [str(ROOT / "train.py")] + [f"--{k}={v}" for k, v in cfg.items()]


def losses(out):
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return ({r["iter"]: r["loss"] for r in recs if "loss" in r},
            {r["iter"]: r["val_loss"] for r in recs if "val_loss" in r})


def test_sharded_checkpoint_resumes_at_two_and_at_one_process(corpus, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    torchrun(run_args(corpus, straight), tmp_path)
    torchrun(run_args(corpus, split, max_iters=4), tmp_path)
    assert (split / "ckpt" / "meta.json").is_file() and not (split / "ckpt.pt").exists()
    assert gckpt.read_meta(split / "ckpt")["iter_num"] == 4
    one = tmp_path / "one"  # the same checkpoint, to be resumed by a single process (no FSDP)
    shutil.copytree(split / "ckpt", one / "ckpt")
    shutil.copy(split / "tokenizer.json", one / "tokenizer.json")
    torchrun(run_args(corpus, split, init_from="resume"), tmp_path)

    train_s, val_s = losses(straight)
    train_r, val_r = losses(split)
    for it in range(5, 9):  # two processes again: the run continues exactly
        assert train_r[it] == pytest.approx(train_s[it], rel=1e-5), it
    assert val_r[8] == pytest.approx(val_s[8], rel=1e-5)

    # one process, accumulating both micro-batches itself: the same weights and AdamW state,
    # other batches (its own random streams), so the loss goes on where the two-process run was
    summary = train.train(parse(run_args(corpus, one, init_from="resume", fsdp=False)[1:],
                                train.OPTIONS))
    assert summary["iter_num"] == 8
    assert summary["val_loss"] == pytest.approx(val_s[8], rel=0.03)


def test_export_and_sample_from_a_sharded_checkpoint(corpus, tmp_path):
    out = tmp_path / "out"
    torchrun(run_args(corpus, out, max_iters=4), tmp_path)
    model, _, iter_num = gckpt.load_for_inference(out)  # gpt.sample reads the folder directly
    assert iter_num == 4
    written = gckpt.export(out, hf_dir=tmp_path / "hf")
    plain = torch.load(out / "ckpt.pt", weights_only=True)
    assert plain["iter_num"] == 4 and set(plain) >= {"model", "optimizer", "rng", "config"}
    for name, t in model.state_dict().items():
        assert torch.equal(plain["model"][name], t), name
    assert (tmp_path / "hf" / "config.json").is_file() and len(written) == 2


@pytest.mark.parametrize("argv, match", [
    (["--fsdp=True"], "launch it as torchrun"),
])
def test_fsdp_without_torchrun_is_a_one_line_error(argv, match, tmp_path):
    with pytest.raises(UsageError, match=match):
        train.main(argv + [f"--out_dir={tmp_path / 'o'}"])
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("train.py: error: --fsdp=True")


def test_fsdp_with_float16_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun; the check comes first
    with pytest.raises(UsageError, match="float16"):
        train_config.check_config({**trainer.DEFAULTS, "fsdp": True, "dtype": "float16",
                            "out_dir": str(tmp_path)})


@pytest.mark.slow
def test_fsdp_with_compile_and_accumulation(corpus, tmp_path):
    out = tmp_path / "c"
    torchrun(run_args(corpus, out, compile=True, max_iters=4, eval_iters=2), tmp_path)
    train_l, _ = losses(out)
    assert len(train_l) == 4
