#!/usr/bin/env bash
# Model quality side by side: the reference recipe in Keras/TensorFlow (bench/quality_keras.py)
# and `hbac train` (each --init), on one HMS-format data set written by bench/quality_data.py,
# the same folds (fold 0 of 5), full-size models, batch 32, 13 epochs, the reference learning
# rates, BatchNorm momentum 0.9 on both sides; `--init keras` runs also take Keras' stochastic
# depth (drop connect 0.2 in EfficientNetV2), `--init torch` runs are hbac's default recipe.
# Prints a table of best validation KL and out-of-fold Kaggle KL per side, mean ± spread over
# seeds and Welch's p against Keras (bench/quality_table.py).
#
#   cargo build --release && bash bench/quality.sh
#   ARCHS=mobilenetv3-large SEEDS="42 7 11" INITS="torch keras" bash bench/quality.sh
#
# Environment: OUT (./quality-out), ARCHS, SEEDS, INITS, SIDES ("keras hbac"), EPOCHS (13),
# BATCH (32), PATIENTS (150), THREADS (each run's threads; default all cores: two benchmarks
# side by side, e.g. SIDES=keras and SIDES=hbac with THREADS=1 each, share the cores), HBAC
# (the binary; default the release build in CARGO_TARGET_DIR), HBAC_QUALITY_VENV
# (~/.cache/hbac-quality: made here with TensorFlow, KerasCV, pandas, pyarrow, scikit-learn,
# SciPy for the table's p-values and safetensors for bench/quality_step.py).
# Finished runs are kept: re-running resumes where an interrupted benchmark stopped. Full size
# on 2 cores: MobileNetV3 ≈ 4–5 min a run, EfficientNetV2 ≈ 11.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./quality-out}"
ARCHS="${ARCHS:-mobilenetv3-large efficientnetv2-b2}"
SEEDS="${SEEDS:-42 7 11}"
INITS="${INITS:-torch keras}"
SIDES="${SIDES:-keras hbac}"
EPOCHS="${EPOCHS:-13}"
BATCH="${BATCH:-32}"
THREADS="${THREADS:-$(nproc)}"
HBAC="${HBAC:-${CARGO_TARGET_DIR:-$HOME/.cache/hbac-target}/release/hbac}"
VENV="${HBAC_QUALITY_VENV:-$HOME/.cache/hbac-quality}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  echo "== making $VENV (TensorFlow CPU, Keras, KerasCV, pandas, pyarrow, scikit-learn, SciPy)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check tensorflow-cpu==2.21.0 keras==3.15.1 \
    keras-cv==0.9.0 pandas pyarrow scikit-learn scipy safetensors
fi
if [ ! -x "$HBAC" ]; then
  echo "no hbac binary at $HBAC: cargo build --release, or set HBAC" >&2
  exit 1
fi
mkdir -p "$OUT/logs" "$OUT/runs"
if [ ! -f "$OUT/data/train.csv" ]; then
  "$PY" bench/quality_data.py --out "$OUT/data" --patients "${PATIENTS:-150}"
fi
echo "== $(date -u +%FT%TZ) $(nproc) cores; $("$HBAC" --version); archs: $ARCHS;" \
  "seeds: $SEEDS; inits: $INITS"

run() { # name, command…: runs once, its log in $OUT/logs/<name>.log
  local name="$1"; shift
  echo "-- $name"
  if ! "$@" > "$OUT/logs/$name.log" 2>&1; then
    echo "   failed; its log ends:" >&2
    tail -20 "$OUT/logs/$name.log" >&2
    return 1
  fi
  grep -E "^best epoch" "$OUT/logs/$name.log" | tail -1 | sed 's/^/   /'
}

for arch in $ARCHS; do
  for seed in $SEEDS; do
    for side in $SIDES; do
      if [ "$side" = keras ]; then
        dir="$OUT/runs/keras-$arch-$seed"
        [ -f "$dir/result.json" ] && continue
        run "keras-$arch-$seed" "$PY" bench/quality_keras.py --data "$OUT/data" --arch "$arch" \
          --seed "$seed" --epochs "$EPOCHS" --batch "$BATCH" --bn-momentum 0.9 \
          --threads "$THREADS" --out "$dir"
      else
        for init in $INITS; do
          dir="$OUT/runs/hbac-$init-$arch-$seed"
          [ -f "$dir/summary.json" ] && continue
          rm -rf "$dir"
          # --init keras is the exact-parity run: Keras' stochastic depth too (EfficientNetV2).
          dc=0
          [ "$init" = keras ] && [ "$arch" = efficientnetv2-b2 ] && dc=0.2
          run "hbac-$init-$arch-$seed" env RAYON_NUM_THREADS="$THREADS" "$HBAC" train \
            --data "$OUT/data" --cache "$OUT/cache" --arch "$arch" --fold 0 --seed "$seed" \
            --epochs "$EPOCHS" --batch-size "$BATCH" --bn-momentum 0.9 --init "$init" \
            --drop-connect "$dc" --out "$dir"
        done
      fi
    done
  done
done
"$PY" bench/quality_table.py "$OUT"
