# talon-opa: `make test` builds what it needs (venv, real components) and runs every check.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)

.PHONY: help venv tools run lint typecheck pytest test constraints clean

help:
	@echo "make test    build the components (first time only), then lint, type-check and run the tests"
	@echo "make run     start the engine on 127.0.0.1:2803 with examples/ rules and its own OPA"
	@echo "make tools   build the real components into \$$TALON_OPA_CACHE (default ~/.cache/talon-opa)"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

tools:
	tools/build

# the engine needs only OPA from tools/; with no kubeconfig it runs every step in dry-run and says so
run: venv
	tools/build opa
	$(BIN)/talon-opa server -c examples/config.yaml -r examples/rules.yaml

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

pytest: venv tools
	$(BIN)/pytest -q

test: lint typecheck pytest

constraints: venv
	{ echo '# Every transitive dependency, pinned (regenerate: make constraints)'; $(BIN)/pip freeze --exclude-editable; } > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
