# All targets use the project's own virtual environment (.venv), created on first use.
# TORCH pins the wheel installed first: on these CPU machines `torch==2.13.0` is a local CPU build;
# on a CUDA machine PyPI's build of the same version brings CUDA. Override: make TORCH='torch==2.5.1'.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
NAME    ?= smoke
WORKERS ?= 1
JOBS    ?= $(shell nproc)
ARGS    ?=
# the package's runs/ folder (ablation/paths.py): ABLATION_RUNS moves it, for `make ui` and `make dashboard` too
RUNS    := $(or $(ABLATION_RUNS),$(CURDIR)/runs)

.PHONY: venv test test-fast data teacher teachers study tune report reproduce fingerprint bench gpu-check ui dashboard clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# one pytest worker per core (pytest-xdist), a test file to a worker (its module fixtures built once)
test: venv
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile $(ARGS)

# the edit-test loop: unit tests in memory, without the real records or processes (markers: tests/conftest.py)
test-fast: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "unit and not records and not subprocess and not slow" $(ARGS)

data: venv
	$(BIN)/python -m ablation data $(ARGS)

teacher: venv
	$(BIN)/python -m ablation teacher $(ARGS)

# the teachers of folds 0-4 x seeds 0-1, JOBS at a time (default: one per core), each on one thread:
# a committed one (results/teachers/) is imported, a missing one trained and exported there
teachers: venv
	printf '%s\n' "0 0" "1 0" "2 0" "3 0" "4 0" "0 1" "1 1" "2 1" "3 1" "4 1" | xargs -P $(JOBS) -L 1 sh -c \
	  '$(BIN)/python -m ablation teacher --export --threads 1 --set data.fold=$$0 --set train.seed=$$1 $(ARGS)'

study: venv
	$(BIN)/python -m ablation study $(NAME) --workers $(WORKERS) $(ARGS)

tune: venv
	$(BIN)/python -m ablation tune $(NAME) --confirm $(ARGS)

report: venv
	$(BIN)/python -m ablation report $(NAME) $(ARGS)

# retrain a study's committed trials in a scratch store: make reproduce NAME=headline ARGS="--folds 2 --variants kd_recon"
reproduce: venv
	$(BIN)/python -m ablation reproduce $(NAME) $(ARGS)

# this machine's numeric fingerprint, and its row in results/fingerprints.csv
fingerprint: venv
	$(BIN)/python -m ablation fingerprint --record $(ARGS)

bench: venv
	$(BIN)/python benchmarks/bench.py $(ARGS)

# the prepared check for a machine with a GPU (results in $(OUT) or runs/gpu_check)
gpu-check: venv
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

ui: venv
	$(BIN)/python -c "from ablation import tracking; tracking.setup(); tracking.print_ui_links()"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(RUNS)/mlflow.db --host 127.0.0.1 --port 5000

dashboard: venv
	$(BIN)/python -c "import optuna_dashboard" 2>/dev/null || $(BIN)/pip install -q optuna-dashboard
	$(BIN)/optuna-dashboard --host 127.0.0.1 --port 8080 $(RUNS)/optuna/journal.log

clean:
	rm -rf $(VENV) *.egg-info
