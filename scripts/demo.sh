#!/usr/bin/env bash
# The README's main command: fetch the sample photos, build the CPU binary, pre-train the
# `demo` recipe on them (a few minutes on two cores), and draw the paper's Figure 5 on
# photos the run never saw. Leaves in runs/demo/: recipe.toml, metrics.jsonl,
# checkpoints/, loss.png, figure5.png (training photos) and figure5-heldout.png.
#   scripts/demo.sh [extra pretrain flags, e.g. --set optim.epochs=50]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-sample-data.sh data
cargo build --release -p cim-cpu
bin=${CARGO_TARGET_DIR:-target}/release/cim-cpu
out=runs/demo
if [ -d "$out/checkpoints" ]; then
    echo "demo: continuing the run in $out (delete it to start over)"
fi
# auto: continue from the newest checkpoint; with none, start (over, if an earlier start
# of the same recipe died before its first checkpoint).
"$bin" pretrain --recipe demo --data data/photos --out "$out" --resume auto "$@"
"$bin" visualize --checkpoint "$out" --images data/imagenet-val --out "$out/figure5-heldout.png" --count 8
echo "demo: done; see $out/loss.png, $out/figure5.png, $out/figure5-heldout.png and $out/metrics.jsonl"
