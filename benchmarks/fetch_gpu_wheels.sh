#!/usr/bin/env bash
# Download the wheels an offline GPU machine needs to run benchmarks/gpu_check.py (issue 15).
#
# The H200 machine has Python 3.12 with torch, timm, h5py, pandas, scikit-learn, tifffile,
# safetensors and huggingface_hub, but no diffusers, openslide, hydra, omegaconf, torchmil or
# imagecodecs. Run this on a machine WITH network, carry the repository with wheels/ in it, then
# run `bash benchmarks/gpu_check.sh` there.
#
#   bash benchmarks/fetch_gpu_wheels.sh [wheels/]        # ~60 MB; never commit wheels/
#
# hydra-core and omegaconf are pinned to the pair the tests run with (omegaconf 2.4 is a new line).
# Every package is fetched without its dependencies (--no-deps), so that nothing large the target
# already has (torch, numpy, scipy ...) is downloaded; the list below names the small
# dependencies the target may lack. gpu_check.sh installs them with dependency resolution, so a
# dependency missing from both the target and this folder is named there.
set -euo pipefail
DEST="${1:-wheels}"
PY="${PYTHON:-python}"
mkdir -p "$DEST"
PKGS=(
  diffusers openslide-python openslide-bin "hydra-core==1.3.*" "omegaconf==2.3.*" torchmil imagecodecs
  # their dependencies the GPU machine may lack
  tensordict torchmetrics lightning-utilities einops cloudpickle pyvers regex importlib_metadata zipp
  lazy-importer PyYAML packaging filelock requests certifi charset_normalizer idna urllib3 tqdm psutil
  pillow typing_extensions hydra-joblib-launcher joblib
)
"$PY" -m pip download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_34_x86_64 -d "$DEST" "${PKGS[@]}"
# omegaconf pins antlr4-python3-runtime 4.9.*, published as a source archive only: build its
# (pure-Python, any-platform) wheel here
"$PY" -m pip wheel --no-deps -w "$DEST" "antlr4-python3-runtime==4.9.3"
ls -1 "$DEST" | wc -l
du -sh "$DEST"
