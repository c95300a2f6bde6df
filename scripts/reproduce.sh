#!/usr/bin/env bash
# The demo's multi-seed table (`SEEDS=0,1,2,3,4 make reproduce`, about 75 minutes on 2 cores):
# scripts/demo.sh once per seed — GRPO from SFT and from PRISM on every seed, DAPO and GSPO as well on
# the first EXTRA_SEEDS seeds — JOBS seeds at a time (one thread each: the tiny model's matrices are too
# small to gain from a second thread, and the results do not depend on the thread count), then
# scripts/seeds.py writes OUT/seeds-synthetic-test.md (and -val): every seed's number, the mean and the standard deviation.
set -euo pipefail
OUT=${1:-runs/reproduce}
SEEDS=${SEEDS:-0,1,2,3,4}
EXTRA_SEEDS=${EXTRA_SEEDS:-2}
JOBS=${JOBS:-2}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
start=$(date +%s)
n=0
for seed in ${SEEDS//,/ }; do
    algos="grpo"
    [ "$n" -lt "$EXTRA_SEEDS" ] && algos="grpo dapo gspo"
    n=$((n + 1))
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    printf 'seed %s (%s): log %s (%ds)\n' "$seed" "$algos" "$OUT/seed$seed.log" $(( $(date +%s) - start ))
    threads=$(( JOBS > 1 ? 1 : 2 ))
    OMP_NUM_THREADS=$threads SEED=$seed ALGOS=$algos bash scripts/demo.sh "$OUT/seed$seed" > "$OUT/seed$seed.log" 2>&1 &
done
failed=0
for job in $(jobs -p); do wait "$job" || failed=1; done
[ "$failed" = 0 ] || { echo "error: a seed failed; see $OUT/seed*.log" >&2; exit 1; }
$PY scripts/seeds.py "$OUT"/seed*/ --out "$OUT"
$PY scripts/seeds.py "$OUT"/seed*/ --out "$OUT" --split synthetic-val
printf 'reproduce finished in %ds\n' $(( $(date +%s) - start ))
