r"""Stage 1 — supervised fine-tuning of Qwen3-VL on caption/think/answer demonstrations (spec §6).

The policy learns the response format and the teacher's way of seeing and reasoning by
maximising the likelihood of demonstration tokens:

    L_SFT(θ) = − (1 / N) Σ_{i, t ∈ assistant(i)} log π_θ(y_{i,t} | x_i, y_{i,<t})

where N counts every supervised token of the optimizer step, across gradient-accumulation
micro-batches and ranks (one token-mean per step, not a mean of per-micro-batch means). Prompt,
system and image tokens are never targets. Several files are mixed, as the paper mixes ~1.26M
public demonstrations with ~113K high-fidelity Gemini ones.

Usage:
    # CPU, the tiny world (see `make demo`)
    python sft.py --policy runs/demo/tiny --data runs/demo/data/sft_public.jsonl runs/demo/data/sft_teacher.jsonl \
        --out runs/demo/sft --steps 200 --micro-batch 8 --grad-accum 1 --lr 1e-3 --warmup-ratio 0.05
    # 8×H100, Qwen3-VL-4B on the published SFT data (gemini_distill + gemini_public_mmr1)
    torchrun --nproc_per_node 8 sft.py --policy Qwen3-VL-4B-Instruct \
        --data gemini_distill.jsonl gemini_public_mmr1.jsonl --out runs/sft-4b \
        --micro-batch 2 --grad-accum 8 --gradient-checkpointing --bf16
    # several nodes: torchrun --nnodes N --node_rank R --rdzv-endpoint HOST:PORT --nproc_per_node 8 sft.py ...

Writes OUT/model (HF directory for the next stages), OUT/checkpoints/step_N (with training
state for --resume) and OUT/metrics.jsonl.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch

import batching
import data
import hf_checkpoint
import model
import run
from run import AT_LEAST_ONE, BELOW_ONE, NON_NEGATIVE, POSITIVE, arg


@dataclass
class Args:
    policy: str = arg(None, "HF directory of the Qwen3-VL to fine-tune", required=True)
    data: list[str] = arg([], "ShareGPT multimodal JSONL files, mixed (LLaMA-Factory format)", required=True)
    out: str = arg(None, "output directory", required=True)
    seed: int = arg(0, "seed for data order and initialisation")
    epochs: float = arg(1.0, "passes over the mixed data (ignored when --steps is given)", check=POSITIVE)
    steps: int = arg(0, "optimizer steps to run; 0 = derive from --epochs", check=NON_NEGATIVE)
    resume: bool = arg(False, "continue from the newest complete checkpoint in --out")
    # optimisation (spec §6: AdamW, lr 1e-5, cosine, warm-up ratio 0.1, one epoch, clip 1.0)
    lr: float = arg(1e-5, "peak learning rate of the policy", check=run.LEARNING_RATE)
    weight_decay: float = arg(0.0, "AdamW weight decay", check=NON_NEGATIVE)
    warmup_ratio: float = arg(0.1, "fraction of steps of linear warm-up before the cosine decay", check=BELOW_ONE)
    max_grad_norm: float = arg(1.0, "clip the global gradient norm to this", check=POSITIVE)
    micro_batch: int = arg(2, "conversations per forward/backward on each rank", check=AT_LEAST_ONE)
    grad_accum: int = arg(1, "micro-batches per optimizer step on each rank", check=AT_LEAST_ONE)
    max_length: int = arg(10240, "conversations longer than this many tokens are dropped and counted",
                          check=AT_LEAST_ONE)
    freeze_vision: bool = arg(False, "freeze the vision tower (patch embedding, position embedding, blocks)")
    freeze_merger: bool = arg(False, "freeze the vision-language merger and the DeepStack mergers")
    gradient_checkpointing: bool = arg(False, "recompute decoder activations in backward to save memory")
    bf16: bool = arg(False, "bf16 compute on GPU (FSDP2 mixed precision when sharded, autocast otherwise)")
    param_dtype: model.ParamDtype = arg("float32", "dtype the weights and optimizer moments are held in: float32 "
                                        "master weights, or bfloat16 to halve their memory (updates rounded)")
    max_skipped_steps: int = arg(10, "stop after this many optimizer steps in a row with a non-finite gradient",
                                 check=AT_LEAST_ONE)
    save_every: int = arg(500, "write a resumable checkpoint every this many steps (and at the end)",
                          check=AT_LEAST_ONE)
    device: str | None = arg(None, "cpu or cuda; default: cuda when available")


def sft_loss(logprobs: torch.Tensor, target_mask: torch.Tensor, total_targets: float) -> torch.Tensor:
    """This micro-batch's share of the step's token-mean NLL: −Σ_{targets} log π / N_step.

    logprobs, target_mask: (B, L). total_targets: N_step, the number of target tokens in the
    whole optimizer step on all ranks. Summing the shares of all micro-batches and ranks gives
    exactly the step's token-mean, whatever the micro-batch sizes.
    """
    return -(logprobs * target_mask).sum() / total_targets


def sft_step(policy, optimizer, scheduler, micro_batches: list[tuple[batching.VLBatch, torch.Tensor]], args: Args,
             d: run.Dist) -> dict:
    """One optimizer step on this rank's micro-batches (batch, target mask): the token-mean NLL over
    every target token of the step on all ranks, then a clipped AdamW step."""
    total_targets = run.global_sum(sum(target[:, 1:].sum().item() for _, target in micro_batches), d)
    step_loss = 0.0
    for batch, target in micro_batches:
        batch, target = batch.to(d.device), target.to(d.device)
        with model.autocast(d, args.bf16):
            logprobs, _ = policy(batch, target)
        loss = sft_loss(logprobs, target, total_targets)
        loss.backward()
        step_loss += loss.item()
    lr = scheduler.get_last_lr()[0]
    grad_norm, stepped = run.clip_and_step(policy, optimizer, scheduler, args.max_grad_norm)
    return {"loss/sft": run.global_sum(step_loss, d), "optim/lr": lr, "optim/grad_norm": grad_norm,
            "optim/skipped_step": float(not stepped), "data/target_tokens": total_targets}


def main(args: Args) -> None:
    d = run.init_distributed(args.device)
    run.seed_everything(args.seed)
    out = Path(args.out)
    processor = hf_checkpoint.load_processor(args.policy)
    # Every file is read and checked before any model is loaded: bad data fails here, naming the record.
    control = data.control_tokens(processor.tokenizer)
    conversations = [c for f in args.data for c in data.load_sft(f, control)]
    conversations, dropped = batching.drop_long_conversations(processor, conversations, args.max_length)
    batching.require_some_kept(conversations, dropped, "conversations", "--max-length", args.max_length)
    policy = model.load_sharded(model.Policy, args.policy, d, args.bf16, model.training_setup(
        args.freeze_vision, args.freeze_merger, args.gradient_checkpointing), args.param_dtype)
    policy.train()
    per_step = args.micro_batch * args.grad_accum * d.world_size
    total_steps = args.steps or math.ceil(args.epochs * len(conversations) / per_step)
    optimizer, scheduler = run.make_optimizer(policy, args.lr, args.weight_decay, total_steps,
                                              round(args.warmup_ratio * total_steps), "cosine")
    training = run.TrainingRun(out, d, {"policy": policy}, {"policy": optimizer}, {"policy": scheduler},
                               args, ("loss/sft", "optim/lr", "optim/grad_norm", "time/step_s"))
    if d.is_main:
        print(f"SFT: {len(conversations)} conversations ({dropped} too long, dropped), {total_steps} steps of "
              f"{per_step} (micro {args.micro_batch} × accum {args.grad_accum} × ranks {d.world_size})")

    def step(k: int) -> dict:
        # This step's global batch, and this rank's contiguous share of it.
        mine = run.rank_share(batching.stream_indices(len(conversations), args.seed, k * per_step, per_step), d)
        micro = [batching.encode_conversations(processor, [conversations[i] for i in mine[j:j + args.micro_batch]])
                 for j in range(0, len(mine), args.micro_batch)]
        return sft_step(policy, optimizer, scheduler, micro, args, d)

    training.loop(total_steps, step, "sft")
    policy.save_pretrained(processor, out / "model", d)
    if d.is_main:
        print(f"saved {out / 'model'}")


if __name__ == "__main__":
    run.run_stage(main, Args)
