#!/usr/bin/env bash
# All five benchmarks, one after the other (never in parallel: they would time each other).
# Tables to the terminal and benchmarks/results/<name>.txt; figures to benchmarks/results/<name>.json.
#
#   LE5_DATA_DIR=/path/with/mnist.npz+imdb.npz bash benchmarks/run_all.sh   # ~30 min on 2 busy cores
#   bash benchmarks/run_all.sh bench_imdb bench_tracking                  # some of them
#   PYTHON=... picks the interpreter; REPEATS=5 more rounds for each (default: each script's own)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
mkdir -p benchmarks/results
extra=()
if [[ -n "${REPEATS:-}" ]]; then extra=(--repeats "$REPEATS"); fi
benches=("$@")
if [[ ${#benches[@]} -eq 0 ]]; then benches=(bench_mnist bench_imdb bench_tracking bench_startup bench_multirun); fi
for bench in "${benches[@]}"; do
  {
    echo "== $bench ($(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg))"
    "$PY" -m "benchmarks.$bench" "${extra[@]}"
    echo
  } 2>&1 | tee "benchmarks/results/$bench.txt"
done
