#!/usr/bin/env bash
# Issue 5's proof that learning is real, with thresholds fixed before the first run:
# 1. Fashion-MNIST: CIM pre-training WITHOUT labels on 6000 training images, then k-NN
#    top-1 (S10: cosine, k 20, T 0.07) of the target encoder's frozen features on a
#    balanced subset (500 train / 100 test images per class) must beat the same encoder
#    at its random initialisation by at least 2.0 points.
# 2. Real photos: the demo recipe's pre-training on data/photos; on the 20 held-out
#    ImageNet photos the predicted maps' mean IoU must exceed the untrained model's
#    (step 0 of the same recipe and seed) by at least 0.10.
# Prints both sides of each comparison; exits non-zero when a threshold is missed.
set -euo pipefail
cd "$(dirname "$0")/.."
KNN_MARGIN=2.0
IOU_MARGIN=0.10

scripts/fetch-sample-data.sh data >/dev/null
cargo build --quiet --release -p cim-cpu
cargo run --quiet --release -p cim-train --example idx_to_png -- data/fashion-mnist 6000 data/fashion-mnist-png
bin=target/release/cim-cpu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== Fashion-MNIST: pre-training without labels"
"$bin" pretrain --recipe fashion-mnist --out "$work/fmnist" --no-progress | tail -n 1
"$bin" eval --checkpoint "$work/fmnist" --data data/fashion-mnist --baseline \
    --train-per-class 500 --test-per-class 100 --probe-epochs 0 | tee "$work/eval.txt"
knn=($(grep -o 'k-NN top-1 [0-9.]*' "$work/eval.txt" | awk '{print $3}'))

echo "== Real photos: pre-training on data/photos, maps on held-out photos"
"$bin" pretrain --recipe demo --out "$work/photos" --no-progress | tail -n 1
"$bin" pretrain --recipe demo --out "$work/untrained" --max-steps 0 --no-progress >/dev/null
iou_of() {
    "$bin" visualize --checkpoint "$1" --images data/imagenet-val --out "$1/heldout.png" --count 20 \
        | grep -o 'mean IoU of predicted maps [0-9.]*' | awk '{print $6}'
}
trained_iou=$(iou_of "$work/photos")
untrained_iou=$(iou_of "$work/untrained")

python3 - "${knn[0]}" "${knn[1]}" "$trained_iou" "$untrained_iou" "$KNN_MARGIN" "$IOU_MARGIN" <<'PY'
import sys
knn_t, knn_r, iou_t, iou_u, km, im = map(float, sys.argv[1:])
rows = [
    ("Fashion-MNIST k-NN top-1 (%)", knn_t, knn_r, knn_t - knn_r >= km, f"margin >= {km}"),
    ("held-out photos map mean IoU", iou_t, iou_u, iou_t - iou_u >= im, f"margin >= {im}"),
]
print(f"{'':32s} {'pre-trained':>12s} {'random init':>12s}")
for name, t, r, ok, rule in rows:
    print(f"{name:32s} {t:12.3f} {r:12.3f}   {'ok' if ok else 'FAILED'} ({rule})")
sys.exit(0 if all(r[3] for r in rows) else 1)
PY
