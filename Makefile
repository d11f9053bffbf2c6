# conv-surgeon: `make demo` runs the tool on the bundled sample model, `make test` checks
# types and import contracts and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/conv-surgeon
SAMPLE := sample_models/tiny_cnn.keras

.PHONY: demo test test-fast bench install install-test samples clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e . --config-settings editable_mode=compat
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

DEMO_OUT := build/demo

demo: install
	mkdir -p $(DEMO_OUT)
	$(CLI) inspect $(SAMPLE)
	$(CLI) get $(SAMPLE) --layer conv1 -o $(DEMO_OUT)/conv1_kernel.npy
	$(CLI) set $(SAMPLE) --layer conv1 --kernel sample_models/sobel.npy --bias-init zeros -o $(DEMO_OUT)/tiny_cnn_sobel.keras
	$(CLI) inspect $(DEMO_OUT)/tiny_cnn_sobel.keras --stats
	$(CLI) show $(DEMO_OUT)/tiny_cnn_sobel.keras --layer conv1 --against $(SAMPLE) -o $(DEMO_OUT)/conv1_sobel.png

# Types and the import contracts (pyproject.toml) first: both take seconds, pytest minutes.
# The suite starts the console script hundreds of times: the package is compiled once
# first, or each fresh interpreter compiles it again where PYTHONDONTWRITEBYTECODE is set
# (it is here: 0.15-0.3 CPU-s a process).
test: install-test
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m compileall -q conv_surgeon
	$(PY) -m pytest -q -n auto --dist worksteal --durations=15

# The inner loop: the same checks, without the slow end-to-end runs on real architectures.
test-fast: install-test
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m compileall -q conv_surgeon
	$(PY) -m pytest -q -n auto --dist worksteal --durations=10 -m "not slow"

bench: install
	$(PY) bench/bench.py

samples: install
	$(PY) sample_models/build_samples.py

clean:
	rm -rf $(VENV) bench/.cache .pytest_cache
