#!/usr/bin/env bash
# The one prepared GPU run for the plugin kernels (issue 5): parity of every kernel on K2's real dimensions,
# compiled (`k2trt kernels check --preset k2`, then `--preset small`), and the benchmarks (`k2trt kernels bench`).
# Self-contained for a machine without network: it uses the machine's own CUDA torch (and the Triton that ships
# with it) and puts this repository on PYTHONPATH; nothing is installed. Results go to $OUT (default
# work_dirs/gpu_kernels): env.txt, check_k2.txt, check_small.txt, kernels_bench.{md,json}, bench.txt, status.txt.
#   OUT=/tmp/out bash scripts/gpu_kernels_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-work_dirs/gpu_kernels}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
unset TRITON_INTERPRET                      # compiled kernels, not the interpreter
export TRITON_DEFAULT_FP_FUSION=1           # Triton 3.9 warns unless the FMA-fusion default is explicit
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv 2>&1
    "$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "gpu", torch.cuda.get_device_name())'
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device visible to $PY" | tee "$OUT/status.txt"
    exit 1
fi

# typer is the CLI's only extra dependency; without it the same library functions run directly.
if "$PY" -c 'import typer' 2>/dev/null; then
    check() { "$PY" -m k2trt.cli kernels check --preset "$1" --device cuda; }
    bench() { "$PY" -m k2trt.cli kernels bench --out "$OUT"; }
else
    check() {
        "$PY" - "$1" <<'PY'
import sys
from plugins.check import format_table, run_checks
rows = run_checks(preset=sys.argv[1], device="cuda")
print(format_table(rows))
sys.exit(0 if all(r.ok for r in rows) else 1)
PY
    }
    bench() {
        "$PY" - "$OUT" <<'PY'
import sys
from pathlib import Path
from plugins.bench import format_report, run_bench, write_report
rep = run_bench()
print(format_report(rep))
write_report(rep, Path(sys.argv[1]))
PY
    }
fi

status=0
timeout 180 bash -c "$(declare -f check); PY=$PY; check k2" 2>&1 | tee "$OUT/check_k2.txt"; rc_k2=${PIPESTATUS[0]}
timeout 60 bash -c "$(declare -f check); PY=$PY; check small" 2>&1 | tee "$OUT/check_small.txt"; rc_small=${PIPESTATUS[0]}
timeout 300 bash -c "$(declare -f bench); PY=$PY; OUT=$OUT; bench" 2>&1 | tee "$OUT/bench.txt"; rc_bench=${PIPESTATUS[0]}
[ "$rc_k2" -eq 0 ] && [ "$rc_small" -eq 0 ] && [ "$rc_bench" -eq 0 ] || status=1
echo "check_k2=$rc_k2 check_small=$rc_small bench=$rc_bench" | tee "$OUT/status.txt"
exit $status
