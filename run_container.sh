#!/usr/bin/env bash
# Start the deployment image (Dockerfile) on an Ascend board, serving the API on PORT.
# The defaults are the device files and driver mounts that Ascend Docker Runtime documents for
# Atlas 200I DK A2 / 310B1 boards (e.g. Orange Pi AIpro). For another chip set DEVICES and MOUNTS
# (space-separated paths) to what its documentation lists. Other settings, all optional:
#   IMAGE, NAME, PORT            image, container name, host port (qwen_ascend_llm, qwen_ascend_llm, 8000)
#   MODEL_DIR, OM_PATH           host paths of a model directory / .om to mount instead of the baked-in ones
#   MAX_PREFILL_LENGTH, KV_CACHE_LENGTH   must match how that .om was compiled
#   DEV=1                        run the development image (Dockerfile_dev) with this repository mounted
#   DRY_RUN=1                    print the docker command instead of running it
set -euo pipefail

DEV="${DEV:-0}"
if [ "$DEV" = "1" ]; then
  IMAGE="${IMAGE:-qwen_ascend_llm_dev}"
  NAME="${NAME:-qwen_ascend_llm_dev}"
else
  IMAGE="${IMAGE:-qwen_ascend_llm}"
  NAME="${NAME:-qwen_ascend_llm}"
fi
PORT="${PORT:-8000}"
DEVICES="${DEVICES:-/dev/davinci0 /dev/davinci_manager /dev/svm0 /dev/ts_aisle /dev/upgrade /dev/sys /dev/vdec /dev/vpc /dev/pngd /dev/venc /dev/dvpp_cmdlist /dev/log_drv}"
MOUNTS="${MOUNTS:-/etc/sys_version.conf /etc/hdcBasic.cfg /usr/local/sbin/npu-smi /usr/local/Ascend/driver/lib64 /usr/lib64/aicpu_kernels /var/slogd /var/dmp_daemon}"

die() { echo "run_container.sh: error: $*" >&2; exit 2; }

case "$PORT" in ''|*[!0-9]*) die "PORT=$PORT is not a port number" ;; esac
args=(docker run -d --name "$NAME" --restart unless-stopped -p "$PORT:8000")
for dev in $DEVICES; do
  [ "${DRY_RUN:-0}" = "1" ] || [ -e "$dev" ] || die "device $dev does not exist here: set DEVICES for your chip"
  args+=(--device "$dev")
done
for path in $MOUNTS; do
  [ "${DRY_RUN:-0}" = "1" ] || [ -e "$path" ] || die "driver path $path does not exist here: set MOUNTS for your chip"
  args+=(-v "$path:$path:ro")
done
if [ -n "${MODEL_DIR:-}" ]; then
  args+=(-v "$(realpath -m "$MODEL_DIR"):/mnt/model:ro" -e MODEL_DIR=/mnt/model)
fi
if [ -n "${OM_PATH:-}" ]; then
  args+=(-v "$(realpath -m "$OM_PATH"):/mnt/om/model.om:ro" -e OM_PATH=/mnt/om/model.om)
fi
for var in MAX_PREFILL_LENGTH KV_CACHE_LENGTH; do
  if [ -n "${!var:-}" ]; then args+=(-e "$var=${!var}"); fi
done
if [ "$DEV" = "1" ]; then
  args+=(-v "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd):/workspace/qwen-ascend-llm")
fi
args+=("$IMAGE")

if [ "${DRY_RUN:-0}" = "1" ]; then
  printf '%q ' "${args[@]}"
  echo
else
  "${args[@]}"
fi
