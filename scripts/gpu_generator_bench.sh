#!/usr/bin/env bash
# The generator micro-benchmark of the large model on one NVIDIA GPU, in one command:
#
#   bash scripts/gpu_generator_bench.sh [more `python -m bench generator` options]
#
# Installs: this project into .venv-gpu (or $MRT_GPU_VENV) with JAX's CUDA 12 wheels
#   (jax[cuda12] at the JAX version of requirements.lock). Needs an NVIDIA driver and Python
#   3.11+; the CUDA libraries come as wheels. No model download: the weights are random
#   (--random-weights), so only the speed is real.
# Runs: python -m bench generator --model large --random-weights --dtype bfloat16
#   --batch-sizes 1,8,32,64,128 (sizes from $MRT_BENCH_BATCH_SIZES if set).
# Results: bench/results/generator_large-random-weights_bfloat16.json and the section
#   "Generator, model large-random-weights" of docs/benchmarks.md; commit both.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${MRT_GPU_VENV:-.venv-gpu}"
PYTHON="${PYTHON:-python3}"
BATCH_SIZES="${MRT_BENCH_BATCH_SIZES:-1,8,32,64,128}"
JAX_VERSION="$(sed -n 's/^jax==//p' requirements.lock)"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet -c requirements.lock -e .
"$VENV/bin/python" -m pip install --quiet "jax[cuda12]==${JAX_VERSION}"
"$VENV/bin/python" -c 'import jax; print("JAX backend:", jax.default_backend(), jax.devices())'
exec "$VENV/bin/python" -m bench generator --model large --random-weights --dtype bfloat16 \
  --batch-sizes "$BATCH_SIZES" "$@"
