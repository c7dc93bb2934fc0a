#!/usr/bin/env bash
# Train a synthetic_street checkpoint: render synthetic sample drives (seeds 1-24, four sizes; never
# seed 0, the `make demo` drive), train RegSeg on them with `seg-perception train` in two stages,
# convert the second stage's best.pth to the fp16 file.
#   1. from random initialisation: 950 iterations, 192x192 crops, rare classes weighted
#      (--class-balance sqrt) so that small things are learnt at all;
#   2. fine-tuning from stage 1's best.pth: 6000 iterations, 256x256 crops, plain cross-entropy
#      (the paper's loss; the weighting of stage 1 over-predicts riders and signs).
# The shipped file's stage 1 ran staged on a loaded CPU (same data and options, schedule restarted
# three times); its stage 2 ran as below. See seg_perception/weights/synthetic_street.md.
# Usage: scripts/train_synthetic_street.sh [OUT]
set -euo pipefail
OUT=${1:-out/synthetic_street}
SP=${SP:-seg-perception}
ITERATIONS=${ITERATIONS:-950}
FINETUNE_ITERATIONS=${FINETUNE_ITERATIONS:-6000}
sizes=(192x384 256x512 320x640 384x768)
data=()
for seed in $(seq 1 24); do
  size=${sizes[$(( seed % 4 ))]}
  [ -d "$OUT/drives/seed$seed" ] || $SP make-sample-drive "$OUT/drives/seed$seed" --frames 24 --size "$size" --seed "$seed" >/dev/null
  data+=("$OUT/drives/seed$seed/cityscapes")
done
# Validation (picks best.pth): a seed and a size that training never sees.
[ -d "$OUT/drives/val500" ] || $SP make-sample-drive "$OUT/drives/val500" --frames 6 --size 224x448 --seed 500 >/dev/null
COMMON=(--data "${data[@]}" --split val --val "$OUT/drives/val500/cityscapes" --model regseg --batch-size 8
        --optimizer adamw --num-workers 1)
# One torch thread in stage 1 (it ran beside other jobs); two in stage 2 (an idle 2-core machine).
$SP train "${COMMON[@]}" --out "$OUT/run" --iterations "$ITERATIONS" --crop 192x192 --lr 1e-3 --warmup 60 \
  --val-every 50 --threads 1 --seed 0 --class-balance sqrt
$SP train "${COMMON[@]}" --out "$OUT/finetune" --init "$OUT/run/best.pth" --iterations "$FINETUNE_ITERATIONS" \
  --crop 256x256 --lr 6e-4 --warmup 100 --val-every 250 --threads 2 --seed 1 --class-balance none
python -m seg_perception.training.shrink_checkpoint "$OUT/finetune/best.pth" seg_perception/weights/synthetic_street.pt
