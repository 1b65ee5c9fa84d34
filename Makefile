# The two commands:  make reproduce   and   make test
# Both create .venv on first use and install the project into it.
PYTHON     ?= python3
VENV       ?= .venv
# Override on machines with another CUDA or a CPU wheel index, e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.e2mc-installed
RESULTS    ?= results/mini
JOBS       ?= 2
# The registered methods (e2mc.methods), read when a recipe needs them (after the venv exists);
# `make pretrain-mini METHODS=<name>` picks some.
METHODS     = $(shell $(PY) -c 'from e2mc.methods import method_names; print(*method_names())')

.PHONY: install test reproduce reproduce-full reproduce-converged pretrain-mini pretrain-mini-converged notebooks bench data gpu-check clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'   # dev = the repro extra (notebooks, cluster) + pytest
	@touch $@

test: $(STAMP)
	$(PY) -m pytest

data:
	@scripts/get_fashion_mnist.sh

# Pre-train the mini base checkpoint of every method in $(METHODS) (default: all registered) whose base
# $(RESULTS)/checkpoints/<method>.pt is missing, and export it there; one method: `make pretrain-mini
# METHODS=simclr`. An existing base is never overwritten: delete it first to re-create it (about 45 minutes
# for all on 2 cores), or set FORCE=1 (passes --force to export-base).
pretrain-mini: $(STAMP) data
	@for m in $(METHODS); do \
	  if [ -e $(RESULTS)/checkpoints/$$m.pt ] && [ -z "$(FORCE)" ]; then \
	    echo "[pretrain-mini] $(RESULTS)/checkpoints/$$m.pt exists; skipped (delete it or set FORCE=1 to re-create it)"; \
	    continue; \
	  fi; \
	  $(PY) -m e2mc pretrain --config configs/mini/pretrain/$$m.yaml && \
	  $(PY) -m e2mc export-base --run runs/mini/pretrain/$$m --to $(RESULTS)/checkpoints/$$m.pt $(if $(FORCE),--force) || exit 1; \
	done

# Converged mini bases (issue 15): the same recipes pre-trained for $(CONVERGED_EPOCHS) epochs (cosine schedule over
# all of them), keeping every epoch's weights for the plateau sweep. Resumable: rerun after an interruption.
CONVERGED_EPOCHS  ?= 100
CONVERGED_METHODS ?= vicreg swav
pretrain-mini-converged: $(STAMP) data
	@for m in $(CONVERGED_METHODS); do \
	  $(PY) -m e2mc pretrain --config configs/mini/pretrain/$$m.yaml train.epochs=$(CONVERGED_EPOCHS) \
	    train.output_dir=runs/mini-converged/pretrain/$$m train.keep_epoch_checkpoints=true || exit 1; \
	done

# The converged-base experiment (issue 15, docs/converged.md) into results/mini-converged (runs in
# runs/mini-converged): exports the bases of `make pretrain-mini-converged` (which must have finished),
# probes the pre-training plateau, continues 20 epochs (original vs E2MC, 3 seeds), the learning-rate
# check and the digits transfer probe; then draws its figures and tables into figures/mini-converged.
# Resumable: rerun after an interruption.
reproduce-converged: $(STAMP) data
	$(PY) -m e2mc reproduce --part converged --jobs $(JOBS)
	$(MAKE) --no-print-directory notebooks RESULTS=results/mini-converged

# Each part is an experiment file, configs/experiments/<part>.yaml (docs/experiments.md).
# Re-measure the quick part of the grid from the committed base checkpoints into $(RESULTS)-quick,
# compare it with the committed results, then draw every figure and table from $(RESULTS).
reproduce: $(STAMP) data
	$(PY) -m e2mc reproduce --part quick --results $(RESULTS)-quick --runs runs/mini-quick \
	    --checkpoints $(RESULTS)/checkpoints --compare-to $(RESULTS) --jobs $(JOBS)
	$(MAKE) --no-print-directory notebooks

reproduce-full: $(STAMP) data
	$(PY) -m e2mc reproduce --part full --results $(RESULTS) --checkpoints $(RESULTS)/checkpoints --jobs $(JOBS)
	$(MAKE) --no-print-directory notebooks

notebooks: $(STAMP)
	$(PY) -m e2mc notebooks --results $(RESULTS) $(if $(filter results/mini results/mini-converged,$(RESULTS)),--readme README.md)

bench: $(STAMP)
	$(PY) benchmarks/criterion.py
	$(PY) benchmarks/train_step.py

# The GPU check (issue 14): CUDA tests, then both benchmarks on CUDA (at most 8 minutes on one GPU);
# exits 2 without CUDA. Writes results/benchmarks/train_step-cuda.json and criterion-cuda.json.
gpu-check: $(STAMP)
	E2MC_PYTHON=$${E2MC_PYTHON:-$(PY)} bash scripts/gpu_check.sh

clean-venv:
	rm -rf $(VENV)
