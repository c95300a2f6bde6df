#!/usr/bin/env bash
# The paper's ablation rows (spec §9.2) on the tiny world, after `make demo` (`make ablations`, about
# 9 minutes on 2 cores). From the demo's SFT model and data:
#   PRISM → GRPO with a dense discriminator (upcycle_moe.py --experts 1, warmed up the same way), and
#   PRISM → GRPO with a text-only discriminator (--disc-text-only in warm-up and alignment),
# then eval.py over them next to the demo's full method (MoE discriminator) and SFT → GRPO.
set -euo pipefail
DEMO=${1:-runs/demo}
OUT=${2:-$DEMO/ablations}
source "$(dirname "$0")/stages.sh"
DATA=$DEMO/data
for f in "$DEMO/sft/model" "$DEMO/prism/model" "$DEMO/sft_grpo/model" "$DEMO/prism_grpo/model"; do
    [ -d "$f" ] || { echo "error: $f: missing; run make demo first" >&2; exit 1; }
done
mkdir -p "$OUT"
start=$(date +%s)
stage() { printf '\n=== %s (%ds)\n' "$1" $(( $(date +%s) - start )); }

stage "1/3 dense discriminator: no upcycling; warm-up, alignment, GRPO"
$PY upcycle_moe.py --dense "$DEMO/sft/model" --out "$OUT/dense_disc0" --experts 1 --seed "$SEED"
warm_up "$OUT/dense_disc0" "$OUT/dense_disc"
prism_align "$DEMO/sft/model" "$OUT/dense_disc/discriminator" "$OUT/prism_dense"
rlvr "$OUT/prism_dense/model" grpo "$OUT/prism_dense_grpo"

stage "2/3 text-only discriminator: the demo's upcycled MoE, never shown the image"
warm_up "$DEMO/disc0" "$OUT/text_disc" --disc-text-only
prism_align "$DEMO/sft/model" "$OUT/text_disc/discriminator" "$OUT/prism_text" --disc-text-only
rlvr "$OUT/prism_text/model" grpo "$OUT/prism_text_grpo"

stage "3/3 evaluate next to the full method and SFT → GRPO on the held-out test split"
$PY eval.py --policy "$DEMO/sft/model" "$DEMO/prism/model" "$OUT/prism_dense/model" "$OUT/prism_text/model" \
    "$DEMO/sft_grpo/model" "$DEMO/prism_grpo/model" "$OUT/prism_dense_grpo/model" "$OUT/prism_text_grpo/model" \
    --policy-names SFT PRISM PRISM-dense PRISM-text SFT+GRPO PRISM+GRPO PRISM-dense+GRPO PRISM-text+GRPO \
    --data "$DATA/test.jsonl" --data-names synthetic-test --max-new-tokens "$NEW_TOKENS" --batch-size 50 \
    --out "$OUT/results.json"
$PY scripts/report.py "$OUT" --table-only
printf '\nablations finished in %ds; everything is under %s\n' $(( $(date +%s) - start )) "$OUT"
