"""Every command line: --help lists grouped, described options; a user's mistake is one line
`prog: error: ...` naming the option, exit status 2, no traceback, nothing written.

One real subprocess per entry point (started all at once: each imports torch, ~2 s of CPU),
the rest in-process through `run_main`, which is what `python -m ...` runs. The parser itself
(gpt.cli on argparse: groups, types, bounds, choices, list options, config files,
suggestions, subcommands) is tested on small OPTIONS of its own at the end.
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
from gpt.cli import Opt, UsageError, check, defaults, parse, parse_command, run_main
from gpt.events import __main__ as events
from gpt.train_config import check_config
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
    cfg = parse([str(path), "--device=cpu"], train.OPTIONS, prog="train.py")
    check_config(cfg)
    assert cfg["gradient_accumulation_steps"] % (8 if cfg["fsdp"] else 1) == 0


def test_every_events_command_lists_its_options(capsys):
    for command, (help_, options) in events.COMMANDS.items():
        with pytest.raises(SystemExit) as exit_info:
            run_main(events.main, events.PROG, [command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: {events.PROG} {command} ") and help_ in out
        for name, opt in options.items():
            line = next(line for line in out.splitlines() if line.strip().startswith(f"--{name}="))
            assert opt.help[:20] in line  # "80% train" too: argparse's %-formatting is escaped
    with pytest.raises(SystemExit) as exit_info:
        events.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "\ncommands:\n" in out
    for command, (help_, _) in events.COMMANDS.items():
        assert any(line.split()[:1] == [command] and help_ in line for line in out.splitlines())


EVENTS_MISTAKES = [
    ([], "expected a command: generate, prepare, eval, sample, labels, predict, score"),
    (["smaple"], "unknown command 'smaple' (did you mean sample?); expected one of generate"),
    (["sample", "--code="], "--code is empty; expected comma-separated strings"),
    (["sample", "--days=0"], "--days must be > 0; got 0.0"),
    (["eval", "--split=test"], "--split must be one of held_out, tuning, train; got 'test'"),
    (["eval", "--max_subject=3"], "unknown option --max_subject (did you mean --max_subjects?)"),
    (["generate", "--n_subjects"], "--n_subjects needs a value: --n_subjects=<int>"),
]


@pytest.mark.parametrize("argv, expected", EVENTS_MISTAKES, ids=[str(a) for a, _ in EVENTS_MISTAKES])
def test_events_mistakes(argv, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_main(events.main, events.PROG, argv)
    assert_one_line_error(events.PROG, exit_info.value.code, capsys.readouterr().err, expected)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- the parser


STEPS = ("tests", "train", "report")
OPTS = {
    "data": dict(
        dataset=Opt("shakespeare", "a named dataset or a text file"),
        batch_size=Opt(12, "sequences per micro-batch", ge=1, le=4096),
        dropout=Opt(0.0, "dropout rate", ge=0, lt=1),
    ),
    "run": dict(
        compile=Opt(False, "torch.compile the model"),
        plot=Opt(True, "write a plot (100% optional)"),
        kernels=Opt("auto", "which kernels", choices=("auto", "triton", "torch")),
        steps=Opt(STEPS, "comma-separated steps, or all", choices=STEPS),
        sizes=Opt((300, 512), "comma-separated vocabulary sizes", gt=257),
        rates=Opt((), "comma-separated rates; empty: none", item=float, ge=0),
    ),
}


def test_defaults_and_types():
    cfg = parse([], OPTS, prog="p")
    assert cfg == defaults(OPTS) and list(cfg) == [n for g in OPTS.values() for n in g]
    assert cfg["steps"] == STEPS and cfg["rates"] == ()
    cfg = parse(["--batch_size=3", "--dropout=1e-1", "--dataset=a b.txt", "--compile=yes",
                 "--plot=0", "--sizes=300, 1024,", "--rates=1,0.5"], OPTS, prog="p")
    assert cfg["batch_size"] == 3 and cfg["dropout"] == 0.1 and cfg["dataset"] == "a b.txt"
    assert cfg["compile"] is True and cfg["plot"] is False
    assert cfg["sizes"] == (300, 1024) and cfg["rates"] == (1.0, 0.5)
    assert isinstance(cfg["rates"][0], float)


def test_name_value_and_name_space_value():
    assert parse(["--batch_size", "7", "--dataset", "x.txt", "--dropout", "-0"], OPTS,
                 prog="p")["batch_size"] == 7
    cfg = parse(["--dataset=", "--kernels", "torch", "--steps", "train,tests"], OPTS, prog="p")
    assert cfg["dataset"] == "" and cfg["kernels"] == "torch" and cfg["steps"] == ("train", "tests")
    assert parse(["--batch_size=1", "--batch_size=2"], OPTS, prog="p")["batch_size"] == 2  # last wins


def test_a_bare_bool_flag_is_true_and_never_takes_the_next_word(tmp_path):
    assert parse(["--compile"], OPTS, prog="p")["compile"] is True
    assert parse(["--plot=False"], OPTS, prog="p")["plot"] is False
    f = tmp_path / "c.py"
    f.write_text("batch_size = 5\n")
    cfg = parse(["--compile", str(f)], OPTS, prog="p")  # the file is a config file, not a value
    assert cfg["compile"] is True and cfg["batch_size"] == 5


def test_config_files_first_in_order_then_the_command_line(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text('"""a recipe"""\nbatch_size = 5\ndropout = 0\nsteps = ["train"]\nsizes = "400,500"\n')
    b.write_text("batch_size = 6\ncompile = True\n")
    # the command line wins wherever the files stand among the options
    cfg = parse(["--batch_size=9", str(a), str(b)], OPTS, prog="p")
    assert cfg["batch_size"] == 9 and cfg["compile"] is True
    assert cfg["dropout"] == 0.0 and isinstance(cfg["dropout"], float)
    assert cfg["steps"] == ("train",) and cfg["sizes"] == (400, 500)
    assert parse([str(b), str(a)], OPTS, prog="p")["batch_size"] == 5  # later file wins


@pytest.mark.parametrize("text, expected", [
    ("batch_size = 'five'\n", "--batch_size expects an int, got 'five'"),
    ("batch_size = 0\n", "--batch_size must be >= 1; got 0"),
    ("steps = ['train', 'deploy']\n", "--steps='train,deploy': unknown deploy"),
    ("sizes = [300, '512']\n", "--sizes expects a list of ints"),
    ("batch_sise = 3\n", "unknown option --batch_sise in "),
    ("import os\nos.system('touch pwned')\n", "only `name = value` assignments"),
    ("batch_size = 2 ** 3\n", "the value must be a literal"),
    ("batch_size = \n", "not a config file"),
])
def test_bad_config_files(text, expected, tmp_path):
    f = tmp_path / "c.py"
    f.write_text(text)
    with pytest.raises(UsageError) as err:
        parse([str(f)], OPTS, prog="p")
    assert expected in str(err.value)
    assert not (tmp_path / "pwned").exists()  # read with ast, never executed


MISTAKES_OF_THE_PARSER = [
    (["--batch_size=ten"], "--batch_size expects an int, got 'ten'"),
    (["--dropout=much"], "--dropout expects a float, got 'much'"),
    (["--compile=maybe"], "--compile expects a bool (True/False), got 'maybe'"),
    (["--batch_size=0"], "--batch_size must be >= 1; got 0"),
    (["--batch_size=5000"], "--batch_size must be <= 4096; got 5000"),
    (["--dropout=1"], "--dropout must be < 1; got 1.0"),
    (["--kernels=numpy"], "--kernels must be one of auto, triton, torch; got 'numpy'"),
    (["--batch_sise=3"], "unknown option --batch_sise (did you mean --batch_size?); see --help"),
    (["--batch=3"], "unknown option --batch (did you mean --batch_size?)"),  # no abbreviations
    (["--zzz=1"], "unknown option --zzz; see --help for the options"),
    (["--batch_sise", "3"], "unknown option --batch_sise (did you mean --batch_size?)"),
    (["-b=3"], "expected --name=value, got '-b=3'"),
    (["--batch_size"], "--batch_size needs a value: --batch_size=<int>"),
    (["--dataset", "--compile"], "--dataset needs a value: --dataset=<str>"),
    (["no_such_config.py"], "config file 'no_such_config.py' does not exist"),
    (["--steps=train,deploy"], "--steps='train,deploy': unknown deploy; choose from tests, train, report (or all)"),
    (["--steps="], "--steps is empty; expected comma-separated some of tests, train, report"),
    (["--sizes=300,256"], "--sizes must be > 257; got 256 (in --sizes='300,256')"),
    (["--sizes=300,big"], "--sizes expects comma-separated ints, got '300,big'"),
    (["--rates=1,-1e0"], "--rates must be >= 0; got -1.0 (in --rates='1,-1e0')"),
]


@pytest.mark.parametrize("argv, expected", MISTAKES_OF_THE_PARSER,
                         ids=[" ".join(a) for a, _ in MISTAKES_OF_THE_PARSER])
def test_the_parsers_mistakes_exit_2_with_one_line(argv, expected, capsys):
    def main(argv):
        return parse(argv, OPTS, prog="prog")

    with pytest.raises(SystemExit) as exit_info:
        run_main(main, "prog", argv)
    assert_one_line_error("prog", exit_info.value.code, capsys.readouterr().err, expected)


def test_list_options():
    assert parse(["--steps=all"], OPTS, prog="p")["steps"] == STEPS
    assert parse(["--steps= report , tests"], OPTS, prog="p")["steps"] == ("report", "tests")
    assert parse(["--rates="], OPTS, prog="p")["rates"] == ()  # its default is empty: allowed
    with pytest.raises(UsageError, match="--rates expects comma-separated numbers"):
        parse(["--rates=all"], OPTS, prog="p")  # `all` only where there are choices
    with pytest.raises(TypeError, match="needs a tuple default"):
        Opt("a,b", "a list option written the old way", item=str)
    check({"steps": ["train"], "rates": (0.5,)}, OPTS)
    with pytest.raises(UsageError, match="unknown deploy"):
        check({"steps": ("deploy",)}, OPTS)


def test_help_prints_the_groups_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["--batch_size=3", "-h"], OPTS, prog="prog", description="A test program.")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: prog [config_file.py ...] [--name=value ...]\n\nA test program.\n")
    lines = out.splitlines()
    assert lines.index("data:") < lines.index("  --dataset='shakespeare'  a named dataset or a text file")
    assert "  --plot=True              write a plot (100% optional)" in lines
    assert "  --kernels='auto'         which kernels [auto | triton | torch]" in lines
    assert "  --steps=all              comma-separated steps, or all [tests | train | report]" in lines
    assert "  --sizes='300,512'        comma-separated vocabulary sizes" in lines
    assert lines.index("data:") < lines.index("run:") and "config file" in lines[-1]


COMMANDS = {
    "count": ("count things", {"what": dict(n=Opt(3, "how many", ge=1), verbose=Opt(False, "talk"))}),
    "plan": ("plan things", dict(budget=Opt(1.0, "compute budget", gt=0),
                                 steps=Opt(STEPS, "steps, or all", choices=STEPS))),
}


def test_subcommands(tmp_path, capsys):
    assert parse_command(["count"], COMMANDS, "prog") == ("count", {"n": 3, "verbose": False})
    f = tmp_path / "plan.py"
    f.write_text("budget = 2\n")
    assert parse_command(["plan", "--steps=train", str(f)], COMMANDS, "prog") == (
        "plan", {"budget": 2.0, "steps": ("train",)})
    assert parse_command(["count", "--verbose", "--n", "5"], COMMANDS, "prog")[1]["n"] == 5
    for argv, expected in [
            ([], "expected a command: count, plan (see prog --help)"),
            (["plna"], "unknown command 'plna' (did you mean plan?); expected one of count, plan"),
            (["--n=3"], "unknown command '--n=3'; expected one of count, plan"),
            (["count", "--budget=3"], "unknown option --budget; see --help"),  # plan's, not count's
            (["count", "--n=0"], "--n must be >= 1; got 0"),
            (["plan", "--steps=x"], "--steps='x': unknown x")]:
        with pytest.raises(UsageError) as err:
            parse_command(argv, COMMANDS, "prog")
        assert expected in str(err.value)
    with pytest.raises(SystemExit) as exit_info:
        parse_command(["-h"], COMMANDS, "prog", "Two commands.")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: prog <command>") and "Two commands." in out
    assert "    count     count things" in out and "    plan      plan things" in out
    with pytest.raises(SystemExit) as exit_info:
        parse_command(["count", "--help"], COMMANDS, "prog")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: prog count ") and "\nwhat:\n" in out and "  --n=3 " in out
    assert "budget" not in out
