#!/usr/bin/env bash
# Screenshot a page of the MLflow UI without a display (how docs/img/mlflow_ui_*.png were made):
#   [VIRTUAL_TIME_MS=60000] bash docs/ui_screenshot.sh '#/compare-runs?runs=["ID1","ID2"]&experiments=["1"]' docs/img/out.png [1600,1000]
# Starts `mlflow ui` on the project's store (127.0.0.1, a free port), lets headless Chromium render the
# JavaScript app, then stops the UI. Needs Debian's `chromium` package (run as root: --no-sandbox).
set -euo pipefail
cd "$(dirname "$0")/.."
page=$1 out=$2 size=${3:-1600,1000}
uri=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlruns/mlflow.db}
port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python -m mlflow ui --backend-store-uri "$uri" --host 127.0.0.1 --port "$port" >/tmp/mlflow-ui-$port.log 2>&1 &
ui=$!
trap 'kill $ui' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --no-first-run --hide-scrollbars --user-data-dir="$profile" --window-size="$size" \
  --virtual-time-budget="${VIRTUAL_TIME_MS:-30000}" --screenshot="$out" "http://127.0.0.1:$port/$page" 2>/dev/null
rm -rf "$profile"
echo "wrote $out"
