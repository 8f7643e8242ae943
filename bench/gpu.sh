#!/usr/bin/env bash
# bench/gpu.sh [OUTDIR]: the GPU checks of fusedsched, on a machine with an NVIDIA GPU, in
# under 8 minutes, results under OUTDIR (default bench/results/):
#   1. tests_gpu/ with compiled (not interpreted) Triton kernels: compiled kernels vs the
#      reference on CUDA, no recompiles between steps, host cost of step();
#   2. CUDA graph capture/replay of all optimizers x built-in schedules (bit-exact vs eager,
#      schedule advancing on each replay, AMP found_inf);
#   3. fusedsched aot for the local architecture (registers / spills / load widths);
#   4. fusedsched bench --device cuda against torch fused/foreach/for-loop, roof = device
#      copy bandwidth.
# Each stage has its own time limit; a failing stage is recorded and the next one runs.
# The exit status is 0 only when every stage passed. PYTHON overrides the interpreter.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-bench/results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
unset TRITON_INTERPRET            # compiled kernels only
export FUSEDSCHED_GPU_OUT="$OUT"
rm -f "$OUT/host_cost.json"
BUDGET=${GPU_SH_BUDGET_S:-470}    # 8 min minus slack
START=$SECONDS
STATUS=0
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

left() { echo $(( BUDGET - (SECONDS - START) )); }

stage() {   # stage NAME LIMIT_S CMD...: run with min(LIMIT, time left), log, record rc
    local name=$1 limit=$2; shift 2
    local t=$(left)
    if [ "$t" -lt 20 ]; then
        echo "$name: SKIPPED (time budget spent)" | tee -a "$SUMMARY"; STATUS=1; return
    fi
    [ "$limit" -gt "$t" ] && limit=$t
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local word=ok; [ $rc -ne 0 ] && { word="FAILED rc=$rc"; STATUS=1; }
    [ $rc -eq 124 ] && word="TIMED OUT after ${limit}s"
    echo "$name: $word ($(( SECONDS - t0 )) s)" | tee -a "$SUMMARY"
    tail -n 3 "$OUT/$name.log"
}

if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > "$OUT/gpu.txt" 2>&1; then
    echo "bench/gpu.sh: no NVIDIA GPU (nvidia-smi failed)" | tee -a "$SUMMARY"; exit 2
fi
"$PYTHON" - > "$OUT/env.txt" 2>&1 <<'PY'
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)
print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())
PY
cat "$OUT/gpu.txt" "$OUT/env.txt"
ARCH=$("$PYTHON" -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'sm_{a}{b}' if (a, b) in ((8, 0), (9, 0)) else 'sm_90')")

stage tests_gpu 170 "$PYTHON" -m pytest -q -p no:cacheprovider tests_gpu \
    --ignore=tests_gpu/test_cuda_graphs.py --junitxml="$OUT/tests_gpu.xml" -rA
stage graphs 120 "$PYTHON" -m pytest -q -p no:cacheprovider tests_gpu/test_cuda_graphs.py \
    --junitxml="$OUT/graphs.xml"
stage aot 60 bash -c "\"\$0\" -m fusedsched aot --arch $ARCH --json > \"$OUT/aot_$ARCH.json\"" "$PYTHON"
stage bench 200 "$PYTHON" -m fusedsched bench --device cuda --out "$OUT"

[ -f "$OUT/host_cost.json" ] && { echo "host cost (us per step()):"; cat "$OUT/host_cost.json"; }
echo "total $(( SECONDS - START )) s; status $STATUS" | tee -a "$SUMMARY"
exit $STATUS
