# Two commands for a fresh machine:  make train   |   make test
# Both install what is missing first (into the current Python environment).
PYTHON ?= python3
# The torch to install when none is there. On a CUDA machine pip's default wheel has CUDA;
# pass e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cpu" for a CPU-only one.
TORCH ?= torch==2.13.0

.PHONY: install train test test-all
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
