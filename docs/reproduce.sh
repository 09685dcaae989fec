#!/usr/bin/env bash
# Re-run every preset on the real data, as docs/results.md reports them (one after the other; CPU is enough).
#   LE5_DATA_DIR=/path/to/data bash docs/reproduce.sh [preset ...]
# Runs go to the default store (mlruns/mlflow.db) unless MLFLOW_TRACKING_URI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
SINGLE=(mnist_baseline imdb_baseline imdb_early_stopping imdb_dropout imdb_best mnist_cnn)
SWEEPS=(mnist_epochs mnist_units mnist_optimizer mnist_learning_rate mnist_activation)
for preset in "${@:-${SINGLE[@]} ${SWEEPS[@]}}"; do
  if [[ " ${SWEEPS[*]} " == *" $preset "* ]]; then
    python -m src.train -m +experiment="$preset"
  else
    python -m src.train +experiment="$preset"
  fi
done
