# FairQuant: the two commands a newcomer needs are `make demo` and `make test`.
# Both create (or reuse) the virtual environment in .venv with the pinned dependencies first.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fairquant-installed
RUN_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
# pip prints one harmless line per package for this machine's local package mirror; hide those
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: env demo test lab export bench clean-runs

env: $(STAMP)

$(STAMP): settings.ini setup.py pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing FairQuant and its pinned dependencies into $(VENV) (first time: about 3 minutes)"
	@$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[dev]" 2>&1 | $(QUIET_PIP)
	@$(BIN)/python -c "import torch, torchvision, fairquant; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'fairquant', fairquant.__version__)"
	@touch $(STAMP)

# Run the pipeline headlessly (papermill) on the embedded synthetic dataset into a fresh run folder.
demo: $(STAMP)
	$(BIN)/fairquant-run --preset demo --run_dir $(RUN_DIR)

# Notebooks and package in sync, every notebook's tests (nbdev_test), then pytest for the rest.
test: $(STAMP)
	$(BIN)/python tools/check_sync.py
	$(BIN)/python tools/make_readme.py --check
	@# one torch/OpenMP thread per notebook worker: two workers already fill the two cores, and oversubscribed OpenMP
	@# threads made single notebooks several times slower
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing --do_print
	$(BIN)/python -m pytest -q tests

# JupyterLab on nbs/ with the project's environment (its python3 kernel is the venv's).
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=nbs $(if $(filter 0,$(shell id -u)),--allow-root,)

# After editing notebooks: regenerate fairquant/ and clean the notebooks (run before every commit).
export: $(STAMP)
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean

# Speed of the method against its baseline, one script each (CPU, 2 threads, interleaved, median of repeats);
# each prints one JSON object as its last line. Run on a quiet machine: timings are ratios measured in one process.
bench: $(STAMP)
	@mkdir -p runs/bench
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f | tee runs/bench/$$(basename $$f .py).log || exit 1; done
	@echo "results (last line of each):"; for f in runs/bench/*.log; do echo "$$(basename $$f .log): $$(tail -n 1 $$f)"; done

clean-runs:
	rm -rf runs/
