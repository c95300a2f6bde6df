"""Stage 3 — RL with verifiable rewards: GRPO, DAPO or GSPO, selected by --algo (spec §5).

Each step samples prompts, rolls out n responses per prompt, grades them, and takes one
policy-gradient step:

    reward       R_i = 0.8·acc_i + 0.2·format_i                       (§5.1; + DAPO's overlong shaping)
    advantage    A_i = (R_i − mean_g R) / (std_g R + ε)                 (group g = the n rollouts of a prompt)
    ratio        ρ_{i,t} = π_θ(y_{i,t} | ·) / π_old(y_{i,t} | ·)         (GSPO: a length-normalised sequence ratio)
    loss         max(−A ρ, −A clip(ρ, 1−ε_low, 1+ε_high)), capped at −c·A for A < 0 (dual clip)
                 aggregated over the whole step (token-mean, or per-sequence means)

`--algo` selects the published settings (§5.3–§5.5) as defaults; every piece is its own flag.
The pieces are separable — rollout → reward → advantage → policy loss → optimizer step — and
align.py reuses `policy_update` with a learned reward in place of the verifiable one.

As published, each batch takes exactly one optimizer step, so π_old is the policy that is being
updated: the old log-probs are the training forward's own, detached, and ρ ≡ 1 at the update
(the clipping terms only act if you add more updates per batch).

Usage:
    # CPU, the tiny world (see `make demo`)
    python rlvr.py --policy runs/demo/sft/model --data runs/demo/data/rl.parquet --algo grpo --out runs/demo/grpo \
        --steps 40 --prompts-per-step 4 --rollouts-per-prompt 8 --max-new-tokens 96 --lr 1e-4
    # 8×H100, after PRISM alignment, with the published DAPO settings
    torchrun --nproc_per_node 8 rlvr.py --policy Qwen3-VL-4B-Instruct-SFT-PRISM \
        --data rl_training_data_filtered_2k.parquet --algo dapo --out runs/prism-dapo --bf16 --gradient-checkpointing

Writes OUT/model (HF directory), OUT/checkpoints/step_N (for --resume) and OUT/metrics.jsonl.
"""

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import model
from model import arg

# The published settings (§5.3 GRPO, §5.4 DAPO, §5.5 GSPO): the defaults of the flags left unset.
PRESETS = {
    "grpo": dict(policy_loss="ppo", clip_low=0.2, clip_high=0.2, dual_clip=3.0, loss_agg="token-mean",
                 dynamic_sampling=False, overlong_buffer=0, weight_decay=0.01, warmup_steps=0),
    "dapo": dict(policy_loss="ppo", clip_low=0.2, clip_high=0.28, dual_clip=10.0, loss_agg="token-mean",
                 dynamic_sampling=True, overlong_buffer=4096, weight_decay=0.1, warmup_steps=10),
    "gspo": dict(policy_loss="gspo", clip_low=3e-4, clip_high=4e-4, dual_clip=0.0, loss_agg="seq-mean-token-mean",
                 dynamic_sampling=False, overlong_buffer=0, weight_decay=0.1, warmup_steps=-0.05),
}
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


@dataclass
class Args:
    policy: str = arg(None, "HF directory of the policy (the SFT or PRISM-aligned model)", required=True)
    data: str = arg(None, "RL prompts: parquet in the published schema, or evaluation JSONL", required=True)
    out: str = arg(None, "output directory", required=True)
    algo: str = arg("grpo", "published preset for the flags left unset", choices=list(PRESETS))
    seed: int = arg(0, "seed for prompt order and sampling")
    steps: int = arg(1500, "optimizer steps (one per batch)")
    resume: bool = arg(False, "continue from the newest complete checkpoint in --out")
    # rollouts (§5.2)
    prompts_per_step: int = arg(32, "prompts (groups) per optimizer step, over all ranks")
    rollouts_per_prompt: int = arg(16, "responses sampled per prompt (the group size n)")
    max_new_tokens: int = arg(8192, "maximum response length; longer responses are cut and flagged")
    max_prompt_len: int = arg(2048, "prompts longer than this (images included) are dropped and counted")
    temperature: float = arg(1.0, "sampling temperature (log-probs are taken at the same temperature)")
    top_p: float = arg(1.0, "nucleus sampling; 1.0 samples from the full softmax")
    # reward shaping and sampling
    overlong_buffer: int = arg(None, "DAPO overlong shaping: penalise the last this-many tokens before the limit; "
                                     "0 = off (default per --algo)")
    overlong_penalty: float = arg(1.0, "DAPO overlong shaping: penalty at the limit")
    dynamic_sampling: bool = arg(None, "DAPO: drop groups whose accuracy does not vary, sample more prompts "
                                       "(default per --algo)")
    prompts_per_round: int = arg(0, "dynamic sampling: prompts drawn per round; 0 = 3 × prompts-per-step")
    max_sampling_rounds: int = arg(10, "dynamic sampling: rounds before giving up with an error")
    # advantage and policy loss
    std_normalize: bool = arg(True, "divide advantages by the group std (off = Dr. GRPO)")
    policy_loss: str = arg(None, "ppo (token ratios) or gspo (sequence ratio) (default per --algo)",
                           choices=["ppo", "gspo"])
    clip_low: float = arg(None, "ε_low of the clipped surrogate (default per --algo)")
    clip_high: float = arg(None, "ε_high, > ε_low for DAPO's clip-higher (default per --algo)")
    dual_clip: float = arg(None, "dual-clip constant c for A < 0; 0 = off (default per --algo)")
    loss_agg: str = arg(None, "loss aggregation over the step (default per --algo)", choices=list(AGGREGATIONS))
    kl_coef: float = arg(0.0, "KL penalty to the initial policy; 0 loads no reference model (all presets: 0)")
    kl_estimator: str = arg("k3", "KL estimator", choices=["k1", "k2", "k3"])
    mask_truncated: bool = arg(False, "leave responses cut by the length limit out of the loss")
    # optimisation
    lr: float = arg(1e-6, "learning rate (AdamW, constant after warm-up)")
    weight_decay: float = arg(None, "AdamW weight decay (default per --algo)")
    warmup_steps: float = arg(None, "linear warm-up steps; a negative value is a ratio of --steps (default per --algo)")
    max_grad_norm: float = arg(1.0, "clip the global gradient norm to this")
    micro_batch_tokens: int = arg(10240, "token budget of one forward/backward (prompt + response, padding "
                                         "included); rows of similar length are grouped")
    gradient_checkpointing: bool = arg(False, "recompute decoder activations in backward to save memory")
    bf16: bool = arg(False, "bf16 compute on GPU")
    compile_decode: bool = arg(False, "static KV cache and a torch.compile'd decode step in generate (CUDA graphs "
                                      "on GPU); compiles once per 64-token prompt-length bucket")
    max_skipped_steps: int = arg(10, "stop after this many optimizer steps in a row with a non-finite gradient")
    save_every: int = arg(120, "write a resumable checkpoint every this many steps (and at the end)")
    device: str = arg(None, "cpu or cuda; default: cuda when available")


def with_preset(args):
    """Fill every flag left unset (None) from the --algo preset."""
    preset = PRESETS[args.algo]
    return dataclasses.replace(args, **{k: v for k, v in preset.items() if getattr(args, k) is None})


# ----------------------------------------------------------------------------------------------
# The math: pure functions on tensors
# ----------------------------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, group: torch.Tensor, std_normalize: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """GRPO: A_i = (R_i − mean_g R) / (std_g R + ε), std unbiased; Dr. GRPO drops the division.

    rewards, group: (B,). A group of one has mean 0 and std 1 (A = R), as in verl.
    """
    adv = torch.empty_like(rewards)
    for g in group.unique():
        members = group == g
        r = rewards[members]
        mean, std = (r.mean(), r.std()) if r.numel() > 1 else (torch.zeros(()), torch.ones(()))
        adv[members] = (r - mean) / (std + eps) if std_normalize else r - mean
    return adv


def ppo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip_low: float,
                  clip_high: float, dual_clip: float = 0.0):
    """Token-level clipped surrogate with decoupled clip range and dual clip (verl "vanilla").

        ρ = exp(clamp(log π − log π_old, −20, 20))
        ℓ = max(−A ρ, −A clip(ρ, 1 − ε_low, 1 + ε_high))
        ℓ = min(ℓ, −c A)   for A < 0 when c > 0 (dual clip)

    logp, old_logp: (B, T); adv: (B,) or (B, T). Returns (ℓ (B, T), clipped_low (B, T) bool,
    clipped_high (B, T) bool): where the clipped term is the one taken below / above the range.
    """
    adv = adv[:, None] if adv.dim() == 1 else adv
    ratio = torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    taken = clipped > unclipped
    clipped_low, clipped_high = taken & (ratio < 1.0 - clip_low), taken & (ratio > 1.0 + clip_high)
    if dual_clip > 0:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
    return loss, clipped_low, clipped_high


def gspo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
              clip_low: float, clip_high: float):
    """GSPO: a sequence-level, length-normalised ratio with per-token gradients.

        ℓ_i     = (1/|y_i|) Σ_t (log π_θ − log π_old)                    (log of the sequence ratio)
        s_{i,t} = exp(sg[ℓ_i] + log π_θ,t − sg[log π_θ,t])   (clamped at e¹⁰; value s_i, gradient ∇log π_θ,t)
        loss    = max(−A s, −A clip(s, 1 − ε_low, 1 + ε_high))           (no dual clip)

    Aggregated as a per-sequence token mean, the gradient is that of the sequence objective
    A_i · s_i with s_i = (π_θ(y_i) / π_old(y_i))^{1/|y_i|}. Shapes and returns as ppo_clip_loss.
    """
    adv = adv[:, None] if adv.dim() == 1 else adv
    lengths = mask.sum(-1).clamp(min=1)
    seq_log_ratio = ((logp - old_logp) * mask).sum(-1) / lengths  # (B,)
    log_s = seq_log_ratio.detach()[:, None] + logp - logp.detach()
    s = torch.exp(torch.clamp(log_s, max=10.0))
    unclipped = -adv * s
    clipped = -adv * torch.clamp(s, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    taken = clipped > unclipped
    return loss, taken & (s < 1.0 - clip_low), taken & (s > 1.0 + clip_high)


def aggregate_loss(token_loss: torch.Tensor, mask: torch.Tensor, mode: str, total_tokens: float,
                   total_seqs: float, max_len: int) -> torch.Tensor:
    """This micro-batch's share of the step loss; the shares of all micro-batches and ranks add up to it.

        token-mean               Σ_{i,t} ℓ_{i,t} / N_tokens
        seq-mean-token-mean      Σ_i [Σ_t ℓ_{i,t} / |y_i|] / N_seqs
        seq-mean-token-sum       Σ_i Σ_t ℓ_{i,t} / N_seqs
        seq-mean-token-sum-norm  Σ_i Σ_t ℓ_{i,t} / (N_seqs · L_max)          (Dr. GRPO's constant normaliser)

    token_loss, mask: (B, T). N_tokens / N_seqs count the whole optimizer step on all ranks, so
    sequences are weighted the same whichever micro-batch they fall in.
    """
    masked = token_loss * mask
    if mode == "token-mean":
        return masked.sum() / total_tokens
    per_seq = masked.sum(-1)
    if mode == "seq-mean-token-mean":
        return (per_seq / mask.sum(-1).clamp(min=1)).sum() / total_seqs
    if mode == "seq-mean-token-sum":
        return per_seq.sum() / total_seqs
    if mode == "seq-mean-token-sum-norm":
        return per_seq.sum() / (total_seqs * max_len)
    raise ValueError(f"unknown loss aggregation {mode!r}")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimates of KL(π_θ ‖ π_ref) from samples of π_θ (Schulman's k1, k2, k3).

        k1 = log π_θ − log π_ref      k2 = ½ (log π_θ − log π_ref)²      k3 = exp(−δ) − 1 + δ,  δ = log π_θ − log π_ref
    """
    delta = logp - ref_logp
    if estimator == "k1":
        return delta
    if estimator == "k2":
        return 0.5 * delta**2
    if estimator == "k3":
        return torch.exp(-delta) - 1.0 + delta
    raise ValueError(f"unknown KL estimator {estimator!r}")


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to L_max − buffer, then linear down to −factor at L_max.

        r_len(L) = min(0, −(L − (L_max − buffer)) / buffer · factor)

    lengths: (B,) response lengths in tokens. Returns (B,) to add to the rewards.
    """
    exceed = lengths.float() - (max_len - buffer)
    return torch.clamp(-exceed / buffer * factor, max=0.0)


def groups_with_varying_accuracy(accuracy: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """DAPO's dynamic-sampling filter: keep a group iff the population std of its accuracy is > 0.

    accuracy, group: (B,) with groups numbered 0 … G−1. Returns (G,) bool: all-right and
    all-wrong groups carry no learning signal (every advantage is 0) and are dropped.
    """
    n_groups = int(group.max()) + 1
    return torch.stack([accuracy[group == g].std(unbiased=False) > 0 for g in range(n_groups)])


# ----------------------------------------------------------------------------------------------
# The update shared with align.py
# ----------------------------------------------------------------------------------------------


@dataclass
class LossConfig:
    """How the policy loss is formed (the defaults are the alignment stage's: PPO-clip 0.2, token-mean)."""

    policy_loss: str = "ppo"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 3.0
    loss_agg: str = "token-mean"
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    max_len: int = 8192  # L_max of seq-mean-token-sum-norm
    temperature: float = 1.0


def policy_update(policy, optimizer, scheduler, rollouts: model.Rollouts, advantages: torch.Tensor,
                  loss_mask: torch.Tensor, cfg: LossConfig, micro_batch_tokens: int, max_grad_norm: float,
                  d: model.Dist, bf16: bool = False, ref_policy=None) -> dict:
    """One optimizer step of the clipped policy gradient on this rank's rollouts.

    advantages: (B,); loss_mask: (B, R), the response tokens that enter the loss (rows of zeros
    are allowed: a rank with nothing to learn from still runs its passes). Micro-batches are cut
    by a token budget, rows of similar length together. Every rank runs the same number of
    forward/backward passes (FSDP2 collectives), repeating a micro-batch at weight 0 where it has
    fewer. Returns metrics summed or averaged over all ranks.
    """
    mask = loss_mask.float()
    total_tokens = max(model.global_sum(mask.sum().item(), d), 1.0)
    total_seqs = max(model.global_sum((mask.sum(-1) > 0).sum().item(), d), 1.0)
    chunks = model.token_budget_batches(rollouts.batch.attention_mask.sum(-1).tolist(), micro_batch_tokens)
    sums = dict(loss=0.0, clip_low=0.0, clip_high=0.0, kl_old=0.0, entropy=0.0, kl_ref=0.0)
    for k in range(model.lockstep_count(len(chunks), d)):
        idx = chunks[k] if k < len(chunks) else chunks[0]
        weight = 1.0 if k < len(chunks) else 0.0
        batch, target, R = rollouts.micro_batch(idx)
        batch, target = batch.to(d.device), target.to(d.device)
        m = mask[idx, :R].to(d.device) * weight
        with model.autocast(d, bf16):
            logp, entropy = policy(batch, target, cfg.temperature, with_entropy=True)
        logp, entropy = logp[:, -R:], entropy[:, -R:]
        old_logp = logp.detach()  # one update per batch: π_old is the policy before this step
        adv = advantages[idx].to(d.device)
        if cfg.policy_loss == "gspo":
            token_loss, low, high = gspo_loss(logp, old_logp, adv, m, cfg.clip_low, cfg.clip_high)
        else:
            token_loss, low, high = ppo_clip_loss(logp, old_logp, adv, cfg.clip_low, cfg.clip_high, cfg.dual_clip)
        if cfg.kl_coef > 0:
            with torch.no_grad(), model.autocast(d, bf16):
                ref_logp = ref_policy(batch, target, cfg.temperature)[0][:, -R:]
            kl = kl_penalty(logp, ref_logp, cfg.kl_estimator)
            token_loss = token_loss + cfg.kl_coef * kl
            sums["kl_ref"] += (kl.detach() * m).sum().item()
        loss = aggregate_loss(token_loss, m, cfg.loss_agg, total_tokens, total_seqs, cfg.max_len)
        loss.backward()
        sums["loss"] += loss.item()
        sums["clip_low"] += (low * m).sum().item()
        sums["clip_high"] += (high * m).sum().item()
        sums["kl_old"] += (kl_penalty(logp.detach(), old_logp, "k3") * m).sum().item()
        sums["entropy"] += (entropy * m).sum().item()
    lr = scheduler.get_last_lr()[0]
    grad_norm, stepped = model.clip_and_step(policy, optimizer, scheduler, max_grad_norm)
    g = {k: model.global_sum(v, d) for k, v in sums.items()}
    metrics = {"loss/policy": g["loss"], "policy/clipfrac_low": g["clip_low"] / total_tokens,
               "policy/clipfrac_high": g["clip_high"] / total_tokens, "policy/approx_kl": g["kl_old"] / total_tokens,
               "policy/entropy": g["entropy"] / total_tokens, "optim/grad_norm": grad_norm, "optim/lr": lr,
               "optim/skipped_step": float(not stepped)}
    if cfg.kl_coef > 0:
        metrics["policy/kl_ref"] = g["kl_ref"] / total_tokens
    return metrics


def decode_responses(rollouts: model.Rollouts, tokenizer) -> list[str]:
    """Response texts with special tokens (the closing <|im_end|>) skipped, as the reward sees them."""
    return tokenizer.batch_decode(rollouts.responses(), skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------


def main(args: Args) -> None:
    args = with_preset(args)
    # ------------------------------------------------------------------ setup
    d = model.init_distributed(args.device)
    model.seed_everything(args.seed + d.rank)  # ranks sample different responses
    out = Path(args.out)
    processor = model.load_processor(args.policy)
    tokenizer = processor.tokenizer
    policy = model.Policy.from_pretrained(args.policy, device=d.device)
    if args.gradient_checkpointing:
        policy.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy = model.shard(policy, d, args.bf16)
    ref_policy = None
    if args.kl_coef > 0:
        ref_policy = model.shard(model.Policy.from_pretrained(args.policy, device=d.device), d, args.bf16).eval()
        ref_policy.requires_grad_(False)
    warmup = round(-args.warmup_steps * args.steps) if args.warmup_steps < 0 else int(args.warmup_steps)
    optimizer, scheduler = model.make_optimizer(policy, args.lr, args.weight_decay, args.steps, max(warmup, 1),
                                                "constant")
    loss_cfg = LossConfig(args.policy_loss, args.clip_low, args.clip_high, args.dual_clip, args.loss_agg,
                          args.kl_coef, args.kl_estimator, args.max_new_tokens, args.temperature)

    prompts = data.load_prompts(args.data)
    if missing := [e.where for e in prompts if e.answer is None]:
        raise data.DataError(f"{missing[0]}: an RL prompt needs a ground-truth answer ({len(missing)} lack one)")
    prompts, dropped = data.drop_long_prompts(processor, prompts, args.max_prompt_len)
    if args.overlong_buffer >= args.max_new_tokens:
        raise SystemExit(f"--overlong-buffer {args.overlong_buffer} must be shorter than --max-new-tokens "
                         f"{args.max_new_tokens}: every response would be punished for its length")
    per_round = (args.prompts_per_round or 3 * args.prompts_per_step) if args.dynamic_sampling \
        else args.prompts_per_step
    if per_round % d.world_size or args.prompts_per_step % d.world_size:
        raise SystemExit(f"prompts per step ({args.prompts_per_step}) and per round ({per_round}) must divide "
                         f"by the number of ranks ({d.world_size})")

    start, consumed = 0, 0
    if args.resume and (ckpt := model.latest_checkpoint(out)):
        state = model.load_checkpoint(ckpt, {"policy": policy}, {"policy": optimizer}, {"policy": scheduler}, d)
        start, consumed = state["step"], state["extra"]["prompts_consumed"]
    guard = model.RunGuard(d, args.max_skipped_steps)
    log = model.MetricsLog(out, d, ("reward/mean", "reward/accuracy", "reward/format", "response/length_mean",
                                    "optim/grad_norm", "time/rollout_s", "time/update_s"), resume_step=start)
    if d.is_main:
        print(f"RLVR ({args.algo}): {len(prompts)} prompts ({dropped} over {args.max_prompt_len} tokens, dropped); "
              f"{args.prompts_per_step} prompts × {args.rollouts_per_prompt} rollouts per step; {loss_cfg}")

    # ------------------------------------------------------------------ training loop
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not d.is_main, desc=args.algo)
    for step in bar:
        # 1. Rollouts and rewards, round after round until enough groups carry signal.
        t0 = time.time()
        kept_parts, drawn_groups, rounds = [], 0, 0
        while True:
            rounds += 1
            share = data.stream_indices(len(prompts), args.seed, consumed, per_round)
            share = share[d.rank * per_round // d.world_size:(d.rank + 1) * per_round // d.world_size]
            consumed += per_round
            examples = [prompts[i] for i in share]
            rollouts = model.generate_rollouts(policy, data.encode_prompts(processor, examples).to(d.device),
                                               tokenizer, args.rollouts_per_prompt, args.max_new_tokens,
                                               args.temperature, args.top_p, bf16=args.bf16,
                                               compile_decode=args.compile_decode)
            graded = [data.reward_parts(text, examples[g].answer)
                      for text, g in zip(decode_responses(rollouts, tokenizer), rollouts.group.tolist())]
            reward, accuracy, fmt = (torch.tensor(col) for col in zip(*graded))
            keep = groups_with_varying_accuracy(accuracy, rollouts.group.cpu()) if args.dynamic_sampling \
                else torch.ones(len(examples), dtype=torch.bool)
            kept_parts.append((rollouts, reward, accuracy, fmt, keep))
            drawn_groups += len(examples)
            kept_total = model.global_sum(sum(int(p[4].sum()) for p in kept_parts), d)
            if kept_total >= args.prompts_per_step:
                break
            if rounds >= args.max_sampling_rounds:
                raise SystemExit(f"step {step + 1}: dynamic sampling kept {int(kept_total)} of "
                                 f"{args.prompts_per_step} groups after {rounds} rounds of {per_round} prompts; "
                                 "the prompts are too easy or too hard for the policy (or raise --max-sampling-rounds)")
        rollouts, reward, accuracy, fmt, row_keep = select_groups(kept_parts, args.prompts_per_step,
                                                                  tokenizer.pad_token_id, d)
        lengths = rollouts.response_mask.sum(-1).cpu()
        if args.overlong_buffer > 0:
            reward = reward + overlong_penalty(lengths, args.max_new_tokens, args.overlong_buffer,
                                               args.overlong_penalty)
        rollout_seconds = time.time() - t0

        # 2. Advantages, normalised within each prompt's group.
        advantages = group_advantages(reward, rollouts.group.cpu(), args.std_normalize)

        # 3. One policy-gradient step.
        t1 = time.time()
        loss_mask = rollouts.response_mask.cpu() * row_keep[:, None]
        if args.mask_truncated:
            loss_mask = loss_mask * ~rollouts.truncated.cpu()[:, None]
        metrics = policy_update(policy, optimizer, scheduler, rollouts, advantages, loss_mask, loss_cfg,
                                args.micro_batch_tokens, args.max_grad_norm, d, args.bf16, ref_policy)
        update_seconds = time.time() - t1
        guard.record(step + 1, not metrics["optim/skipped_step"])

        # 4. Log and checkpoint.
        kept = row_keep.bool()
        metrics |= {"reward/mean": kept_mean(reward, kept, d), "reward/accuracy": kept_mean(accuracy, kept, d),
                    "reward/format": kept_mean(fmt, kept, d), "response/length_mean": kept_mean(lengths, kept, d),
                    "response/length_max": model.global_max(int(lengths[kept].max()) if kept.any() else 0, d),
                    "response/truncation_rate": kept_mean(rollouts.truncated.cpu(), kept, d),
                    "sampling/kept_group_ratio": kept_total / model.global_sum(drawn_groups, d),
                    "sampling/rounds": rounds, "time/rollout_s": rollout_seconds, "time/update_s": update_seconds,
                    "time/tokens_per_s": model.global_sum(lengths.sum().item(), d) / rollout_seconds}
        log.write(step + 1, metrics, bar)
        preempted = guard.preempted()
        if preempted or (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            model.save_checkpoint(out, step + 1, {"policy": policy}, {"policy": optimizer}, {"policy": scheduler},
                                  processor, d, extra={"prompts_consumed": consumed})
        if preempted:
            guard.exit(step + 1, out)

    # ------------------------------------------------------------------ saving
    policy.save_pretrained(processor, out / "model", d)
    if d.is_main:
        print(f"saved {out / 'model'}")


def kept_mean(x: torch.Tensor, kept: torch.Tensor, d: model.Dist) -> float:
    """Mean of x over the kept rows of all ranks."""
    rows = max(model.global_sum(kept.sum().item(), d), 1.0)
    return model.global_sum(x[kept].float().sum().item(), d) / rows


def select_groups(parts, wanted: int, pad_id: int, d: model.Dist):
    """Concatenate this rank's kept groups and keep the first `wanted` over all ranks.

    Groups are ordered by (round, rank, position) so every rank computes the same cut from the
    all-gathered counts. Returns (rollouts, reward, accuracy, format, row_keep (B,) float): a rank
    left with no group keeps one at weight 0 so that it still runs the update's passes.
    """
    counts = torch.tensor([int(p[4].sum()) for p in parts])  # (rounds,)
    if d.distributed:
        gathered = [torch.zeros_like(counts) for _ in range(d.world_size)]
        torch.distributed.all_gather(gathered, counts)
        all_counts = torch.stack(gathered)  # (ranks, rounds)
    else:
        all_counts = counts[None]
    before = all_counts.T.flatten().cumsum(0) - all_counts.T.flatten()  # groups ahead of each (round, rank)
    quota = (wanted - before.view(-1, d.world_size)[:, d.rank]).clamp(min=0)  # (rounds,)
    chosen_rows = []
    for (rollouts, reward, accuracy, fmt, keep), q in zip(parts, quota.tolist()):
        groups = keep.nonzero().flatten()[:q].tolist()
        n = len(rollouts.group) // len(keep)
        rows = [g * n + j for g in groups for j in range(n)]
        chosen_rows.append((rollouts, reward, accuracy, fmt, rows))
    if all(not rows for *_, rows in chosen_rows):  # nothing kept here: one group at weight 0
        rollouts, reward, accuracy, fmt, keep = parts[-1]
        n = len(rollouts.group) // len(keep)
        return _take(rollouts, reward, accuracy, fmt, list(range(n))) + (torch.zeros(n),)
    pieces = [_take(r, rw, a, f, rows) for r, rw, a, f, rows in chosen_rows if rows]
    merged = merge_rollouts([p[0] for p in pieces], pad_id)
    return (merged, torch.cat([p[1] for p in pieces]), torch.cat([p[2] for p in pieces]),
            torch.cat([p[3] for p in pieces]), torch.ones(len(merged.group)))


def _take(rollouts: model.Rollouts, reward, accuracy, fmt, rows: list[int]):
    idx = torch.tensor(rows)
    sub = model.Rollouts(rollouts.batch.select(idx), rollouts.response_mask[idx], rollouts.truncated[idx],
                         rollouts.group[idx], rollouts.prompt_len)
    return sub, reward[idx], accuracy[idx], fmt[idx]


def merge_rollouts(parts: list[model.Rollouts], pad_id: int) -> model.Rollouts:
    """Stack rollouts from several rounds: pad prompts on the left and responses on the right."""
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_len for p in parts)
    R = max(p.response_mask.shape[1] for p in parts)
    batches, masks, group_offset, groups = [], [], 0, []
    for p in parts:
        batches.append(p.batch.padded(P - p.prompt_len, R - p.response_mask.shape[1], pad_id))
        masks.append(F.pad(p.response_mask, (0, R - p.response_mask.shape[1])))
        groups.append(p.group - p.group.min() + group_offset)
        group_offset = int(groups[-1].max()) + 1
    return model.Rollouts(data.VLBatch.concat(batches), torch.cat(masks), torch.cat([p.truncated for p in parts]),
                          torch.cat(groups), P)


if __name__ == "__main__":
    model.run_stage(main, Args)
