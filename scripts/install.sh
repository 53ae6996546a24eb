#!/usr/bin/env bash
# Install StyleGallery with its notebook and test extras into ./.venv (created if missing).
# A torch already in the environment (e.g. your CUDA build) is kept; otherwise a CPU-friendly torch is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then "${PIP[@]}" torch; else "${PIP[@]}" "torch==2.13.0"; fi
fi
"${PIP[@]}" -e ".[dev]"
