#!/usr/bin/env bash
# The whole PRISM pipeline on the tiny world, on CPU (`make demo`, about 10 minutes on 2 cores):
#   synthesize → tiny Qwen3-VL → SFT → upcycle + warm-up → PRISM alignment → GRPO,
#   beside SFT → GRPO, then eval.py over the five checkpoints of the paper's main table.
# Hyperparameters and stage commands: scripts/stages.sh. ALGOS="grpo dapo gspo" adds the other two
# RL algorithms from both starts. eval.py answers the held-out test split (reported) and the validation
# split (on which the hyperparameters were chosen, results/search.md).
set -euo pipefail
OUT=${1:-runs/demo}
ALGOS=${ALGOS:-grpo}
# SMOKE=1: the same pipeline at the smallest size, for the test suite (a minute, numbers meaningless).
if [ "${SMOKE:-0}" = 1 ]; then
    SIZES=(--n-sft-teacher 8 --n-sft-public 8 --n-align 4 --n-rl 4 --n-pairs 8 --n-pairs-test 4 --n-val 4
           --n-test 4)
    export SFT_STEPS=2 WARMUP_STEPS=2 ALIGN_STEPS=1 RL_STEPS=1 RL_PROMPTS=4 NEW_TOKENS=8
else
    SIZES=()
fi
source "$(dirname "$0")/stages.sh"
DATA=$OUT/data
mkdir -p "$OUT"
start=$(date +%s)
stage() { printf '\n=== %s (%ds)\n' "$1" $(( $(date +%s) - start )); }

stage "1/8 synthesize the shapes task"
$PY -m toy.world --out "$DATA" --seed "$SEED" "${SIZES[@]}"

stage "2/8 build the tiny Qwen3-VL"
$PY -m toy.models --out "$OUT/tiny" --seed "$SEED"

stage "3/8 SFT on the public + teacher mixture"
quiet $PY sft.py --policy "$OUT/tiny" --data "$DATA/sft_public.jsonl" "$DATA/sft_teacher.jsonl" \
    --out "$OUT/sft" --steps "$SFT_STEPS" --micro-batch 16 --lr "$SFT_LR" --warmup-ratio 0.05 --save-every 100000 \
    --seed "$SEED" "${FREEZE[@]}"

stage "4/8 upcycle the SFT model into a 4-expert MoE discriminator and warm it up"
$PY upcycle_moe.py --dense "$OUT/sft/model" --out "$OUT/disc0" --seed "$SEED"
warm_up "$OUT/disc0" "$OUT/disc"

stage "5/8 PRISM alignment of the SFT policy against the discriminator"
prism_align "$OUT/sft/model" "$OUT/disc/discriminator" "$OUT/prism"

POLICIES=("$OUT/tiny" "$OUT/sft/model" "$OUT/prism/model")
NAMES=(Base SFT PRISM)
for algo in $ALGOS; do
    stage "6/8 ${algo^^} from SFT (the SFT→RLVR baseline)"
    rlvr "$OUT/sft/model" "$algo" "$OUT/sft_$algo"
    stage "7/8 ${algo^^} from PRISM (PRISM→RLVR)"
    rlvr "$OUT/prism/model" "$algo" "$OUT/prism_$algo"
    POLICIES+=("$OUT/sft_$algo/model" "$OUT/prism_$algo/model")
    NAMES+=("SFT+${algo^^}" "PRISM+${algo^^}")
done

stage "8/8 evaluate the checkpoints on the held-out test and validation splits"
$PY eval.py --policy "${POLICIES[@]}" --policy-names "${NAMES[@]}" --data "$DATA/test.jsonl" "$DATA/val.jsonl" \
    --data-names synthetic-test synthetic-val --max-new-tokens "$NEW_TOKENS" --batch-size 50 \
    --out "$OUT/results.json"
$PY scripts/report.py "$OUT"
printf '\ndemo finished in %ds; everything is under %s\n' $(( $(date +%s) - start )) "$OUT"
