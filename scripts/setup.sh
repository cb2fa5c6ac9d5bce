#!/usr/bin/env bash
# One-stop set-up on a fresh machine: a virtual environment in .venv with k2trt and its test dependencies.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# -c constraints.txt keeps torch on the pinned CPU build (see constraints.txt).
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
