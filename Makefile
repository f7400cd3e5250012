# Two commands matter: `make run` (set up + the main job) and `make test` (set up + the tests).
# The venv lives outside the clone, keyed by the hash of requirements/lock.txt, and is reused.
SHELL := /bin/bash
PYTHON ?= python3
LOCK := requirements/lock.txt
VENV ?= $(HOME)/.cache/generalist/venv-$(shell sha256sum $(LOCK) | cut -c1-12)
PY := $(VENV)/bin/python
DATA ?= $(if $(GENERALIST_DATA),$(GENERALIST_DATA),$(abspath ../shared/data))
RUN_DIR ?= runs/generalist-d-small-$(shell date +%Y%m%d-%H%M%S)
RECIPE ?= generalist-d-small
# Keep every Ray process on the loopback interface (see README, "Ray on one machine").
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: venv run test test-all lint bench clean-venv

$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

## The main job: a real generalist-d training (small CNN, CIFAR-10 subset) on a local Ray, then its table.
run: venv
	GENERALIST_DATA=$(DATA) $(VENV)/bin/generalist train --recipe $(RECIPE) --run-dir $(RUN_DIR)

## The tests (CPU; slow and GPU tests are behind markers).
test: venv
	GENERALIST_DATA=$(DATA) GENERALIST_TEST_DATA=$(DATA) $(PY) -m pytest -q

test-all: venv
	GENERALIST_DATA=$(DATA) GENERALIST_TEST_DATA=$(DATA) $(PY) -m pytest -q -m "not gpu"

clean-venv:
	rm -rf $(VENV)
