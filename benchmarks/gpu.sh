#!/usr/bin/env bash
# One prepared GPU check (about 5 minutes): for a machine with JAX, h5py, scikit-learn and Pillow
# but no TensorFlow and no network. Wheels lie in $WHEELS (keras, namex, optree, simplejpeg), real photos
# in $DATA (class folders, e.g. a copy of flowers5). Results go to ${OUT:-/tmp}/gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
DATA=${DATA:-.gpudata/flowers5}
OUT=${OUT:-/tmp}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/make_jpegs.py "$DATA" /tmp/jpeg500 --size 500x375 --n 8000
N=${N:-8000}
BS=${BS:-256}
python3 benchmarks/extract.py /tmp/jpeg500 --backbone mobilenet_0.25 --n "$N" --batch-size "$BS" --only abc --json "$OUT/gpu.json"
for bb in mobilenetv2 efficientnetb0 resnet50; do
  # random weights are fine for timing (labelled so in the JSON); only the vendored weights are offline
  python3 benchmarks/extract.py /tmp/jpeg500 --backbone "$bb" --weights none --n "$N" --batch-size "$BS" --only bc --json "$OUT/gpu.json"
done
