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
# perf_analyzer (bin/ of the tritonclient wheel) links Debian's libb64-0d: install it once, if missing.
if ! dpkg -s libb64-0d >/dev/null 2>&1; then
    { apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null; } \
        || echo "warning: could not install libb64-0d (apt-get, as root); perf_analyzer needs it" >&2
fi
