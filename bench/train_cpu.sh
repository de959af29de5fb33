#!/usr/bin/env bash
# Training-step throughput and peak memory on the CPU, hbac against what a user would run
# instead, in one run on one machine: hbac's fused ops, burn 0.21's stock ops, PyTorch + timm,
# and Keras 3 / TensorFlow (bench/anchors_cpu.py). Each (framework, architecture) runs in a
# process of its own under /usr/bin/time, so peak RSS is its own.
#
#   bash bench/train_cpu.sh [BATCH=8] [STEPS=3] [THREADS=2]
#
# The anchors live in a virtual environment (HBAC_ANCHORS_VENV, default
# ~/.cache/hbac-anchors) made on first use from PyPI (about 7 GB: torch pulls its CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH="${1:-8}" STEPS="${2:-3}" THREADS="${3:-2}"
VENV="${HBAC_ANCHORS_VENV:-$HOME/.cache/hbac-anchors}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hbac-target}"
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" TF_CPP_MIN_LOG_LEVEL=2

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.15.0 timm==1.0.31 \
    tensorflow-cpu==2.21.0 keras==3.15.1 keras-cv==0.9.0
fi
cargo build -q --release -p hbac-bench --bin train_step

echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB; threads=$THREADS batch=$BATCH steps=$STEPS"
run() { # label command...
  local out
  out="$(/usr/bin/time -f "peak_rss_kb=%M" "${@:2}" 2>&1 | grep -E "samples_per_s=|peak_rss_kb=")"
  echo "$1 $(echo "$out" | tr '\n' ' ')"
}
for arch in mobilenetv3-large efficientnetv2-b2; do
  run hbac "$CARGO_TARGET_DIR/release/train_step" --batch "$BATCH" --steps "$STEPS" --arch "$arch"
  run burn-stock "$CARGO_TARGET_DIR/release/train_step" --batch "$BATCH" --steps "$STEPS" --arch "$arch" --path stock
  for fw in torch keras; do
    run "$fw" "$VENV/bin/python" bench/anchors_cpu.py --framework "$fw" --arch "$arch" \
      --batch "$BATCH" --steps "$STEPS" --threads "$THREADS"
  done
done
