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

.PHONY: venv test data teacher teachers study tune report bench gpu-check ui dashboard clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: venv
	$(BIN)/python -m pytest -q $(ARGS)

data: venv
	$(BIN)/python -m ablation data $(ARGS)

teacher: venv
	$(BIN)/python -m ablation teacher $(ARGS)

# the five folds' teachers, JOBS at a time (default: one per core), each on one thread
teachers: venv
	printf '%s\n' 0 1 2 3 4 | xargs -P $(JOBS) -I{} $(BIN)/python -m ablation teacher --export --threads 1 --set data.fold={} $(ARGS)

study: venv
	$(BIN)/python -m ablation study $(NAME) --workers $(WORKERS) $(ARGS)

tune: venv
	$(BIN)/python -m ablation tune $(NAME) --confirm $(ARGS)

report: venv
	$(BIN)/python -m ablation report $(NAME) $(ARGS)

bench: venv
	$(BIN)/python benchmarks/bench.py $(ARGS)

# the prepared check for a machine with a GPU (results in $(OUT) or runs/gpu_check)
gpu-check: venv
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

ui: venv
	$(BIN)/python -c "from ablation import tracking; tracking.setup(); tracking.print_ui_links()"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db --host 127.0.0.1 --port 5000

dashboard: venv
	$(BIN)/python -c "import optuna_dashboard" 2>/dev/null || $(BIN)/pip install -q optuna-dashboard
	$(BIN)/optuna-dashboard --host 127.0.0.1 --port 8080 $(CURDIR)/runs/optuna/journal.log

clean:
	rm -rf $(VENV) *.egg-info
