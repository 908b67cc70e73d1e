# make run | make test [ARGS="-k something"] | make bench | make bench-connections | make bench-realtime | make bench-router   (see README.md)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check --no-input -qq
LAUNCH := $(PY) -m hil_project.launcher
CHROMIUM := /usr/bin/chromium
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test bench bench-connections bench-realtime bench-router

run: $(VENV)/.installed
	$(LAUNCH) run

test: $(VENV)/.installed $(CHROMIUM)
	$(LAUNCH) test $(ARGS)

# The console's browser tests drive Debian's chromium (Playwright downloads no browser).
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

bench: $(VENV)/.installed $(VENV)/.bench-installed
	$(LAUNCH) exec python bench/engine.py

bench-connections: $(VENV)/.installed $(VENV)/.bench-installed
	$(LAUNCH) exec python bench/connections.py

bench-realtime: $(VENV)/.installed $(VENV)/.bench-installed
	$(LAUNCH) exec python bench/realtime.py

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
