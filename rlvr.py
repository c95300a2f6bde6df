r"""Stage 3 — RL with verifiable rewards: GRPO, DAPO or GSPO, selected by --algo (spec §5).

Each step samples prompts, rolls out n responses per prompt, grades them, and takes one
policy-gradient step:

    reward       R_i = 0.8·acc_i + 0.2·format_i                       (§5.1; + DAPO's overlong shaping)
    advantage    A_i = (R_i − mean_g R) / (std_g R + ε)                 (group g = the n rollouts of a prompt)
    ratio        ρ_{i,t} = π_θ(y_{i,t} | ·) / π_old(y_{i,t} | ·)         (GSPO: a length-normalised sequence ratio)
    loss         max(−A ρ, −A clip(ρ, 1−ε_low, 1+ε_high)), capped at −c·A for A < 0 (dual clip)
                 aggregated over the whole step (token-mean, or per-sequence means)

`--algo` selects the published settings (§5.3–§5.5) as defaults; every piece is its own flag.
One step is `rlvr_step`: rollout → reward → advantage → policy loss → optimizer step. The
advantage, the clipped losses and the update live in policy_gradient.py, which PRISM alignment
shares; DAPO's overlong shaping and dynamic sampling are here.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

import batching
import data
import grading
import hf_checkpoint
import model
import run
from policy_gradient import LossConfig, group_advantages, policy_update
from run import AT_LEAST_ONE, BELOW_ONE, NON_NEGATIVE, POSITIVE, PROBABILITY, arg

# The published settings (§5.3 GRPO, §5.4 DAPO, §5.5 GSPO): the defaults of the flags left unset.
PRESETS = {
    "grpo": dict(policy_loss="ppo", clip_low=0.2, clip_high=0.2, dual_clip=3.0, loss_agg="token-mean",
                 dynamic_sampling=False, overlong_buffer=0, weight_decay=0.01, warmup_steps=0),
    "dapo": dict(policy_loss="ppo", clip_low=0.2, clip_high=0.28, dual_clip=10.0, loss_agg="token-mean",
                 dynamic_sampling=True, overlong_buffer=4096, weight_decay=0.1, warmup_steps=10),
    "gspo": dict(policy_loss="gspo", clip_low=3e-4, clip_high=4e-4, dual_clip=0.0, loss_agg="seq-mean-token-mean",
                 dynamic_sampling=False, overlong_buffer=0, weight_decay=0.1, warmup_steps=-0.05),
}
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def per_algo(knob: str) -> str:
    """The help text's list of a knob's published defaults: "default per --algo: grpo 0.2, dapo 0.28, …"."""
    return "default per --algo: " + ", ".join(f"{algo} {preset[knob]}" for algo, preset in PRESETS.items())


WARMUP = run.Check("must be a whole number of steps, or a ratio of --steps in [-1, 0)",
                   lambda v: v == int(v) if v >= 0 else v >= -1)


@dataclass
class Args:
    policy: str = arg(None, "HF directory of the policy (the SFT or PRISM-aligned model)", required=True)
    data: list[str] = arg([], "RL prompts, one or more files: parquet in the published schema, or evaluation JSONL",
                          required=True)
    out: str = arg(None, "output directory", required=True)
    algo: Literal["grpo", "dapo", "gspo"] = arg("grpo", "published preset for the flags left unset")
    seed: int = arg(0, "seed for prompt order and sampling")
    steps: int = arg(1500, "optimizer steps (one per batch)", check=AT_LEAST_ONE)
    resume: bool = arg(False, "continue from the newest complete checkpoint in --out")
    # rollouts (§5.2)
    prompts_per_step: int = arg(32, "prompts (groups) per optimizer step, over all ranks", check=AT_LEAST_ONE)
    rollouts_per_prompt: int = arg(16, "responses sampled per prompt (the group size n)", check=AT_LEAST_ONE)
    max_new_tokens: int = arg(8192, "maximum response length; longer responses are cut and flagged", check=AT_LEAST_ONE)
    max_prompt_len: int = arg(2048, "prompts longer than this (images included) are dropped and counted",
                              check=AT_LEAST_ONE)
    temperature: float = arg(1.0, "sampling temperature (log-probs are taken at the same temperature)", check=POSITIVE)
    top_p: float = arg(1.0, "nucleus sampling; 1.0 samples from the full softmax", check=PROBABILITY)
    # reward shaping and sampling
    overlong_buffer: int | None = arg(None, "DAPO overlong shaping: penalise the last this-many tokens before the "
                                            f"limit; 0 = off ({per_algo('overlong_buffer')}, a preset's scaled with "
                                            "--max-new-tokens)", check=NON_NEGATIVE)
    overlong_penalty: float = arg(1.0, "DAPO overlong shaping: penalty at the limit", check=NON_NEGATIVE)
    dynamic_sampling: bool | None = arg(None, "DAPO: drop groups whose accuracy does not vary and sample more "
                                              f"prompts; `--dynamic-sampling false` turns it off "
                                              f"({per_algo('dynamic_sampling')})", nargs="?", const=True)
    prompts_per_round: int = arg(0, "dynamic sampling: prompts drawn per round; 0 = 3 × prompts-per-step",
                                 check=NON_NEGATIVE)
    max_sampling_rounds: int = arg(10, "dynamic sampling: rounds before giving up with an error", check=AT_LEAST_ONE)
    # advantage and policy loss
    std_normalize: bool = arg(True, "divide advantages by the group std (off = Dr. GRPO)")
    policy_loss: Literal["ppo", "gspo"] | None = arg(None, "ppo (token ratios) or gspo (sequence ratio) "
                                                           f"({per_algo('policy_loss')})")
    clip_low: float | None = arg(None, f"ε_low of the clipped surrogate ({per_algo('clip_low')})", check=BELOW_ONE)
    clip_high: float | None = arg(None, f"ε_high, > ε_low for DAPO's clip-higher ({per_algo('clip_high')})",
                                  check=NON_NEGATIVE)
    dual_clip: float | None = arg(None, f"dual-clip constant c for A < 0; 0 = off ({per_algo('dual_clip')})",
                                  check=run.DUAL_CLIP)
    loss_agg: Aggregation | None = arg(None, f"loss aggregation over the step ({per_algo('loss_agg')})")
    kl_coef: float = arg(0.0, "KL penalty to the initial policy; 0 loads no reference model (all presets: 0)",
                         check=NON_NEGATIVE)
    kl_estimator: Literal["k1", "k2", "k3"] = arg("k3", "KL estimator")
    mask_truncated: bool = arg(False, "leave responses cut by the length limit out of the loss")
    # optimisation
    lr: float = arg(1e-6, "policy learning rate (AdamW, constant after warm-up)", check=run.LEARNING_RATE)
    weight_decay: float | None = arg(None, f"AdamW weight decay ({per_algo('weight_decay')})", check=NON_NEGATIVE)
    warmup_steps: float | None = arg(None, "linear warm-up steps; a negative value is a ratio of --steps "
                                           f"({per_algo('warmup_steps')})", check=WARMUP)
    max_grad_norm: float = arg(1.0, "clip the global gradient norm to this", check=POSITIVE)
    micro_batch_tokens: int = arg(10240, "token budget of one policy forward/backward (prompt + response, padding "
                                         "included); rows of similar length are grouped", check=AT_LEAST_ONE)
    freeze_vision: bool = arg(False, "freeze the vision tower (patch embedding, position embedding, blocks)")
    freeze_merger: bool = arg(False, "freeze the vision-language merger and the DeepStack mergers")
    gradient_checkpointing: bool = arg(False, "recompute decoder activations in backward to save memory")
    bf16: bool = arg(False, "bf16 compute on GPU")
    param_dtype: model.ParamDtype = arg("float32", "dtype the weights and optimizer moments are held in: float32 "
                                        "master weights, or bfloat16 to halve their memory (updates rounded)")
    compile_decode: bool = arg(False, "static KV cache and a torch.compile'd decode step in generate (CUDA graphs "
                                      "on GPU); compiles once per 64-token prompt-length bucket")
    max_skipped_steps: int = arg(10, "stop after this many optimizer steps in a row with a non-finite gradient",
                                 check=AT_LEAST_ONE)
    save_every: int = arg(120, "write a resumable checkpoint every this many steps (and at the end)",
                          check=AT_LEAST_ONE)
    device: str | None = arg(None, "cpu or cuda; default: cuda when available")


PUBLISHED_MAX_NEW_TOKENS = 8192


def with_preset(args):
    """Fill every flag left unset (None) from the --algo preset. A preset's overlong buffer keeps the
    release's share of the response budget (4096 of 8192 tokens), whatever --max-new-tokens is."""
    preset = dict(PRESETS[args.algo])
    preset["overlong_buffer"] = preset["overlong_buffer"] * args.max_new_tokens // PUBLISHED_MAX_NEW_TOKENS
    return dataclasses.replace(args, **{k: v for k, v in preset.items() if getattr(args, k) is None})


def prompts_per_round(args) -> int:
    """Prompts drawn per sampling round: DAPO draws 3 × the step's by default (§5.4), the others the step's."""
    return (args.prompts_per_round or 3 * args.prompts_per_step) if args.dynamic_sampling else args.prompts_per_step


def check_flags(args, world_size: int) -> None:
    """Settings that cannot work together, refused before any model is loaded."""
    if args.overlong_buffer >= args.max_new_tokens:
        raise run.flag_error("overlong_buffer", args.overlong_buffer, f"must be shorter than --max-new-tokens "
                             f"{args.max_new_tokens} (every response would be punished for its length)")
    if prompts_per_round(args) % world_size or args.prompts_per_step % world_size:
        raise run.flag_error("prompts_per_step", args.prompts_per_step, f"this and the prompts per round "
                             f"({prompts_per_round(args)}) must divide by the number of ranks ({world_size})")


# ----------------------------------------------------------------------------------------------
# The math: pure functions on tensors
# ----------------------------------------------------------------------------------------------


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to L_max − buffer, then linear down to −factor at L_max.

        r_len(L) = min(0, −(L − (L_max − buffer)) / buffer · factor)

    lengths: (B,) response lengths in tokens. Returns (B,) to add to the rewards.
    """
    exceed = lengths.float() - (max_len - buffer)
    return torch.clamp(-exceed / buffer * factor, max=0.0)


def groups_with_varying_accuracy(accuracy: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """DAPO's dynamic-sampling filter: keep a group iff the population std of its accuracy is > 0, or
    it has a single member (as the release does, spec §0.1).

    accuracy, group: (B,) with groups numbered 0 … G−1. Returns (G,) bool: all-right and
    all-wrong groups of two or more carry no learning signal (every advantage is 0) and are dropped.
    """
    members = [accuracy[group == g] for g in range(int(group.max()) + 1)]
    return torch.tensor([acc.numel() == 1 or bool(acc.std(unbiased=False) > 0) for acc in members])


def decode_responses(rollouts: batching.Rollouts, tokenizer) -> list[str]:
    """Response texts with special tokens (the closing <|im_end|>) skipped, as the reward sees them."""
    return tokenizer.batch_decode(rollouts.responses(), skip_special_tokens=True)



# ----------------------------------------------------------------------------------------------
# One RLVR step
# ----------------------------------------------------------------------------------------------

# (response text, the item: its answer, options, precision) → (reward, accuracy, format)
RewardFn = Callable[[str, data.Example], tuple[float, float, float]]


def rlvr_step(policy, optimizer, scheduler, processor, prompts: list[data.Example], args: Args, loss_cfg: LossConfig,
              progress: dict, d: run.Dist, reward_fn: RewardFn = grading.example_reward, ref_policy=None) -> dict:
    """One step: rollouts (round after round under dynamic sampling) → rewards → group advantages →
    one policy-gradient step. `progress["prompts_consumed"]` is the position in the prompt stream;
    it advances by every round's prompts. Returns the step's metrics, phase timings included."""
    tokenizer = processor.tokenizer
    per_round = prompts_per_round(args)
    # 1. Rollouts and rewards, round after round until enough groups carry signal.
    rollout_s = reward_s = 0.0
    kept_parts, drawn_groups, rounds = [], 0, 0
    while True:
        rounds += 1
        t0 = time.time()
        drawn = batching.stream_indices(len(prompts), args.seed, progress["prompts_consumed"], per_round)
        share = run.rank_share(drawn, d)
        progress["prompts_consumed"] += per_round
        examples = [prompts[i] for i in share]
        rollouts = model.generate_rollouts(policy, batching.encode_prompts(processor, examples).to(d.device), tokenizer,
                                           args.rollouts_per_prompt, args.max_new_tokens, args.temperature,
                                           args.top_p, bf16=args.bf16, compile_decode=args.compile_decode)
        t1 = time.time()
        graded = [reward_fn(text, examples[g])
                  for text, g in zip(decode_responses(rollouts, tokenizer), rollouts.group.tolist())]
        reward, accuracy, fmt = (torch.tensor(col) for col in zip(*graded))
        keep = groups_with_varying_accuracy(accuracy, rollouts.group.cpu()) if args.dynamic_sampling \
            else torch.ones(len(examples), dtype=torch.bool)
        kept_parts.append((rollouts, reward, accuracy, fmt, keep))
        drawn_groups += len(examples)
        kept_total = run.global_sum(sum(int(p[4].sum()) for p in kept_parts), d)
        rollout_s, reward_s = rollout_s + t1 - t0, reward_s + time.time() - t1
        if kept_total >= args.prompts_per_step:
            break
        if rounds >= args.max_sampling_rounds:
            raise run.TrainingError(
                f"dynamic sampling kept {int(kept_total)} of {args.prompts_per_step} groups after {rounds} rounds "
                f"of {per_round} prompts; the prompts are too easy or too hard for the policy (or raise "
                "--max-sampling-rounds)")
    t2 = time.time()
    rollouts, reward, accuracy, fmt, row_keep = select_groups(kept_parts, args.prompts_per_step,
                                                              tokenizer.pad_token_id, d)
    lengths = rollouts.response_mask.sum(-1).cpu()
    if args.overlong_buffer > 0:
        reward = reward + overlong_penalty(lengths, args.max_new_tokens, args.overlong_buffer, args.overlong_penalty)

    # 2. Advantages, normalised within each prompt's group.
    advantages = group_advantages(reward, rollouts.group.cpu(), args.std_normalize)

    # 3. One policy-gradient step.
    t3 = time.time()
    loss_mask = rollouts.response_mask.cpu() * row_keep[:, None]
    if args.mask_truncated:
        loss_mask = loss_mask * ~rollouts.truncated.cpu()[:, None]
    metrics = policy_update(policy, optimizer, scheduler, rollouts, advantages, loss_mask, loss_cfg,
                            args.micro_batch_tokens, args.max_grad_norm, d, args.bf16, ref_policy)
    kept = row_keep.bool()
    return metrics | {
        "reward/mean": kept_mean(reward, kept, d), "reward/accuracy": kept_mean(accuracy, kept, d),
        "reward/format": kept_mean(fmt, kept, d), "response/length_mean": kept_mean(lengths, kept, d),
        "response/length_max": run.global_max(int(lengths[kept].max()) if kept.any() else 0, d),
        "response/truncation_rate": kept_mean(rollouts.truncated.cpu(), kept, d),
        "sampling/kept_group_ratio": kept_total / run.global_sum(drawn_groups, d), "sampling/rounds": rounds,
        "time/rollout_s": rollout_s, "time/reward_s": reward_s + t3 - t2, "time/update_s": time.time() - t3,
        "time/tokens_per_s": run.global_sum(lengths.sum().item(), d) / rollout_s}


def kept_mean(x: torch.Tensor, kept: torch.Tensor, d: run.Dist) -> float:
    """Mean of x over the kept rows of all ranks."""
    rows = max(run.global_sum(kept.sum().item(), d), 1.0)
    return run.global_sum(x[kept].float().sum().item(), d) / rows


def select_groups(parts, wanted: int, pad_id: int, d: run.Dist):
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
    chosen = []
    for (rollouts, reward, accuracy, fmt, keep), q in zip(parts, quota.tolist()):
        n = len(rollouts.group) // len(keep)
        rows = [g * n + j for g in keep.nonzero().flatten()[:q].tolist() for j in range(n)]
        if rows:
            chosen.append((rollouts.select(rows), reward[rows], accuracy[rows], fmt[rows]))
    if not chosen:  # nothing kept here: one group at weight 0
        rollouts, reward, accuracy, fmt, keep = parts[-1]
        rows = list(range(len(rollouts.group) // len(keep)))
        return rollouts.select(rows), reward[rows], accuracy[rows], fmt[rows], torch.zeros(len(rows))
    merged = batching.Rollouts.concat([c[0] for c in chosen], pad_id)
    return (merged, *(torch.cat([c[k] for c in chosen]) for k in (1, 2, 3)), torch.ones(len(merged.group)))


# ----------------------------------------------------------------------------------------------
# Setup and the loop
# ----------------------------------------------------------------------------------------------


def main(args: Args, reward_fn: RewardFn = grading.example_reward) -> None:
    args = with_preset(args)
    d = run.init_distributed(args.device)
    check_flags(args, d.world_size)
    run.seed_everything(args.seed + d.rank)  # ranks sample different responses
    out = Path(args.out)
    processor = hf_checkpoint.load_processor(args.policy)
    # Every file is read and checked before any model is loaded: bad data fails here, naming the record.
    prompts = [e for f in args.data for e in data.load_prompts(f, data.control_tokens(processor.tokenizer))]
    if missing := [e.where for e in prompts if e.answer is None]:
        raise data.DataError(f"{missing[0]}: an RL prompt needs a ground-truth answer ({len(missing)} lack one)")
    prompts, dropped = batching.drop_long_prompts(processor, prompts, args.max_prompt_len)
    batching.require_some_kept(prompts, dropped, "prompts", "--max-prompt-len", args.max_prompt_len)
    policy = model.load_sharded(model.Policy, args.policy, d, args.bf16, model.training_setup(
        args.freeze_vision, args.freeze_merger, args.gradient_checkpointing), args.param_dtype)
    ref_policy = None
    if args.kl_coef > 0:
        ref_policy = model.load_sharded(model.Policy, args.policy, d, args.bf16, param_dtype=args.param_dtype).eval()
        ref_policy.requires_grad_(False)
    warmup = round(-args.warmup_steps * args.steps) if args.warmup_steps < 0 else int(args.warmup_steps)
    optimizer, scheduler = run.make_optimizer(policy, args.lr, args.weight_decay, args.steps, warmup, "constant")
    loss_cfg = LossConfig.from_args(args)
    training = run.TrainingRun(out, d, {"policy": policy}, {"policy": optimizer}, {"policy": scheduler},
                               args, ("reward/mean", "reward/accuracy", "reward/format", "response/length_mean",
                                      "optim/grad_norm", "time/rollout_s", "time/update_s"),
                               progress={"prompts_consumed": 0})
    if d.is_main:
        print(f"RLVR ({args.algo}): {len(prompts)} prompts ({dropped} over {args.max_prompt_len} tokens, dropped); "
              f"{args.prompts_per_step} prompts × {args.rollouts_per_prompt} rollouts per step; {loss_cfg}")

    training.loop(args.steps, lambda step: rlvr_step(policy, optimizer, scheduler, processor, prompts, args, loss_cfg,
                                                     training.progress, d, reward_fn, ref_policy), args.algo)
    policy.save_pretrained(processor, out / "model", d)
    if d.is_main:
        print(f"saved {out / 'model'}")


if __name__ == "__main__":
    run.run_stage(main, Args)
