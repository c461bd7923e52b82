# Pulse: the two commands of the quick start are `make demo` and `make test`.
# Both create the virtual environment and start the local services themselves.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv services services-down status demo test test-unit test-integration sanitize bench clean compose-check compose-env \
        docker-engine images compose-test

$(STAMP): pyproject.toml constraints.txt setup.py src/pulse/source/_wire.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

services: venv          ## start PostgreSQL, Redis, Kafka, BigQuery emulator on 127.0.0.1
	$(BIN)/pulse dev up

services-down:          ## stop exactly what `make services` started
	@test -x $(BIN)/pulse && $(BIN)/pulse dev down || true

status: venv
	$(BIN)/pulse dev status

demo: venv              ## the whole pipeline on local services (starts and stops what it needs)
	$(BIN)/pulse dev demo

test: services          ## unit + integration tests against the real local services
	$(BIN)/pytest -q tests

test-unit: venv
	$(BIN)/pytest -q tests/unit

test-integration: services
	$(BIN)/pytest -q tests/integration

sanitize: venv          ## _wire built with ASAN + UBSan (build/sanitize), the decoder tests run on it; not in `make test`
	PY=$(BIN)/python bash dev/sanitize.sh

bench: services         ## benchmarks (not part of the test suite); see docs/benchmarks.md
	PULSE_BIN=$(BIN) bash bench/run_all.sh

compose-env:           ## write random demo secrets into a git-ignored .env for docker-compose.yml (keeps existing ones)
	$(PYTHON) docker/compose-env.py

docker-engine:          ## a Docker engine (apt-installs Debian's docker.io and starts dockerd as root if none answers)
	bash dev/docker-engine.sh

images: venv docker-engine  ## the compose images without a registry: debootstrap base, stand-in infra, Pulse, emulator (cached)
	PY=$(BIN)/python bash dev/docker-images.sh

compose-test: images    ## boot docker-compose.yml for real and check it end to end (docs/deploy.md, "The boot test")
	$(BIN)/pytest -q -s -m compose tests/compose

clean: services-down
	rm -rf .pulse $(VENV) bigquery_batches build/sanitize
