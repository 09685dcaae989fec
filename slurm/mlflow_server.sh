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
#           (<project>/mlruns/artifacts), MLFLOW_AUTH (1: MLflow's basic-auth app on loopback too; it is always
#           on for any other host). The owner's account: MLFLOW_TRACKING_USERNAME/PASSWORD, else the file
#           `python -m src.tracking.auth path` names (made with a generated password, mode 0600).
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
loopback=0; { [ "$HOST" = 127.0.0.1 ] || [ "$HOST" = localhost ]; } && loopback=1
if [ "$loopback" = 0 ] || [ "${MLFLOW_AUTH:-0}" = 1 ]; then
  # MLflow's basic-auth app: its users and permissions in their own SQLite db beside the store; the owner is
  # its admin; everyone else gets no permission until the owner grants it (README, cluster section).
  AUTH_DIR=${MLFLOW_AUTH_DIR:-$ROOT/mlruns/auth}
  mkdir -p -m 700 "$AUTH_DIR"
  export MLFLOW_AUTH_CONFIG_PATH="$AUTH_DIR/basic_auth.ini"
  owner=$(cd "$ROOT" && python -m src.tracking.auth ini "$MLFLOW_AUTH_CONFIG_PATH" "sqlite:///$AUTH_DIR/users.db") || exit 2
  extra+=(--app-name basic-auth)
  # the app's CSRF protection needs a static key: one per server, kept beside its user db (mode 0600)
  if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
    [ -s "$AUTH_DIR/flask-secret" ] || (umask 077; python -c 'import secrets; print(secrets.token_hex(32))' >"$AUTH_DIR/flask-secret")
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$AUTH_DIR/flask-secret"); export MLFLOW_FLASK_SERVER_SECRET_KEY
  fi
  if [ -z "${MLFLOW_TRACKING_PASSWORD:-}" ]; then
    echo "Authentication on: owner $owner, password in $(cd "$ROOT" && python -m src.tracking.auth path) (mode 0600; jobs read it)."
  else
    echo "Authentication on: owner $owner (from MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD)."
  fi
fi
if [ "$loopback" = 0 ]; then
  # MLflow refuses Host headers other than localhost and private IPs (DNS rebinding protection):
  # allow the names compute nodes use for this node.
  extra+=(--allowed-hosts "$HOST:$PORT,$(hostname -s):$PORT,$(hostname -f):$PORT,localhost:$PORT,127.0.0.1:$PORT")
  echo "NOTE: listening on $HOST with authentication: other users need an account and a permission you grant;" \
    "plain HTTP (on an untrusted network put it behind a TLS proxy)." >&2
  echo "Jobs:  export MLFLOW_TRACKING_URI=http://$HOST:$PORT"
else
  echo "Listening on 127.0.0.1 only: jobs on other nodes cannot reach it (set MLFLOW_HOST to the cluster-internal address)."
fi
echo "UI from your own machine:  ssh -N -L 5000:127.0.0.1:$PORT $(id -un)@$(hostname -f)   then open http://localhost:5000"
echo "(if the login node is one of several behind an alias, use this one's name: $(hostname -f))"
exec mlflow server --backend-store-uri "$STORE" --artifacts-destination "$ARTIFACTS" \
  --host "$HOST" --port "$PORT" --workers "${MLFLOW_WORKERS:-4}" "${extra[@]}"
