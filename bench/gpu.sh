#!/usr/bin/env bash
# The GPU checks in one command, for a machine with an NVIDIA GPU, PyTorch + timm, and no Rust
# or network: hbac's CUDA build is carried in (gzipped: it is ~96 MB stripped).
#
#   build here:  CUDARC_CUDA_VERSION=12080 cargo build --release --features cuda
#                strip -o hbac target/release/hbac && gzip -9 hbac        # → hbac.gz
#   run there:   bash bench/gpu.sh hbac.gz [BATCH=64] [STEPS=20]
#
# 1. training steps at BATCH, both architectures: hbac --device cuda (fused ops; then burn's
#    stock ops) against PyTorch + timm with AMP and channels_last (bench/anchors_gpu.py);
#    samples/s, and peak GPU memory sampled with nvidia-smi for every process alike;
# 2. a 2-epoch `hbac train --device cuda` on synthetic data (`hbac synth`);
# 3. a small `hbac local --device cuda` (3 folds × 2 architectures, 2 epochs).
# DEVICE=cpu runs the hbac side on the CPU instead (a dry run of this script without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
HBAC="${1:-hbac.gz}" BATCH="${2:-64}" STEPS="${3:-20}" DEVICE="${DEVICE:-cuda}"
WORK="$(mktemp -d)"
if [[ "$HBAC" == *.gz ]]; then
  gunzip -c "$HBAC" >"$WORK/hbac" && chmod +x "$WORK/hbac" && HBAC="$WORK/hbac"
fi
export RUST_LOG=warn

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
echo "hbac: $("$HBAC" --version)  device=$DEVICE batch=$BATCH steps=$STEPS"

# Runs a command while sampling the GPU's used memory every 100 ms; prints its output lines
# with samples_per_s and the peak.
peak() {
  local log="$WORK/mem.log" out="$WORK/out.log" sampler=""
  : >"$log"
  if [ "$DEVICE" = cuda ]; then
    (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >>"$log"; sleep 0.1; done) &
    sampler=$!
  fi
  "$@" >"$out" 2>&1
  local rc=$?
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  grep -E "samples_per_s=" "$out" | sed "s/\$/ peak_gpu_mib=$(sort -n "$log" | tail -1)/"
  if [ $rc -ne 0 ]; then echo "FAILED ($rc): $*"; tail -20 "$out"; fi
  return $rc
}

status=0
echo "== 1. training steps, batch $BATCH"
for arch in mobilenetv3-large efficientnetv2-b2; do
  peak "$HBAC" model bench --device "$DEVICE" --arch "$arch" --batch "$BATCH" --steps "$STEPS" || status=1
  peak "$HBAC" model bench --device "$DEVICE" --arch "$arch" --batch "$BATCH" --steps 3 --stock || status=1
  if [ "$DEVICE" = cuda ]; then
    peak python3 bench/anchors_gpu.py --arch "$arch" --batch "$BATCH" --steps "$STEPS" || status=1
  fi
done

echo "== 2. hbac train --device $DEVICE, 2 epochs"
"$HBAC" synth --out "$WORK/data" --patients 40 >/dev/null || status=1
/usr/bin/time -f "wall %e s, max RSS %M KB" "$HBAC" train --data "$WORK/data" --out "$WORK/train" \
  --arch efficientnetv2-b2 --device "$DEVICE" --epochs 2 --batch-size "$BATCH" || status=1

echo "== 3. hbac local --device $DEVICE, 3 folds x 2 architectures, 2 epochs"
/usr/bin/time -f "wall %e s, max RSS %M KB" "$HBAC" local --data "$WORK/data" --out "$WORK/local" \
  --device "$DEVICE" --k 3 --workers 1 --epochs 2 --batch-size "$BATCH" || status=1
tail -5 "$WORK/local/report.json" 2>/dev/null
rm -rf "$WORK"
exit $status
