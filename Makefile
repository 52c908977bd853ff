# Two commands for a fresh machine:  make train   |   make test
# Both install what is missing first (into the current Python environment): `make train` only
# what training needs, `make test` also the test extras (pytest, transformers, ...).
PYTHON ?= python3
# The torch to install when none is there. On a CUDA machine pip's default wheel has CUDA;
# pass e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cpu" for a CPU-only one.
TORCH ?= torch==2.13.0

.PHONY: install install-test train test test-all benchmark compile-report compat gpu-check
install: .installed
install-test: .installed-test

.installed: pyproject.toml
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install $(TORCH)
	$(PYTHON) -m pip install -e .
	@touch .installed

.installed-test: .installed
	$(PYTHON) -m pip install -e ".[test]"
	@touch .installed-test

train: install
	$(PYTHON) train.py $(ARGS)

# CI runs this: everything but the tests marked slow
test: install-test
	$(PYTHON) -m pytest -q -m "not slow" $(ARGS)

# also the slow tests: the kernels at GPT-2 sizes in Triton's interpreter (long on a CPU)
test-all: install-test
	$(PYTHON) -m pytest -q $(ARGS)

# The CPU path's per-op timings and one training step (pytest-benchmark; not part of `test`):
# ARGS=--benchmark-autosave saves a baseline, ARGS=--benchmark-compare compares with the last
benchmark: install-test
	$(PYTHON) -m pytest benchmarks --benchmark-only $(ARGS)

# Every kernel x config x dtype compiled for sm_80 / sm_90 with Triton's compiler (no GPU
# needed): registers, spills, shared memory; results in bench/results/compile-*.json
compile-report: install
	$(PYTHON) -m tools.compile_report $(ARGS)

# The compile check with the oldest supported Triton (pyproject.toml), the GPU image's (3.6)
# and the newest tested, each installed alone with pip --target under ~/.cache/gpt-triton/compat;
# COMPAT_PYTHONS=/path/to/python,... also checks whole other environments as they are (e.g. a
# twin of the GPU image: torch 2.11, Triton 3.6, numpy 2.5), interpreter included
COMPAT_PYTHONS ?=
compat: install
	$(PYTHON) -m tools.compile_report.compat --pythons=$(COMPAT_PYTHONS) $(ARGS)

# On a machine with an NVIDIA GPU, inside a time budget (docs/gpu.md): GPU tests, training
# step, attention and kernel benchmarks, report (all into OUT, nothing else written). Installs only what is missing:
# a CUDA image with torch, triton, numpy, pytest, matplotlib runs it from a plain checkout.
OUT ?= gpu-check-out
BUDGET ?= 480
gpu-check:
	@$(PYTHON) -c "import torch, triton, numpy, pytest, matplotlib" 2>/dev/null || $(MAKE) install-test
	$(PYTHON) -m bench.gpu_check --budget_s=$(BUDGET) --out_dir=$(OUT) $(ARGS)
