#!/usr/bin/env bash
# Run the GPU tiers on a CUDA machine: the GPU tests, the notebooks with their GPU cells running,
# and (optionally) benchmarks. Used on the lent H100, whose image has torch and triton but not
# nbval/ipykernel: those travel as wheels in .whl/ (see README, "Running on a GPU").
#
#   tools/gpu_check.sh tests              # pytest -m gpu over tests/
#   tools/gpu_check.sh notebooks [PATHS]  # nbval over solutions/ (GPU cells run)
#   tools/gpu_check.sh all
# Logs go to $OUT (default ./out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
python3 -c "import torch, triton, kernels; print(kernels.device.describe(), 'torch', torch.__version__, 'triton', triton.__version__)"

mode=${1:-all}; shift || true
status=0
if [ "$mode" = tests ] || [ "$mode" = all ]; then
  python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests "$@" 2>&1 | tee "$OUT/gpu_tests.log"
  status=$(( status | ${PIPESTATUS[0]} ))
fi
if [ "$mode" = notebooks ] || [ "$mode" = all ]; then
  paths=${*:-solutions}
  KERNELS_STRICT_CHECKS=1 python3 -m pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=600 --nbval-kernel-startup-timeout=300 \
    -p no:cacheprovider $paths 2>&1 | tee "$OUT/gpu_notebooks.log"
  status=$(( status | ${PIPESTATUS[0]} ))
fi
exit $status
