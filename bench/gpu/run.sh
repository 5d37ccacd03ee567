#!/usr/bin/env bash
# The GPU run in one command (bench/gpu/README.md):
#   bash bench/gpu/run.sh [CARRY_FOLDER]
# On the GPU machine: stages CARRY_FOLDER (the last of prepare's carry folders), joins and checks the staged wheels,
# installs them into /tmp/site (not the system's site-packages), makes the machine's CUDA libraries (torch's pip
# packages) findable, runs the GPU tests and the benchmarks, and writes JSON to $OUT.
# Environment: DEVICE (cuda, default; cpu for the plumbing test), QUICK=1 (small sizes), OUT (default .gpu/out),
# PYTHON (default python3), GPU_STAGE / GPU_SITE (default /tmp/gpu-stage, /tmp/site),
# GPU_BENCH_ARTIFACTS / GPU_BENCH_PHOTOS (default .gpu/artifacts, .gpu/photos).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$PWD/.gpu/out}
STAGE=${GPU_STAGE:-/tmp/gpu-stage}
SITE=${GPU_SITE:-/tmp/site}
ARTIFACTS=${GPU_BENCH_ARTIFACTS:-.gpu/artifacts}
PHOTOS=${GPU_BENCH_PHOTOS:-.gpu/photos}
mkdir -p "$OUT"
export BENTOML_DO_NOT_TRACK=true PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1

if [ -n "${1:-}" ]; then
  bash bench/gpu/stage.sh "$1"
fi
if [ -f "$STAGE/MANIFEST.json" ]; then
  t0=$(date +%s)
  "$PY" -m bench.gpu.wheels install --stage "$STAGE" --target "$SITE"
  echo "install: $(( $(date +%s) - t0 )) s"
  export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no $STAGE/MANIFEST.json: using this Python's own packages"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

if [ "$DEVICE" = cuda ]; then
  # onnxruntime-gpu and nvImageCodec need libcudart/libcublas/libcudnn/libnvjpeg: every nvidia/*/lib folder of the
  # machine's site-packages (torch's CUDA packages) and of /tmp/site (the carried nvJPEG) goes on the loader's path.
  libs=$("$PY" - <<'PY'
import site, sys
from pathlib import Path
roots = [Path(p) for p in sys.path + site.getsitepackages() if p and Path(p, "nvidia").is_dir()]
dirs = sorted({str(so.parent) for r in roots for so in Path(r, "nvidia").glob("**/lib/*.so*")})
print(":".join(dirs))
PY
)
  export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  nvidia-smi -L | tee "$OUT/nvidia-smi.txt"
  "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" || true

  # The GPU decoding tests: nvImageCodec against the CPU path on the carried photos and model.
  GPU_BENCH_ARTIFACTS=$ARTIFACTS GPU_BENCH_PHOTOS=$PHOTOS "$PY" -m pytest -q -p no:cacheprovider -rA \
    tests/fast/test_gpu_decode.py tests/e2e/test_gpu_decode_parity.py 2>&1 | tee "$OUT/gpu-tests.txt" || true
fi

"$PY" -m bench.gpu.bench --device "$DEVICE" --artifacts "$ARTIFACTS" --photos "$PHOTOS" --out "$OUT" \
  ${QUICK:+--quick}
ls -la "$OUT"
