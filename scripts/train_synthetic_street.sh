#!/usr/bin/env bash
# Train a synthetic_street checkpoint: render synthetic sample drives (seeds 1-24, four sizes; never
# seed 0, the `make demo` drive), train RegSeg on them with `seg-perception train` (one torch thread:
# on a small shared CPU more threads spin against each other), convert best.pth to the fp16 file.
# This is the shipped file's recipe as ONE uninterrupted run; the shipped file itself came from a
# staged run on a loaded CPU (same data and options, schedule restarted three times): see
# seg_perception/weights/synthetic_street.md. Usage: scripts/train_synthetic_street.sh [OUT]
set -euo pipefail
OUT=${1:-out/synthetic_street}
SP=${SP:-seg-perception}
ITERATIONS=${ITERATIONS:-950}
sizes=(192x384 256x512 320x640 384x768)
data=()
for seed in $(seq 1 24); do
  size=${sizes[$(( seed % 4 ))]}
  [ -d "$OUT/drives/seed$seed" ] || $SP make-sample-drive "$OUT/drives/seed$seed" --frames 24 --size "$size" --seed "$seed" >/dev/null
  data+=("$OUT/drives/seed$seed/cityscapes")
done
# Validation (picks best.pth): a seed and a size that training never sees.
[ -d "$OUT/drives/val500" ] || $SP make-sample-drive "$OUT/drives/val500" --frames 6 --size 224x448 --seed 500 >/dev/null
$SP train --data "${data[@]}" --split val --val "$OUT/drives/val500/cityscapes" --out "$OUT/run" \
  --model regseg --iterations "$ITERATIONS" --batch-size 8 --crop 192x192 --optimizer adamw --lr 1e-3 \
  --warmup 60 --val-every 50 --num-workers 1 --threads 1 --seed 0 --class-balance sqrt
python -m seg_perception.training.export "$OUT/run/best.pth" seg_perception/weights/synthetic_street.pt
