#!/usr/bin/env bash
# Which torch build `./dev setup` installs on this machine, as "BUILD INDEX_URL" on stdout:
#   cuda https://download.pytorch.org/whl/cu128   where nvidia-smi runs and lists a GPU
#   cpu  https://download.pytorch.org/whl/cpu     otherwise (no driver, no GPU, no nvidia-smi)
# AVATARBOT_TORCH_BUILD=cpu|cuda forces one (a GPU box building a CPU venv, or a container
# built without its GPU). PyPI's own Linux torch is the CUDA build: 18 nvidia packages and
# triton, gigabytes a laptop does not need, so the CPU build comes from PyTorch's CPU index.
# Only shell builtins and nvidia-smi: tests run it with a PATH of fakes.
set -euo pipefail
CUDA_INDEX=https://download.pytorch.org/whl/cu128 # the Dockerfile's and the README's
CPU_INDEX=https://download.pytorch.org/whl/cpu

has_gpu() {
  local listing
  command -v nvidia-smi >/dev/null 2>&1 || return 1
  # -L lists one "GPU n: ..." line per device; it fails without a working driver.
  listing=$(nvidia-smi -L 2>/dev/null) || return 1
  [[ $listing == *"GPU "* ]]
}

build=${AVATARBOT_TORCH_BUILD:-}
if [ -z "$build" ]; then
  if has_gpu; then build=cuda; else build=cpu; fi
fi
case "$build" in
  cuda) echo "cuda $CUDA_INDEX" ;;
  cpu) echo "cpu $CPU_INDEX" ;;
  *)
    echo "torch-build: AVATARBOT_TORCH_BUILD must be cpu or cuda, not '$build'" >&2
    exit 2
    ;;
esac
