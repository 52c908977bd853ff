"""Damaged run files are a user's mistake: `python -m gpt.sample --out_dir=...` and
`python train.py --init_from=resume --out_dir=...` on a folder with a truncated, garbage,
unpicklable or wrong file end with one line naming the file, exit status 2, no traceback,
and the run folder exactly as it was (issue 21 item 6).

Every file the two commands read is damaged in turn, in a plain run folder (ckpt.pt,
tokenizer.json, metrics.jsonl) and in a sharded one as an FSDP run writes it (ckpt/meta.json,
ckpt/.metadata, ckpt/__0_0.distcp, ckpt/rng-rank0.pt).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from gpt import checkpoint as gckpt
from gpt import sample
from gpt.cli import run_main
from gpt.errors import UsageError
from gpt.model import GPT, GPTConfig
from tests.test_train import ROOT, corpus, tiny_config  # noqa: F401  (corpus is a fixture)

# a single process writing DCP files warns that it assumes one process: that is the intent
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def run_config(corpus, out, data_dir, **kw):  # noqa: F811
    return tiny_config(corpus, out, **{**dict(
        data_dir=str(data_dir), max_iters=6, lr_decay_iters=6, eval_interval=3, eval_iters=2,
        num_samples=0, eval_sample_tokens=0, plot=False), **kw})


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):  # noqa: F811
    """{"plain": a run folder with ckpt.pt, "sharded": the same run with ckpt/ instead},
    and the prepared data folder both use."""
    base = tmp_path_factory.mktemp("runs")
    plain = base / "plain"
    train.train(run_config(corpus, plain, base / "data"))
    assert {p.name for p in plain.iterdir()} == {"ckpt.pt", "tokenizer.json", "metrics.jsonl"}

    sharded = base / "sharded"
    sharded.mkdir()
    for name in ("tokenizer.json", "metrics.jsonl"):
        shutil.copy(plain / name, sharded / name)
    ckpt = torch.load(plain / "ckpt.pt", weights_only=True)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    cfg = ckpt["config"]
    optimizer = model.configure_optimizers(cfg["weight_decay"], cfg["learning_rate"],
                                           (cfg["beta1"], cfg["beta2"]), "cpu")
    optimizer.load_state_dict(ckpt["optimizer"])
    meta = {k: ckpt[k] for k in ("model_args", "config", "iter_num", "best_val_loss")}
    gckpt.save_sharded(sharded / "ckpt", model, optimizer, {**meta, "world_size": 1}, 0, "cpu")
    assert {p.name for p in (sharded / "ckpt").iterdir()} == {
        "meta.json", ".metadata", "__0_0.distcp", "rng-rank0.pt"}
    return {"plain": plain, "sharded": sharded, "data": base / "data"}


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def not_weights_only(path):
    """A torch.save file that torch.load(weights_only=True) refuses (a numpy array in it)."""
    torch.save({"model": {}, "model_args": {}, "iter_num": 0, "x": np.arange(3)}, path)


def damage(path, how):
    """Damage the file at path: truncated, garbage, empty, or a kind of its own."""
    data = path.read_bytes()
    if how == "truncated":
        # a quarter: a .distcp file holds the weights first, then AdamW's two moments, and
        # gpt.sample reads only the weights (cut at half, they are whole, and it samples)
        path.write_bytes(data[: len(data) // 4])
    elif how == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "refused":
        not_weights_only(path)
    elif how == "not_ours":  # a valid file of the right format holding something else
        if path.suffix == ".pt":
            torch.save({"weights": torch.zeros(3)}, path)
        else:
            path.write_text('{"type": "wordpiece", "vocab": [1, 2]}\n' if path.suffix == ".json"
                            else '{"iter": 1}\n[1, 2]\n')
    else:
        raise ValueError(how)


COMMON = ("truncated", "garbage", "empty")
# (run kind, file under the run folder, damages, the commands that read it)
CASES = [
    ("plain", "ckpt.pt", COMMON + ("refused", "not_ours"), ("sample", "resume")),
    ("plain", "tokenizer.json", COMMON + ("not_ours",), ("sample", "resume")),
    ("plain", "metrics.jsonl", ("truncated", "garbage", "not_ours"), ("resume",)),
    ("sharded", "ckpt/meta.json", COMMON + ("not_ours",), ("sample", "resume")),
    ("sharded", "ckpt/.metadata", COMMON, ("sample", "resume")),
    ("sharded", "ckpt/__0_0.distcp", COMMON, ("sample", "resume")),
    ("sharded", "ckpt/rng-rank0.pt", COMMON + ("refused",), ("resume",)),
]
PARAMS = [pytest.param(kind, name, how, command, id=f"{command}-{kind}-{name}-{how}")
          for kind, name, hows, commands in CASES for how in hows for command in commands]


def command_line(command, out, runs, corpus):  # noqa: F811
    """(main, prog, argv) of the command on run folder `out`."""
    if command == "sample":
        return sample.main, sample.PROG, [f"--out_dir={out}", "--device=cpu", "--start=A",
                                          "--max_new_tokens=2", "--num_samples=1"]
    cfg = run_config(corpus, out, runs["data"], init_from="resume", max_iters=9)
    return train.main, "train.py", [f"--{k}={v}" for k, v in cfg.items()]


def copy_run(runs, kind, tmp_path):
    out = tmp_path / kind
    shutil.copytree(runs[kind], out)
    return out


def assert_one_line_error(capsys, prog, out, *names):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: {out}"), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("kind, name, how, command", PARAMS)
def test_damaged_file_is_one_line_and_changes_nothing(runs, corpus, tmp_path, capsys,  # noqa: F811
                                                      kind, name, how, command):
    out = copy_run(runs, kind, tmp_path)
    damage(out / name, how)
    before = snapshot(out)
    main, prog, argv = command_line(command, out, runs, corpus)
    with pytest.raises(SystemExit) as exit_:
        run_main(main, prog, argv)
    assert exit_.value.code == 2
    assert_one_line_error(capsys, prog, out, Path(name).name)
    assert snapshot(out) == before  # nothing written, nothing overwritten


def test_undamaged_sharded_folder_samples_and_resumes(runs, corpus, tmp_path, capsys):  # noqa: F811
    # the control for the sharded cases: the same folder, not damaged, works
    out = copy_run(runs, "sharded", tmp_path)
    (text,) = run_main(*command_line("sample", out, runs, corpus))
    assert text.startswith("A") and len(text) == 3
    summary = run_main(*command_line("resume", out, runs, corpus))
    assert summary["iter_num"] == 9  # resumed at 6 in one process, without FSDP
    assert "Traceback" not in capsys.readouterr().err


def test_the_error_says_where_another_checkpoint_is(runs, corpus, tmp_path, capsys):  # noqa: F811
    out = copy_run(runs, "sharded", tmp_path)
    shutil.copytree(out / "ckpt", out / "ckpt.prev")  # as a crash between the renames leaves
    damage(out / "ckpt" / "__0_0.distcp", "truncated")
    main, prog, argv = command_line("resume", out, runs, corpus)
    with pytest.raises(SystemExit):
        run_main(main, prog, argv)
    line = assert_one_line_error(capsys, prog, out, "__0_0.distcp")
    assert f"{out / 'ckpt.prev'}/ holds another checkpoint" in line

    # a damaged ckpt.pt beside a sharded folder names the folder; alone, says there is none
    shutil.copy(runs["plain"] / "ckpt.pt", out / "ckpt.pt")
    damage(out / "ckpt.pt", "garbage")
    main, prog, argv = command_line("sample", out, runs, corpus)
    with pytest.raises(SystemExit):
        run_main(main, prog, argv)
    line = assert_one_line_error(capsys, prog, out, "ckpt.pt")
    assert f"{out / 'ckpt'}/ and {out / 'ckpt.prev'}/ hold another checkpoint" in line
    shutil.rmtree(out / "ckpt")
    shutil.rmtree(out / "ckpt.prev")
    with pytest.raises(SystemExit):
        run_main(main, prog, argv)
    assert f"{out} holds no other checkpoint" in assert_one_line_error(capsys, prog, out)


def test_load_checkpoint_raises_usage_error(runs, tmp_path):
    # the library call behind gpt.sample, gpt.attention_maps, gpt.scaling, gpt.events
    out = copy_run(runs, "plain", tmp_path)
    damage(out / "tokenizer.json", "truncated")
    with pytest.raises(UsageError, match="tokenizer.json is damaged: not a tokenizer"):
        gckpt.load_checkpoint(out)
    (out / "tokenizer.json").unlink()
    with pytest.raises(UsageError, match="tokenizer.json is missing"):
        gckpt.load_checkpoint(out)


@pytest.mark.parametrize("kind, name, how, args", [
    ("plain", "ckpt.pt", "truncated", ["-m", "gpt.sample", "--device=cpu"]),
    ("sharded", "ckpt/__0_0.distcp", "garbage", ["-m", "gpt.sample", "--device=cpu"]),
    ("plain", "ckpt.pt", "refused", [str(ROOT / "train.py"), "--init_from=resume"]),
], ids=["sample-plain", "sample-sharded", "resume-plain"])
def test_damaged_file_from_the_command_line(runs, corpus, tmp_path, kind, name, how, args):  # noqa: F811
    # the real processes: their whole stderr is the one line (no warning, no log, no traceback)
    out = copy_run(runs, kind, tmp_path)
    damage(out / name, how)
    before = snapshot(out)
    if "--init_from=resume" in args:
        cfg = run_config(corpus, out, runs["data"], init_from="resume")
        args = args + [f"--{k}={v}" for k, v in cfg.items() if k != "init_from"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args, f"--out_dir={out}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert Path(name).name in lines[0] and str(out) in lines[0]
    assert snapshot(out) == before


def test_resume_checks_gpt2_tokenizer_json_without_the_ranks_file(runs, tmp_path):
    # GPT-2's tokenizer.json names a ranks file of the machine it was written on; a resume
    # takes the tokenizer from the data, so a path missing here is no damage
    out = copy_run(runs, "plain", tmp_path)
    (out / "tokenizer.json").write_text('{"type": "gpt2", "ranks_path": "/nowhere/r50k.tiktoken"}')
    gckpt.check_resumable(out)
    (out / "tokenizer.json").write_text('{"type": "gpt2", "ranks_path": ')
    with pytest.raises(UsageError, match="tokenizer.json is damaged"):
        gckpt.check_resumable(out)
