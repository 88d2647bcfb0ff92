#!/usr/bin/env bash
# The first GPU session's one command (see ../shared/device/README.md), from the repository root:
#   bash benchmarks/gpu.sh          # on the GPU machine, with .whl/ carried along
#   GTNUMBA_GPU_DRYRUN=1 NUMBA_ENABLE_CUDASIM=1 bash benchmarks/gpu.sh    # dry run here, tiny sizes
# Installs the carried wheels (numpy 2.4.6, dask) into /tmp/site when .whl/ exists, runs the
# GPU-marked tests (correctness vs float64 references on fresh random inputs) and then
# benchmarks/gpu.py, which appends its table to benchmarks/RESULTS.md.  Output goes to $OUT/log.
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gtnumba-gpu}
mkdir -p "$OUT"
{
  if [ -d .whl ] && [ -z "$GTNUMBA_GPU_DRYRUN" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
  else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  fi
  # kernels compiled by the tests are cached here and reused by the benchmarks (not by the
  # fresh-process section, which measures an empty cache and then a warm one in its own directory)
  export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/gtnumba-kernel-cache}
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  echo "== pytest -m gpu"
  timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ ; tests=$?
  echo "== benchmarks/gpu.py"
  timeout 330 python3 -m benchmarks.gpu; bench=$?
  timeout 60 env -u NUMBA_ENABLE_CUDASIM python3 -m benchmarks.gpu --host-cost-fake
  [ -z "$GTNUMBA_GPU_DRYRUN" ] && cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
  echo "pytest -m gpu exit $tests, benchmarks exit $bench"
  [ "$tests" = 0 ] && [ "$bench" = 0 ]
} 2>&1 | tee "$OUT/log"
