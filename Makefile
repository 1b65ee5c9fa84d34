# The two commands:  make reproduce   and   make test
# Both create .venv on first use and install the project into it.
PYTHON     ?= python3
VENV       ?= .venv
# Override on machines with another CUDA or a CPU wheel index, e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.e2mc-installed

.PHONY: test reproduce install clean-venv bench

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

test: $(STAMP)
	$(PY) -m pytest

reproduce: $(STAMP)
	@echo "make reproduce: not yet implemented (see the reproduction issue)"

bench: $(STAMP)
	$(PY) benchmarks/criterion.py

clean-venv:
	rm -rf $(VENV)
