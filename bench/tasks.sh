#!/usr/bin/env bash
# The multi-label and regression examples end to end, with their out-of-bag and hidden figures
# (docs/tasks.md). Usage, from the repository root after `make install`:
#     bash bench/tasks.sh [HOME]        # HOME: the ledger folder (default: a new temporary one)
# Writes data/tags and data/size (4,000 train / 1,000 test images each), trains experiments/tags.yaml
# and experiments/size.yaml (3 folds each, one run at a time), bags them with --tune-weights and scores
# the CSVs against the hidden solution.csv. About 25 minutes on one free AVX-512 core.
set -euo pipefail
home=${1:-$(mktemp -d)}
L=.venv/bin/ledger
$L data fashion-tags data/tags --force > /dev/null
$L data fashion-size data/size --force > /dev/null
for name in tags size; do
  metric=$([ "$name" = tags ] && echo f2_samples || echo rmse)
  $L train "experiments/$name.yaml" --home "$home" --jobs 1 > "$home/$name-train.log" 2>&1
  $L ensemble "experiments/$name.yaml" --home "$home" --out "$home/$name.csv" --tune-weights --json \
    > "$home/$name-ensemble.json"
  oob=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['oob_score'])" "$home/$name-ensemble.json")
  hidden=$($L score "$home/$name.csv" "data/$name/solution.csv" --metric "$metric" --json |
           python3 -c "import json,sys; print(json.load(sys.stdin)['score'])")
  echo "$name: out-of-bag $metric $oob, hidden $hidden"
done
echo "logs in $home"
