#!/usr/bin/env bash
# The embedded default against an earlier one, timed one after the other on this machine, then both
# again with AVX2 kernels only (torch's and oneDNN's AVX2 code paths, as a CPU without AVX-512 runs
# them). Usage, from the repository root after `make data`:
#     bash bench/compare_default.sh 985f9a0 [JOBS]   # a commit whose experiments/fashion.yaml to compare
# Each line: which, the wall seconds of probe + train + ensemble + score, and the hidden accuracy.
# The earlier spec probes and trains with --jobs JOBS (default 1: one run at a time), as `make
# submission` did at that commit (2 from 30f91e2 on); the current one as `make submission` runs it now.
set -euo pipefail
rev=${1:?a git revision}
jobs=${2:-1}
out=$(mktemp -d)
git show "$rev:experiments/fashion.yaml" > experiments/.compare-$rev.yaml
trap 'rm -f experiments/.compare-$rev.yaml' EXIT INT TERM
L=.venv/bin/ledger
earlier() {
  local home=$out/earlier-$1 start=$SECONDS
  $L probe-memory experiments/.compare-$rev.yaml --home "$home" --jobs "$jobs" > "$home.log" 2>&1
  $L train experiments/.compare-$rev.yaml --home "$home" --jobs "$jobs" >> "$home.log" 2>&1
  $L ensemble experiments/.compare-$rev.yaml --home "$home" --out "$home.csv" --tune-weights >> "$home.log" 2>&1
  $L score "$home.csv" data/fashion/solution.csv >> "$home.log" 2>&1
  echo "$rev ($1): $((SECONDS - start)) s, $(grep -o 'accuracy [0-9.]* on 2000' "$home.log" | tail -1)"
}
current() {
  local start=$SECONDS
  make submission SUBMISSION="$out/current-$1.csv" > "$out/current-$1.log" 2>&1
  echo "current ($1): $((SECONDS - start)) s, $(grep -o 'accuracy [0-9.]* on 2000' "$out/current-$1.log" | tail -1)"
}
earlier avx512; current avx512
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
earlier avx2; current avx2
echo "logs in $out"
