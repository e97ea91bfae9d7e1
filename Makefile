# Two commands do all set-up: `make run` and `make test`. Only python3 and make are needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check lint typecheck pytest demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

BRIDGE := $(BIN)/bridge $(if $(CONFIG),-c $(CONFIG))

# Migrating first is safe to repeat: an up-to-date store is left as it is.
run: $(STAMP)
	$(BRIDGE) db upgrade
	exec $(BRIDGE) run

# The whole loop once, in var/demo: secure and convenience notifications, a reply by email.
demo: $(STAMP)
	rm -rf var/demo
	$(BIN)/bridge demo --dir var/demo

test: check

check: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check bridge tests bench
	$(BIN)/ruff format --check bridge tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache
