#!/usr/bin/env bash
# GPU check, < 5 minutes on one GPU machine (no Slurm): the GPU, then the MNIST dense net (5 epochs)
# and the IMDB net (4 epochs) with hardware=gpu, mixed precision and XLA off and on, per-epoch times
# and accuracies. Real data from $LE5_DATA_DIR when it has mnist.npz and imdb.npz, synthetic otherwise.
#
#   bash benchmarks/gpu_check.sh                    # PYTHON=/path/to/venv/bin/python to pick the interpreter
#   bash benchmarks/gpu_check.sh --dry-run          # the runs it would make
#   bash benchmarks/gpu_check.sh --backend jax      # no TensorFlow: Keras's JAX fit vs trainer.loop=compiled
#   bash benchmarks/gpu_check.sh --hardware cpu --scale 0.05 --mnist-epochs 2 --imdb-epochs 1   # its logic, on a CPU
#
# Options: python -m benchmarks.gpu_check --help. Figures also go to benchmarks/results/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m benchmarks.gpu_check "$@"
