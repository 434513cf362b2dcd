#!/usr/bin/env bash
# The GPU check, as one prepared run on a lent device machine (see README): CuPy tests against
# NumPy, the plan on CuPy against the interpreter, and the bench against torch/cuDNN.
# Wheels for what the device image lacks travel in .whl/ (array-api-compat, jsonschema, ...).
set -u
out=${OUT:-/tmp/gpu_out}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tail -20 \
    | tee "$out/gpu_tests.txt"
timeout 60 python3 tools/gpu_check.py 2>&1 | tail -20 | tee "$out/gpu_check.txt"
timeout 300 python3 tools/bench.py --backend cupy --config medium --config large --rounds 5 --alone torch \
    --json "$out/bench_gpu.json" 2>&1 | tail -30 | tee "$out/bench_gpu.txt"
