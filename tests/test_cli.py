"""Every command line: --help lists grouped, described options; a user's mistake is one line
`prog: error: ...` naming the option, exit status 2, no traceback, nothing written.

One real subprocess per entry point (started all at once: each imports torch, ~2 s of CPU),
the rest in-process through `run_main`, which is what `python -m ...` runs.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import train
from bench import flce_memory, generate, memory, nanogpt_cpu, report
from bench import kernels as bench_kernels
from bench import train as bench_train
from gpt import attention_maps, data, pretrained, sample
from gpt.cli import run_main
from tools.compile_report import cli as compile_report
from tools.compile_report import compat

ROOT = Path(__file__).resolve().parents[1]

# prog -> (module with main and OPTIONS, command line)
ENTRY_POINTS = {
    "train.py": (train, [sys.executable, str(ROOT / "train.py")]),
    "python -m gpt.sample": (sample, [sys.executable, "-m", "gpt.sample"]),
    "python -m gpt.attention_maps": (attention_maps, [sys.executable, "-m", "gpt.attention_maps"]),
    "python -m gpt.data": (data, [sys.executable, "-m", "gpt.data"]),
    "python -m gpt.pretrained": (pretrained, [sys.executable, "-m", "gpt.pretrained"]),
    "python -m bench.kernels": (bench_kernels, [sys.executable, "-m", "bench.kernels"]),
    "python -m bench.train": (bench_train, [sys.executable, "-m", "bench.train"]),
    "python -m bench.report": (report, [sys.executable, "-m", "bench.report"]),
    "python -m bench.generate": (generate, [sys.executable, "-m", "bench.generate"]),
    "python -m bench.flce_memory": (flce_memory, [sys.executable, "-m", "bench.flce_memory"]),
    "python -m bench.nanogpt_cpu": (nanogpt_cpu, [sys.executable, "-m", "bench.nanogpt_cpu"]),
    "python -m bench.memory": (memory, [sys.executable, "-m", "bench.memory"]),
    "python -m tools.compile_report": (compile_report,
                                       [sys.executable, "-m", "tools.compile_report"]),
    "python -m tools.compile_report.compat": (compat, [sys.executable, "-m",
                                                       "tools.compile_report.compat"]),
}

# One typical mistake per entry point, run as a real process: (arguments, text the error names)
SUBPROCESS_MISTAKES = {
    "train.py": (["--max_iters=ten"], "--max_iters expects an int, got 'ten'"),
    "python -m gpt.sample": (["--out_dir=no_run_here"], "--out_dir=no_run_here: no ckpt.pt"),
    "python -m gpt.attention_maps": (["--layer=first"], "--layer must be an int or all"),
    "python -m gpt.data": (["--dataset=no/such.txt"], "--dataset='no/such.txt' is neither"),
    "python -m bench.kernels": (["--warmup=fast"], "--warmup expects an int, got 'fast'"),
    "python -m bench.train": (["--paths=jax"], "--paths='jax': unknown jax"),
    "python -m bench.report": (["--results=missing.json"], "--results=missing.json: no such file"),
    "python -m bench.generate": (["--new_tokens=0"], "--new_tokens must be >= 1"),
    "python -m bench.flce_memory": (["--dtype=float64"], "--dtype must be one of"),
    "python -m bench.nanogpt_cpu": (["--nanogpt=."], "--nanogpt=.: not a nanoGPT checkout"),
    "python -m bench.memory": (["--preset=gpt5"], "--preset must be custom or one of"),
    "python -m tools.compile_report": (["--targets=sm_70"], "sm_70"),
    "python -m tools.compile_report.compat": (["--versions=abc"], "--versions must be release"),
}


def assert_one_line_error(prog, code, err, expected):
    assert code == 2, f"{prog}: exit status {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"{prog}: expected one line, got:\n{err}"
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert expected in lines[0], lines[0]


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """Every entry point's typical mistake, plus `train.py --help`, run as processes at once
    in an empty folder; {name: (returncode, stdout, stderr, folder)}."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    jobs = {}
    runs = {prog: ENTRY_POINTS[prog][1] + args for prog, (args, _) in SUBPROCESS_MISTAKES.items()}
    runs["train.py --help"] = ENTRY_POINTS["train.py"][1] + ["--help"]
    failing = tmp_path_factory.mktemp("failing") / "test_failing.py"
    failing.write_text("def test_fails():\n    assert False\n")
    runs["pytest -q"] = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         "-p", "tests.conftest", str(failing)]
    for name, cmd in runs.items():
        cwd = tmp_path_factory.mktemp("cwd")
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        jobs[name] = (proc, cwd)
    done = {}
    for name, (proc, cwd) in jobs.items():
        out, err = proc.communicate(timeout=300)
        done[name] = (proc.returncode, out, err, cwd)
    return done


@pytest.mark.parametrize("prog", list(SUBPROCESS_MISTAKES))
def test_a_mistake_is_one_line_in_a_real_process(processes, prog):
    code, out, err, cwd = processes[prog]
    assert_one_line_error(prog, code, err, SUBPROCESS_MISTAKES[prog][1])
    assert "Traceback" not in out
    assert not list(cwd.iterdir()), f"{prog} wrote {list(cwd.iterdir())}"


def test_train_help_in_a_real_process(processes):
    code, out, err, _ = processes["train.py --help"]
    assert code == 0 and not err
    assert out.startswith("usage: train.py")
    for group in ("data:", "model:", "optimizer:", "schedule:", "I/O:", "system:"):
        assert f"\n{group}\n" in out
    for name in ("eval_only", "data_dir", "gpt2_ranks", "num_samples", "sample_tokens"):
        assert f"--{name}=" in out


def test_a_failing_quiet_run_shows_the_seed(processes):
    """make test runs pytest -q, which hides the header with the seed: the summary has it."""
    code, out, _, _ = processes["pytest -q"]
    assert code == 1 and "1 failed" in out
    assert "GPT_TEST_SEED=" in out and "python -m pytest <test id>" in out


@pytest.mark.parametrize("prog", list(ENTRY_POINTS))
def test_help_lists_every_option_by_group(prog, capsys):
    module, _ = ENTRY_POINTS[prog]
    with pytest.raises(SystemExit) as exit_info:
        run_main(module.main, prog, ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} ")
    for group, options in module.OPTIONS.items():
        assert f"\n{group}:\n" in out
        for name, opt in options.items():
            assert opt.help, f"{prog} --{name} has no description"
            line = next(line for line in out.splitlines() if line.strip().startswith(f"--{name}="))
            assert opt.help[:20] in line


# The six mistakes the issue tried on train.py, each checked in-process for the exact message
TRAIN_MISTAKES = [
    (["--max_iter=10"], "unknown option --max_iter (did you mean --max_iters?)"),
    (["--max_iters=ten"], "--max_iters expects an int, got 'ten'"),
    (["--n_embd=100", "--n_head=3"], "--n_embd=100 must be divisible by --n_head=3"),
    (["--learning_rate=-1"], "--learning_rate must be > 0"),
    (["--dataset=no/such/input.txt"], "--dataset='no/such/input.txt' is neither"),
    (["--init_from=resume"], "--init_from=resume but out holds no checkpoint"),
]


@pytest.mark.parametrize("argv, expected", TRAIN_MISTAKES, ids=[a[0] for a, _ in TRAIN_MISTAKES])
def test_train_mistakes(argv, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_main(train.main, "train.py", argv + ["--device=cpu"])
    assert_one_line_error("train.py", exit_info.value.code, capsys.readouterr().err, expected)
    assert not list(tmp_path.iterdir())  # nothing written


# More mistakes per entry point, in-process: (prog, arguments, text the error names)
MISTAKES = [
    ("python -m gpt.sample", ["--top_p=1.5"], "--top_p must be <= 1"),
    ("python -m gpt.sample", ["--num_beams=0"], "--num_beams must be >= 1"),
    ("python -m gpt.sample", ["--device=tpu"], "--device must be auto, cpu, cuda or cuda:N"),
    ("python -m gpt.sample", ["--greedy=maybe"], "--greedy expects a bool"),
    ("python -m gpt.attention_maps", ["--out_dir=nowhere"], "--out_dir=nowhere: no ckpt.pt"),
    ("python -m gpt.data", ["--tokenizer=words"], "--tokenizer must be one of char, bpe, gpt2"),
    ("python -m gpt.data", ["--val_fraction=1.5"], "--val_fraction must be < 1"),
    ("python -m gpt.data", ["--gpt2_ranks=nope.tiktoken"], "--gpt2_ranks=nope.tiktoken: no such"),
    ("python -m bench.kernels", ["--modes=forward"], "--modes='forward': unknown forward"),
    ("python -m bench.kernels", ["--smoke=True", "--dtypes=float8"], "--dtypes='float8'"),
    ("python -m bench.train", ["--preset=gpt5"], "--preset must be one of"),
    ("python -m bench.report", ["--mode=both"], "--mode must be one of fwd, bwd, fwd+bwd"),
    ("python -m bench.generate", ["--device=cpu", "--preset=huge"], "--preset must be one of"),
    ("python -m bench.flce_memory", ["--n=-1"], "--n must be >= 0"),
    ("python -m bench.nanogpt_cpu", [], "--nanogpt is required"),
    ("python -m bench.nanogpt_cpu", ["--repeats=0"], "--repeats must be >= 1"),
    ("python -m bench.memory", ["--gpu_memory=lots"], "--gpu_memory expects a positive size"),
]


@pytest.mark.parametrize("prog, argv, expected", MISTAKES, ids=[f"{p[10:]} {a}" for p, a, _ in MISTAKES])
def test_mistakes(prog, argv, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_main(ENTRY_POINTS[prog][0].main, prog, argv)
    assert_one_line_error(prog, exit_info.value.code, capsys.readouterr().err, expected)
    assert not list(tmp_path.iterdir())


def test_a_bug_keeps_its_traceback():
    def buggy(argv):
        return 1 / 0

    with pytest.raises(ZeroDivisionError):
        run_main(buggy, "prog", [])


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.py")), ids=lambda p: p.name)
def test_every_config_file_is_a_valid_train_config(path, monkeypatch):
    # the README's recipes: every name an option of train.py, every value in range, the
    # combinations allowed (an FSDP recipe as torchrun would start it, on 8 processes)
    monkeypatch.setenv("WORLD_SIZE", "8")
    cfg = train.parse([str(path), "--device=cpu"], train.OPTIONS, prog="train.py")
    train.check_config(cfg)
    assert cfg["gradient_accumulation_steps"] % (8 if cfg["fsdp"] else 1) == 0
