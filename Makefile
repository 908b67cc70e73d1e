# make run | make test [ARGS="-k something"] | make bench | make bench-connections | make bench-router   (see README.md)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check --no-input -qq
LAUNCH := $(PY) -m hil_project.launcher

.PHONY: run test bench bench-connections bench-router

run: $(VENV)/.installed
	$(LAUNCH) run

test: $(VENV)/.installed
	$(LAUNCH) test $(ARGS)

bench: $(VENV)/.installed $(VENV)/.bench-installed
	$(LAUNCH) exec python bench/engine.py

bench-connections: $(VENV)/.installed $(VENV)/.bench-installed
	$(LAUNCH) exec python bench/connections.py

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
