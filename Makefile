# sdcd — `make help` lists the targets. Every target sets up .venv itself on a fresh machine.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXP ?= dsprites_cond_shuffle
ARGS ?=
export WANDB_SILENT ?= true

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

.PHONY: help install train print-config test test-full lint clean check-exp

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  experiments:   $$(ls experiments/*.yaml | xargs -n1 basename | sed 's/\.yaml$$//' | tr '\n' ' ')"

install: $(STAMP) ## Create .venv and install sdcd with its dev extras (done by every target)

check-exp:
	@test -f experiments/$(EXP).yaml || { echo "make: unknown experiment EXP='$(EXP)': no file experiments/$(EXP).yaml. Expected one of: $$(ls experiments/*.yaml | xargs -n1 basename | sed 's/\.yaml$$//' | tr '\n' ' ')" >&2; exit 2; }

train: $(STAMP) check-exp ## Train: make train EXP=<name> ARGS="--trainer.max_epochs=3 --model.kl_weight=0.5"
	$(PY) -m sdcd fit --config experiments/$(EXP).yaml $(ARGS)

print-config: $(STAMP) check-exp ## Print the resolved config: make print-config EXP=<name> ARGS="…"
	$(PY) -m sdcd fit --config experiments/$(EXP).yaml $(ARGS) --print_config

test: $(STAMP) ## Run the fast test suite (CPU, minutes)
	WANDB_MODE=disabled $(PY) -m pytest -q

test-full: $(STAMP) ## Run every test, slow ones included
	WANDB_MODE=disabled $(PY) -m pytest -q -m ""

lint: $(STAMP) ## Lint with ruff
	$(VENV)/bin/ruff check .

clean: ## Remove build artefacts and caches (keeps runs/ and .venv)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
