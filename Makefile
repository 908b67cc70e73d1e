# make run | make test [ARGS="-k something"] | make bench | make bench-connections   (see README.md)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check --no-input -qq
LAUNCH := $(PY) -m hil_project.launcher

.PHONY: run test bench bench-connections

run: $(VENV)/.installed
	$(LAUNCH) run

test: $(VENV)/.installed
	$(LAUNCH) test $(ARGS)

bench: $(VENV)/.installed $(VENV)/.bench-installed
	$(LAUNCH) exec python bench/engine.py

bench-connections: $(VENV)/.installed $(VENV)/.bench-installed
	$(LAUNCH) exec python bench/connections.py

$(PY):
	$(PYTHON) -m venv $(VENV)

# The stamps re-install when a requirements file changes.
$(VENV)/.installed: requirements.txt | $(PY)
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.bench-installed: bench/requirements.txt $(VENV)/.installed
	$(PIP) install -r bench/requirements.txt
	touch $@
