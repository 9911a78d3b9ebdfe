# FairQuant: the two commands a newcomer needs are `make demo` and `make test`.
# Both create (or reuse) the virtual environment in .venv with the pinned dependencies first.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fairquant-installed
GRID_DIR ?= runs/grid-$(shell date +%Y%m%d-%H%M%S)
STUDY_DIR ?= runs/study-$(shell date +%Y%m%d-%H%M%S)
WORKERS ?= 2
# pip prints one harmless line per package for this machine's local package mirror; hide those
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: env demo study test lab docs export bench clean-runs

env: $(STAMP)

$(STAMP): settings.ini setup.py pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing FairQuant and its pinned dependencies into $(VENV) (first time: about 3 minutes)"
	@$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[dev]" 2>&1 | $(QUIET_PIP)
	@$(BIN)/python -c "import torch, torchvision, fairquant; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'fairquant', fairquant.__version__)"
	@touch $(STAMP)

# The embedded default grid (fairquant.experiments.DEFAULT_GRID): vit_mini and swin_mini x fp32, uniform4, fq_qat, fq_baq,
# ONNX INT8 static and dynamic, one seed, every stage through the bias analysis, as papermill runs on a local Dask
# cluster; ends with the summary table and the Pareto figure. Rerun with the same GRID_DIR to finish an interrupted one.
demo: $(STAMP)
	$(BIN)/fairquant-grid --workers $(WORKERS) --grid_dir $(GRID_DIR)

# The same grid over three seeds (summary_seeds.csv: mean and 95% CI). Not run in CI: about three times the demo.
study: $(STAMP)
	$(BIN)/fairquant-grid --seeds 0,1,2 --workers $(WORKERS) --grid_dir $(STUDY_DIR)

# Notebooks and package in sync, every notebook's tests (nbdev_test), then pytest for the rest.
test: $(STAMP)
	$(BIN)/python tools/check_sync.py
	$(BIN)/python tools/make_readme.py --check
	@# one torch/OpenMP thread per notebook worker: two workers already fill the two cores, and oversubscribed OpenMP
	@# threads made single notebooks several times slower
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing --do_print
	@# pytest-xdist: two worker processes with one OpenMP thread each fill the two cores
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile tests

# JupyterLab on nbs/ with the project's environment (its python3 kernel is the venv's: JUPYTER_PREFER_ENV_PATH=1 keeps
# a user-level `python3` kernelspec from shadowing it). Extra server options: make lab LAB_ARGS="--port=8890".
LAB_ARGS ?=
lab: $(STAMP)
	JUPYTER_PREFER_ENV_PATH=1 $(BIN)/jupyter lab --notebook-dir=nbs $(if $(filter 0,$(shell id -u)),--allow-root,) $(LAB_ARGS)

# The docs site, offline (Sphinx + myst-nb, no Quarto, no CDN): every notebook with its saved outputs and the API
# reference → _docs/index.html. Uses the outputs saved in the notebooks (tools/exec_nbs.py), does not run them.
docs: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/python tools/build_docs.py --out _docs

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
