# raydrift: `make run` runs the offline MNIST demo, `make test` runs the test suite.
# Both create .venv with pip when it is missing and install raydrift (editable) into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/mnist.yaml
# torch/torchvision are pinned to releases that pip takes from a local cache on CPU-only machines;
# override for another platform, e.g. `make TORCH_SPEC="torch torchvision" run`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install run test test-autoscaling lint typecheck check clean bench bench-pipeline

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/raydrift run $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# left out of `make test` (pyproject addopts): a fake autoscaling cluster, ~4 min (docs/cluster.md)
test-autoscaling: $(STAMP)
	$(BIN)/python -m pytest -q -m autoscaling tests/e2e/test_autoscaling.py

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy raydrift

check: lint typecheck test

# issue 8's pipeline benchmark (~10 min on 2 cores); PIPELINE_ARGS=--overwrite re-records
# benchmarks/results/pipeline.json, PIPELINE_ARGS='--quick --out runs/pipeline-quick.json' is a smoke run
bench-pipeline: $(STAMP)
	nice -n 10 $(BIN)/python benchmarks/pipeline.py $(PIPELINE_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
