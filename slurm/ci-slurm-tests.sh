#!/bin/bash
# CI: start the local one-node Slurm cluster, run the tests marked `slurm` against it, stop it.
# Needs root (it installs Debian's Slurm packages on first use) and the project's venv in <repo>/.venv,
# which the jobs use too. Extra arguments go to pytest:  bash slurm/ci-slurm-tests.sh -k sweep
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || { echo "ci-slurm-tests.sh: no venv at $ROOT/.venv (the jobs need it)" >&2; exit 2; }

bash slurm/local-cluster/start.sh || { echo "ci-slurm-tests.sh: the local Slurm cluster did not start" >&2; exit 1; }
trap 'bash slurm/local-cluster/stop.sh' EXIT
# -rs: name skips; a skip here would mean the cluster was not usable, so fail on it.
report=$(mktemp)
"$PYTHON" -m pytest -m slurm -v -rs --durations=0 -p no:cacheprovider "$@" tests/test_slurm.py | tee "$report"
status=${PIPESTATUS[0]}
if [ "$status" = 0 ] && grep -q "SKIPPED" "$report"; then
  echo "ci-slurm-tests.sh: Slurm tests were skipped although the cluster was started" >&2
  status=1
fi
exit "$status"
