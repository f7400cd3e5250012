# Two commands matter: `make run` (set up + the main job) and `make test` (set up + the tests).
# The venv lives outside the clone, keyed by the hash of the lock it installs, and is reused.
SHELL := /bin/bash
PYTHON ?= python3
# One lock per Python minor version (requirements/README.md): the interpreter picks its own.
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
LOCK := requirements/lock-py$(PYTHON_VERSION).txt
LOCK_PYTHONS := 3.11 3.12
VENV ?= $(HOME)/.cache/generalist/venv-$(shell sha256sum $(LOCK) 2>/dev/null | cut -c1-12)
PY := $(VENV)/bin/python
# Data: $GENERALIST_DATA if set, else ../shared/data where it exists, else a cache folder in the user's home,
# where `make run` downloads what is missing (torchvision) and says so.
SHARED_DATA := $(abspath ../shared/data)
DATA_CACHE := $(HOME)/.cache/generalist/data
DATA ?= $(or $(GENERALIST_DATA),$(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),$(DATA_CACHE)))
DOWNLOAD ?= $(if $(filter $(DATA_CACHE),$(DATA)),true,false)
RUN_DIR ?= runs/generalist-d-small-$(shell date +%Y%m%d-%H%M%S)
RECIPE ?= generalist-d-small
# This checkout's code wins over whichever checkout the shared venv was last installed from.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
# Keep every Ray process on the loopback interface (see README, "Ray on one machine").
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: venv run test test-all lint bench clean-venv lock

# Every file of the stack is checked against the lock's sha256 (--require-hashes) and nothing outside the lock is
# installed (--no-deps); the project itself is built by the locked setuptools.
$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps --only-binary=:all: -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Reached only when the interpreter's lock is missing.
requirements/lock-py%.txt:
	$(error no lock for Python $* ($(PYTHON)): use one of $(LOCK_PYTHONS), or add $* to LOCK_PYTHONS and make lock)

venv: $(VENV)/.installed

## The main job: a real generalist-d training (small CNN, CIFAR-10 subset) on a local Ray, then its table.
run: venv
	@echo "data: $(DATA)$(if $(filter true,$(DOWNLOAD)), (what is missing is downloaded there),)"
	GENERALIST_DATA=$(DATA) $(VENV)/bin/generalist train --recipe $(RECIPE) --run-dir $(RUN_DIR) \
		data.download=$(DOWNLOAD)

## The tests (CPU; slow and GPU tests are behind markers), in TEST_WORKERS processes (pytest-xdist). A test file
## stays in one process (--dist loadfile), so its module fixtures and its local Ray are made once; much of a Ray
## test is waiting (processes starting, deadlines polled), and the other process's tests use that core meanwhile.
## Files go out in collection order (--no-loadscope-reorder): tests/ray's few long files first, the many short unit
## files after, to even out the end (xdist's default sends the files with the most tests first).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: venv
	GENERALIST_DATA=$(DATA) GENERALIST_TEST_DATA=$(DATA) $(PYTEST)

test-all: venv
	GENERALIST_DATA=$(DATA) GENERALIST_TEST_DATA=$(DATA) $(PYTEST) -m "not gpu"

clean-venv:
	rm -rf $(VENV)

## Re-resolve requirements/lock.in into one hashed lock per Python (Linux x86_64), keeping today's versions where
## they still fit (LOCK_FLAGS=--upgrade: the newest that fit); after changing lock.in, run this and commit lock.in with
## the locks.
UV_TOOL := $(HOME)/.cache/generalist/uv-$(shell sha256sum requirements/lock-tools.txt | cut -c1-12)

lock: $(UV_TOOL)/.installed
	for version in $(LOCK_PYTHONS); do \
	    $(UV_TOOL)/bin/uv pip compile --quiet --generate-hashes $(LOCK_FLAGS) --python-version $$version \
	        --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
	        -o requirements/lock-py$$version.txt requirements/lock.in || exit 1; \
	done
	$(UV_TOOL)/bin/uv pip compile --quiet --generate-hashes --custom-compile-command "make lock" \
	    -o requirements/lock-tools.txt requirements/lock-tools.in

# Keyed by the hash of lock-tools.txt already, so a rewrite of that file with the same content installs nothing.
$(UV_TOOL)/.installed: | requirements/lock-tools.txt
	$(PYTHON) -m venv $(UV_TOOL)
	$(UV_TOOL)/bin/python -m pip install -q --require-hashes --no-deps -r requirements/lock-tools.txt
	touch $@

# --- docker ---
# Reproduce a named job of jobs/jobs.yaml in containers (docker/README.md): build the image, start a Ray head and a
# GPU worker (docker/compose.yaml), submit the job and its evaluation, stop the containers. The run folder is left
# on this host in $(DOCKER_RUNS)/RECIPE-seed0. Needs Docker with Compose v2 and the NVIDIA Container Toolkit.
#   make docker-repro RECIPE=generalist-d        (RECIPE: a job name of jobs/jobs.yaml; default $(RECIPE))
DOCKER_IMAGE ?= generalist:0.1.0-cu130
DOCKER_RUNS ?= $(abspath runs/docker)
DOCKER_REGISTRY ?=
COMPOSE := docker compose -f docker/compose.yaml
COMPOSE_ENV = HOST_UID=$$(id -u) HOST_GID=$$(id -g) RUNS_DIR=$(DOCKER_RUNS) DATA_DIR=$(DATA) JOB=$(RECIPE)

.PHONY: docker-build docker-repro docker-push docker-down

docker-build:
	docker build -f docker/Dockerfile -t $(DOCKER_IMAGE) .

docker-repro: docker-build
	mkdir -p $(DOCKER_RUNS)
	$(COMPOSE_ENV) $(COMPOSE) up -d --wait ray-head ray-gpu-worker
	$(COMPOSE_ENV) $(COMPOSE) run --rm repro; status=$$?; $(COMPOSE_ENV) $(COMPOSE) down; exit $$status

## Push the image where cluster nodes can pull it: make docker-push DOCKER_REGISTRY=ghcr.io/you
docker-push: docker-build
	@test -n "$(DOCKER_REGISTRY)" || { echo "set DOCKER_REGISTRY, e.g. make docker-push DOCKER_REGISTRY=ghcr.io/you"; exit 2; }
	docker tag $(DOCKER_IMAGE) $(DOCKER_REGISTRY)/$(DOCKER_IMAGE)
	docker push $(DOCKER_REGISTRY)/$(DOCKER_IMAGE)

docker-down:
	$(COMPOSE_ENV) $(COMPOSE) down
# --- end docker ---
