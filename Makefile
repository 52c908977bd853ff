# Two commands for a fresh machine:  make train   |   make test
# Both install what is missing first (into the current Python environment): `make train` only
# what training needs, `make test` also the test extras (pytest, transformers, ...).
PYTHON ?= python3
# The torch to install when none is there. On a CUDA machine pip's default wheel has CUDA;
# pass e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cpu" for a CPU-only one.
TORCH ?= torch==2.13.0

.PHONY: install install-test train test test-all
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
