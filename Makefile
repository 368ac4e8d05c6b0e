# make demo: set up .venv if missing, then train the fast MNIST recipe.  make test: set up, lint, run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Offline machines keep datasets in ../shared/datasets; elsewhere imgclf finds them in its cache or downloads.
export IMGCLF_DATA_DIR ?= $(firstword $(wildcard ../shared/datasets))

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev,export,tune,explain,serve,postgres,track]"
	touch $@

demo: setup
	$(BIN)/imgclf train --config configs/mnist-fast.yaml

lint: setup
	$(BIN)/ruff check src tests benchmarks

test: lint
	# pytest exits 5 when it collects no tests; that is not a failure of the build. The 15 slowest tests are listed.
	$(BIN)/python -m pytest -q --durations=15 || [ $$? -eq 5 ]

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
