#!/usr/bin/env bash
# Offline GPU machine: install the carried wheels (benchmarks/fetch_gpu_wheels.sh), then run the
# GPU check. Nothing is fetched from the network.
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]      # e.g. --skip compile --json out.json
#
# WHEELS=path overrides the wheel folder (default: wheels/ at the repository root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${WHEELS:-$ROOT/wheels}"
PY="${PYTHON:-python}"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
NEED=(diffusers openslide-python openslide-bin hydra-core omegaconf torchmil imagecodecs)
if ! "$PY" -c "import diffusers, openslide, hydra, omegaconf, torchmil, imagecodecs" 2>/dev/null; then
  [ -d "$WHEELS" ] || { echo "gpu_check.sh: no $WHEELS: run benchmarks/fetch_gpu_wheels.sh where there is network" >&2; exit 2; }
  # with dependency resolution, so a missing dependency is named; else every carried wheel as is
  "$PY" -m pip install --no-index --find-links "$WHEELS" "${NEED[@]}" \
    || "$PY" -m pip install --no-index --no-deps "$WHEELS"/*.whl
fi
"$PY" -c "import diffusers, openslide, hydra, omegaconf, torchmil, imagecodecs; print('gpu_check.sh: imports ok')"
exec "$PY" benchmarks/gpu_check.py "$@"
