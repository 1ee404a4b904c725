# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint tools demo sim bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check monitor tests bench
	$(BIN)/ruff format --check monitor tests bench
	$(BIN)/mypy

# The deployment tests run the real promtool, prometheus, amtool and systemd-analyze, and
# the status page test a headless chromium through chromedriver: install Debian's
# packages when we can (root with apt-get), else name them and stop.
TOOL_PACKAGES := prometheus prometheus-alertmanager systemd chromium chromium-driver
TOOL_COMMANDS := promtool prometheus amtool systemd-analyze chromium chromedriver
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

demo: $(STAMP)
	$(BIN)/cdp-monitor demo

sim: $(STAMP)
	$(BIN)/cdp-monitor sim --cdp

bench: $(STAMP)
	$(BIN)/python bench/discord_client.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
