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

DATA ?= dsprites
SWEEP ?= shuffle_frequency
CKPT ?=
RUNS ?=
OUT ?=
ID ?=

.PHONY: reproduce-cpu sprites-hour baselines-cpu help install train print-config judge eval report sweep agent sweep-local test test-full lint clean \
	check-exp check-sweep bench gpu-prepare gpu-rehearse bench-dsprites bench-sprites bench-video

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

judge: $(STAMP) ## Train a judge: make judge DATA=dsprites|sprites (prints its per-head test accuracy)
	@test -f experiments/judge_$(DATA).yaml || { echo "make: unknown judge DATA='$(DATA)': no file experiments/judge_$(DATA).yaml. Expected one of: $$(ls experiments/judge_*.yaml | xargs -n1 basename | sed 's/^judge_//; s/\.yaml$$//' | tr '\n' ' ')" >&2; exit 2; }
	$(PY) -m sdcd fit --config experiments/judge_$(DATA).yaml $(ARGS)

eval: $(STAMP) ## Evaluate a checkpoint: make eval CKPT=runs/<exp>/<run>/checkpoints/last.ckpt [EXP=<name>]
	@test -n "$(CKPT)" || { echo "make: eval needs CKPT=<path to a .ckpt file>" >&2; exit 2; }
	@test -f "$(CKPT)" || { echo "make: CKPT='$(CKPT)' does not exist (expected a checkpoint file, e.g. runs/<exp>/<run>/checkpoints/last.ckpt)" >&2; exit 2; }
	@cfg="experiments/$(EXP).yaml"; run_cfg="$$(dirname "$(CKPT)")/../config.yaml"; \
	if [ "$(origin EXP)" != "command line" ] && [ -f "$$run_cfg" ]; then cfg="$$run_cfg"; fi; \
	test -f "$$cfg" || { echo "make: no config for this checkpoint: pass EXP=<name> (experiments/<name>.yaml)" >&2; exit 2; }; \
	echo "$(PY) -m sdcd test --config $$cfg --ckpt_path $(CKPT) $(ARGS)"; \
	$(PY) -m sdcd test --config "$$cfg" --ckpt_path "$(CKPT)" $(ARGS)

report: $(STAMP) ## Compare evaluated runs: make report RUNS="runs/a/<id> runs/b/<id>" [OUT=cmp.md]
	@test -n "$(RUNS)" || { echo 'make: report needs RUNS="<run dir or metrics.json> ..."' >&2; exit 2; }
	$(PY) -m sdcd.report $(RUNS) $(if $(OUT),--out $(OUT))

check-sweep:
	@test -f experiments/sweeps/$(SWEEP).yaml || { echo "make: unknown sweep SWEEP='$(SWEEP)': no file experiments/sweeps/$(SWEEP).yaml. Expected one of: $$(ls experiments/sweeps/*.yaml | xargs -n1 basename | sed 's/\.yaml$$//' | tr '\n' ' ')" >&2; exit 2; }

sweep: $(STAMP) check-sweep ## Create a W&B sweep (needs `wandb login`): make sweep SWEEP=shuffle_frequency
	WANDB_SILENT=false $(VENV)/bin/wandb sweep experiments/sweeps/$(SWEEP).yaml

agent: $(STAMP) ## Take runs of a W&B sweep (on any number of machines): make agent ID=<entity>/<project>/<sweep id>
	@test -n "$(ID)" || { echo "make: agent needs ID=<entity>/<project>/<sweep id>, as printed by make sweep" >&2; exit 2; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" WANDB_SILENT=false $(VENV)/bin/wandb agent $(ID)

sweep-local: $(STAMP) check-sweep ## Run a sweep's grid here, no W&B server: make sweep-local SWEEP=<name> ARGS="…"
	$(PY) -m sdcd.sweeps local experiments/sweeps/$(SWEEP).yaml -- $(ARGS)

reproduce-cpu: $(STAMP) ## Sprites on a CPU end to end: judge, autoencoder, shuffle (SEEDS="0 1 2"), no-shuffle, protocol, table
	PY=$(PY) bash experiments/reproduce_cpu.sh

sprites-hour: $(STAMP) ## Sprites' best CPU split in under an hour (NOT the paper's method): judge, lpc_autoencoder_lowpass_n25_cpu, lpc_swap_gamma_n25_cpu, protocol, table
	RECIPE=hour PY=$(PY) bash experiments/reproduce_cpu.sh

baselines-cpu: $(STAMP) ## SDCD (shuffle / no shuffle), DSVAE, DBSE on Moving dSprites cond & simple, 2 seeds: one table + plot
	PY=$(PY) bash experiments/baselines_cpu.sh

bench: $(STAMP) ## Training-step benchmark here: make bench ARGS="--config dsprites sprites --batch 2"
	$(PY) bench/train_step.py $(ARGS)

gpu-prepare: $(STAMP) ## Wheels (.whl/) and LPC sheets (.sheets/) for bench/gpu_run.sh on the device
	PYTHON=$(PY) bash bench/prepare_gpu_run.sh

gpu-rehearse: $(STAMP) ## bench/gpu_run.sh end to end on CPU, tiny (results in $$OUT or a temp dir)
	SDCD_BENCH_TINY=1 PYTHON=$(PY) OUT=$${OUT:-$$(mktemp -d)} bash bench/gpu_run.sh

bench-dsprites: $(STAMP) ## Moving dSprites render throughput
	$(PY) bench/dsprites_render.py $(ARGS)

bench-sprites: $(STAMP) ## Sprites build time, cache load, batch throughput
	$(PY) bench/sprites_data.py $(ARGS)

bench-video: $(STAMP) ## Video decode throughput of the streaming DataModule (clips/s)
	$(PY) bench/video_decode.py $(ARGS)

test: $(STAMP) ## Run the fast test suite (CPU, minutes)
	WANDB_MODE=disabled $(PY) -m pytest -q

test-full: $(STAMP) ## Run every test, slow ones included
	WANDB_MODE=disabled $(PY) -m pytest -q -m ""

lint: $(STAMP) ## Lint with ruff
	$(VENV)/bin/ruff check .

clean: ## Remove build artefacts and caches (keeps runs/ and .venv)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
