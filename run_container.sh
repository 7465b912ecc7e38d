#!/usr/bin/env bash
# Start the deployment image (Dockerfile) on an Ascend machine, serving the API on PORT, or with DEV=1 the
# development image (Dockerfile_dev) to run `make npu-check` in. The devices and driver paths passed in are
# the ones Ascend's documents list for the kind of machine (CHIP):
#   310b   Atlas 200I DK A2 / Orange Pi AIpro and other Ascend 310B boards, where the app runs on the chip:
#          the device files and mounts Ascend Docker Runtime adds for Atlas 200I A2 (its base.list_A200IA2);
#   card   servers with Ascend 910B / 310P cards (Atlas 800 / 300I / 300T): /dev/davinciN, davinci_manager,
#          devmm_svm and hisi_hdc, with /usr/local/Ascend/driver, /usr/local/dcmi and /usr/local/bin/npu-smi
#          (as the MindIE and vLLM-Ascend container guides run them);
#   auto   (default) 310b when /dev/svm0 exists, card when /dev/devmm_svm does, else 310b.
# A device or mount the list names must exist, except OPTIONAL_MOUNTS (libraries some driver versions lack).
# Other settings, all optional:
#   DEVICES, MOUNTS, OPTIONAL_MOUNTS   space-separated paths replacing the chip's lists
#   NPU_ID                       which /dev/davinciN a card machine passes (0)
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
die() { echo "run_container.sh: error: $*" >&2; exit 2; }

CHIP="${CHIP:-auto}"
if [ "$CHIP" = "auto" ]; then
  if [ -e /dev/svm0 ]; then CHIP=310b; elif [ -e /dev/devmm_svm ]; then CHIP=card; else CHIP=310b; fi
fi
NPU_ID="${NPU_ID:-0}"
case "$NPU_ID" in ''|*[!0-9]*) die "NPU_ID=$NPU_ID is not a device number" ;; esac
case "$CHIP" in
  310b)
    chip_devices="/dev/davinci0 /dev/davinci_manager /dev/svm0 /dev/ts_aisle /dev/upgrade /dev/sys /dev/vdec /dev/vpc /dev/pngd /dev/venc /dev/dvpp_cmdlist /dev/log_drv"
    chip_mounts="/etc/sys_version.conf /etc/hdcBasic.cfg /usr/local/sbin/npu-smi /usr/local/Ascend/driver/lib64 /usr/lib64/aicpu_kernels /var/slogd /var/dmp_daemon"
    chip_optional="/usr/lib64/libaicpu_processer.so /usr/lib64/libaicpu_prof.so /usr/lib64/libaicpu_sharder.so /usr/lib64/libadump.so /usr/lib64/libtsd_eventclient.so /usr/lib64/libaicpu_scheduler.so /usr/lib64/libdcmi.so /usr/lib64/libmpi_dvpp_adapter.so /usr/lib64/libstackcore.so"
    ;;
  card)
    chip_devices="/dev/davinci$NPU_ID /dev/davinci_manager /dev/devmm_svm /dev/hisi_hdc"
    chip_mounts="/usr/local/Ascend/driver /usr/local/dcmi /usr/local/bin/npu-smi"
    chip_optional="/etc/ascend_install.info"
    ;;
  *) die "CHIP=$CHIP: expected 310b, card or auto" ;;
esac
DEVICES="${DEVICES:-$chip_devices}"
MOUNTS="${MOUNTS:-$chip_mounts}"
OPTIONAL_MOUNTS="${OPTIONAL_MOUNTS-$chip_optional}"

case "$PORT" in ''|*[!0-9]*) die "PORT=$PORT is not a port number" ;; esac
args=(docker run -d --name "$NAME" --restart unless-stopped -p "$PORT:8000")
for dev in $DEVICES; do
  [ "${DRY_RUN:-0}" = "1" ] || [ -e "$dev" ] || die "device $dev does not exist here: set DEVICES for your chip (or CHIP: 310b, card)"
  args+=(--device "$dev")
done
for path in $MOUNTS; do
  [ "${DRY_RUN:-0}" = "1" ] || [ -e "$path" ] || die "driver path $path does not exist here: set MOUNTS for your chip (or CHIP: 310b, card)"
  args+=(-v "$path:$path:ro")
done
for path in $OPTIONAL_MOUNTS; do
  if [ "${DRY_RUN:-0}" = "1" ] || [ -e "$path" ]; then args+=(-v "$path:$path:ro"); fi
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
