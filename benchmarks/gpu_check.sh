#!/usr/bin/env bash
# Issue 18's GPU check, in one call of at most 8 minutes (about 3 expected on one H200):
#   1. KL+DP with cached outputs ÷ plain fine-tuning for a ResNet-18 student (timm resnet18, teacher
#      resnet50) at 224 px in bf16: samples/s of each and the ratio             -> transfer.csv
#   2. the same pair with photo augmentation on 4,096 JPEGs (random-resized crop + flip, bicubic): KL+DP with
#      stored per-epoch outputs and with the teacher online ÷ plain fine-tuning with it -> transfer_augment.csv
#   3. the decode benchmark (bench_decode.py) with the models on the GPU: 2,000 JPEGs, 4 small timm
#      models at 64 px (fp32) and at 224 px (bf16)                                -> decode.csv
#   plus env.txt (GPU, driver, python and library versions) and log.txt (everything printed).
#
#   benchmarks/gpu_check.sh [--out DIR] [--device cuda|cpu] [--tiny]
#
# DIR defaults to $OUT (the device machine's folder that comes back), else results/gpu-check.
# --device cpu --tiny is the dry run the tests run (seconds). Python: $PYTHON, else the repository's
# .venv, else python3 (on the GPU machine: the image's own, with its torch); gkt runs from src/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/results/gpu-check}"
device=cuda
tiny=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --tiny) tiny=(--tiny); shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (use --out DIR, --device DEVICE, --tiny)" >&2; exit 2 ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
mkdir -p "$out"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$root"

# The machine, and what gkt needs for these steps checked up front (one clear line, not a traceback later).
status=0
{
  date -u
  nproc
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
  "$PYTHON" - <<'EOF' || status=$?
import importlib, platform, sys
print("python", sys.version.split()[0], platform.machine())
for name in ("torch", "torchvision", "timm", "numpy", "PIL", "safetensors", "transformers"):
    try:
        print(name, importlib.import_module(name).__version__)
    except ImportError as exc:
        print(name, "MISSING", exc)
try:
    import torch
    print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    import timm, gkt.analysis.complementary, gkt.data.spec, gkt.models, gkt.transfer.trainer  # noqa: F401
except ImportError as exc:
    print(f"cannot import what the check needs: {exc}")
    sys.exit(3)
EOF
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
if [ "$status" -ne 0 ]; then
  echo "gpu_check.sh: $(grep -m1 'cannot import' "$out/env.txt" || echo "the environment check failed") with" \
       "$PYTHON; carry the missing package as wheels (see the device notes), or set PYTHON" >&2
  exit 2
fi

timeout --signal=INT --kill-after=20 460 \
  "$PYTHON" benchmarks/gpu_check.py --out "$out" --device "$device" "${tiny[@]}" 2>&1 | tee "$out/log.txt"
exit "${PIPESTATUS[0]}"
