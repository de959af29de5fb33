#!/usr/bin/env bash
# hbac prepare vs the original project's pandas/numpy conversion, on the same synthetic files,
# in the same run; then a bit-for-bit comparison of the two caches and the window loader.
#
#   bash bench/prepare.sh [PATIENTS]      (default 300 patients ≈ 600 files)
set -euo pipefail
cd "$(dirname "$0")/.."
patients=${1:-300}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/hbac-target}
cargo build --release -q --bin hbac -p hbac -p hbac-bench --bins
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin/hbac" synth --out "$work/data" --patients "$patients" --test 0 --eeg-files 0 >/dev/null
echo "machine: $(nproc) cores, $(python3 -c 'import pandas, pyarrow, numpy; print(f"pandas {pandas.__version__}, pyarrow {pyarrow.__version__}, numpy {numpy.__version__}")')"
echo "files: $(ls "$work/data/train_spectrograms" | wc -l), $(du -sm "$work/data/train_spectrograms" | cut -f1) MB parquet"
# Warm the page cache once so both sides read from memory.
cat "$work"/data/train_spectrograms/* >/dev/null
for run in 1 2 3; do
  rm -rf "$work/ref" "$work/cache"
  python3 bench/prepare_reference.py "$work/data" "$work/ref"
  RUST_LOG=warn "$bin/hbac" prepare --data "$work/data" --cache "$work/cache"
done
python3 bench/compare_cache.py "$work/ref" "$work/cache"
"$bin/loader" --data "$work/data" --cache "$work/cache"
