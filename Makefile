# Two entry points, used by README's Quickstart and by .ci/run:
#   make app    install and start the web app on the embedded model (http://127.0.0.1:7860)
#   make test   install with test extras (and Chromium for the browser tests) and run the whole suite
# GPU users: `make app TORCH=torch` takes the default (CUDA) build of torch from PyPI instead of the pin.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python

.PHONY: install dev browser app test

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PIP) install -q --disable-pip-version-check "$(TORCH)" -e .

dev: $(PY)
	$(PIP) install -q --disable-pip-version-check "$(TORCH)" -e ".[dev]"

# The e2e tests drive Debian's Chromium through Playwright (no `playwright install` download).
browser:
	@command -v chromium >/dev/null || ( \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver )

app: install
	$(PY) app.py

test: dev browser
	$(PY) -m pytest
