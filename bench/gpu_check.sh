#!/usr/bin/env bash
# GPU check of dcm-ref in one call (< 9 min on one H100/H200): the CUDA tests, the speed
# table on CUDA, CIFAR-shaped training epochs (preact-resnet18, FC vs DFC, eager /
# --amp / --compile) and the host syncs per training step. Results: markdown in $OUT
# (default results/gpu_check), one file per part, plus summary.md with the device.
#
#   bench/gpu_check.sh             # on the GPU machine, from the repository root
#   bench/gpu_check.sh --dry-run   # anywhere: check that every part's command still parses
#
# Each part has its own time limit, so one slow part cannot eat the others' time; the limits
# sum to 500 s (< 9 min). A part that hits its limit keeps every row it finished: the python
# parts append each row to their markdown as soon as it is measured (--compile modes last).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
PY=${PYTHON:-python3}

if [ "${1:-}" = "--dry-run" ]; then
  set -e
  $PY -m pytest -q --collect-only -m cuda tests/test_cuda.py | tail -1   # the CUDA tests are collected
  $PY -m bench speed --help > /dev/null && echo "python -m bench speed --device cuda: parses"
  $PY bench/gpu_check.py all --dry-run
  echo "gpu_check.sh --dry-run: ok"
  exit 0
fi

mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
part() {  # part NAME SECONDS CMD...: run CMD with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "| $name | $rc | $(( $(date +%s) - t0 )) |" >> "$OUT/summary.md"
  tail -3 "$OUT/$name.log"
}

{
  echo "# dcm-ref GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  echo
  echo "| part | exit code (124 = time limit) | seconds |"
  echo "|---|---|---|"
} > "$OUT/summary.md"

part cuda_tests 150 $PY -m pytest -q -m cuda tests -p no:cacheprovider
part syncs 110 $PY bench/gpu_check.py syncs --out "$OUT"
part speed 90 $PY -m bench speed --device cuda --budget 1 --out "$OUT/speed.md"
part epochs 150 $PY bench/gpu_check.py epochs --out "$OUT"
cat "$OUT/summary.md"
