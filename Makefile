# The README's two commands: `make demo` and `make test`. Both bootstrap .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test native lint typecheck check clean

# Editable and uncompiled: `native` compiles in place (a wheel compiles at build time, setup.py).
$(STAMP): pyproject.toml setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "cachecast needs Python >= 3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 'setuptools>=77'
	CACHECAST_COMPILE=0 $(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Compile the hot modules with mypyc (a no-op when up to date; pure Python if it cannot).
native: $(STAMP)
	@$(BIN)/python -m pipeline.build_native

demo: native
	$(BIN)/cachecast demo

test: native
	$(BIN)/python -m pytest -ra -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	-$(BIN)/python -m pipeline.build_native --clean
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
