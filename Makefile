# AICQ developer and operator shortcuts. See docs/RUNBOOK.md.

PYTHON ?= python
PORT ?= 8080
DATA_DIR ?= ./data
URL ?= http://localhost:$(PORT)

.PHONY: help install test run lint bench build smoke deploy deploy-checked

help:
	@echo "make install         pip install -e '.[test]'"
	@echo "make test            $(PYTHON) -m pytest"
	@echo "make run             aicq serve on PORT=$(PORT) (embedded PostgreSQL/Redis under DATA_DIR=$(DATA_DIR))"
	@echo "make lint            ruff check ."
	@echo "make bench           the headline benches: REST hot path, then fan-out (each module says what it measures)"
	@echo "make build           wheel into dist/ and import check"
	@echo "make smoke URL=...   scripts/smoke_test.sh URL (default $(URL))"
	@echo "make deploy          fly deploy (no tests, no build check)"
	@echo "make deploy-checked  scripts/deploy.sh (tests, build check, rolling deploy, health)"

install:
	$(PYTHON) -m pip install -e '.[test]'

test:
	$(PYTHON) -m pytest

run:
	PORT=$(PORT) DATA_DIR=$(DATA_DIR) aicq serve

lint:
	ruff check .

bench:
	$(PYTHON) -m bench.http_post
	$(PYTHON) -m bench.fanout

build:
	$(PYTHON) -m pip wheel --no-deps --wheel-dir dist .
	$(PYTHON) -c 'import aicq.app'

smoke:
	scripts/smoke_test.sh $(URL)

# As in the runbook: a bare `fly deploy` (fly.toml sets the rolling strategy).
deploy:
	fly deploy

deploy-checked:
	scripts/deploy.sh
