# Two commands matter: `make run` (set up + the main job) and `make test` (set up + the tests).
# The venv lives outside the clone, keyed by the hash of requirements/lock.txt, and is reused.
SHELL := /bin/bash
PYTHON ?= python3
LOCK := requirements/lock.txt
VENV ?= $(HOME)/.cache/generalist/venv-$(shell sha256sum $(LOCK) | cut -c1-12)
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
	@echo "data: $(DATA)$(if $(filter true,$(DOWNLOAD)), (what is missing is downloaded there),)"
	GENERALIST_DATA=$(DATA) $(VENV)/bin/generalist train --recipe $(RECIPE) --run-dir $(RUN_DIR) \
		data.download=$(DOWNLOAD)

## The tests (CPU; slow and GPU tests are behind markers).
test: venv
	GENERALIST_DATA=$(DATA) GENERALIST_TEST_DATA=$(DATA) $(PY) -m pytest -q

test-all: venv
	GENERALIST_DATA=$(DATA) GENERALIST_TEST_DATA=$(DATA) $(PY) -m pytest -q -m "not gpu"

clean-venv:
	rm -rf $(VENV)

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
