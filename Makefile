# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: test lint tools demo sim bench clean constraints

# The venv needs Python >= 3.11 with venv and ensurepip (Debian/Ubuntu split them into
# python3-venv): install that package when we can (root with apt-get), else name it.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	    echo "make: cdp-monitor needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) -V 2>&1)." \
	         "On Ubuntu 22.04: see README, 'Python 3.10 (Ubuntu 22.04)'," \
	         "then run: make PYTHON=python3.11 $(MAKECMDGOALS)" >&2; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	    pkg=python$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv; \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "make: installing Debian's $$pkg (venv and ensurepip)"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	            apt-get install -y -qq --no-install-recommends $$pkg >/dev/null; \
	    else \
	        echo "make: $(PYTHON) has no venv/ensurepip: sudo apt-get install $$pkg" >&2; exit 1; \
	    fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

# The demo needs the runtime dependencies only (openai among them); the tests add theirs.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP) $(RUN_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check monitor tests bench
	$(BIN)/ruff format --check monitor tests bench
	$(BIN)/mypy

# The deployment tests run the real promtool, prometheus, amtool, systemd-analyze and
# docker-compose (`config` only: no Docker engine needed), and the status page test a
# headless chromium through chromedriver: install Debian's packages when we can (root
# with apt-get), else name them and stop.
TOOL_PACKAGES := prometheus prometheus-alertmanager systemd docker-compose chromium chromium-driver
TOOL_COMMANDS := promtool prometheus amtool systemd-analyze docker-compose chromium chromedriver
tools:
	@missing=""; \
	for t in $(TOOL_COMMANDS); do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "make: installing Debian packages: $(TOOL_PACKAGES)"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	            apt-get install -y -qq --no-install-recommends $(TOOL_PACKAGES) >/dev/null; \
	    else \
	        echo "make: the tests need $(TOOL_COMMANDS);" \
	             "install Debian's packages: $(TOOL_PACKAGES) (sudo apt-get install $(TOOL_PACKAGES))" >&2; \
	        exit 1; \
	    fi; \
	fi

test: lint tools
	$(BIN)/pytest

demo: $(RUN_STAMP)
	$(BIN)/cdp-monitor demo

sim: $(RUN_STAMP)
	$(BIN)/cdp-monitor sim --cdp

bench: $(STAMP)
	$(BIN)/python bench/discord_client.py

# The Docker image's pinned dependencies, from a fresh venv holding the project alone.
constraints:
	rm -rf build/constraints-venv
	$(PYTHON) -m venv build/constraints-venv
	build/constraints-venv/bin/pip install -q .
	{ echo "# The image's dependencies, pinned: \`make constraints\` regenerates this file from a fresh"; \
	  echo "# venv holding \`pip install .\` (pip freeze --exclude cdp-monitor). Python 3.11, Linux."; \
	  build/constraints-venv/bin/pip freeze --exclude cdp-monitor; } > deploy/docker/constraints.txt
	rm -rf build/constraints-venv

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
