#!/usr/bin/env bash
# The one prepared GPU command of issue 14 (about 5 minutes on an H200 + 16 cores; budget 6).
#
#   OUT=/path benchmarks/gpu.sh                       # on the GPU machine (JAX, torch+torchvision, no TF)
#   GPU_SH_DRY=1 N=64 OUT=/tmp/dry benchmarks/gpu.sh  # dry run on any CPU machine: same Python, tiny N,
#                                                     # --decoder cpu, GPU decoder's code on a CPU stand-in
#
# Needs: wheels in $WHEELS (keras, namex, optree, simplejpeg: the GPU machine has no network and no
# TensorFlow), real photos in $DATA (class folders: a copy of flowers5, 18 MB). Writes $OUT/gpu.json
# (one JSON line per step) and $OUT/gpu.log. Steps:
#   (a) GPU decoder vs CPU decoder: feature cosine on real photos, same skips on bad files, decode-only rates
#   (b) precision: float32 vs bfloat16/float16 feature cosine, linear-probe accuracy on flowers5
#   (c) end to end into a store, --decoder cpu and gpu (float32) and gpu + bfloat16, batch $BS:
#       resnet50, mobilenetv2, efficientnetb0 on $N 500x375 JPEGs; mobilenetv2 on $N_BIG 2000x1500;
#       each with the stage breakdown (decode wait, GPU decode, model, store)
#   (d) GPU utilisation (nvidia-smi, every 200 ms) during each step of (c)
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_SH_DRY:-0}
WHEELS=${WHEELS:-.whl}
DATA=${DATA:-.gpudata/flowers5}
OUT=${OUT:-/tmp}
N=${N:-8000}
N_BIG=${N_BIG:-1500}
BS=${BS:-256}
WORK=${WORK:-/tmp/featx_gpu}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/gpu.log") 2>&1
started=$(date +%s)
step() { echo "=== $(( $(date +%s) - started )) s: $*"; }

if [ "$DRY" = 1 ]; then
  [ -d "$DATA" ] || DATA=${FEATX_SHARED:-../shared}/data/flowers5
  export KERAS_BACKEND=${KERAS_BACKEND:-tensorflow} PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  CONFIGS=cpu/float32,auto/bfloat16  # auto: names the CPU decoder it falls back to, and says why
  DRY_FLAG=--dry
  BS=${GPU_SH_DRY_BS:-32}
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=jax
  CONFIGS=cpu/float32,gpu/float32,gpu/bfloat16
  DRY_FLAG=
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, torchvision, jax; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'jax', jax.__version__, jax.devices())"
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and torch share the GPU's memory
UTIL=()
sample_util() {  # sample_util NAME: GPU utilisation every 200 ms until stop_util
  if [ "$DRY" != 1 ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader -lms 200 > "$WORK/util_$1.csv" &
    UTIL_PID=$!
    UTIL+=("$1=$WORK/util_$1.csv")
  else
    UTIL_PID=
  fi
}
stop_util() { [ -n "${UTIL_PID:-}" ] && kill "$UTIL_PID" 2>/dev/null; wait "${UTIL_PID:-}" 2>/dev/null || true; UTIL_PID=; }
trap stop_util EXIT

step "benchmark JPEGs"
python3 benchmarks/make_jpegs.py "$DATA" "$WORK/jpeg500" --size 500x375 --n "$N"
python3 benchmarks/make_jpegs.py "$DATA" "$WORK/jpeg2000" --size 2000x1500 --n "$N_BIG"

step "(a) GPU decoder vs CPU decoder"
python3 benchmarks/gpu_checks.py decoders "$DATA" "$WORK/jpeg500" --n $(( N < 400 ? N : 400 )) \
  --decode-n $(( N < 2048 ? N : 2048 )) $DRY_FLAG --json "$OUT/gpu.json"

step "(b) precision"
python3 benchmarks/gpu_checks.py precision "$DATA" --n $(( N < 400 ? N : 400 )) \
  --probe-n $(( DRY == 1 ? 100 : 4317 )) --json "$OUT/gpu.json"

for bb in resnet50 mobilenetv2 efficientnetb0; do
  step "(c) $bb, $N JPEGs 500x375, $CONFIGS"
  sample_util "${bb}_500"
  # random weights are fine for timing (labelled so in the JSON); only the vendored weights are offline
  python3 benchmarks/extract.py "$WORK/jpeg500" --backbone "$bb" --weights none --n "$N" --batch-size "$BS" \
    --only bc --configs "$CONFIGS" --warmup-n $(( 2 * BS )) --json "$OUT/gpu.json"
  stop_util
done
step "(c) mobilenetv2, $N_BIG photos 2000x1500, $CONFIGS"
sample_util mobilenetv2_2000
python3 benchmarks/extract.py "$WORK/jpeg2000" --backbone mobilenetv2 --weights none --n "$N_BIG" --batch-size "$BS" \
  --only c --configs "$CONFIGS" --warmup-n $(( 2 * BS )) --json "$OUT/gpu.json"
stop_util

if [ -f benchmarks/decode_scaling.py ]; then
  step "decode scaling: threads vs processes"
  python3 benchmarks/decode_scaling.py "$WORK/jpeg500" --n $(( N < 2000 ? N : 2000 )) \
    --workers $( [ "$DRY" = 1 ] && echo 1,2 || echo 4,8,16 ) --json "$OUT/gpu.json"
fi

step "(d) GPU utilisation"
python3 benchmarks/gpu_checks.py utilisation "${UTIL[@]}" --json "$OUT/gpu.json"
step "done: $OUT/gpu.json"
