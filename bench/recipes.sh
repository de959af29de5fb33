#!/usr/bin/env bash
# The recipes of issue 18 side by side on one synthetic data set (same folds, same seed):
# input kaggle / eeg / both × one stage / a second stage on the rows with >= 10 votes, plus
# 4 more one-stage epochs (the second stage's compute spent on all rows) and per-eeg samples.
# Each is `hbac local --patients $PATIENTS` on its CPU-sized defaults (3 folds × 2
# architectures, 12 epochs); the table comes from bench/recipes_table.py.
#
#   HBAC=target/release/hbac OUT=/tmp/recipes PATIENTS=120 bash bench/recipes.sh
set -euo pipefail
HBAC="${HBAC:-${CARGO_TARGET_DIR:-target}/release/hbac}"
OUT="${OUT:-/tmp/hbac-recipes}"
PATIENTS="${PATIENTS:-120}"
mkdir -p "$OUT"
runs=(
  "kaggle-1stage|"
  "kaggle-16epochs|--epochs 16"
  "kaggle-2stage|--stage2-min-votes 10 --stage2-epochs 4"
  "eeg-1stage|--input eeg"
  "eeg-2stage|--input eeg --stage2-min-votes 10 --stage2-epochs 4"
  "both-1stage|--input both"
  "both-2stage|--input both --stage2-min-votes 10 --stage2-epochs 4"
  "both-pereeg-2stage|--input both --samples per-eeg --stage2-min-votes 10 --stage2-epochs 4"
)
dirs=()
for r in "${runs[@]}"; do
  name=${r%%|*}
  read -r -a flags <<<"${r#*|}"
  dirs+=("$OUT/$name")
  if [ -f "$OUT/$name/report.json" ]; then continue; fi
  echo "== $name: hbac local --patients $PATIENTS ${flags[*]}"
  start=$(date +%s)
  "$HBAC" local --patients "$PATIENTS" --out "$OUT/$name" "${flags[@]}" >"$OUT/$name.log" 2>&1
  echo "$name: $(($(date +%s) - start)) s"
  grep -E "^cv " "$OUT/$name.log"
done
python3 "$(dirname "$0")/recipes_table.py" "${dirs[@]}"
