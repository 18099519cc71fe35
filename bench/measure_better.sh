#!/bin/bash
# Each of issue 20's techniques against the same base, on a Fashion-MNIST subset the tests never use:
# the embedded default's ConvNeXt entry, 8 epochs, folds 1-2 of a 4-fold split (same folds and seeds
# for every variant), TTA n 4. Prints each variant's out-of-bag estimate (the 2,000 held-out images)
# and the hidden-label accuracy of its two-run bag (2,000 test images).
#   bench/measure_better.sh DIR      (about 20 minutes on 2 shared CPU cores)
set -euo pipefail
LEDGER=${LEDGER:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/ledger}
DIR=${1:?usage: bench/measure_better.sh DIR}
mkdir -p "$DIR/logs" "$DIR/subs" && cd "$DIR"
[ -f data/solution.csv ] || $LEDGER data fashion-mnist data --seed 7 --train-per-class 400 --test 2000
spec() {  # name, top-level extra line, extra train settings, extra tta settings
cat > "$1.yaml" <<SPEC
name: $1
data: {root: data, labels: train.csv}
split: {folds: 4, seed: 0}
train: {batch_size: 64, epochs: 8, lr: 0.004, finetune: false, weight_decay: 0.05, precision: auto$3}
tta: {n: 4, beta: 0.25$4}
probe: {budget: 16GiB, steps: 1, margin: 0.05}
$2
models:
  - name: convnext
    arch: convnext_atto
    size: 32
    resize: squish
    runs: 2
    accum: 1
    augment: {max_rotate: 0, max_warp: 0, max_lighting: 0}
    model_kwargs: {patch_size: 2, dims: [16, 32, 64, 128], depths: [1, 1, 3, 1]}
SPEC
}
spec base "" "" ""
spec ema "" ", ema: 0.999" ""
spec clip "" ", clip_grad: 1.0" ""
spec ttasize "" "" ", size: [1.0, 1.25]"
spec pseudo "pseudo: {teacher: base.yaml, threshold: 0.9, weight: 1.0}" "" ""  # base is its teacher
for v in base ema clip ttasize pseudo; do
  $LEDGER train $v.yaml --home home > logs/$v.train.log 2>&1
  $LEDGER ensemble $v.yaml --home home --out subs/$v.csv --json > logs/$v.ensemble.json
  oob=$(python3 -c "import json; print(json.load(open('logs/$v.ensemble.json'))['oob_accuracy'])")
  echo "$v out-of-bag $oob hidden $($LEDGER score subs/$v.csv data/solution.csv | grep '^accuracy')"
done
