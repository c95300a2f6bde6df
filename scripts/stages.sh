# The tiny world's stage commands and hyperparameters, sourced by demo.sh and ablations.sh (one place).
# The values are the tiny world's own, chosen on its validation split (results/search.md); each stage's
# defaults are the published ones. Each can be overridden from the environment (SFT_STEPS=… make demo).
PY=${PYTHON:-.venv/bin/python}
SEED=${SEED:-0}  # one seed drives the data, the initial model and every stage
SFT_STEPS=${SFT_STEPS:-2000} SFT_LR=${SFT_LR:-2e-3}
WARMUP_STEPS=${WARMUP_STEPS:-300} WARMUP_LR=${WARMUP_LR:-1e-3}
ALIGN_STEPS=${ALIGN_STEPS:-40} ALIGN_PROMPTS=${ALIGN_PROMPTS:-4} ALIGN_LR=${ALIGN_LR:-1e-4}
ALIGN_DISC_LR=${ALIGN_DISC_LR:-1e-4} ALPHA=${ALPHA:-0.5}
RL_STEPS=${RL_STEPS:-60} RL_PROMPTS=${RL_PROMPTS:-8} RL_LR=${RL_LR:-1e-4}
NEW_TOKENS=${NEW_TOKENS:-80}
# The tiny model's vision tower is random: trained, it inflates its outputs until colours no longer stand
# out (see the README), so it stays frozen in every stage, as a pretrained one often is.
FREEZE=(--freeze-vision --freeze-merger)
ROLLOUTS=(--rollouts-per-prompt 8 --max-new-tokens "$NEW_TOKENS" --save-every 100000 --seed "$SEED" "${FREEZE[@]}")
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# Per-step lines go to each run's metrics.jsonl; the console keeps the summaries.
quiet() { "$@" | { grep -v '^step' || true; }; }

# warm_up DISC0 OUT [flags…]: the discriminator warm-up on the teacher-versus-student pairs.
warm_up() {
    local disc0=$1 out=$2; shift 2
    quiet $PY upcycle_moe.py warmup --discriminator "$disc0" --data "$DATA/pairs.jsonl" \
        --eval-data "$DATA/pairs_test.jsonl" --out "$out" --steps "$WARMUP_STEPS" --disc-micro-batch 8 \
        --grad-accum 1 --disc-lr "$WARMUP_LR" --save-every 100000 --seed "$SEED" "${FREEZE[@]}" "$@"
}

# prism_align POLICY DISC OUT [flags…]: PRISM alignment of POLICY against the warmed-up DISC.
prism_align() {
    local policy=$1 disc=$2 out=$3; shift 3
    quiet $PY align.py --policy "$policy" --discriminator "$disc" --data "$DATA/align.parquet" --out "$out" \
        --steps "$ALIGN_STEPS" --prompts-per-step "$ALIGN_PROMPTS" --lr "$ALIGN_LR" --disc-lr "$ALIGN_DISC_LR" \
        --disc-micro-batch 8 --alpha "$ALPHA" "${ROLLOUTS[@]}" "$@"
}

# rlvr POLICY ALGO OUT: RLVR of POLICY with grpo, dapo or gspo.
rlvr() {
    quiet $PY rlvr.py --policy "$1" --data "$DATA/rl.parquet" --algo "$2" --out "$3" --steps "$RL_STEPS" \
        --prompts-per-step "$RL_PROMPTS" --lr "$RL_LR" "${ROLLOUTS[@]}"
}
