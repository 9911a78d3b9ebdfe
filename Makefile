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

.PHONY: env demo study test test-slow lab docs export bench clean-runs

env: $(STAMP)

$(STAMP): settings.ini setup.py pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing FairQuant and its pinned dependencies into $(VENV) (first time: about 3 minutes)"
	@$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e ".[dev]" 2>&1 | $(QUIET_PIP)
	@$(BIN)/python -c "import torch, torchvision, fairquant; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'fairquant', fairquant.__version__)"
	@touch $(STAMP)

# The embedded default grid (fairquant.experiments.DEFAULT_GRID): a tiny ViT and Swin on the synthetic dataset with a
# powered test split x fp32, fp32_ft, uniform4(_qat), fq_qat(_blind), fq_baq, fq_qat_onnx, INT8 static/dynamic/fair at
# 4 bits, one seed, as papermill runs on a local Dask cluster; ends with summary.csv, verdict.csv, pareto.png and
# report.html. Rerun with the same GRID_DIR to finish an interrupted one.
demo: $(STAMP)
	$(BIN)/fairquant-grid --workers $(WORKERS) --grid_dir $(GRID_DIR)

# The verdict study (studies/verdict.yaml): both synthetic regimes x vit_p8, swin_mini x every configuration and matched
# control x budgets 3, 4 x three seeds; ends with verdict.csv and report.html. Not run in CI (about 90 minutes on two
# cores). Rerun with the same STUDY_DIR to finish an interrupted one.
study: $(STAMP)
	$(BIN)/fairquant-grid studies/verdict.yaml --workers $(WORKERS) --grid_dir $(STUDY_DIR)

# Notebooks and package in sync, every notebook's tests (nbdev_test), then pytest for the rest.
test: $(STAMP)
	$(BIN)/python tools/check_sync.py
	$(BIN)/python tools/make_readme.py --check
	@# one torch/OpenMP thread per notebook worker: two workers already fill the two cores, and oversubscribed OpenMP
	@# threads made single notebooks several times slower
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing --do_print
	@# pytest-xdist: two worker processes with one OpenMP thread each fill the two cores
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" tests

# The slow end-to-end tests make test leaves out (a miniature real FairFace study at 224 px through every stage).
test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m slow tests

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

# Speed of the method against its baseline, one script each (CPU, 2 threads): each runs its pair interleaved for at
# least 5 rounds (benchmarks/harness.py, the shared timing code: not a benchmark, skipped) and prints one JSON object
# as its last line, the median under its key with <key>_min/<key>_max beside it. Each such line is appended to
# benchmarks/results.jsonl (committed: the record readers compare runs with) with the commit (-dirty: uncommitted
# changes), the core count and the date, by tools/bench_record.py, which ends by printing this run beside the one
# before (`tools/bench_record.py --table --last N` for more). Run on a quiet machine: timings are ratios measured in
# one process. Logs in runs/bench/.
bench: $(STAMP)
	@mkdir -p runs/bench
	@commit=$$($(BIN)/python tools/bench_record.py --state); \
	for f in benchmarks/*.py; do \
	  name=$$(basename $$f .py); [ "$$name" = harness ] && continue; \
	  echo "== $$f"; $(BIN)/python $$f | tee runs/bench/$$name.log || exit 1; \
	  $(BIN)/python tools/bench_record.py $$name runs/bench/$$name.log --commit $$commit || exit 1; \
	done
	@echo "results (last line of each):"; for f in benchmarks/*.py; do n=$$(basename $$f .py); [ "$$n" = harness ] && continue; \
	  echo "$$n: $$(tail -n 1 runs/bench/$$n.log)"; done
	@echo "this run beside the one before (median (min–max) of every key with a spread):"
	@$(BIN)/python tools/bench_record.py --table --last 2

clean-runs:
	rm -rf runs/
