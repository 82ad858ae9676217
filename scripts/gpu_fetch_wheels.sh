#!/usr/bin/env bash
# Download the wheels that scripts/gpu_benchmarks.sh installs on a machine that has only Python and a CUDA torch.
#
#   scripts/gpu_fetch_wheels.sh                          # Python 3.12, x86-64 Linux, into gpu_wheels/
#   scripts/gpu_fetch_wheels.sh --python-version 3.11 --dest /tmp/wheels311   # to test here in a 3.11 venv
#
# The packages are those the core, the trainer and the binary/image scripts import besides torch (tyro and its
# dependencies, tqdm, numpy, pillow, tensorboard for the trainer's SummaryWriter) and pytest for `pytest -m gpu`;
# not gymnasium, stable-baselines3 or sb3-contrib (the RL side is not run on the GPU machine) nor matplotlib (the
# distortion-rate plot is skipped without it). Binary wheels only, with their dependencies; about 38 MB.
set -euo pipefail
python_version=3.12
dest=gpu_wheels
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) python_version="$2"; shift 2 ;;
    --dest) dest="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "gpu_fetch_wheels.sh: unknown argument $1 (use --python-version X.Y, --dest DIR)" >&2; exit 2 ;;
  esac
done
PACKAGES=(tyro tqdm numpy pillow tensorboard pytest)
mkdir -p "$dest"
python -m pip download --only-binary=:all: --python-version "$python_version" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$dest" "${PACKAGES[@]}"
echo "wheels for Python $python_version in $dest ($(du -sh "$dest" | cut -f1)):"
ls "$dest"
