# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit test-integration lint bench clean

# libvirt-python builds against libvirt's headers: installed when they are there (CI),
# otherwise the libvirt plugin's tests skip with that reason. (Comments stay out of recipes:
# make would echo them.)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,lint]'
	if pkg-config --exists libvirt 2>/dev/null; then \
	    $(PY) -m pip install --quiet --disable-pip-version-check -e '.[libvirt]'; fi
	touch $(STAMP)

demo: $(STAMP)  ## a real local fleet, live traffic, and a canary upgrade
	@echo "$(VENV)/bin/upgrader demo $(DEMO_ARGS)"; \
	$(VENV)/bin/upgrader demo $(DEMO_ARGS); status=$$?; \
	echo "upgrader is installed in $(VENV)/bin; put it on PATH for the README's tour: . $(VENV)/bin/activate"; \
	exit $$status

test: $(STAMP)  ## unit + integration tests (integration skips with a reason if a service is missing)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff (style, bugs) and mypy (strict on the engine and the plain data)
	$(VENV)/bin/ruff check upgrader plugins tests bench examples
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/engine.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .upgrader build *.egg-info
