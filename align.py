r"""Stage 2 — PRISM alignment: black-box adversarial on-policy distillation against an MoE discriminator (spec §4).

Between SFT and RLVR, the policy is pulled towards the teacher's distribution on its own samples.
A discriminator D (a Qwen3-VL-MoE with a scalar head, from upcycle_moe.py) scores the perception
segment (the <caption> block) and the reasoning segment (<think> + <answer>) of each response
separately; the policy is rewarded for segments D cannot tell from the teacher's, and D is
trained to tell them apart. One step (`alignment_step`), in the release's order (§4.2):

    1. sample G prompts with teacher demonstrations; n rollouts each at temperature 1.0
    2. validate the format; split each rollout into y_cap and y_rea                          (§2.2–§2.3)
    3. reward, D in eval mode and before its update:
           r_cap = clip(D(x ⊕ y_cap), ±10),  r_rea = clip(D(x ⊕ y_rea), ±10)                 (§4.3)
    4. advantage (§4.5): an invalid rollout's scores become (group min over valid) − 1, then
           A_i = α·z_cap,i + (1 − α)·z_rea,i − p·[invalid_i],   z = group z-score
    5. one discriminator step, teacher y_ref against student y_π for each segment k ∈ {cap, rea}:
           L_D = (1/n_valid) Σ_i v_i Σ_k ℓ(D(x ⊕ y_ref,k), D(x ⊕ y_π,k,i)) + λ·R               (§4.4)
       with ℓ the BCE (default) or Bradley-Terry pair loss and R the mean squared score
    6. one policy step: PPO-clip 0.2, token-mean, no KL, no entropy term — RLVR's update     (§4.6)

The paper's ablations (§9.2) by flag: a dense discriminator is `upcycle_moe.py --experts 1`; with
--disc-text-only the discriminator reads each prompt without its images (system prompt and question
text, no vision token) while the policy still sees them.

Usage:
    # CPU, the tiny world (see `make demo`)
    python align.py --policy runs/demo/sft/model --discriminator runs/demo/disc/discriminator \
        --data runs/demo/data/align.parquet --out runs/demo/prism --steps 30 --prompts-per-step 4 \
        --rollouts-per-prompt 8 --max-new-tokens 96 --lr 1e-4 --disc-lr 1e-4
    # 8×H100, the published run (4B policy, 2B-4×MoE discriminator)
    torchrun --nproc_per_node 8 align.py --policy Qwen3-VL-4B-Instruct-SFT \
        --discriminator Qwen3-VL-2B-4X-Moe-warmup-120k --data rl_training_data_5.9k.parquet \
        --out runs/prism-4b --bf16 --gradient-checkpointing

Writes OUT/model (the aligned policy, for rlvr.py), OUT/discriminator, OUT/checkpoints/step_N
(both models and optimizers, for --resume) and OUT/metrics.jsonl.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

import batching
import data
import hf_checkpoint
import model
import policy_gradient as pg
import run
from run import AT_LEAST_ONE, BELOW_ONE, FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, arg


@dataclass
class Args:
    policy: str = arg(None, "HF directory of the SFT policy", required=True)
    discriminator: str = arg(None, "discriminator directory from upcycle_moe.py (warmed up)", required=True)
    data: list[str] = arg([], "prompts with teacher_caption / teacher_cot, one or more files (published parquet "
                              "schema)", required=True)
    out: str = arg(None, "output directory", required=True)
    seed: int = arg(0, "seed for prompt order and sampling")
    steps: int = arg(500, "alignment steps (one discriminator and one policy update each)", check=AT_LEAST_ONE)
    resume: bool = arg(False, "continue from the newest complete checkpoint in --out")
    # rollouts (§4.2)
    prompts_per_step: int = arg(4, "prompts per step, over all ranks", check=AT_LEAST_ONE)
    rollouts_per_prompt: int = arg(16, "responses sampled per prompt", check=AT_LEAST_ONE)
    max_new_tokens: int = arg(6144, "maximum response length", check=AT_LEAST_ONE)
    max_prompt_len: int = arg(2048, "prompts longer than this (images included) are dropped and counted",
                              check=AT_LEAST_ONE)
    temperature: float = arg(1.0, "sampling temperature", check=POSITIVE)
    top_p: float = arg(1.0, "nucleus sampling; 1.0 samples from the full softmax", check=PROBABILITY)
    # reward and advantage (§4.3, §4.5)
    alpha: float = arg(0.5, "weight of the perception score in the advantage; reasoning gets 1 − alpha", check=FRACTION)
    format_penalty: float = arg(1.5, "subtracted from the advantage of a malformed rollout", check=NON_NEGATIVE)
    score_clip: float = arg(model.SCORE_CLIP, "discriminator scores are clipped to ±this", check=POSITIVE)
    # discriminator step (§4.4)
    disc_loss: Literal["bce", "bt"] = arg("bce", "pair loss: bce (GAN form, this project's default) or bt (the "
                                                 "release's Bradley-Terry)")
    score_reg: float = arg(1e-3, "λ of the squared-score regulariser", check=NON_NEGATIVE)
    disc_lr: float = arg(1e-6, "discriminator learning rate (AdamW, constant)", check=run.LEARNING_RATE)
    disc_micro_batch: int = arg(16, "student responses per discriminator forward/backward on each rank, each "
                                    "scored with its teacher on both segments", check=AT_LEAST_ONE)
    disc_text_only: bool = arg(False, "the discriminator reads the prompt without its images: system prompt and "
                                      "question text, no vision token (the text-only ablation); the policy still "
                                      "sees them")
    # policy step (§4.6)
    lr: float = arg(1e-6, "policy learning rate (AdamW, constant)", check=run.LEARNING_RATE)
    clip_low: float = arg(0.2, "ε_low of the clipped surrogate", check=BELOW_ONE)
    clip_high: float = arg(0.2, "ε_high of the clipped surrogate", check=NON_NEGATIVE)
    dual_clip: float = arg(3.0, "dual-clip constant c for A < 0; 0 = off", check=run.DUAL_CLIP)
    micro_batch_tokens: int = arg(8192, "token budget of one policy forward/backward (prompt + response)",
                                  check=AT_LEAST_ONE)
    weight_decay: float = arg(0.01, "AdamW weight decay of both models", check=NON_NEGATIVE)
    max_grad_norm: float = arg(1.0, "clip each model's global gradient norm to this", check=POSITIVE)
    freeze_vision: bool = arg(False, "freeze the vision tower (patch embedding, position embedding, blocks) of both "
                                     "models")
    freeze_merger: bool = arg(False, "freeze the vision-language merger and the DeepStack mergers of both models")
    gradient_checkpointing: bool = arg(False, "recompute decoder activations in backward to save memory")
    bf16: bool = arg(False, "bf16 compute on GPU")
    param_dtype: model.ParamDtype = arg("float32", "dtype the weights and optimizer moments are held in: float32 "
                                        "master weights, or bfloat16 to halve their memory (updates rounded)")
    compile_decode: bool = arg(False, "static KV cache and a torch.compile'd decode step in generate (CUDA graphs "
                                      "on GPU); compiles once per 64-token prompt-length bucket")
    max_skipped_steps: int = arg(10, "stop after this many optimizer steps in a row with a non-finite gradient",
                                 check=AT_LEAST_ONE)
    save_every: int = arg(100, "write a resumable checkpoint every this many steps (and at the end)",
                          check=AT_LEAST_ONE)
    device: str | None = arg(None, "cpu or cuda; default: cuda when available")


# ----------------------------------------------------------------------------------------------
# The math: pure functions on tensors
# ----------------------------------------------------------------------------------------------


def fill_invalid_scores(scores: torch.Tensor, valid: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Spec §4.5 step 1: an invalid rollout scores (min over its group's valid rollouts) − 1.

    A group with no valid rollout uses 0 − 1 = −1. scores, valid, group: (B,). Returns (B,).
    """
    filled = scores.clone()
    for g in group.unique():
        members = group == g
        ok = members & valid
        floor = scores[ok].min() if ok.any() else torch.zeros(())
        filled[members & ~valid] = floor - 1.0
    return filled


def alignment_advantages(r_cap: torch.Tensor, r_rea: torch.Tensor, valid: torch.Tensor, group: torch.Tensor,
                         alpha: float, format_penalty: float) -> torch.Tensor:
    """Spec §4.5 (the released Mode 1):

        A_i = α · z(r_cap)_i + (1 − α) · z(r_rea)_i − p · [rollout i is malformed]

    with invalid scores first filled by fill_invalid_scores and z the group z-score of
    pg.group_advantages (unbiased std, ε = 1e-6). All inputs (B,); returns (B,).
    """
    z_cap = pg.group_advantages(fill_invalid_scores(r_cap, valid, group), group)
    z_rea = pg.group_advantages(fill_invalid_scores(r_rea, valid, group), group)
    return alpha * z_cap + (1.0 - alpha) * z_rea - format_penalty * (~valid).float()


def discriminator_loss(t_cap: torch.Tensor, s_cap: torch.Tensor, t_rea: torch.Tensor, s_rea: torch.Tensor,
                       valid: torch.Tensor, pair_loss, n_valid: float, n_rows: float, score_reg: float):
    """This micro-batch's share of the discriminator loss of one alignment step (spec §4.4, §0.1).

        L_pair = (1/n_valid) Σ_i v_i [ℓ(T_cap,i, S_cap,i) + ℓ(T_rea,i, S_rea,i)]
        R      = ¼ (1/N) Σ_i [S_cap,i² + S_rea,i² + T_cap,i² + T_rea,i²]          (all rollouts, valid or not)
        L_D    = L_pair + λ R                                        if any rollout on any rank is valid
        L_D    = 0.01 (1/N) Σ_i [softplus(−T_cap,i) + softplus(−T_rea,i)] + λ R      otherwise

    All score tensors (B,) are clipped scores for rollout i (T_·,i: the teacher of i's prompt).
    n_valid and N (n_rows) count the whole step on all ranks, so every rank takes the same branch
    and the shares add up to L_D. The fallback only lifts teacher scores; the release uses
    softplus of the mean, here the mean of softplus, which splits over micro-batches.
    """
    reg = (s_cap**2 + s_rea**2 + t_cap**2 + t_rea**2).sum() / (4.0 * n_rows)
    if n_valid > 0:
        pairs = valid.float() * (pair_loss(t_cap, s_cap) + pair_loss(t_rea, s_rea))
        return pairs.sum() / n_valid + score_reg * reg
    fallback = (F.softplus(-t_cap) + F.softplus(-t_rea)).sum() / n_rows
    return 0.01 * fallback + score_reg * reg


# ----------------------------------------------------------------------------------------------
# Segments and their scores
# ----------------------------------------------------------------------------------------------


@dataclass
class Segments:
    """The scored sequences of one step on this rank, as (perception, reasoning) token lists."""

    student: list[tuple[list[int], list[int]]]  # B rollouts
    valid: torch.Tensor  # (B,) bool: the rollout follows the format
    teacher: list[tuple[list[int], list[int]]]  # G prompts


def discriminator_prompts(processor, rollouts: batching.Rollouts, examples: list[data.Example],
                          text_only: bool) -> tuple[batching.VLBatch, int]:
    """What the discriminator reads before each prompt's segments: G rows and their padded width.

    By default the rollouts' own prompt rows (images included); text_only: the prompts re-rendered
    without their images (batching.without_images), so no vision token reaches the discriminator.
    """
    if text_only:
        prompts = batching.encode_prompts(processor, [batching.without_images(e) for e in examples])
        return prompts, prompts.input_ids.shape[1]
    firsts = [int((rollouts.group == g).nonzero()[0]) for g in range(len(examples))]
    return rollouts.batch.select(firsts), rollouts.prompt_len


def split_rollouts(rollouts: batching.Rollouts, examples: list[data.Example], tokenizer) -> Segments:
    """Step 2: each rollout's perception and reasoning segments, and the teacher's for each prompt."""
    splits = [data.split_segments(tokenizer, ids) for ids in rollouts.responses()]
    teacher = [data.text_segments(tokenizer, e.teacher_caption, e.teacher_cot) for e in examples]
    return Segments([s[:2] for s in splits], torch.tensor([s[2] for s in splits]), teacher)


def score_rollouts(disc, prompts: tuple[batching.VLBatch, int], rollouts: batching.Rollouts, segs: Segments,
                   rows: list[int], pad_id: int, args: Args, d: run.Dist) -> model.SegmentScores:
    """Clipped scores of rollouts `rows` and of their prompts' teachers, in one forward; `prompts` is
    discriminator_prompts()."""
    groups = rollouts.group[rows].tolist()
    distinct = sorted(set(groups))
    batch, prompt_len = prompts
    scores, _ = model.score_segments(disc, batch.select(distinct).to(d.device), prompt_len,
                                     [segs.teacher[g] for g in distinct], [segs.student[r] for r in rows],
                                     [distinct.index(g) for g in groups], pad_id, args.score_clip, d, args.bf16)
    return scores


def chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(k, min(n, k + size))) for k in range(0, n, size)]


# ----------------------------------------------------------------------------------------------
# One alignment step
# ----------------------------------------------------------------------------------------------


def alignment_step(policy, disc, optimizers: dict, schedulers: dict, processor, examples: list[data.Example],
                   args: Args, loss_cfg: pg.LossConfig, d: run.Dist,
                   split: Callable[..., Segments] = split_rollouts) -> dict:
    """Steps 1–6 of the module docstring on this rank's prompts; returns the step's metrics and timings.

    `split` (step 2) turns rollouts into segments and validity; tests pass their own.
    """
    tokenizer, pad_id = processor.tokenizer, processor.tokenizer.pad_token_id
    # 1. Prompts carrying teacher demonstrations; n rollouts each.
    t0 = time.time()
    rollouts = model.generate_rollouts(policy, batching.encode_prompts(processor, examples).to(d.device), tokenizer,
                                       args.rollouts_per_prompt, args.max_new_tokens, args.temperature, args.top_p,
                                       bf16=args.bf16, compile_decode=args.compile_decode)
    t1 = time.time()

    # 2. Validate the format and split every rollout into its two segments.
    segs = split(rollouts, examples, tokenizer)
    B = len(segs.valid)
    prompts = discriminator_prompts(processor, rollouts, examples, args.disc_text_only)

    # 3. Reward: D in eval mode, before its update. Malformed rollouts are scored too (and their
    #    scores discarded) so that every rank runs the same forwards.
    disc.eval()
    with torch.no_grad():
        scores = model.SegmentScores.cat([score_rollouts(disc, prompts, rollouts, segs, rows, pad_id, args, d)
                                          for rows in chunks(B, args.disc_micro_batch)])
    r_cap, r_rea = scores.student_perception.cpu() * segs.valid, scores.student_reasoning.cpu() * segs.valid

    # 4. Advantages from the two segment rewards.
    advantages = alignment_advantages(r_cap, r_rea, segs.valid, rollouts.group.cpu(), args.alpha,
                                      args.format_penalty)
    t2 = time.time()

    # 5. One discriminator step: teacher against student, both segments, valid rollouts.
    disc.train()
    n_valid, n_rows = run.global_sum(segs.valid.sum().item(), d), run.global_sum(B, d)
    disc_loss = 0.0
    for rows in chunks(B, args.disc_micro_batch):
        s = score_rollouts(disc, prompts, rollouts, segs, rows, pad_id, args, d)
        loss = discriminator_loss(s.teacher_perception, s.student_perception, s.teacher_reasoning,
                                  s.student_reasoning, segs.valid[rows].to(d.device),
                                  model.DISCRIMINATOR_LOSSES[args.disc_loss], n_valid, n_rows, args.score_reg)
        loss.backward()
        disc_loss += loss.item()
    disc_grad_norm, disc_stepped = run.clip_and_step(disc, optimizers["discriminator"], schedulers["discriminator"],
                                                     args.max_grad_norm)
    t3 = time.time()

    # 6. One policy step with RLVR's clipped policy gradient (policy_gradient.py), the discriminator as the reward.
    metrics = pg.policy_update(policy, optimizers["policy"], schedulers["policy"], rollouts, advantages,
                                 rollouts.response_mask.cpu(), loss_cfg, args.micro_batch_tokens, args.max_grad_norm,
                                 d, args.bf16)
    t4 = time.time()

    metrics["optim/policy_grad_norm"] = metrics.pop("optim/grad_norm")
    lengths = rollouts.response_mask.sum(-1).cpu().float()
    return metrics | model.segment_metrics(scores, segs.valid.to(scores.student_perception.device), d) | {
        "loss/disc": run.global_sum(disc_loss, d), "optim/disc_grad_norm": disc_grad_norm,
        "optim/disc_skipped_step": float(not disc_stepped), "reward/format": n_valid / n_rows,
        "response/length_mean": run.global_sum(lengths.sum().item(), d) / n_rows,
        "response/truncation_rate": run.global_sum(rollouts.truncated.sum().item(), d) / n_rows,
        "time/rollout_s": t1 - t0, "time/scoring_s": t2 - t1, "time/disc_update_s": t3 - t2,
        "time/policy_update_s": t4 - t3}


# ----------------------------------------------------------------------------------------------
# Setup and the loop
# ----------------------------------------------------------------------------------------------


def main(args: Args, split: Callable[..., Segments] = split_rollouts) -> None:
    d = run.init_distributed(args.device)
    if args.prompts_per_step % d.world_size:
        raise run.flag_error("prompts_per_step", args.prompts_per_step, f"must divide by the {d.world_size} ranks")
    run.seed_everything(args.seed + d.rank)  # ranks sample different responses
    out = Path(args.out)
    processor = hf_checkpoint.load_processor(args.policy)
    if hf_checkpoint.load_processor(args.discriminator).tokenizer.get_vocab() != processor.tokenizer.get_vocab():
        raise data.DataError(f"{args.discriminator} and {args.policy} must share one tokenizer: the discriminator "
                             "reads the policy's tokens")
    # Every file is read and checked before any model is loaded: bad data fails here, naming the record.
    prompts = [e for f in args.data for e in data.load_prompts(f, data.control_tokens(processor.tokenizer))]
    for e in prompts:
        e.teacher_response()  # raises, naming the record, if a demonstration is missing
    prompts, dropped = batching.drop_long_prompts(processor, prompts, args.max_prompt_len)
    batching.require_some_kept(prompts, dropped, "prompts", "--max-prompt-len", args.max_prompt_len)
    # A text-only discriminator's vision encoder never runs: no gradient, no optimizer state to save.
    text_only = args.disc_text_only
    models = {"policy": model.load_sharded(model.Policy, args.policy, d, args.bf16, model.training_setup(
                  args.freeze_vision, args.freeze_merger, args.gradient_checkpointing), args.param_dtype),
              "discriminator": model.load_sharded(model.Discriminator, args.discriminator, d, args.bf16,
                                                  model.training_setup(args.freeze_vision or text_only,
                                                                       args.freeze_merger or text_only,
                                                                       args.gradient_checkpointing),
                                                  args.param_dtype)}
    disc = models["discriminator"]
    optimizers, schedulers = {}, {}
    for name, lr in (("policy", args.lr), ("discriminator", args.disc_lr)):
        optimizers[name], schedulers[name] = run.make_optimizer(models[name], lr, args.weight_decay, args.steps, 1,
                                                                "constant")
    loss_cfg = pg.LossConfig.from_args(args)
    training = run.TrainingRun(out, d, models, optimizers, schedulers, args,
                               ("disc/perception/gap", "disc/reasoning/gap", "reward/format", "loss/disc",
                                "response/length_mean", "time/rollout_s"))
    if d.is_main:
        print(f"PRISM alignment: {len(prompts)} prompts ({dropped} too long, dropped), {args.prompts_per_step} × "
              f"{args.rollouts_per_prompt} rollouts per step, {args.disc_loss} discriminator loss, α = {args.alpha}; "
              f"discriminator {disc.describe()}{', text only' if args.disc_text_only else ''}")

    def step(k: int) -> dict:
        picked = batching.stream_indices(len(prompts), args.seed, k * args.prompts_per_step, args.prompts_per_step)
        examples = [prompts[i] for i in run.rank_share(picked, d)]
        return alignment_step(models["policy"], models["discriminator"], optimizers, schedulers, processor, examples,
                              args, loss_cfg, d, split)

    training.loop(args.steps, step, "prism")
    models["policy"].save_pretrained(processor, out / "model", d)
    models["discriminator"].save_pretrained(processor, out / "discriminator", d)
    if d.is_main:
        print(f"saved {out / 'model'} and {out / 'discriminator'}")


if __name__ == "__main__":
    run.run_stage(main, Args)
