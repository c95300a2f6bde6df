#!/usr/bin/env bash
# The whole PRISM pipeline on the tiny world, on CPU (`make demo`, about 5 minutes on 2 cores):
#   synthesize → tiny Qwen3-VL → SFT → upcycle + warm-up → PRISM alignment → GRPO,
#   beside SFT → GRPO, then eval.py over the five checkpoints of the paper's main table.
# Hyperparameters are the tiny world's own (larger learning rates, short runs); each stage's
# defaults are the published ones.
set -euo pipefail
OUT=${1:-runs/demo}
SEED=${SEED:-0}  # one seed drives the data, the initial model and every stage
PY=${PYTHON:-.venv/bin/python}
# SMOKE=1: the same pipeline at the smallest size, for the test suite (a minute, numbers meaningless).
if [ "${SMOKE:-0}" = 1 ]; then
    SIZES=(--n-sft-teacher 8 --n-sft-public 8 --n-align 4 --n-rl 4 --n-pairs 8 --n-pairs-test 4 --n-test 4)
    SFT_STEPS=2 WARMUP_STEPS=2 ALIGN_STEPS=1 RL_STEPS=1 NEW_TOKENS=8
else
    SIZES=()
    SFT_STEPS=300 WARMUP_STEPS=60 ALIGN_STEPS=30 RL_STEPS=40 NEW_TOKENS=96
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
start=$(date +%s)
stage() { printf '\n=== %s (%ds)\n' "$1" $(( $(date +%s) - start )); }
# Per-step lines go to each run's metrics.jsonl; the console keeps the summaries.
quiet() { "$@" | { grep -v '^step' || true; }; }

stage "1/8 synthesize the shapes task"
$PY -m toy.world --out "$OUT/data" --seed "$SEED" "${SIZES[@]}"

stage "2/8 build the tiny Qwen3-VL"
$PY -m toy.models --out "$OUT/tiny" --seed "$SEED"

stage "3/8 SFT on the public + teacher mixture"
quiet $PY sft.py --policy "$OUT/tiny" --data "$OUT/data/sft_public.jsonl" "$OUT/data/sft_teacher.jsonl" \
    --out "$OUT/sft" --steps "$SFT_STEPS" --micro-batch 16 --lr 2e-3 --warmup-ratio 0.05 --save-every 1000 --seed "$SEED"

stage "4/8 upcycle the SFT model into a 4-expert MoE discriminator and warm it up"
$PY upcycle_moe.py --dense "$OUT/sft/model" --out "$OUT/disc0" --seed "$SEED"
quiet $PY upcycle_moe.py warmup --discriminator "$OUT/disc0" --data "$OUT/data/pairs.jsonl" \
    --eval-data "$OUT/data/pairs_test.jsonl" --out "$OUT/disc" --steps "$WARMUP_STEPS" --disc-micro-batch 8 --grad-accum 1 \
    --disc-lr 1e-3 --save-every 1000 --seed "$SEED"

RL=(--prompts-per-step 4 --rollouts-per-prompt 8 --max-new-tokens "$NEW_TOKENS" --save-every 1000 --seed "$SEED")
stage "5/8 PRISM alignment of the SFT policy against the discriminator"
quiet $PY align.py --policy "$OUT/sft/model" --discriminator "$OUT/disc/discriminator" --data "$OUT/data/align.parquet" \
    --out "$OUT/prism" --steps "$ALIGN_STEPS" --lr 1e-4 --disc-lr 1e-4 --disc-micro-batch 8 "${RL[@]}"

stage "6/8 GRPO from SFT (the SFT→RLVR baseline)"
quiet $PY rlvr.py --policy "$OUT/sft/model" --data "$OUT/data/rl.parquet" --algo grpo --out "$OUT/sft_grpo" \
    --steps "$RL_STEPS" --lr 1e-4 "${RL[@]}"

stage "7/8 GRPO from PRISM (PRISM→RLVR)"
quiet $PY rlvr.py --policy "$OUT/prism/model" --data "$OUT/data/rl.parquet" --algo grpo --out "$OUT/prism_grpo" \
    --steps "$RL_STEPS" --lr 1e-4 "${RL[@]}"

stage "8/8 evaluate the five checkpoints on the held-out test set"
$PY eval.py --policy "$OUT/tiny" "$OUT/sft/model" "$OUT/prism/model" "$OUT/sft_grpo/model" "$OUT/prism_grpo/model" \
    --policy-names Base SFT PRISM SFT+GRPO PRISM+GRPO --data "$OUT/data/test.jsonl" --data-names synthetic-test \
    --max-new-tokens "$NEW_TOKENS" --out "$OUT/results.json"
$PY scripts/report.py "$OUT"
printf '\ndemo finished in %ds; everything is under %s\n' $(( $(date +%s) - start )) "$OUT"
