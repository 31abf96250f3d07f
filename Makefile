# Two entry points on a fresh machine: `make demo` and `make test` (what .ci/run calls).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EP := $(BIN)/eventpipe

.PHONY: help setup install services monitoring demo test test-random test-fast lint bench down status clean k8s test-k8s test-csi \
  compose-plugin images test-compose drill-restarts drill-migrate

help:  ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-11s %s\n", $$1, $$2 }'

# The venv in two stages, so the service downloads need not wait for Airflow and Spark:
# stage 1 is the eventpipe package with its own dependencies (what `eventpipe devstack install` imports),
# stage 2 everything else (Airflow, pyspark, test tools). Both take the pins of the requirements files.
$(BIN)/.stage1: requirements.txt requirements-dev.txt pyproject.toml
	@echo "[setup] Python venv in $(VENV), stage 1: the eventpipe package and its own dependencies"
	@start=$$(date +%s); $(PYTHON) -m venv $(VENV) && \
	  $(BIN)/pip install -q --upgrade pip && \
	  grep -hv '^-r' requirements.txt requirements-dev.txt > $(VENV)/constraints.txt && \
	  $(BIN)/pip install --progress-bar off -c $(VENV)/constraints.txt -e . | grep --line-buffered -E '^(Collecting|Successfully)' ; \
	  test $${PIPESTATUS[0]} -eq 0 && echo "[setup] stage 1 ready in $$(( $$(date +%s) - start ))s"
	touch $@

$(BIN)/.installed: $(BIN)/.stage1
	@echo "[setup] Python venv stage 2: Airflow, Spark, test tools (a few minutes on a cold pip cache; one line per package)"
	@start=$$(date +%s); \
	  $(BIN)/pip install --progress-bar off -c $(VENV)/constraints.txt -r requirements-dev.txt | grep --line-buffered -E '^(Collecting|Successfully)' ; \
	  test $${PIPESTATUS[0]} -eq 0 && echo "[setup] venv ready in $$(( $$(date +%s) - start ))s"
	touch $@

setup: $(BIN)/.installed  ## Python venv with Airflow, clients, Spark and the eventpipe package

# Kafka, Elasticsearch and the Spark jars (Maven) and the S3 server need only stage 1: they download while
# stage 2 installs; PostgreSQL and Airflow (a migration) need stage 2.
EARLY_INSTALLS := kafka,elasticsearch,spark,s3
install: $(BIN)/.stage1  ## download Kafka, Elasticsearch, the S3 server and Spark jars, set up PostgreSQL and Airflow (cached in .devstack/)
	@$(EP) devstack install --services $(EARLY_INSTALLS) & early=$$!; \
	  $(MAKE) --no-print-directory setup; staged=$$?; \
	  wait $$early; downloaded=$$?; \
	  test $$staged -eq 0 -a $$downloaded -eq 0
	$(EP) devstack install

services: install  ## start Kafka, Elasticsearch and the S3 server as local processes (Airflow and PostgreSQL start on demand)
	$(EP) devstack up --services kafka,elasticsearch,s3

monitoring: setup  ## opt-in: Prometheus :9090, Pushgateway :9091, Alertmanager :9095, StatsD exporter :9102 (start before Airflow)
	$(EP) devstack up --services monitoring

EXECUTION ?= local
ifeq ($(filter $(EXECUTION),local kubernetes),)
$(error EXECUTION must be local or kubernetes, not "$(EXECUTION)")
endif
# DATA=cluster (with EXECUTION=kubernetes): Kafka and Elasticsearch are the StatefulSets of `devstack k8s-stateful`
DATA ?= host
ifeq ($(filter $(DATA),host cluster),)
$(error DATA must be host or cluster, not "$(DATA)")
endif
# kubernetes: the demo starts the cluster and deploys itself (what `make k8s` does); the host packages come first
DEMO_NEEDS := $(if $(filter kubernetes,$(EXECUTION)),k8s-host)
demo: install $(DEMO_NEEDS)  ## everything up (incl. Airflow), produce events, run the pipeline through Airflow, print a summary (EXECUTION=kubernetes: tasks as pods, cluster included; DATA=cluster too: against the Kafka and Elasticsearch StatefulSets)
	$(EP) demo --execution $(EXECUTION) --data $(DATA)

test: services browser  ## everything up, then the whole test suite against the real services
	$(BIN)/ruff check include devstack dags plugins tests bench
	$(BIN)/python -m pytest -ra -m "not k8s and not csi and not compose"  # make test-k8s / test-csi / test-compose (opt-in)

test-random: services browser  ## the same suite in a random order (pytest-randomly; SEED=n repeats an order)
	$(BIN)/python -m pytest -ra -p randomly $(if $(SEED),--randomly-seed=$(SEED)) -m "not k8s and not csi and not compose"

.PHONY: browser
browser:  ## headless Chromium + chromedriver from Debian packages, for the Airflow UI test (idempotent)
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then echo "chromium present"; \
	else apt-get install -y -q --no-install-recommends chromium chromium-driver || \
	  { apt-get update -q && apt-get install -y -q --no-install-recommends chromium chromium-driver; }; fi

test-fast: setup  ## tests that need no services and install nothing (no apt-get: promtool's rule tests run in make test)
	$(BIN)/python -m pytest -ra -m "not services and not airflow and not k8s and not csi and not compose and not packages"

lint: setup  ## ruff check and ruff format --check
	$(BIN)/ruff check include devstack dags plugins tests bench
	$(BIN)/ruff format --check include devstack dags plugins tests bench

bench: services  ## benchmarks: ratios against ceilings measured in the same run; JSON + PNG in bench/results/
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_archive.py
	$(BIN)/python bench/bench_score.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_anomaly.py

K8S_HOST_PKGS := docker.io containerd runc containernetworking-plugins etcd-server iptables iproute2 openssl debootstrap
K8S_HOST_TOOLS := dockerd containerd runc etcd iptables ip openssl debootstrap

.PHONY: k8s-host
k8s-host:  ## Debian packages the local cluster and the image build need (idempotent; apt-get only when one is missing)
	@missing=""; for t in $(K8S_HOST_TOOLS); do command -v $$t >/dev/null || [ -x /usr/local/go/bin/$$t ] || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ] && [ -x /usr/lib/cni/bridge -o -x /opt/cni/bin/bridge ]; then echo "kubernetes host packages present"; \
	else echo "[k8s-host] missing:$$missing; installing $(K8S_HOST_PKGS)"; \
	  apt-get install -y -q --no-install-recommends $(K8S_HOST_PKGS) || \
	  { apt-get update -q && apt-get install -y -q --no-install-recommends $(K8S_HOST_PKGS); }; fi

k8s: install k8s-host  ## opt-in: local Kubernetes (built from the Go proxy on first use), the image, deploy/ and Secrets
	$(EP) devstack up --services kafka,elasticsearch,s3
	$(EP) devstack k8s

test-k8s: k8s  ## the k8s-marked tests against the local cluster
	$(BIN)/python -m pytest -ra -m "k8s or csi"

# Not part of test-k8s: a measurement (about 30 min) that deletes pods and a PVC of the StatefulSets. Needs
# `make k8s` and `eventpipe devstack k8s-stateful`; writes bench/results/restarts.json/.png (docs/bench/restarts.md).
# DRILL_ARGS: its flags; the 10x lost/kept-volume run was DRILL_ARGS="--fill-gib 15 --expand-by 17Gi" (about 45 min,
# 16 GB per broker: about 45 GB more host disk at its peak).
drill-restarts: install  ## opt-in: the restart and expansion drill against the cluster's Kafka and Elasticsearch
	$(BIN)/python bench/drill_restarts.py $(DRILL_ARGS)

# DRILL_ARGS: the drill's flags, e.g. DRILL_ARGS="--size-gb 1 --no-precopy" (bench/drill_migrate.py --help)
drill-migrate: k8s  ## opt-in: migration drill (Kafka + ES to a 2nd cluster and back), docs/bench/migration.*
	$(EP) devstack k8s-stateful
	$(BIN)/python bench/drill_migrate.py --out docs/bench $(DRILL_ARGS)

test-csi: install  ## the CSI driver's Go tests and csi-sanity, as root, without a cluster
	$(BIN)/python -m pytest -ra -s -m csi tests/test_csi_driver.py

# The laptop path with Docker (docker-compose.yaml), here without a registry: Compose from the Go module proxy,
# images from the Debian rootfs and the devstack's pinned artifacts (docker-compose.local.yaml). Docs: README.
compose-plugin: $(BIN)/.stage1 k8s-host  ## Docker Compose v5.6.0 from the Go module proxy, a CLI plugin in .devstack/docker
	$(EP) devstack compose

images: install k8s-host  ## registry-free images: eventpipe (BASE=debian), kafka, elasticsearch, s3, postgres (cached by input hash)
	$(EP) devstack images build

test-compose: compose-plugin images  ## opt-in: the compose stack from local images: up, demo, restart with data, down -v
	$(BIN)/python -m pytest -ra -s -m compose tests/test_compose.py

status:  ## health of each local service (exit 1 if a data service or a running one is unhealthy)
	$(EP) devstack status

down:  ## stop every local service
	$(EP) devstack down

clean: down  ## stop every local service and delete .devstack/ (downloads, builds, data)
	rm -rf .devstack
