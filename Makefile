# Everything a newcomer needs: `make demo` (the main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: venv demo test test-fast lint bench clean data

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first, so that pip never resolves `torch` to a multi-GB CUDA build.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev,export]'
	touch $@

venv: $(VENV)/.installed

data:
	@if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's dataset-fashion-mnist (Fashion-MNIST idx files)"; \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
			|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) \
			|| sudo -n apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) \
			|| echo "could not install dataset-fashion-mnist; the demo falls back to scikit-learn's digits"; \
	fi

demo: venv data
	$(BIN)/deitlab demo

# pytest exits 5 when it collects no tests; that is not a failure of the suite.
NO_TESTS := 5

# Everything, slow tests included: what CI runs (.ci/run).
test: venv data
	$(BIN)/python -m pytest -q tests; rc=$$?; if [ $$rc -eq $(NO_TESTS) ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The inner loop: skips the tests marked slow (subprocess runs, multi-epoch trainings, DDP, SIGKILL, the demo).
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" tests; rc=$$?; if [ $$rc -eq $(NO_TESTS) ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: venv
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
