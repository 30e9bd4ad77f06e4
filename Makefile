# domainlift — `make setup finetune export` trains and exports the default job; `make test` runs the tests.
# JOB picks configs/$(JOB).yaml; ARGS passes dotted overrides, e.g. make finetune ARGS="train.epochs=1".
PYTHON ?= .venv/bin/python
JOB ?= sentiment-kitchen
CONFIG ?= configs/$(JOB).yaml
ARGS ?=
# Each flag reaches only the stage that takes it: --resume and --overwrite are fine-tuning's (export rebuilds what is
# out of date by itself; --force rebuilds everything), so `make finetune export ARGS=--overwrite` works.
STAGE_ARGS = $(filter-out --resume --overwrite,$(ARGS))
PORT ?= 3000
# The CPU build of torch lies on this machine's disk; on a GPU machine use e.g. TORCH="torch==2.13.0" from
# the CUDA index. It is installed before the project so pip never resolves a bare `torch` to a CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup finetune export serve bento container container-run bench loadtest bench-serve readapt adapt-matrix test test-fast quality style clean

setup:
	test -x $(PYTHON) || python3 -m venv .venv
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q "$(TORCH)"
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[serve,bench,dev]"

finetune:
	$(PYTHON) -m finetune --config $(CONFIG) $(ARGS)

export:  # checkpoint -> ONNX / int8 / int4 / pruned variants, verified; report in artifacts/$(JOB)/export/
	$(PYTHON) -m export --config $(CONFIG) $(STAGE_ARGS)

serve:  # the best exported variant behind BentoML on 127.0.0.1:$(PORT) (serve.variant= picks another)
	$(PYTHON) -m serve --config $(CONFIG) --port $(PORT) $(STAGE_ARGS)

bento:  # a self-contained bento (bentofile.yaml) of the served variant; then `bentoml containerize`
	$(PYTHON) -m serve --config $(CONFIG) --build $(STAGE_ARGS)

IMAGE ?= domainlift:$(JOB)
container:  # the bento's OCI image with podman (docker where podman is missing), offline apart from the package index
	deploy/container/build.sh $(PYTHON) $(CONFIG) $(IMAGE) $(STAGE_ARGS)

container-run:  # that image on 127.0.0.1:$(PORT), DOMAINLIFT_API_KEY from the environment
	deploy/container/run.sh $(IMAGE) $(PORT)

bench:  # latency of the checkpoint and every export variant, CPU (and GPU when present); tables + plots
	$(PYTHON) -m benchmarks.latency --config $(CONFIG) $(STAGE_ARGS)

loadtest:  # Locust, headless and bounded (the job's loadtest: section), against a service it starts; fails on errors
	$(PYTHON) -m benchmarks.loadtest --config $(CONFIG) $(STAGE_ARGS)

bench-serve:  # the same Locust profile against (a) this service, (b) it without batching, (c) a naive pipeline service
	$(PYTHON) -m benchmarks.bench_serve --config $(CONFIG) $(STAGE_ARGS)

readapt:  # the served model adapted to its captured traffic, exported, gated, promoted if better (docs/monitoring.md)
	$(PYTHON) -m readapt --config $(CONFIG) $(STAGE_ARGS)

adapt-matrix:  # methods x domain pairs vs the baseline; PAIRS=books:kitchen,dvd:electronics; SEEDS=42,43; SUITE=crossner
	$(PYTHON) -m benchmarks.adapt_matrix $(if $(SUITE),--suite $(SUITE)) $(if $(PAIRS),--pairs $(PAIRS)) \
		$(if $(SEEDS),--seeds $(SEEDS)) $(ARGS)

test:
	$(PYTHON) -m pytest -q tests

test-fast:  # unit tests only (tiny random models), about a minute
	$(PYTHON) -m pytest -q -m "not slow" tests

quality:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

style:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
