"""Benchmarks of the RL stages' hot paths, as a table that compares across machines (and as JSON).

Not a test: nothing here asserts. Every measurement calls the project's own functions (model.generate_rollouts,
rlvr.policy_update, align.score_rows, model.chunked_token_logprobs, ...), so it times the code that training
runs. Each section runs in a fresh Python process, so its peak memory is its own and no section warms another's
caches; the parent only prints and saves.

CPU (the default): the tiny Qwen3-VL of model.tiny_config (text hidden 128, 4 layers, 4 heads / 2 KV heads,
vision depth 2), built in memory from seed 0 with the tiny tokenizer and processor; prompts from the synthetic
task (data.synthesize, one 64×64 image each, or an upscaled copy with --image-size); the standard setting of
4 prompts × 8 rollouts × at most 64 new tokens. Sections:
    grpo       one GRPO step of rlvr.py, split as rlvr.main times it: rollout, reward, old log-probs, update
    align      one PRISM alignment step of align.py: rollout, split + scoring, discriminator update, policy update
    rollouts   model.generate_rollouts against repeating each prompt n times through processor and vision encoder,
               and against itself with --compile-decode (static KV cache, compiled decode step)
    logprobs   per-token log-probs of one 8,192-token response at the real vocabulary (151,936): the chunked path
               against full-vocabulary logits, forward and backward; peak memory and time
CUDA (--device cuda; written for one H100 but NOT run on the CPU machine it was written on): random-init models
of the published Qwen3-VL-2B / -4B shapes (model.real_config, vocabulary 151,936), bf16. Sections:
    logprobs   as above, on the GPU (torch.cuda.max_memory_allocated)
    sft        sft.py's step (fp32 weights, bf16 autocast, gradient checkpointing): tokens/s and MFU
               = 6 · N · tokens / time / --peak-tflops
    decode     rollout decoding at batch 64, eager and --compile-decode: tokens/s against the HBM bound
               rows · --hbm-tbps / weight bytes
    align      the alignment step's split with a 2B-shape policy and its 4-expert upcycled discriminator

Usage:
    make bench                                         # = .venv/bin/python bench.py, about 3 minutes on 2 cores
    .venv/bin/python bench.py --repeats 5 --threads 2 --out runs/bench.json
    .venv/bin/python bench.py --sections grpo rollouts  # a subset
    .venv/bin/python bench.py --sections rollouts --image-size 448  # grouping at a real image resolution
    python bench.py --device cuda --peak-tflops 989 --hbm-tbps 3.35 --out runs/bench_h100.json

Reading the table: median over --repeats timed repeats after one warm-up (the log-prob rows: --logprob-repeats
runs after a short warm-up); spread = min–max of those repeats; ratios are taken per repeat (paired) before the
median. The header names the machine, torch version, thread count and the load average before the run (other work
on a 2-core machine slows the small models' many small kernels by up to 100×; a warning line says so): compare
rows across machines only with the same settings line.
"""

import argparse
import gc
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

import align
import data
import model
import rlvr
import upcycle_moe

REAL_VOCAB = 151936
SECTIONS = {"cpu": ("grpo", "align", "rollouts", "logprobs"), "cuda": ("logprobs", "sft", "decode", "align")}
ALL_SECTIONS = ("grpo", "align", "rollouts", "logprobs", "sft", "decode")
MiB = 2**20

FOOTNOTES = {
    "old": "rlvr.py takes π_old from the update's own forward (one optimizer step per batch: policy_update "
           "detaches its log-probs), so there is no separate old-log-prob pass; 0 by construction.",
    "reward": "The advantages use a benchmark reward, U(0, 1) per rollout from a seeded generator, so that every "
              "group has non-zero advantages and the update does its full work on a random model; the real grader "
              "(data.reward_parts over the decoded responses) still runs and is what this row times, with "
              "rlvr.group_advantages.",
    "rss": "Peak RSS is the section's whole process (getrusage ru_maxrss): interpreter, torch, transformers, "
           "model(s), optimizer state and the steps; each section runs in a fresh process.",
    "padding": "Padding share of the token positions (attention_mask 0) in the policy update's forward/backward "
               "micro-batches: rows grouped by model.token_budget_batches under the stage's token budget, each "
               "cut by Rollouts.micro_batch to the columns some row uses. The reference row splits the same "
               "rollouts by the earlier rule (rows in order, 16 each, every micro-batch as wide as the whole "
               "rollout batch). The rows marked \"lengths U(1, R)\" take the same rollouts with each response "
               "ended after a length drawn uniformly from 1 … R (seed 0): the random model's responses all run to "
               "the limit, a trained policy's do not.",
    "logprob": "Log-prob memory is measured in a fresh process per path: peak RSS (ru_maxrss) minus the RSS once "
               "the inputs and the lm_head exist (CPU), or torch.cuda.max_memory_allocated minus the memory "
               "allocated then (GPU). Forward and backward of the sum of the log-probs.",
    "cuda": "Written for a GPU; random weights of the real shapes, text-only or 64×64-image prompts from the tiny "
            "processor with the config's vision token ids set to the tiny tokenizer's.",
}


# ----------------------------------------------------------------------------------------------
# Rows: what every measurement produces
# ----------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: the repeats' samples, summarised as median and min–max."""

    measurement: str
    samples: list[float]
    unit: str
    notes: str = ""

    def summary(self) -> dict:
        s = self.samples
        median = statistics.median(s) if s else None
        return asdict(self) | {"median": median, "min": min(s) if s else None, "max": max(s) if s else None}


def fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.3g}"


def spread(r: dict) -> str:
    if len(r["samples"]) < 2:
        return "—"
    return f"{fmt(r['min'])}–{fmt(r['max'])}"


def ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Paired per-repeat ratios: repeat k of one path against repeat k of the other."""
    return [a / b for a, b in zip(numerator, denominator) if b > 0]


# ----------------------------------------------------------------------------------------------
# Clocks and memory
# ----------------------------------------------------------------------------------------------


def clock(d: model.Dist) -> float:
    """Wall time once the device has finished the work queued so far (CUDA kernels run asynchronously)."""
    if d.device.type == "cuda":
        torch.cuda.synchronize(d.device)
    return time.perf_counter()


def peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def peak_memory_row(name: str, d: model.Dist, notes: str = "") -> Row:
    """Peak host RSS on CPU; on a GPU the peak allocated device memory, which is what runs out there."""
    if d.device.type == "cuda":
        return Row(f"{name}: peak GPU memory", [torch.cuda.max_memory_allocated(d.device) / MiB], "MiB", notes)
    return Row(f"{name}: peak RSS", [peak_rss() / MiB], "MiB", (notes + " [rss]").strip())


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


# ----------------------------------------------------------------------------------------------
# The world a section runs in: tokenizer, processor, policy, prompts
# ----------------------------------------------------------------------------------------------


def tiny_tokenizer_and_processor(image_size: int = data.SYNTH_IMAGE_SIZE):
    """The tiny world's tokenizer and processor, exactly as model.build_tiny makes them (seed 0), in memory;
    the processor's pixel cap raised to image_size² so that --image-size images keep their size."""
    torch.manual_seed(0)
    tokenizer = model.build_tokenizer(data.synthetic_corpus(seed=0))
    processor = model.build_processor(tokenizer)
    cap = max(image_size, data.SYNTH_IMAGE_SIZE) ** 2
    processor.image_processor.size = dict(processor.image_processor.size, longest_edge=cap)
    return tokenizer, processor


def build_hf(shape: str, tokenizer, device: torch.device, dtype: torch.dtype):
    """A random-init Qwen3-VL: "tiny" (model.tiny_config) or a published shape ("2B", "4B", …), seed 0.

    The published configs carry the real vision token ids (151652–151656); they are set to the tiny
    tokenizer's so that the tiny processor's prompts, images included, run through the real shapes.
    """
    from transformers import AutoModelForImageTextToText

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in model.SPECIAL_TOKENS}
    if shape == "tiny":
        cfg = model.tiny_config(len(tokenizer), ids)
    else:
        cfg = model.real_config(shape)
        cfg.image_token_id, cfg.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
        cfg.vision_start_token_id, cfg.vision_end_token_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
    model.seed_everything(0)
    with torch.device(device):
        hf = AutoModelForImageTextToText.from_config(cfg, dtype=dtype)
    model.set_generation_tokens(hf, tokenizer)
    return hf


def load_examples(data_dir: Path, split: str, count: int, image_size: int) -> list[data.Example]:
    """The first `count` prompts of the stream a stage's step 0 would draw (seed 0).

    Images other than the task's 64×64 are nearest-neighbour upscaled copies: the same pictures, with the
    processor and the vision tower doing the work of a real resolution.
    """
    prompts = data.load_prompts(data_dir / f"{split}.parquet")
    examples = [prompts[i] for i in data.stream_indices(len(prompts), 0, 0, count)]
    if image_size == data.SYNTH_IMAGE_SIZE:
        return examples
    return [replace(e, images=[upscaled(ref, image_size) for ref in e.images]) for e in examples]


def upscaled(ref: data.ImageRef, size: int) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as img:
        out = io.BytesIO()
        img.convert("RGB").resize((size, size), Image.NEAREST).save(out, "PNG")
        return out.getvalue()


def world_shape(args) -> str:
    """The tiny model on CPU; the first --shapes entry (2B) on a GPU."""
    return "tiny" if args.device == "cpu" else args.shapes[0]


def world_dtype(args) -> torch.dtype:
    # bf16 weights on the GPU: the rollouts then read bf16 weights, as FSDP2's mixed precision unshards them.
    return torch.float32 if args.device == "cpu" else torch.bfloat16


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def decoder_params(hf) -> int:
    """Parameters every text token passes through: the language model, the (tied or untied) lm_head instead of
    the embedding table (a lookup, not a matmul)."""
    lm = hf.model.language_model
    return n_params(lm) - lm.embed_tokens.weight.numel() + hf.lm_head.weight.numel()


# ----------------------------------------------------------------------------------------------
# Section: one GRPO step (rlvr.py)
# ----------------------------------------------------------------------------------------------


def grpo_settings(args):
    """rlvr.py's own defaults under --algo grpo, at the benchmark's batch shape."""
    a = rlvr.with_preset(rlvr.Args(policy="-", data="-", out="-", algo="grpo", prompts_per_step=args.prompts,
                                   rollouts_per_prompt=args.rollouts, max_new_tokens=args.max_new_tokens))
    if args.micro_batch_tokens:
        a.micro_batch_tokens = args.micro_batch_tokens
    loss_cfg = rlvr.LossConfig(a.policy_loss, a.clip_low, a.clip_high, a.dual_clip, a.loss_agg, a.kl_coef,
                               a.kl_estimator, a.max_new_tokens, a.temperature)
    return a, loss_cfg


def grpo_step(policy, processor, examples, optimizer, scheduler, a, loss_cfg, d, reward_gen) -> dict:
    """One step in rlvr.main's order, with its timestamps. Returns the pieces' seconds and the rollouts."""
    tokenizer = processor.tokenizer
    t0 = clock(d)
    rollouts = model.generate_rollouts(policy, data.encode_prompts(processor, examples).to(d.device), tokenizer,
                                       a.rollouts_per_prompt, a.max_new_tokens, a.temperature, a.top_p)
    t1 = clock(d)
    # The real grader runs and is timed; its rewards are all 0 on a random model, which would zero every
    # advantage, so the advantages come from a seeded random reward instead.
    graded = [data.reward_parts(text, examples[g].answer)
              for text, g in zip(rlvr.decode_responses(rollouts, tokenizer), rollouts.group.tolist())]
    reward = torch.rand(len(graded), generator=reward_gen)
    advantages = rlvr.group_advantages(reward, rollouts.group.cpu(), a.std_normalize)
    # Without dynamic sampling rlvr.select_groups keeps every group unchanged: the loss mask is the response mask.
    loss_mask = rollouts.response_mask.cpu()
    t2 = clock(d)
    rlvr.policy_update(policy, optimizer, scheduler, rollouts, advantages, loss_mask, loss_cfg,
                       a.micro_batch_tokens, a.max_grad_norm, d, a.bf16)
    t3 = clock(d)
    return dict(rollout=t1 - t0, reward=t2 - t1, update=t3 - t2, rollouts=rollouts)


def padding_share(masks: list[torch.Tensor]) -> float:
    """Share of the positions of these forward batches' attention masks that are padding."""
    return sum(int((m == 0).sum()) for m in masks) / max(sum(m.numel() for m in masks), 1)


def update_micro_batches(rollouts: model.Rollouts, budget: int) -> list[torch.Tensor]:
    """The attention masks of rlvr.policy_update's forward batches, made by the same two calls it makes."""
    chunks = model.token_budget_batches(rollouts.batch.attention_mask.sum(-1).tolist(), budget)
    return [rollouts.micro_batch(rows)[0].attention_mask for rows in chunks]


def fixed_micro_batches(rollouts: model.Rollouts, rows_each: int = 16) -> list[torch.Tensor]:
    """The earlier rule, for reference: rows in order, `rows_each` per micro-batch, all columns kept."""
    mask = rollouts.batch.attention_mask
    return [mask[k:k + rows_each] for k in range(0, len(mask), rows_each)]


def cut_responses(rollouts: model.Rollouts, gen: torch.Generator) -> model.Rollouts:
    """The same rollouts with each response ended after a length drawn uniformly from 1 … R.

    A random model's responses almost all run to the length limit, which leaves a token budget
    nothing to save; a trained policy's lengths vary, and that is where it pays.
    """
    B, R = rollouts.response_mask.shape
    lengths = torch.randint(1, R + 1, (B, 1), generator=gen).to(rollouts.response_mask.device)
    mask = rollouts.response_mask * (torch.arange(R, device=lengths.device) < lengths)
    prompt = rollouts.batch.attention_mask[:, :rollouts.prompt_len]
    return replace(rollouts, response_mask=mask,
                   batch=replace(rollouts.batch, attention_mask=torch.cat([prompt, mask], 1)))


def padding_rows(section: str, rollouts_seen: list[model.Rollouts], budget: int) -> list[Row]:
    """Padding at the stage's token budget, then with varied response lengths at the reference's budget.

    The standard batch fits the stage's budget in one pass, so the second pair gives the token
    budget exactly the reference's micro-batch size (16 full-width rows) and compares the two
    rules at equal peak memory per pass.
    """
    gen = torch.Generator().manual_seed(0)
    cut = [cut_responses(r, gen) for r in rollouts_seen]
    full_width = 16 * rollouts_seen[0].batch.attention_mask.shape[1]
    rows = []
    for label, seen, tokens in (("", rollouts_seen, budget), (", lengths U(1, R)", cut, full_width)):
        now = [update_micro_batches(r, tokens) for r in seen]
        reference = [fixed_micro_batches(r) for r in seen]
        rows += [
            Row(f"{section}: padding in policy-update micro-batches{label}", [100 * padding_share(m) for m in now],
                "%", f"token budget {tokens}: {statistics.mean(len(m) for m in now):.1f} forward/backward passes "
                     "per update [padding]"),
            Row(f"{section}: same rollouts, 16 rows in order at full width (reference){label}",
                [100 * padding_share(m) for m in reference], "%",
                f"the rule before token budgets: {statistics.mean(len(m) for m in reference):.1f} passes"),
        ]
    return rows


def run_grpo(args, d, data_dir: Path) -> list[Row]:
    tokenizer, processor = tiny_tokenizer_and_processor(args.image_size)
    policy = model.Policy(build_hf(world_shape(args), tokenizer, d.device, world_dtype(args)))
    if args.device == "cuda":
        policy.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    examples = load_examples(data_dir, "rl", args.prompts, args.image_size)
    a, loss_cfg = grpo_settings(args)
    a.bf16 = args.device == "cuda"
    optimizer, scheduler = model.make_optimizer(policy, a.lr, a.weight_decay, args.repeats + 1,
                                                max(int(a.warmup_steps), 1), "constant")
    reward_gen = torch.Generator().manual_seed(0)
    model.seed_everything(0)
    steps = []
    for k in range(args.repeats + 1):
        steps.append(grpo_step(policy, processor, examples, optimizer, scheduler, a, loss_cfg, d, reward_gen))
        log(f"grpo step {k}: " + ", ".join(f"{n} {v:.2f}s" for n, v in steps[-1].items() if n != "rollouts"))
    timed = steps[1:]  # the first step is the warm-up
    tokens = [float(s["rollouts"].response_mask.sum()) for s in timed]
    B = args.prompts * args.rollouts
    return [
        Row("grpo: rollout", [s["rollout"] for s in timed], "s", "data.encode_prompts + model.generate_rollouts"),
        Row("grpo: reward", [s["reward"] for s in timed], "s", "decode + data.reward_parts + advantages [reward]"),
        Row("grpo: old log-probs", [0.0 for _ in timed], "s", "taken from the update's forward [old]"),
        Row("grpo: policy update", [s["update"] for s in timed], "s",
            f"rlvr.policy_update, GRPO preset, AdamW, token budget {a.micro_batch_tokens}"),
        Row("grpo: step total", [s["rollout"] + s["reward"] + s["update"] for s in timed], "s"),
        Row("grpo: tokens generated per second", ratios(tokens, [s["rollout"] for s in timed]), "tok/s",
            f"{statistics.mean(tokens) / B:.1f} tokens per rollout on average, over the rollout time"),
        peak_memory_row("grpo", d),
    ] + padding_rows("grpo", [s["rollouts"] for s in timed], a.micro_batch_tokens)


# ----------------------------------------------------------------------------------------------
# Section: one PRISM alignment step (align.py)
# ----------------------------------------------------------------------------------------------


def align_settings(args):
    """align.py's own defaults at the benchmark's batch shape, and its policy loss."""
    a = align.Args(policy="-", discriminator="-", data="-", out="-", prompts_per_step=args.prompts,
                   rollouts_per_prompt=args.rollouts, max_new_tokens=args.max_new_tokens)
    if args.micro_batch_tokens:
        a.micro_batch_tokens = args.micro_batch_tokens
    loss_cfg = rlvr.LossConfig("ppo", a.clip_ratio, a.clip_ratio, a.dual_clip, "token-mean", 0.0,
                               temperature=a.temperature)
    return a, loss_cfg


def align_step(policy, disc, processor, examples, opts, a, loss_cfg, d) -> dict:
    """One step of align.main (steps 1–6), with its timestamps."""
    (opt_p, sched_p), (opt_d, sched_d) = opts
    tokenizer, pad = processor.tokenizer, processor.tokenizer.pad_token_id
    pair_loss = model.DISCRIMINATOR_LOSSES[a.disc_loss]
    t0 = clock(d)
    rollouts = model.generate_rollouts(policy, data.encode_prompts(processor, examples).to(d.device), tokenizer,
                                       a.rollouts_per_prompt, a.max_new_tokens, a.temperature, a.top_p)
    t1 = clock(d)
    segs = align.split_rollouts(rollouts, examples, tokenizer)
    B = len(segs.valid)
    disc.eval()
    with torch.no_grad():
        scored = [align.score_rows(disc, rollouts, segs, rows, pad, a.score_clip, d, a.bf16)
                  for rows in align.chunks(B, a.disc_micro_batch)]
    t_cap, s_cap, t_rea, s_rea = (torch.cat(parts).cpu() for parts in zip(*scored))
    advantages = align.alignment_advantages(s_cap * segs.valid, s_rea * segs.valid, segs.valid,
                                            rollouts.group.cpu(), a.alpha, a.format_penalty)
    t2 = clock(d)
    disc.train()
    n_valid, n_rows = model.global_sum(segs.valid.sum().item(), d), model.global_sum(B, d)
    for rows in align.chunks(B, a.disc_micro_batch):
        scores = align.score_rows(disc, rollouts, segs, rows, pad, a.score_clip, d, a.bf16)
        align.discriminator_loss(*scores, segs.valid[rows].to(d.device), pair_loss, n_valid, n_rows,
                                 a.score_reg).backward()
    model.clip_and_step(disc, opt_d, sched_d, a.max_grad_norm)
    t3 = clock(d)
    rlvr.policy_update(policy, opt_p, sched_p, rollouts, advantages, rollouts.response_mask.cpu(), loss_cfg,
                       a.micro_batch_tokens, a.max_grad_norm, d, a.bf16)
    t4 = clock(d)
    return dict(rollout=t1 - t0, scoring=t2 - t1, disc_update=t3 - t2, policy_update=t4 - t3, rollouts=rollouts,
                valid=int(segs.valid.sum()))


def run_align(args, d, data_dir: Path) -> list[Row]:
    tokenizer, processor = tiny_tokenizer_and_processor(args.image_size)
    shape = world_shape(args)
    policy = model.Policy(build_hf(shape, tokenizer, d.device, world_dtype(args)))
    # upcycle only reads the dense weights (under no_grad) into a new MoE: the policy is left untouched.
    disc, _ = upcycle_moe.upcycle(policy.hf, seed=0)
    if args.device == "cuda":  # the published runs' memory setting
        for m in (policy, disc):
            m.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    examples = load_examples(data_dir, "align", args.prompts, args.image_size)
    a, loss_cfg = align_settings(args)
    a.bf16 = args.device == "cuda"
    steps_total = args.repeats + 1
    opts = (model.make_optimizer(policy, a.policy_lr, a.weight_decay, steps_total, 1, "constant"),
            model.make_optimizer(disc, a.disc_lr, a.weight_decay, steps_total, 1, "constant"))
    model.seed_everything(0)
    steps = []
    for k in range(steps_total):
        steps.append(align_step(policy, disc, processor, examples, opts, a, loss_cfg, d))
        log(f"align step {k}: " + ", ".join(f"{n} {v:.2f}s" for n, v in steps[-1].items()
                                           if isinstance(v, float)))
    timed = steps[1:]
    tokens = [float(s["rollouts"].response_mask.sum()) for s in timed]
    pieces = ("rollout", "scoring", "disc_update", "policy_update")
    world = f"{shape} policy {n_params(policy) / 1e6:.1f}M, discriminator {n_params(disc) / 1e6:.1f}M params"
    return [
        Row("align: rollout", [s["rollout"] for s in timed], "s", "data.encode_prompts + model.generate_rollouts"),
        Row("align: split + scoring", [s["scoring"] for s in timed], "s",
            "align.split_rollouts + align.score_rows (eval, no_grad) + advantages"),
        Row("align: discriminator update", [s["disc_update"] for s in timed], "s",
            f"align.main step 5, micro-batch {a.disc_micro_batch}; "
            f"{statistics.mean(s['valid'] for s in timed):.0f} valid rollouts on average"),
        Row("align: policy update", [s["policy_update"] for s in timed], "s",
            f"rlvr.policy_update, PPO-clip {a.clip_ratio}, token budget {a.micro_batch_tokens}"),
        Row("align: step total", [sum(s[p] for p in pieces) for s in timed], "s", world),
        Row("align: tokens generated per second", ratios(tokens, [s["rollout"] for s in timed]), "tok/s",
            f"{statistics.mean(tokens) / len(timed[0]['rollouts'].group):.1f} tokens per rollout on average"),
        peak_memory_row("align", d),
    ] + padding_rows("align", [s["rollouts"] for s in timed], a.micro_batch_tokens)


# ----------------------------------------------------------------------------------------------
# Section: grouped rollouts against repeated prompts
# ----------------------------------------------------------------------------------------------


def naive_rollouts(policy, processor, examples, n: int, max_new_tokens: int, d):
    """The baseline: each prompt repeated n times through the processor (and so the vision encoder), one sample
    per row. Same wrapper and sampling settings as the project's path; only the grouping differs."""
    repeated = [e for e in examples for _ in range(n)]
    return model.generate_rollouts(policy, data.encode_prompts(processor, repeated).to(d.device),
                                   processor.tokenizer, 1, max_new_tokens)


def grouped_rollouts(policy, processor, examples, n: int, max_new_tokens: int, d, compile_decode: bool = False):
    """The project's path: encode each prompt once, generate expands to n rows after the vision encoder."""
    return model.generate_rollouts(policy, data.encode_prompts(processor, examples).to(d.device),
                                   processor.tokenizer, n, max_new_tokens, compile_decode=compile_decode)


def compiled_rollouts(policy, processor, examples, n: int, max_new_tokens: int, d):
    """The project's path with --compile-decode: static KV cache, torch.compile'd decode step."""
    return grouped_rollouts(policy, processor, examples, n, max_new_tokens, d, compile_decode=True)


def run_rollouts(args, d, data_dir: Path) -> list[Row]:
    tokenizer, processor = tiny_tokenizer_and_processor(args.image_size)
    policy = model.Policy(build_hf(world_shape(args), tokenizer, d.device, world_dtype(args)))
    examples = load_examples(data_dir, "rl", args.prompts, args.image_size)
    model.seed_everything(0)
    paths = {"grouped": grouped_rollouts, "naive": naive_rollouts, "compiled": compiled_rollouts}
    times = {name: [] for name in paths}
    tokens = {name: [] for name in paths}
    first_call = {}
    for k in range(args.repeats + 1):
        # Interleaved, so that drift of the machine (clocks, other load) hits every path alike.
        seconds = {}
        for name, fn in paths.items():
            t0 = clock(d)
            r = fn(policy, processor, examples, args.rollouts, args.max_new_tokens, d)
            seconds[name] = clock(d) - t0
            if k:  # repeat 0 is the warm-up (and the compiled path's compilation)
                times[name].append(seconds[name])
                tokens[name].append(float(r.response_mask.sum()))
            else:
                first_call[name] = seconds[name]
        log(f"rollouts repeat {k}: " + ", ".join(f"{n} {v:.2f}s" for n, v in seconds.items()))
    B = args.prompts * args.rollouts
    lengths = {k: statistics.mean(v) / B for k, v in tokens.items()}
    return [
        Row("rollouts: grouped (model.generate_rollouts, n per prompt)", times["grouped"], "s",
            f"{lengths['grouped']:.1f} tokens per rollout on average"),
        Row("rollouts: naive (each prompt n× through processor + vision)", times["naive"], "s",
            f"{lengths['naive']:.1f} tokens per rollout on average"),
        Row("rollouts: naive / grouped time", ratios(times["naive"], times["grouped"]), "×",
            "> 1: grouping saves time"),
        Row("rollouts: grouped, --compile-decode", times["compiled"], "s",
            f"static KV cache, compiled decode step; {lengths['compiled']:.1f} tokens per rollout on average"),
        Row("rollouts: grouped / --compile-decode time", ratios(times["grouped"], times["compiled"]), "×",
            "> 1: the compiled decode step saves time"),
        Row("rollouts: --compile-decode first call", [first_call["compiled"]], "s",
            "torch.compile of the decode step, once per batch shape and 64-token prompt-length bucket"),
        peak_memory_row("rollouts", d),
    ]


# ----------------------------------------------------------------------------------------------
# Section: per-token log-probs at the real vocabulary (one fresh process per path)
# ----------------------------------------------------------------------------------------------


def naive_token_logprobs(hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    """The baseline: full (N, V) float32 logits, log-softmax over all of them, then the chosen entries."""
    return torch.log_softmax(lm_head(hidden).float(), -1).gather(-1, targets[:, None]).squeeze(-1)


def project_token_logprobs(hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    return model.chunked_token_logprobs(hidden, lm_head, targets)[0]


LOGPROB_PATHS = {"chunked": project_token_logprobs, "naive": naive_token_logprobs}


def logprob_worker(args, d, path: str) -> dict:
    """Forward + backward of Σ log π(y_t) over one response; peak memory above the inputs, and times."""
    fn = LOGPROB_PATHS[path]
    dtype = torch.float32 if d.device.type == "cpu" else torch.bfloat16  # the GPU runs keep activations in bf16
    torch.manual_seed(0)
    lm_head = nn.Linear(args.logprob_hidden, REAL_VOCAB, bias=False, device=d.device, dtype=dtype)
    hidden = torch.randn(args.logprob_tokens, args.logprob_hidden, device=d.device, dtype=dtype, requires_grad=True)
    targets = torch.randint(REAL_VOCAB, (args.logprob_tokens,), device=d.device)
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(d.device)
        baseline = torch.cuda.memory_allocated(d.device)
    else:
        baseline = current_rss()
    # Warm-up on one chunk's worth of tokens: thread pools, kernels and allocator start-up stay out of the timed
    # runs, and neither path's peak is raised (the chunked path's peak is one chunk's; the naive path's grows with N).
    w = min(args.logprob_tokens, 1024)
    fn(hidden[:w].detach().requires_grad_(), lm_head, targets[:w]).sum().backward()
    lm_head.weight.grad = None
    times, checksum = [], None
    for _ in range(args.logprob_repeats):
        t0 = clock(d)
        logprobs = fn(hidden, lm_head, targets)
        logprobs.sum().backward()
        times.append(clock(d) - t0)
        # The two paths must compute the same thing: the parent compares these.
        checksum = [logprobs.sum().item(), hidden.grad.float().norm().item(), lm_head.weight.grad.float().norm().item()]
        del logprobs
        hidden.grad = lm_head.weight.grad = None
    peak = torch.cuda.max_memory_allocated(d.device) if d.device.type == "cuda" else peak_rss()
    return dict(times=times, peak_bytes=peak - baseline, checksum=checksum, dtype=str(dtype).removeprefix("torch."))


def logprob_rows(results: dict, args) -> list[Row]:
    """Rows from the two fresh-process runs (a path may be missing: skipped or failed)."""
    rows, n, H = [], args.logprob_tokens, args.logprob_hidden
    shape = f"N={n:,}, V={REAL_VOCAB:,}, H={H}"
    for path in ("chunked", "naive"):
        r = results.get(path)
        if r is None or "skipped" in r:
            reason = r["skipped"] if r else "failed"
            rows.append(Row(f"logprobs: {path}: fwd+bwd time", [], "s", reason))
            continue
        label = "model.chunked_token_logprobs" if path == "chunked" else "log_softmax(lm_head(h).float()).gather"
        rows.append(Row(f"logprobs: {path}: peak memory above inputs", [r["peak_bytes"] / MiB], "MiB",
                        f"{label}; {shape}, {r['dtype']} [logprob]"))
        rows.append(Row(f"logprobs: {path}: fwd+bwd time", r["times"], "s",
                        f"{len(r['times'])} run(s) after a 1,024-token warm-up"))
    if all(p in results and "skipped" not in results[p] for p in ("chunked", "naive")):
        c, nv = results["chunked"], results["naive"]
        rows.append(Row("logprobs: peak memory naive / chunked", [nv["peak_bytes"] / max(c["peak_bytes"], 1)], "×",
                        f"> 1: the chunked path needs less; full fp32 logits alone are "
                        f"{n * REAL_VOCAB * 4 / 2**30:.2f} GiB"))
        rows.append(Row("logprobs: time naive / chunked", ratios(nv["times"], c["times"]), "×",
                        "> 1: the chunked path is faster (backward recomputes each chunk's logits)"))
        diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(c["checksum"], nv["checksum"]))
        rows[-1].notes += f"; same values (max rel. diff of Σlogπ, ‖∇h‖, ‖∇W‖: {diff:.1e})"
    return rows


def naive_logprob_fits(args) -> tuple[bool, str]:
    """The naive path holds about three (N, V) float32 tensors at its peak (log-softmax output, its gradient and
    the scattered gather gradient); refuse to start it where that would push the machine into the OOM killer."""
    need = 3 * args.logprob_tokens * REAL_VOCAB * 4
    have = mem_available()
    return need < 0.9 * have, f"skipped: needs about {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB available"


# ----------------------------------------------------------------------------------------------
# Sections for a GPU: SFT throughput and MFU, decode against the HBM bound
# ----------------------------------------------------------------------------------------------


def random_text_batch(tokenizer, vocab: int, rows: int, length: int, device) -> tuple[data.VLBatch, torch.Tensor]:
    """Text-only rows of random token ids above the special tokens (no padding), every token a target."""
    ids = torch.randint(len(model.SPECIAL_TOKENS), vocab, (rows, length), device=device)
    ones = torch.ones_like(ids)
    none = torch.zeros(0, dtype=torch.long, device=device)
    batch = data.VLBatch(input_ids=ids, attention_mask=ones, mm_token_type_ids=torch.zeros_like(ids), pixel_values=None,
                         image_grid_thw=None, images_per_row=torch.zeros(rows, dtype=torch.long), image_index=none)
    return batch, ones


def sft_mfu_rows(args, d, shape: str, tokenizer) -> list[Row]:
    """sft.py's single-GPU step: fp32 weights under bf16 autocast, gradient checkpointing, AdamW, clipping."""
    import sft

    policy = model.Policy(build_hf(shape, tokenizer, d.device, torch.float32))
    policy.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    optimizer, scheduler = model.make_optimizer(policy, 1e-5, 0.01, args.repeats + 1, 1, "cosine")
    vocab = policy.hf.config.text_config.vocab_size
    batch, target = random_text_batch(tokenizer, vocab, args.sft_rows, args.sft_seq, d.device)
    total_targets = float(target[:, 1:].sum())
    bf16 = d.device.type == "cuda"
    times = []
    for _ in range(args.repeats + 1):
        t0 = clock(d)
        with model.autocast(d, bf16):
            logprobs, _ = policy(batch, target)
        sft.sft_loss(logprobs, target, total_targets).backward()
        model.clip_and_step(policy, optimizer, scheduler, 1.0)
        times.append(clock(d) - t0)
    times = times[1:]
    tokens = args.sft_rows * args.sft_seq
    n = decoder_params(policy.hf)
    mfu = [100 * 6 * n * tokens / t / (args.peak_tflops * 1e12) for t in times]
    rows = [Row(f"sft {shape}: step time", times, "s", f"{args.sft_rows}×{args.sft_seq} tokens, fp32 weights, "
                                                      "bf16 autocast, gradient checkpointing"),
            Row(f"sft {shape}: tokens per second", [tokens / t for t in times], "tok/s"),
            Row(f"sft {shape}: MFU", mfu, "%", f"6·N·tokens / time / {args.peak_tflops} TFLOP/s, "
                                              f"N = {n / 1e6:,.1f}M decoder params; attention scores and "
                                              "checkpoint recompute not counted"),
            peak_memory_row(f"sft {shape}", d)]
    del policy, optimizer, scheduler
    return rows


def run_sft(args, d, data_dir: Path) -> list[Row]:
    tokenizer, _ = tiny_tokenizer_and_processor()
    shapes = ["tiny"] if args.device == "cpu" else args.shapes
    rows = []
    for shape in shapes:
        try:
            rows += sft_mfu_rows(args, d, shape, tokenizer)
        except torch.OutOfMemoryError:
            rows.append(Row(f"sft {shape}: step time", [], "s", "out of device memory: does not fit on this GPU"))
        gc.collect()
        if d.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(d.device)
    return rows


def run_decode(args, d, data_dir: Path) -> list[Row]:
    """Rollout decoding at batch --decode-prompts × --rollouts against the HBM-bandwidth bound.

    Each decode step reads every decoder weight once (bf16: 2 bytes each), whatever the batch, so the bound is
    rows · bandwidth / weight bytes tokens per second; KV-cache reads are left out (short contexts here).
    """
    tokenizer, processor = tiny_tokenizer_and_processor(args.image_size)
    shape = world_shape(args)
    dtype = world_dtype(args)
    policy = model.Policy(build_hf(shape, tokenizer, d.device, dtype))
    examples = load_examples(data_dir, "rl", args.decode_prompts, args.image_size)
    rows_per_step = args.decode_prompts * args.rollouts
    weight_bytes = decoder_params(policy.hf) * torch.finfo(dtype).bits // 8
    bound = rows_per_step * args.hbm_tbps * 1e12 / weight_bytes
    rows = [Row(f"decode {shape}: HBM bound", [bound], "tok/s",
                f"{rows_per_step} rows × {args.hbm_tbps} TB/s / {weight_bytes / 1e9:.2f} GB of "
                f"{str(dtype).removeprefix('torch.')} decoder weights per step")]
    for label, compile_decode in (("eager", False), ("--compile-decode", True)):
        model.seed_everything(0)
        times, tokens = [], []
        for _ in range(args.repeats + 1):  # the first call is the warm-up (and the compilation)
            t0 = clock(d)
            r = grouped_rollouts(policy, processor, examples, args.rollouts, args.decode_tokens, d, compile_decode)
            times.append(clock(d) - t0)
            tokens.append(float(r.response_mask.sum()))
        measured = ratios(tokens[1:], times[1:])
        rows += [
            Row(f"decode {shape}, {label}: tokens per second, batch {rows_per_step}", measured, "tok/s",
                f"model.generate_rollouts, ≤{args.decode_tokens} new tokens, prefill included; "
                f"first call {times[0]:.1f} s"),
            Row(f"decode {shape}, {label}: share of the HBM bound", [100 * m / bound for m in measured], "%"),
        ]
    return rows + [peak_memory_row(f"decode {shape}", d)]


# ----------------------------------------------------------------------------------------------
# Workers (one fresh process per section) and the parent that runs them
# ----------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


WORKERS = {"grpo": run_grpo, "align": run_align, "rollouts": run_rollouts, "sft": run_sft, "decode": run_decode}


def run_worker(args) -> None:
    """Inside the fresh process: measure one section and write its result as JSON."""
    torch.set_num_threads(args.threads)
    d = model.init_distributed(args.device)
    if args.worker.startswith("logprobs-"):
        result = logprob_worker(args, d, args.worker.removeprefix("logprobs-"))
    else:
        result = {"rows": [r.summary() for r in WORKERS[args.worker](args, d, Path(args.data_dir))]}
    Path(args.worker_out).write_text(json.dumps(result))


def spawn(name: str, args, data_dir: Path) -> dict | None:
    """Run one worker process; None if it failed (its stderr has already streamed through)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--worker", name,
           "--worker-out", str(out), "--data-dir", str(data_dir)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=sys.stderr)
    log(f"{name}: {time.perf_counter() - t0:.0f} s" + (f", FAILED with exit code {proc.returncode}"
                                                        if proc.returncode else ""))
    try:
        return json.loads(out.read_text()) if proc.returncode == 0 else None
    finally:
        out.unlink(missing_ok=True)


def run_logprobs(args, data_dir: Path) -> list[dict]:
    results = {"chunked": spawn("logprobs-chunked", args, data_dir)}
    fits, reason = naive_logprob_fits(args) if args.device == "cpu" else (True, "")
    results["naive"] = spawn("logprobs-naive", args, data_dir) if fits else {"skipped": reason}
    return [r.summary() for r in logprob_rows({k: v for k, v in results.items() if v is not None}, args)]


def synth_data(out: Path) -> Path:
    """The synthetic task's prompts (align and rl splits carry teacher texts and answers); the rest minimal."""
    data.synthesize(out, seed=0, n_sft_teacher=1, n_sft_public=1, n_align=16, n_rl=16, n_pairs=1, n_pairs_test=1,
                    n_test=1)
    return out


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info(args, start: dict) -> dict:
    """Where the numbers come from. `start` holds the date and the 1/5/15-minute load average before the first
    section: other work on the machine slows every row, small CPU models most (threads wait on each other)."""
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), usable_cores=len(os.sched_getaffinity(0)),
                memory_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
                threads=args.threads, device=args.device, git=git_revision(), **start)
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def settings(args) -> dict:
    tok, _ = tiny_tokenizer_and_processor()
    ids = {t: tok.convert_tokens_to_ids(t) for t in model.SPECIAL_TOKENS}
    cfg = model.tiny_config(len(tok), ids)
    text, vision = cfg.text_config, cfg.vision_config
    tiny = (f"tiny Qwen3-VL (model.tiny_config): text hidden {text.hidden_size}, {text.num_hidden_layers} layers, "
            f"{text.num_attention_heads} heads / {text.num_key_value_heads} KV, vocab {text.vocab_size}; vision "
            f"hidden {vision.hidden_size}, depth {vision.depth}; random init, seed 0")
    s = dict(model=tiny if args.device == "cpu" else f"Qwen3-VL {'/'.join(args.shapes)} shapes (model.real_config), "
             "random init, seed 0", prompts=args.prompts, rollouts=args.rollouts, max_new_tokens=args.max_new_tokens,
             image_size=args.image_size,
             repeats=args.repeats, warmup=1, micro_batch_tokens=args.micro_batch_tokens or "stage default",
             logprob=dict(tokens=args.logprob_tokens, vocab=REAL_VOCAB, hidden=args.logprob_hidden,
                          repeats=args.logprob_repeats))
    if args.device == "cuda":
        s |= dict(peak_tflops=args.peak_tflops, hbm_tbps=args.hbm_tbps, sft=f"{args.sft_rows}×{args.sft_seq}",
                  decode=f"{args.decode_prompts}×{args.rollouts}×{args.decode_tokens}")
    return s


def render(info: dict, setting: dict, rows: list[dict], footnotes: list[str]) -> str:
    """The markdown table, with a header that says which machine produced it."""
    where = f"{info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), {info['memory_gib']} GiB"
    if "gpu" in info:
        where += f", GPU {info['gpu']}"
    lines = [f"## PRISM benchmark ({info['device']})", "",
             f"- machine: {where}",
             f"- software: Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}; "
             f"torch threads {info['threads']}; git {info['git']}; started {info['date']}",
             f"- load average before the run (1/5/15 min): {' / '.join(map(str, info['load_at_start']))}",
             f"- model: {setting['model']}",
             f"- setting: {setting['prompts']} prompts × {setting['rollouts']} rollouts × ≤{setting['max_new_tokens']} "
             f"new tokens; one {setting['image_size']}×{setting['image_size']} image per prompt; median of "
             f"{setting['repeats']} repeats after {setting['warmup']} warm-up; "
             "spread = min–max", ""]
    # The load during the run would count this run's own threads, so only the load before it is judged.
    if info["load_at_start"][0] > 0.5 * info["usable_cores"]:
        lines.insert(2, "- WARNING: other work was running on this machine (see the load average): the timings are "
                        "not representative; rerun on an idle machine")
    if info["device"] == "cuda":
        lines.insert(2, "- NOTE: the CUDA path was written on a CPU-only machine and had not been run there. "
                        f"[{len(footnotes)}]")
    lines += ["| measurement | median | spread | unit | notes |", "|---|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['measurement']} | {fmt(r['median'])} | {spread(r)} | {r['unit']} | {r['notes']} |")
    lines += [""] + [f"[{k + 1}] {text}" for k, text in enumerate(footnotes)]
    return "\n".join(lines)


def number_footnotes(rows: list[dict], device: str) -> list[str]:
    """Replace [key] markers in the notes by numbers, keeping only the footnotes that are used."""
    used = []
    for r in rows:
        for key, text in FOOTNOTES.items():
            marker = f"[{key}]"
            if marker in r["notes"]:
                if text not in used:
                    used.append(text)
                r["notes"] = r["notes"].replace(marker, f"[{used.index(text) + 1}]")
    if device == "cuda":
        used.append(FOOTNOTES["cuda"])
    return used


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--sections", nargs="+", choices=ALL_SECTIONS, help="default: all of the device's sections")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch intra-op threads")
    p.add_argument("--out", default="runs/bench.json", help="JSON output")
    p.add_argument("--prompts", type=int, default=4, help="prompts (groups) per step")
    p.add_argument("--rollouts", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--image-size", type=int, default=data.SYNTH_IMAGE_SIZE,
                   help="side of the prompts' square images in pixels (the synthetic task's: 64)")
    p.add_argument("--micro-batch-tokens", type=int, default=0,
                   help="token budget of a policy forward/backward; 0 = the stage's default")
    p.add_argument("--logprob-tokens", type=int, default=8192, help="response length of the log-prob measurement")
    p.add_argument("--logprob-hidden", type=int, default=64, help="hidden size of the log-prob measurement")
    p.add_argument("--logprob-repeats", type=int, default=2,
                   help="timed runs per log-prob path (each about half a minute on 2 CPU cores)")
    p.add_argument("--shapes", nargs="+", default=["2B", "4B"], help="CUDA: published shapes (the first for align)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="CUDA: dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--hbm-tbps", type=float, default=3.35, help="CUDA: HBM bandwidth in TB/s (H100 SXM: 3.35)")
    p.add_argument("--sft-rows", type=int, default=4, help="CUDA: rows of the SFT micro-batch")
    p.add_argument("--sft-seq", type=int, default=2048, help="CUDA: tokens per SFT row")
    p.add_argument("--decode-prompts", type=int, default=8, help="CUDA: prompts of the decode measurement")
    p.add_argument("--decode-tokens", type=int, default=256, help="CUDA: new tokens of the decode measurement")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker:
        return run_worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no GPU")
    sections = args.sections or SECTIONS[args.device]
    start = dict(date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), load_at_start=[round(x, 2) for x in os.getloadavg()])
    t0 = time.perf_counter()
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="prism-bench-") as tmp:
        data_dir = synth_data(Path(tmp) / "data")
        for name in sections:
            if name == "logprobs":
                rows += run_logprobs(args, data_dir)
                continue
            result = spawn(name, args, data_dir)
            if result is None:
                failed.append(name)
                rows.append(Row(f"{name}: section failed", [], "", "see the error above").summary())
            else:
                rows += result["rows"]
    info, setting = machine_info(args, start), settings(args)
    footnotes = number_footnotes(rows, args.device)
    table = render(info, setting, rows, footnotes)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine=info, settings=setting, rows=rows, footnotes=footnotes,
                                   failed=failed, table=table, seconds=round(time.perf_counter() - t0, 1)), indent=1))
    log(f"wrote {out} ({time.perf_counter() - t0:.0f} s in all)")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
