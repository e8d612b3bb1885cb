#!/usr/bin/env bash
# Reproduce the bundled phantom-trained weights in weights/ (about 1.5 h on 2 CPU cores; a GPU
# makes the detector's share minutes). Training phantoms use seed 1 only: the evaluation set
# (seed 2), the examples and the tests use other seeds.
#
#   bash scripts/train_demo_weights.sh            # everything, into runs/demo-weights, then bundle
#   WORK=/scratch/demo bash scripts/train_demo_weights.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
CLI=.venv/bin/precise-baa
WORK=${WORK:-runs/demo-weights}
DATA=$WORK/phantoms-train-s1
SYNTH="precise-baa synth --n 800 --seed 1 --size 512"

[[ -f $DATA/annotations.json ]] || $CLI synth --n 800 --seed 1 --size 512 --out "$DATA" --quiet

$CLI train segment --recipe stages/segment/unet-lite.yaml --data "$DATA" \
    --out "$WORK/segment-unet-lite" --epochs 8 --seed 1
$CLI train grade --recipe stages/grade/densenet-attention-lite.yaml \
    --coco "$DATA/annotations.json" --images "$DATA/images" \
    --out "$WORK/grade-densenet-attention-lite" --epochs 40 --seed 1
$CLI train detect --recipe stages/detect/detectors-cascade-rcnn-lite.py \
    --coco "$DATA/annotations.json" --images "$DATA/images" \
    --out "$WORK/detect-detectors-lite" --epochs 8 --seed 1 --workers 1

.venv/bin/python scripts/bundle_weights.py "$WORK/segment-unet-lite" \
    "$WORK/detect-detectors-lite" "$WORK/grade-densenet-attention-lite" \
    --data "$SYNTH (phantoms-train-s1: 800 synthetic 512 px radiographs; 15 % held out for validation)"
