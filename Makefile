# conv-surgeon: `make demo` runs the tool on the bundled sample model, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/conv-surgeon
SAMPLE := sample_models/tiny_cnn.keras

.PHONY: demo test bench install install-test samples clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(CLI) inspect $(SAMPLE)
	$(CLI) get $(SAMPLE) --layer conv1 -o /tmp/conv-surgeon-demo-conv1.npy
	$(CLI) inspect $(SAMPLE) --json | head -n 12

test: install-test
	$(PY) -m pytest -q

bench: install
	$(PY) bench/bench.py

samples: install
	$(PY) sample_models/build_samples.py

clean:
	rm -rf $(VENV) bench/.cache .pytest_cache
