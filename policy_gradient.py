"""The clipped policy-gradient update that PRISM alignment (spec §4.6) and RLVR (spec §5) both take.

Alignment is RLVR's GRPO loss with a learned reward, so both stages share, from here:

    advantage    A_i = (R_i − mean_g R) / (std_g R + ε)          group g = the n rollouts of one prompt
    ratio        ρ_{i,t} = π_θ(y_{i,t} | ·) / π_old(y_{i,t} | ·)   (GSPO: a length-normalised sequence ratio)
    loss         max(−A ρ, −A clip(ρ, 1−ε_low, 1+ε_high)), capped at −c·A for A < 0 (dual clip)
                 + β·KL(π_θ ‖ π_ref) per token, aggregated over the whole step

and `policy_update`, one optimizer step of it over a rank's rollouts in token-budget micro-batches.
Every equation is a pure function on tensors, with its shapes; the stages choose among them by flag.
"""

from dataclasses import dataclass, fields

import torch

import batching
import model
import run

# ----------------------------------------------------------------------------------------------
# The math: pure functions on tensors
# ----------------------------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, group: torch.Tensor, std_normalize: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """GRPO: A_i = (R_i − mean_g R) / (std_g R + ε), std unbiased; Dr. GRPO drops the division.

    rewards, group: (B,). A group of one has mean 0 and std 1 (A = R), as in verl. A group whose
    rewards are all equal carries no signal and gets exactly 0 (spec §0.1): in float32 the release's
    formula turns rounding noise into advantages (sixteen rewards of 0.2 give −0.0147 each).
    """
    adv = torch.empty_like(rewards)
    for g in group.unique():
        members = group == g
        r = rewards[members]
        if r.numel() > 1 and bool((r == r[0]).all()):
            adv[members] = 0.0
            continue
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

        k1 = log π_θ − log π_ref      k2 = ½ (log π_θ − log π_ref)²
        k3 = clip(exp(−δ) − 1 + δ, −10, 10),  δ = clip(log π_θ − log π_ref, −20, 20)

    k3 is verl's low-variance KL with its clamps (spec §0.1): unclamped, a token the policy has
    moved far from the reference (log π −5.0 against −0.1) gives 128 with gradient −133. Clamped
    values carry no gradient. logp, ref_logp: (B, T); returns (B, T).
    """
    delta = logp - ref_logp
    if estimator == "k1":
        return delta
    if estimator == "k2":
        return 0.5 * delta**2
    if estimator == "k3":
        delta = delta.clamp(-20.0, 20.0)
        return (torch.exp(-delta) - 1.0 + delta).clamp(-10.0, 10.0)
    raise ValueError(f"unknown KL estimator {estimator!r}")


# ----------------------------------------------------------------------------------------------
# The update
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

    @classmethod
    def from_args(cls, args) -> "LossConfig":
        """The loss settings of a stage's Args: the fields it has, and L_max = its --max-new-tokens."""
        names = [f.name for f in fields(cls) if hasattr(args, f.name)]
        return cls(**{n: getattr(args, n) for n in names}, max_len=args.max_new_tokens)


def policy_update(policy, optimizer, scheduler, rollouts: batching.Rollouts, advantages: torch.Tensor,
                  loss_mask: torch.Tensor, cfg: LossConfig, micro_batch_tokens: int, max_grad_norm: float,
                  d: run.Dist, bf16: bool = False, ref_policy=None) -> dict:
    """One optimizer step of the clipped policy gradient on this rank's rollouts.

    advantages: (B,); loss_mask: (B, R), the response tokens that enter the loss (rows of zeros
    are allowed: a rank with nothing to learn from still runs its passes). Micro-batches are cut
    by a token budget, rows of similar length together; within one, each distinct prompt runs through
    the model once for all its rows (model.hidden_after_shared_prompts; not under gradient
    checkpointing). Every rank runs the same number of forward/backward passes (FSDP2 collectives),
    repeating a micro-batch at weight 0 where it has fewer. Returns metrics summed or averaged over
    all ranks.
    """
    mask = loss_mask.float()
    total_tokens = max(run.global_sum(mask.sum().item(), d), 1.0)
    total_seqs = max(run.global_sum((mask.sum(-1) > 0).sum().item(), d), 1.0)
    chunks = batching.token_budget_batches(rollouts.batch.attention_mask.sum(-1).tolist(), micro_batch_tokens)
    sums = dict(loss=0.0, clip_low=0.0, clip_high=0.0, kl_old=0.0, entropy=0.0, kl_ref=0.0)
    for k in range(run.global_max(len(chunks), d)):
        idx = chunks[k] if k < len(chunks) else chunks[0]
        weight = 1.0 if k < len(chunks) else 0.0
        batch, target, R, prompt = rollouts.micro_batch(idx)
        batch, target = batch.to(d.device), target.to(d.device)
        m = mask[idx, :R].to(d.device) * weight
        with model.autocast(d, bf16):
            logp, entropy = policy(batch, target, cfg.temperature, with_entropy=True, prompt=prompt)
        logp, entropy = logp[:, -R:], entropy[:, -R:]
        old_logp = logp.detach()  # one update per batch: π_old is the policy before this step
        adv = advantages[idx].to(d.device)
        if cfg.policy_loss == "gspo":
            token_loss, low, high = gspo_loss(logp, old_logp, adv, m, cfg.clip_low, cfg.clip_high)
        else:
            token_loss, low, high = ppo_clip_loss(logp, old_logp, adv, cfg.clip_low, cfg.clip_high, cfg.dual_clip)
        if cfg.kl_coef > 0:
            with torch.no_grad(), model.autocast(d, bf16):
                ref_logp = ref_policy(batch, target, cfg.temperature, prompt=prompt)[0][:, -R:]
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
    grad_norm, stepped = run.clip_and_step(policy, optimizer, scheduler, max_grad_norm)
    g = {k: run.global_sum(v, d) for k, v in sums.items()}
    metrics = {"loss/policy": g["loss"], "policy/clipfrac_low": g["clip_low"] / total_tokens,
               "policy/clipfrac_high": g["clip_high"] / total_tokens, "policy/approx_kl": g["kl_old"] / total_tokens,
               "policy/entropy": g["entropy"] / total_tokens, "optim/grad_norm": grad_norm, "optim/lr": lr,
               "optim/skipped_step": float(not stepped)}
    if cfg.kl_coef > 0:
        metrics["policy/kl_ref"] = g["kl_ref"] / total_tokens
    return metrics
