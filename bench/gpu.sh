#!/usr/bin/env bash
# Every GPU figure in one command of under 10 minutes, on a machine with an NVIDIA GPU, its
# driver, a CUDA toolkit or pip's NVIDIA wheels, PyTorch + timm, and no Rust or network.
#
#   build here:  CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda --bin hbac
#                strip -o hbac "$CARGO_TARGET_DIR/release/hbac" && gzip -9f hbac   # → hbac.gz
#   run there:   bash bench/gpu.sh [hbac.gz]            (figures and logs in $OUT or ./gpu-out)
#   dry run:     bash bench/gpu.sh --dry-run [hbac]      (the same steps on the CPU, small: CI)
#
# Steps, each under `timeout` with its own budget and all within TOTAL seconds (default 540):
#   0. preflight: GPU, driver, nvcc, where libcuda / libnvrtc / cuda_runtime.h are, torch, timm;
#      CUDA_PATH and LD_LIBRARY_PATH set from what it finds; hbac's own check (backend::check);
#   1. smoke (stops the script if it fails): a reduced model, batch 2, one step on the GPU
#      against the CPU, then two timed steps;
#   2. correctness: one full-size training step of each architecture on the GPU against the
#      CPU from the same weights and batch (`hbac model check`: loss and every gradient);
#   3. speed at batch BATCH, full size, both architectures: `hbac model bench` against PyTorch
#      + timm with AMP (bf16) and channels_last, cudnn.benchmark (bench/anchors_gpu.py):
#      samples/s, and peak GPU memory sampled with nvidia-smi for every process alike;
#   4. `hbac train --quick`, 1 epoch, the same seed on the GPU and on the CPU, both
#      architectures: the validation losses side by side;
#   5. a 2-epoch `hbac train --device cuda` (full size) and a small `hbac local --device cuda`
#      on `hbac synth` data.
# Output under $OUT (default ./gpu-out): gpu.log (everything), figures.json, and
# kernel-cache.tar.gz (compiled kernels and autotune results; put it beside the script's
# working folder as gpu-cache.tar.gz, or pass KERNEL_CACHE=file, and the next call starts warm).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

DRY=0
if [ "${1:-}" = "--dry-run" ]; then
  DRY=1
  shift
fi
HBAC="${1:-hbac.gz}"
OUT="${OUT:-$REPO/gpu-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu.log"
: >"$LOG"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)

if [ $DRY = 1 ]; then
  DEVICE=cpu TOTAL="${TOTAL:-900}" BATCH="${BATCH:-2}" STEPS="${STEPS:-1}" WIDTH=0.25
  CHECK_BATCH=1 SYNTH_PATIENTS=12 TRAIN_FLAGS="--quick"
else
  DEVICE=cuda TOTAL="${TOTAL:-540}" BATCH="${BATCH:-64}" STEPS="${STEPS:-10}" WIDTH=1
  CHECK_BATCH=8 SYNTH_PATIENTS=40 TRAIN_FLAGS=""
fi
# cubecl's tuner logs each autotuned operation (seconds each on a cold cache): counted per step.
export RUST_LOG="${RUST_LOG:-warn,cubecl_runtime::tune::tuner=info}" NO_COLOR=1 PYTHONUNBUFFERED=1
export HBAC_KERNEL_CACHE="$WORK/kernels"
mkdir -p "$HBAC_KERNEL_CACHE"
CACHE_IN="${KERNEL_CACHE:-$REPO/gpu-cache.tar.gz}"

say() { echo "$*" | tee -a "$LOG"; }
left() { echo $((TOTAL - ($(date +%s) - START))); }

# run NAME BUDGET CMD...: runs CMD under timeout (BUDGET seconds, or what is left of TOTAL),
# tee'd to the log and to $WORK/NAME.out, sampling the GPU's used memory every 100 ms.
# Returns the command's status (124: out of time, 125: skipped for want of time).
run() {
  local name="$1" budget="$2"
  shift 2
  local remaining
  remaining=$(left)
  if [ "$remaining" -lt 15 ]; then
    say "-- $name: SKIPPED (${remaining} s left of TOTAL=$TOTAL)"
    return 125
  fi
  [ "$budget" -gt "$remaining" ] && budget=$remaining
  say "-- $name (budget ${budget} s): $*"
  local mem="$WORK/$name.mem" sampler="" t0 rc
  : >"$mem"
  if [ $DRY = 0 ] && command -v nvidia-smi >/dev/null; then
    (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >>"$mem" 2>/dev/null; sleep 0.1; done) &
    sampler=$!
  fi
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$budget" "$@" 2>&1 | tee "$WORK/$name.out" >>"$LOG"
  rc=${PIPESTATUS[0]}
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  local wall peak
  wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  peak=$(sort -n "$mem" | tail -1)
  echo "step=$name rc=$rc wall_s=$wall peak_gpu_mib=${peak:-na}" | tee -a "$LOG" >>"$WORK/steps.txt"
  grep -E "samples_per_s=|grad_check |valid_kl|kaggle kl|cv_score|FAILED|error" "$WORK/$name.out" | sed "s/^/   /" | tail -6
  [ $rc = 124 ] && say "   $name: OUT OF TIME after ${budget} s"
  return $rc
}

# ---------------------------------------------------------------- 0. preflight
say "== 0. preflight ($(date -u +%FT%TZ), dry_run=$DRY, device=$DEVICE, TOTAL=$TOTAL s)"
if [[ "$HBAC" == *.gz ]]; then
  gunzip -c "$HBAC" >"$WORK/hbac" && chmod +x "$WORK/hbac" && HBAC="$WORK/hbac"
fi
[ -x "$HBAC" ] || { say "FATAL: no hbac binary at $HBAC"; exit 2; }
say "hbac: $("$HBAC" --version 2>&1)"
PY="${PYTHON:-}"
for p in /opt/torch/.venv/bin/python3 python3; do
  [ -z "$PY" ] && "$p" -c "import torch" 2>/dev/null && PY="$p"
done
if [ $DRY = 0 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
  (nvcc --version 2>&1 || /usr/local/cuda/bin/nvcc --version 2>&1) | tail -2 | tee -a "$LOG"
  # The CUDA root: CUDA_PATH, else the toolkit beside nvcc, /usr/local/cuda, or pip's wheels.
  SITE=""
  [ -n "$PY" ] && SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null)"
  if [ -z "${CUDA_PATH:-}" ]; then
    for c in "$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x)")")" /usr/local/cuda /opt/cuda \
      "$SITE/nvidia/cu13" "$SITE/nvidia/cuda_runtime"; do
      [ -f "$c/include/cuda_runtime.h" ] && { export CUDA_PATH="$c"; break; }
    done
  fi
  say "CUDA_PATH=${CUDA_PATH:-<none found>}"
  # libnvrtc (and its builtins library) for the CUDA major this hbac was built for.
  NVRTC_DIRS=""
  for d in "${CUDA_PATH:-/nonexistent}/lib64" "${CUDA_PATH:-/nonexistent}/lib" /usr/local/cuda/lib64 \
    "$SITE/nvidia/cu13/lib" "$SITE/nvidia/cuda_nvrtc/lib" /usr/lib/x86_64-linux-gnu; do
    d="$(readlink -f "$d" 2>/dev/null || echo "$d")"
    case ":$NVRTC_DIRS:" in *":$d:"*) continue ;; esac
    ls "$d"/libnvrtc.so* >/dev/null 2>&1 && NVRTC_DIRS="$NVRTC_DIRS:$d"
  done
  export LD_LIBRARY_PATH="${NVRTC_DIRS#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  {
    echo "libcuda:    $(ldconfig -p 2>/dev/null | grep -m2 'libcuda.so' | awk '{print $NF}' | tr '\n' ' ')"
    echo "libnvrtc:   $(for d in ${NVRTC_DIRS//:/ }; do ls "$d"/libnvrtc*.so* 2>/dev/null; done | tr '\n' ' ')"
    echo "headers:    $(ls "${CUDA_PATH:-/nonexistent}/include/cuda_runtime.h" 2>&1)"
    echo "python:     ${PY:-none} $([ -n "$PY" ] && "$PY" -c 'import torch, timm; print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__)' 2>&1)"
  } | tee -a "$LOG"
  if [ -f "$CACHE_IN" ]; then
    tar -xzf "$CACHE_IN" -C "$HBAC_KERNEL_CACHE" && say "kernel cache: restored from $CACHE_IN"
  fi
fi
say "cpu: $(nproc) cores"
if ! run device 30 "$HBAC" device --device "$DEVICE"; then
  say "FATAL: hbac cannot use $DEVICE here (see above); nothing else would run"
  exit 1
fi
# The first kernels: a reduced model's step against the CPU (compiles every kernel kind).
run preflight 120 "$HBAC" model check --device "$DEVICE" --arch mobilenetv3-large --width 0.25 --batch 1 --grad-tol 1
rc=$?
if [ $rc != 0 ]; then
  [ $rc = 124 ] && say "FATAL: the first reduced training step did not finish in time (kernel compilation? autotuning? RUST_LOG=info shows which)"
  say "FATAL: the first reduced training step on $DEVICE failed; nothing else would run"
  exit 1
fi

# ---------------------------------------------------------------- 1. smoke
say "== 1. smoke: reduced model, batch 2"
if ! run smoke 60 "$HBAC" model bench --device "$DEVICE" --arch efficientnetv2-b2 --width 0.25 --batch 2 --warmup 1 --steps 2; then
  say "FATAL: the smoke step failed; the full-size steps would too"
  exit 1
fi

status=0
# ---------------------------------------------------------------- 2. correctness
say "== 2. correctness: one full-size step on $DEVICE against the CPU (batch $CHECK_BATCH)"
for arch in mobilenetv3-large efficientnetv2-b2; do
  run "check-$arch" 120 "$HBAC" model check --device "$DEVICE" --arch "$arch" --width "$WIDTH" --batch "$CHECK_BATCH" || status=1
done

# ---------------------------------------------------------------- 3. speed
say "== 3. speed: batch $BATCH, width $WIDTH"
for arch in mobilenetv3-large efficientnetv2-b2; do
  run "hbac-$arch" 120 "$HBAC" model bench --device "$DEVICE" --arch "$arch" --width "$WIDTH" --batch "$BATCH" --warmup 3 --steps "$STEPS" || status=1
  if [ $DRY = 0 ]; then
    run "torch-$arch" 120 "$PY" bench/anchors_gpu.py --arch "$arch" --batch "$BATCH" --steps "$STEPS" || status=1
  fi
done

# ---------------------------------------------------------------- 4. train --quick, GPU vs CPU
say "== 4. hbac train --quick, 1 epoch, seed 7: $DEVICE and cpu"
run synth 60 "$HBAC" synth --out "$WORK/data" --patients "$SYNTH_PATIENTS" --test 4 || status=1
for arch in mobilenetv3-large efficientnetv2-b2; do
  for dev in $(echo "$DEVICE cpu" | tr ' ' '\n' | uniq); do
    run "quick-$arch-$dev" 90 "$HBAC" train --data "$WORK/data" --out "$WORK/quick-$arch-$dev" --arch "$arch" \
      --device "$dev" --quick --epochs 1 --seed 7 || status=1
  done
done

# ---------------------------------------------------------------- 5. train and local on the GPU
say "== 5. hbac train (2 epochs) and hbac local on $DEVICE"
run train 120 "$HBAC" train --data "$WORK/data" --out "$WORK/train" --arch efficientnetv2-b2 --device "$DEVICE" \
  --epochs 2 --batch-size "$BATCH" $TRAIN_FLAGS || status=1
run local 150 "$HBAC" local --data "$WORK/data" --out "$WORK/local" --device "$DEVICE" --k 3 --workers 1 \
  --epochs 2 --batch-size "$BATCH" $TRAIN_FLAGS || status=1

# ---------------------------------------------------------------- figures
say "== figures"
"${PY:-python3}" - "$WORK" "$OUT/figures.json" "$DRY" "$(($(date +%s) - START))" <<'EOF' 2>&1 | tee -a "$LOG"
import json, re, sys, pathlib
work, out, dry, seconds = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
def kv(line):
    return dict(re.findall(r"(\w+)=(\[[^\]]*\]|\S+)", line))
fig = {"dry_run": dry, "seconds": seconds, "steps": {}, "speed": {}, "check": {}, "quick": {}}
for line in (work / "steps.txt").read_text().splitlines():
    d = kv(line)
    out = work / (d["step"] + ".out")
    tunes = out.read_text(errors="replace").count("Tuning ") if out.exists() else 0
    fig["steps"][d["step"]] = {"rc": int(d["rc"]), "wall_s": d["wall_s"], "peak_gpu_mib": d["peak_gpu_mib"],
                               "autotuned_ops": tunes}
for f in sorted(work.glob("*.out")):
    name, text = f.stem, f.read_text(errors="replace")
    peak = fig["steps"].get(name, {}).get("peak_gpu_mib")
    for line in text.splitlines():
        if "samples_per_s=" in line and (name.startswith("hbac-") or name.startswith("torch-")):
            d = kv(line)
            fig["speed"][name] = {"samples_per_s": float(d["samples_per_s"]), "peak_gpu_mib": peak,
                                  "torch_max_allocated_mib": d.get("max_allocated_mib")}
        if line.startswith("grad_check "):
            fig["check"][kv(line)["arch"]] = {k: v for k, v in kv(line).items() if k != "arch"}
        m = re.search(r"best epoch \d+ valid_kl ([\d.]+)", line)
        if m and name.startswith("quick-"):
            fig["quick"][name] = float(m.group(1))
for arch in ("mobilenetv3-large", "efficientnetv2-b2"):
    h, t = fig["speed"].get(f"hbac-{arch}"), fig["speed"].get(f"torch-{arch}")
    if h and t:
        fig["speed"][f"ratio-{arch}"] = round(h["samples_per_s"] / t["samples_per_s"], 3)
json.dump(fig, open(out, "w"), indent=1)
print(f"{'step':34} {'rc':>4} {'wall s':>8} {'peak MiB':>9} {'autotuned':>9}")
for k, v in fig["steps"].items():
    print(f"{k:34} {v['rc']:>4} {str(v['wall_s'])[:8]:>8} {str(v['peak_gpu_mib']):>9} {v['autotuned_ops']:>9}")
for k, v in fig["speed"].items():
    print(k, v)
for k, v in fig["check"].items():
    print("check", k, v.get("loss_rel"), v.get("grad_rel_max"), v.get("worst"))
for k, v in fig["quick"].items():
    print(k, "valid_kl", v)
EOF
if [ $DRY = 0 ] && [ -n "$(ls -A "$HBAC_KERNEL_CACHE" 2>/dev/null)" ]; then
  tar -czf "$OUT/kernel-cache.tar.gz" -C "$HBAC_KERNEL_CACHE" . && say "kernel cache: $OUT/kernel-cache.tar.gz ($(du -h "$OUT/kernel-cache.tar.gz" | cut -f1))"
fi
say "== done in $(($(date +%s) - START)) s, status $status"
exit $status
