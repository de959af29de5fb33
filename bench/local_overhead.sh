#!/usr/bin/env bash
# Overhead of the distributed path: a k-fold MobileNetV3 run through `hbac local` (coordinator
# + 1 in-process worker over gRPC, journal, aggregation) against the sum of the same k folds
# trained one by one with `hbac train`. Same data, folds, recipe and device.
#
#   bench/local_overhead.sh [HBAC_BINARY] [EPOCHS] [DEVICE] [extra recipe flags…]
#   e.g. bench/local_overhead.sh target/release/hbac 4 cpu --quick
#        bench/local_overhead.sh ./hbac 13 cuda            (the reference recipe on a GPU)
set -euo pipefail
HBAC="${1:-target/release/hbac}"; EPOCHS="${2:-4}"; DEVICE="${3:-cpu}"; shift 3 || true
K=5
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
export RUST_LOG=warn
"$HBAC" synth --out "$WORK/data" --patients 40 >/dev/null
"$HBAC" prepare --data "$WORK/data" >/dev/null   # both paths start from a ready .npy cache
now() { date +%s.%N; }

t0=$(now)
"$HBAC" local --data "$WORK/data" --out "$WORK/local" --k $K --archs mobilenetv3-large \
  --workers 1 --epochs "$EPOCHS" --device "$DEVICE" "$@" >/dev/null
t_local=$(python3 -c "print($(now) - $t0)")

t_train=0
for f in $(seq 0 $((K - 1))); do
  t0=$(now)
  "$HBAC" train --data "$WORK/data" --out "$WORK/train$f" --fold "$f" --k $K \
    --arch mobilenetv3-large --epochs "$EPOCHS" --device "$DEVICE" "$@" >/dev/null
  t_train=$(python3 -c "print($t_train + $(now) - $t0)")
done
python3 - "$t_local" "$t_train" "$WORK" <<'PY'
import json, sys
local, train, work = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
report = json.load(open(f"{work}/local/report.json"))
cv, local_folds = report["cv"], report["folds_by_arch"]["mobilenetv3-large"]
folds = [json.load(open(f"{work}/train{f}/summary.json"))["oof_kaggle_kl"] for f in range(5)]
print(f"hbac local, {5} folds, 1 worker:   {local:8.1f} s   (fold kl {', '.join(f'{x:.4f}' for x in local_folds)}; CV {cv:.4f})")
print(f"sum of {5} hbac train runs:        {train:8.1f} s   (fold kl {', '.join(f'{x:.4f}' for x in folds)})")
print(f"overhead of the distributed path: {local - train:8.1f} s   ({(local / train - 1) * 100:+.1f} %)")
PY
