#!/usr/bin/env bash
# GPU check on one GPU machine (no Slurm), < 5 minutes per backend: the GPU as the backend sees it, then
# `python -m src.train` with hardware=gpu on the MNIST dense net (5 epochs, some GPU options) and the IMDB net
# (4 epochs), each against the plain Keras script with model.fit on the same backend, and a table: per
# backend/loop, epoch 1, steady epoch, test accuracy, plain Keras's steady epoch and the ratio (goal <= 1.1).
#
#   bash benchmarks/gpu_check.sh --backend jax                # tensorflow | jax | torch, or several: jax,torch
#   bash benchmarks/gpu_check.sh --backend jax                # on jax: trainer.loop=fit and =compiled (--loop picks)
#   bash benchmarks/gpu_check.sh --backend jax --bench-compiled   # also benchmarks/bench_compiled.py (fit vs compiled)
#   bash benchmarks/gpu_check.sh --backend jax --fused        # also a 64-point fused sweep vs the basic launcher (fit)
#   bash benchmarks/gpu_check.sh --backend jax --dry-run      # the runs it would make
#   bash benchmarks/gpu_check.sh --hardware cpu --scale 0.05 --backend tensorflow,jax   # its logic, on a CPU
#
# Steps, each skipped when it does not apply:
#   1. wheels: a machine without Keras/Hydra/MLflow (the H100 machine) installs the wheels in $WHEELS (default .whl/,
#      made by `bash /work/shared/device/fetch-wheels.sh .whl`) into $SITE (default /tmp/site), offline, and puts
#      them on PYTHONPATH;
#   2. `python -m src.doctor backend=B hardware=H` per backend, when src/doctor.py exists (a failure is printed,
#      the check goes on);
#   3. python -m benchmarks.gpu_check "$@" (options: --help). Data: $LE5_DATA_DIR, --data-dir, else data/.
# PYTHON picks the interpreter (default: python3). With $OUT set (the device machine's folder that comes back),
# the table's JSON goes to $OUT/gpu_check.json and the whole output to $OUT/gpu_check.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
SITE="${SITE:-/tmp/site}"

install_wheels() {
  if "$PY" -c "import keras, hydra, mlflow" 2>/dev/null; then
    return 0  # already there (a project venv)
  fi
  if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "Keras, Hydra or MLflow is missing and $WHEELS/ has no wheels: run bash /work/shared/device/fetch-wheels.sh $WHEELS" >&2
    return 1
  fi
  echo "== installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
}

doctor() {  # once per backend asked for, with the same hardware= as the runs
  [[ -f src/doctor.py ]] || return 0
  local backends="${KERAS_BACKEND:-tensorflow}" hw=gpu
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --backend|--backends) backends="$2"; shift ;;
      --backend=*|--backends=*) backends="${1#*=}" ;;
      --hardware) hw="$2"; shift ;;
      --hardware=*) hw="${1#*=}" ;;
    esac
    shift
  done
  local b
  for b in ${backends//,/ }; do
    echo "== python -m src.doctor backend=$b hardware=$hw"
    "$PY" -m src.doctor "backend=$b" "hardware=$hw" || echo "(src.doctor exited $?; the check goes on)"
  done
}

check() {
  echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  install_wheels
  doctor "$@"
  echo "== python -m benchmarks.gpu_check $*"
  "$PY" -m benchmarks.gpu_check "$@"
}

if [[ -n "${OUT:-}" && -d "${OUT}" ]]; then
  extra=()
  [[ " $* " == *" --out "* ]] || extra=(--out "$OUT/gpu_check.json")
  check "$@" "${extra[@]}" 2>&1 | tee "$OUT/gpu_check.txt"
  exit "${PIPESTATUS[0]}"
fi
check "$@"
