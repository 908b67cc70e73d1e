# make run | make test [ARGS="-k something"] | make bench | make bench-connections | make bench-realtime | make bench-analytics | make bench-router | make bench-tools   (see README.md)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check --no-input -qq
LAUNCH := $(PY) -m hil_project.launcher
CHROMIUM := /usr/bin/chromium
BWRAP  := /usr/bin/bwrap
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test bench bench-connections bench-realtime bench-analytics bench-router bench-tools

run: $(VENV)/.installed $(BWRAP)
	$(LAUNCH) run

test: $(VENV)/.installed $(CHROMIUM) $(BWRAP)
	$(LAUNCH) test $(ARGS)

# From Debian: chromium for the console's browser tests (Playwright downloads no browser); bubblewrap, Debian's
# python3 and prlimit (util-linux) for the code tool's sandbox (tools/sandbox.py).
$(CHROMIUM) $(BWRAP):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium bubblewrap python3 util-linux

bench: $(VENV)/.installed $(VENV)/.bench-installed
	$(LAUNCH) exec python bench/engine.py

bench-connections: $(VENV)/.installed $(VENV)/.bench-installed
	$(LAUNCH) exec python bench/connections.py

bench-realtime: $(VENV)/.installed $(VENV)/.bench-installed
	$(LAUNCH) exec python bench/realtime.py

# A database of its own on the embedded server (hil_bench_analytics), dropped at the end; about 10 minutes.
bench-analytics: $(VENV)/.installed
	$(LAUNCH) exec python bench/analytics.py

bench-tools: $(VENV)/.installed $(BWRAP)
	$(LAUNCH) exec python bench/tools.py
	$(PY) bench/pii.py

# LiteLLM, the router's peer, in a virtualenv of its own: it needs another `openai` than HIL pins.
bench-router: $(VENV)/.installed .venv-litellm/.installed
	$(LAUNCH) exec python bench/router.py

.venv-litellm/.installed: bench/requirements-litellm.txt
	$(PYTHON) -m venv .venv-litellm
	.venv-litellm/bin/python -m pip --disable-pip-version-check --no-input -qq install -r bench/requirements-litellm.txt
	touch $@

$(PY):
	$(PYTHON) -m venv $(VENV)

# The stamps re-install when a requirements file changes.
$(VENV)/.installed: requirements.txt | $(PY)
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.bench-installed: bench/requirements.txt $(VENV)/.installed
	$(PIP) install -r bench/requirements.txt
	touch $@
