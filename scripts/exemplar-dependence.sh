#!/bin/bash
# Diagnostic of issue 5: does the demo learn exemplar-dependent maps or only
# a location prior? Splits data/photos into train (4 of 5) and held-out (1 of 5), pre-trains
# one configuration and prints, on the held-out photos and on data/imagenet-val, the matched
# vs swapped IoU (pred of exemplar k against gt of exemplar k vs k' != k of the same context)
# and the spread (within-context variance across exemplars / total variance; 0 = prior).
# usage: scripts/exemplar-dependence.sh NAME [pretrain args...]
#   e.g. scripts/exemplar-dependence.sh base --recipe demo
#        scripts/exemplar-dependence.sh conv --recipe demo \
#          --set model.correlation=conv --set data.color_jitter=false --set data.grayscale=false \
#          --set data.blur=false --set data.solarize=false --set data.flip=false
set -euo pipefail
name=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
work=${WORK:-/tmp/cim-learn}
(cd "$root" && cargo build --release -q -p cim-cpu --bin cim-cpu --example exemplar_dependence)
mkdir -p "$work/train" "$work/held"
i=0
for f in "$root"/data/photos/*; do
  if [ $((i % 5)) -eq 4 ]; then ln -sf "$f" "$work/held/"; else ln -sf "$f" "$work/train/"; fi
  i=$((i + 1))
done
rm -rf "${work:?}/$name"
s=$(date +%s)
nice -n 19 "$target/release/cim-cpu" pretrain --data "$work/train" --out "$work/$name" --no-progress "$@" | tail -1
echo "pretrain took $(( $(date +%s) - s ))s"
E=$target/release/examples/exemplar_dependence
for seed in 1234 7; do
  echo -n "held-out photos, seed $seed: "; nice -n 19 "$E" eval "$work/$name" "$work/held" "$(ls "$work/held" | wc -l)" $seed
  if [ -d "$root/data/imagenet-val" ]; then
    echo -n "imagenet-val,    seed $seed: "; nice -n 19 "$E" eval "$work/$name" "$root/data/imagenet-val" 20 $seed
  fi
done
