# Two commands for a fresh machine:  make train   |   make test
# Both install what is missing first (into the current Python environment).
PYTHON ?= python3
# The torch to install when none is there. On a CUDA machine pip's default wheel has CUDA;
# pass e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cpu" for a CPU-only one.
TORCH ?= torch==2.13.0

.PHONY: install train test test-all compile-report compat gpu-check
install: .installed

.installed: pyproject.toml
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install $(TORCH)
	$(PYTHON) -m pip install -e ".[test]"
	@touch .installed

train: install
	$(PYTHON) train.py $(ARGS)

test: install
	$(PYTHON) -m pytest -q -m "not slow" $(ARGS)

test-all: install
	$(PYTHON) -m pytest -q $(ARGS)

# Every kernel x config x dtype compiled for sm_80 / sm_90 with Triton's compiler (no GPU
# needed): registers, spills, shared memory; results in bench/results/compile-*.json
compile-report: install
	$(PYTHON) -m bench.compile_report $(ARGS)

# The compile check with the oldest supported Triton (pyproject.toml) and the newest tested,
# each installed alone with pip --target under ~/.cache/gpt-triton/compat
compat: install
	$(PYTHON) -m bench.compat $(ARGS)

# On a machine with an NVIDIA GPU: GPU tests, kernel and training benchmarks, memory meter,
# report and README results block (refuses without a GPU)
gpu-check: install
	$(PYTHON) -m bench.gpu_check $(ARGS)
