#!/usr/bin/env bash
# Install (into $SIDREC_VENV, default .venv), lint and format-check with ruff, and run the test
# suite on slices of the real data.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SIDREC_VENV:-.venv}"
bash scripts/install.sh "$VENV"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
export SIDREC_DATA_DIR="${SIDREC_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "$VENV/bin/python" -m pytest "$@"
