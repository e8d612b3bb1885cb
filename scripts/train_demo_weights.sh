#!/usr/bin/env bash
# Reproduce the bundled phantom-trained weights in weights/ (about 2.5 h on 2 CPU cores when the
# machine is otherwise idle; a GPU makes the detector's share minutes). Training phantoms use
# seed 1 only: the evaluation set (seed 2), the examples and the tests use other seeds.
#
#   bash scripts/train_demo_weights.sh            # everything, into runs/demo-weights, then bundle
#   WORK=/scratch/demo bash scripts/train_demo_weights.sh
#
# Segment and grade train side by side on one thread each (they do not share data); the
# detector trains alone on both. OpenMP threads wait passively so the processes do not spin
# against each other. weights/README.md says which phantom generator and which epoch each
# bundled folder came from: the generator has changed since, so a rerun makes weights of the
# same recipe, not the same bytes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
CLI=.venv/bin/precise-baa
WORK=${WORK:-runs/demo-weights}
SEED=1
SYNTH="--n 1200 --seed $SEED --size 768 --style mixed"
DATA=$WORK/phantoms-train-s$SEED
export OMP_WAIT_POLICY=PASSIVE

[[ -f $DATA/annotations.json ]] || $CLI synth $SYNTH --workers 2 --out "$DATA" --quiet

OMP_NUM_THREADS=1 $CLI train segment --recipe stages/segment/unet-lite.yaml --data "$DATA" \
    --out "$WORK/segment-unet-lite" --epochs 8 --seed $SEED --quiet &
seg=$!
OMP_NUM_THREADS=1 $CLI train grade --recipe stages/grade/densenet-attention-lite.yaml \
    --coco "$DATA/annotations.json" --images "$DATA/images" \
    --out "$WORK/grade-densenet-attention-lite" --epochs 40 --seed $SEED --quiet &
grade=$!
wait $seg
wait $grade  # each wait returns its job's status: set -e stops on a failed training
OMP_NUM_THREADS=2 $CLI train detect --recipe stages/detect/detectors-cascade-rcnn-lite.py \
    --coco "$DATA/annotations.json" --images "$DATA/images" \
    --out "$WORK/detect-detectors-lite" --epochs 8 --seed $SEED --workers 1

DATA_NOTE="precise-baa synth $SYNTH (phantoms-train-s$SEED: 1200 synthetic 768 px radiographs, raw and preprocessed styles mixed; 15 % held out for validation)"
.venv/bin/python scripts/bundle_weights.py "$WORK/segment-unet-lite" \
    "$WORK/grade-densenet-attention-lite" --seed $SEED --data "$DATA_NOTE"
# the detector in fp32: fp16 tensors change which boxes pass on real radiographs
.venv/bin/python scripts/bundle_weights.py "$WORK/detect-detectors-lite" --dtype float32 \
    --seed $SEED --data "$DATA_NOTE"
