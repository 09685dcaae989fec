#!/bin/bash
# The MLflow tracking server for many concurrent jobs, on the login node (keep it in tmux/screen):
#   bash slurm/mlflow_server.sh                   # 127.0.0.1:5000: this node only, UI through an SSH tunnel
#   MLFLOW_HOST=10.1.2.3 bash slurm/mlflow_server.sh  # also reachable from compute nodes on that interface
# Runs are kept in the project's SQLite store and artifact folder (mlruns/), so the server sees the runs
# made without it. Jobs use it with  export MLFLOW_TRACKING_URI=http://<host>:<port>  (or
# tracking.tracking_uri=...); artifacts then go through the server (--artifacts-destination).
#
# Settings: MLFLOW_HOST (default 127.0.0.1), MLFLOW_PORT (5000), MLFLOW_WORKERS (4),
#           MLFLOW_BACKEND_STORE_URI (sqlite:///<project>/mlruns/mlflow.db), MLFLOW_ARTIFACTS_DESTINATION
#           (<project>/mlruns/artifacts)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOST=${MLFLOW_HOST:-127.0.0.1}
PORT=${MLFLOW_PORT:-5000}
STORE=${MLFLOW_BACKEND_STORE_URI:-sqlite:///$ROOT/mlruns/mlflow.db}
ARTIFACTS=${MLFLOW_ARTIFACTS_DESTINATION:-$ROOT/mlruns/artifacts}
# shellcheck disable=SC1091
[ -f "$ROOT/.venv/bin/activate" ] && source "$ROOT/.venv/bin/activate"
mkdir -p "$ROOT/mlruns" "$ARTIFACTS"

extra=()
if [ "$HOST" != 127.0.0.1 ] && [ "$HOST" != localhost ]; then
  # MLflow refuses Host headers other than localhost and private IPs (DNS rebinding protection):
  # allow the names compute nodes use for this node.
  extra=(--allowed-hosts "$HOST:$PORT,$(hostname -s):$PORT,$(hostname -f):$PORT,localhost:$PORT,127.0.0.1:$PORT")
  echo "WARNING: listening on $HOST: anyone who can reach it can read and change your runs." >&2
  echo "Jobs:  export MLFLOW_TRACKING_URI=http://$HOST:$PORT"
else
  echo "Listening on 127.0.0.1 only: jobs on other nodes cannot reach it (set MLFLOW_HOST to the cluster-internal address)."
fi
echo "UI from your own machine:  ssh -N -L 5000:127.0.0.1:$PORT $(id -un)@$(hostname -f)   then open http://localhost:5000"
echo "(if the login node is one of several behind an alias, use this one's name: $(hostname -f))"
exec mlflow server --backend-store-uri "$STORE" --artifacts-destination "$ARTIFACTS" \
  --host "$HOST" --port "$PORT" --workers "${MLFLOW_WORKERS:-4}" "${extra[@]}"
