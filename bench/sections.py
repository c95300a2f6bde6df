"""The benchmark's measurements, one section each (see bench/__main__.py for what they measure and how to run them).

Every section builds its world (tokenizer, processor, policy, prompts), calls the stage's own step function and
returns table rows; the parent process runs each section in a fresh process of its own.
"""

import gc
import io
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

import align
import batching
import data
import grading
import logprobs
import model
import policy_gradient
import rlvr
import run
import sft
import upcycle_moe
from toy import models as toy_models
from toy import world as toy_world

REAL_VOCAB = 151936
SECTIONS = {"cpu": ("grpo", "align", "rollouts", "logprobs"), "cuda": ("logprobs", "sft", "decode", "align")}
ALL_SECTIONS = ("grpo", "align", "rollouts", "logprobs", "sft", "decode", "trl")
MiB = 2**20

FOOTNOTES = {
    "old": "rlvr.py takes π_old from the update's own forward (one optimizer step per batch: policy_update "
           "detaches its log-probs), so there is no separate old-log-prob pass; 0 by construction.",
    "reward": "The advantages use a benchmark reward, U(0, 1) per rollout from a seeded generator, so that every "
              "group has non-zero advantages and the update does its full work on a random model; the real grader "
              "(grading.example_reward over the decoded responses) still runs and is what this row times, with "
              "policy_gradient.group_advantages.",
    "rss": "Peak RSS is the section's whole process (getrusage ru_maxrss): interpreter, torch, transformers, "
           "model(s), optimizer state and the steps; each section runs in a fresh process.",
    "padding": "Padding share of the token positions (attention_mask 0) in the policy update's forward/backward "
               "micro-batches: rows grouped by batching.token_budget_batches under the stage's token budget, each "
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


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


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


def clock(d: run.Dist) -> float:
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


def peak_memory_row(name: str, d: run.Dist, notes: str = "") -> Row:
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


def tiny_tokenizer_and_processor(image_size: int = toy_world.SYNTH_IMAGE_SIZE):
    """The tiny world's tokenizer and processor, exactly as model.build_tiny makes them (seed 0), in memory;
    the processor's pixel cap raised to image_size² so that --image-size images keep their size."""
    torch.manual_seed(0)
    tokenizer = toy_models.build_tokenizer(toy_world.synthetic_corpus(seed=0))
    processor = toy_models.build_processor(tokenizer)
    cap = max(image_size, toy_world.SYNTH_IMAGE_SIZE) ** 2
    processor.image_processor.size = dict(processor.image_processor.size, longest_edge=cap)
    return tokenizer, processor


def build_hf(shape: str, tokenizer, device: torch.device, dtype: torch.dtype):
    """A random-init Qwen3-VL: "tiny" (toy_models.tiny_config) or a published shape ("2B", "4B", …), seed 0.

    The published configs carry the real vision token ids (151652–151656); they are set to the tiny
    tokenizer's so that the tiny processor's prompts, images included, run through the real shapes.
    """
    from transformers import AutoModelForImageTextToText

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in toy_models.SPECIAL_TOKENS}
    if shape == "tiny":
        cfg = toy_models.tiny_config(len(tokenizer), ids)
    else:
        cfg = toy_models.real_config(shape)
        cfg.image_token_id, cfg.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
        cfg.vision_start_token_id, cfg.vision_end_token_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
    run.seed_everything(0)
    with torch.device(device):
        hf = AutoModelForImageTextToText.from_config(cfg, dtype=dtype)
    toy_models.set_generation_tokens(hf, tokenizer)
    return hf


def load_examples(data_dir: Path, split: str, count: int, image_size: int) -> list[data.Example]:
    """The first `count` prompts of the stream a stage's step 0 would draw (seed 0).

    Images other than the task's 64×64 are nearest-neighbour upscaled copies: the same pictures, with the
    processor and the vision tower doing the work of a real resolution.
    """
    prompts = data.load_prompts(data_dir / f"{split}.parquet")
    examples = [prompts[i] for i in batching.stream_indices(len(prompts), 0, 0, count)]
    if image_size == toy_world.SYNTH_IMAGE_SIZE:
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


def grpo_settings(args) -> rlvr.Args:
    """rlvr.py's own defaults under --algo grpo, at the benchmark's batch shape."""
    a = rlvr.with_preset(rlvr.Args(policy="-", data=["-"], out="-", algo="grpo", prompts_per_step=args.prompts,
                                   rollouts_per_prompt=args.rollouts, max_new_tokens=args.max_new_tokens,
                                   bf16=args.device == "cuda"))
    if args.micro_batch_tokens:
        a.micro_batch_tokens = args.micro_batch_tokens
    return a


def benchmark_reward(gen: torch.Generator) -> rlvr.RewardFn:
    """The real grader runs on every response and is timed with the reward phase; the reward it hands back is
    U(0, 1) from a seeded generator, because a random model's rewards are all 0 and would zero every advantage."""
    def reward(text: str, example: data.Example) -> tuple[float, float, float]:
        grading.example_reward(text, example)
        return float(torch.rand((), generator=gen)), 0.0, 0.0
    return reward


def padding_share(masks: list[torch.Tensor]) -> float:
    """Share of the positions of these forward batches' attention masks that are padding."""
    return sum(int((m == 0).sum()) for m in masks) / max(sum(m.numel() for m in masks), 1)


def update_micro_batches(rollouts: batching.Rollouts, budget: int) -> list[torch.Tensor]:
    """The attention masks of policy_gradient.policy_update's forward batches, made by the same two calls it makes."""
    chunks = batching.token_budget_batches(rollouts.batch.attention_mask.sum(-1).tolist(), budget)
    return [rollouts.micro_batch(rows)[0].attention_mask for rows in chunks]


def fixed_micro_batches(rollouts: batching.Rollouts, rows_each: int = 16) -> list[torch.Tensor]:
    """The earlier rule, for reference: rows in order, `rows_each` per micro-batch, all columns kept."""
    mask = rollouts.batch.attention_mask
    return [mask[k:k + rows_each] for k in range(0, len(mask), rows_each)]


def cut_responses(rollouts: batching.Rollouts, gen: torch.Generator) -> batching.Rollouts:
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


def padding_rows(section: str, rollouts_seen: list[batching.Rollouts], budget: int) -> list[Row]:
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


def sample_rollouts(policy, processor, examples, a, d, count: int) -> list[batching.Rollouts]:
    """`count` rollout batches of the step's shape, for the padding rows (not timed)."""
    prompts = batching.encode_prompts(processor, examples).to(d.device)
    return [model.generate_rollouts(policy, prompts, processor.tokenizer, a.rollouts_per_prompt, a.max_new_tokens,
                                    a.temperature, a.top_p) for _ in range(count)]


def grpo_steps(args, d, data_dir: Path):
    """args.repeats + 1 steps of rlvr.rlvr_step (GRPO preset) on the benchmark's model and prompts; returns the
    policy, processor, examples, settings and every step's metrics (time/step_s added)."""
    tokenizer, processor = tiny_tokenizer_and_processor(args.image_size)
    policy = model.Policy(build_hf(world_shape(args), tokenizer, d.device, world_dtype(args)))
    if args.device == "cuda":
        policy.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    examples = load_examples(data_dir, "rl", args.prompts, args.image_size)
    a = grpo_settings(args)
    loss_cfg = policy_gradient.LossConfig.from_args(a)
    optimizer, scheduler = run.make_optimizer(policy, a.lr, a.weight_decay, args.repeats + 1, int(a.warmup_steps),
                                              "constant")
    reward = benchmark_reward(torch.Generator().manual_seed(0))
    progress = {"prompts_consumed": 0}
    run.seed_everything(0)
    steps = []
    for k in range(args.repeats + 1):
        t0 = clock(d)
        m = rlvr.rlvr_step(policy, optimizer, scheduler, processor, examples, a, loss_cfg, progress, d, reward)
        m["time/step_s"] = clock(d) - t0
        steps.append(m)
        log(f"grpo step {k}: " + ", ".join(f"{n} {m[f'time/{n}_s']:.2f}s" for n in ("rollout", "reward", "update")))
    return policy, processor, examples, a, steps


def run_grpo(args, d, data_dir: Path) -> list[Row]:
    policy, processor, examples, a, steps = grpo_steps(args, d, data_dir)
    timed = steps[1:]  # the first step is the warm-up
    B = args.prompts * args.rollouts
    return [
        Row("grpo: rollout", [m["time/rollout_s"] for m in timed], "s",
            "batching.encode_prompts + model.generate_rollouts"),
        Row("grpo: reward", [m["time/reward_s"] for m in timed], "s",
            "decode + grading.example_reward + advantages [reward]"),
        Row("grpo: old log-probs", [0.0 for _ in timed], "s", "taken from the update's forward [old]"),
        Row("grpo: policy update", [m["time/update_s"] for m in timed], "s",
            f"policy_gradient.policy_update, GRPO preset, AdamW, token budget {a.micro_batch_tokens}"),
        Row("grpo: step total", [m["time/step_s"] for m in timed], "s", "rlvr.rlvr_step"),
        Row("grpo: tokens generated per second", [m["time/tokens_per_s"] for m in timed], "tok/s",
            f"{statistics.mean(m['response/length_mean'] for m in timed):.1f} tokens per rollout on average, over "
            f"the rollout time; {B} rollouts per step"),
        peak_memory_row("grpo", d),
    ] + padding_rows("grpo", sample_rollouts(policy, processor, examples, a, d, args.repeats), a.micro_batch_tokens)


def run_project_vs_trl(args, d, data_dir: Path) -> list[Row]:
    """The project's side of the `trl` section: the GRPO step split as bench/trl_baseline.py splits TRL's."""
    timed = grpo_steps(args, d, data_dir)[-1][1:]
    return [
        Row("project: step total", [m["time/step_s"] for m in timed], "s", "rlvr.rlvr_step"),
        Row("project: rollout", [m["time/rollout_s"] + m["time/reward_s"] for m in timed], "s",
            "prompts, generate, reward, advantages"),
        Row("project: update", [m["time/update_s"] for m in timed], "s", "policy_gradient.policy_update"),
        Row("project: mean response length", [m["response/length_mean"] for m in timed], "tokens"),
        peak_memory_row("project", d),
    ]


# ----------------------------------------------------------------------------------------------
# Section: one PRISM alignment step (align.py)
# ----------------------------------------------------------------------------------------------


def align_settings(args) -> align.Args:
    """align.py's own defaults at the benchmark's batch shape."""
    a = align.Args(policy="-", discriminator="-", data=["-"], out="-", prompts_per_step=args.prompts,
                   rollouts_per_prompt=args.rollouts, max_new_tokens=args.max_new_tokens, bf16=args.device == "cuda")
    if args.micro_batch_tokens:
        a.micro_batch_tokens = args.micro_batch_tokens
    return a


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
    a = align_settings(args)
    loss_cfg = policy_gradient.LossConfig.from_args(a)
    steps_total = args.repeats + 1
    optimizers, schedulers = {}, {}
    for name, module, lr in (("policy", policy, a.lr), ("discriminator", disc, a.disc_lr)):
        optimizers[name], schedulers[name] = run.make_optimizer(module, lr, a.weight_decay, steps_total, 1, "constant")
    run.seed_everything(0)
    steps = []
    pieces = ("rollout", "scoring", "disc_update", "policy_update")
    for k in range(steps_total):
        m = align.alignment_step(policy, disc, optimizers, schedulers, processor, examples, a, loss_cfg, d)
        steps.append(m)
        log(f"align step {k}: " + ", ".join(f"{p} {m[f'time/{p}_s']:.2f}s" for p in pieces))
    timed = steps[1:]
    B = args.prompts * args.rollouts
    world = f"{shape} policy {n_params(policy) / 1e6:.1f}M, discriminator {n_params(disc) / 1e6:.1f}M params"
    return [
        Row("align: rollout", [m["time/rollout_s"] for m in timed], "s",
            "batching.encode_prompts + model.generate_rollouts"),
        Row("align: split + scoring", [m["time/scoring_s"] for m in timed], "s",
            "align.split_rollouts + align.score_rollouts (eval, no_grad) + advantages"),
        Row("align: discriminator update", [m["time/disc_update_s"] for m in timed], "s",
            f"align.alignment_step step 5, micro-batch {a.disc_micro_batch}; "
            f"{statistics.mean(m['reward/format'] for m in timed) * B:.0f} valid rollouts on average"),
        Row("align: policy update", [m["time/policy_update_s"] for m in timed], "s",
            f"policy_gradient.policy_update, PPO-clip {a.clip_low}/{a.clip_high}, token budget {a.micro_batch_tokens}"),
        Row("align: step total", [sum(m[f"time/{p}_s"] for p in pieces) for m in timed], "s", world),
        Row("align: tokens generated per second",
            [m["response/length_mean"] * B / m["time/rollout_s"] for m in timed], "tok/s",
            f"{statistics.mean(m['response/length_mean'] for m in timed):.1f} tokens per rollout on average"),
        peak_memory_row("align", d),
    ] + padding_rows("align", sample_rollouts(policy, processor, examples, a, d, args.repeats), a.micro_batch_tokens)


# ----------------------------------------------------------------------------------------------
# Section: grouped rollouts against repeated prompts
# ----------------------------------------------------------------------------------------------


def naive_rollouts(policy, processor, examples, n: int, max_new_tokens: int, d):
    """The baseline: each prompt repeated n times through the processor (and so the vision encoder), one sample
    per row. Same wrapper and sampling settings as the project's path; only the grouping differs."""
    repeated = [e for e in examples for _ in range(n)]
    return model.generate_rollouts(policy, batching.encode_prompts(processor, repeated).to(d.device),
                                   processor.tokenizer, 1, max_new_tokens)


def grouped_rollouts(policy, processor, examples, n: int, max_new_tokens: int, d, compile_decode: bool = False):
    """The project's path: encode each prompt once, generate expands to n rows after the vision encoder."""
    return model.generate_rollouts(policy, batching.encode_prompts(processor, examples).to(d.device),
                                   processor.tokenizer, n, max_new_tokens, compile_decode=compile_decode)


def compiled_rollouts(policy, processor, examples, n: int, max_new_tokens: int, d):
    """The project's path with --compile-decode: static KV cache, torch.compile'd decode step."""
    return grouped_rollouts(policy, processor, examples, n, max_new_tokens, d, compile_decode=True)


def run_rollouts(args, d, data_dir: Path) -> list[Row]:
    tokenizer, processor = tiny_tokenizer_and_processor(args.image_size)
    policy = model.Policy(build_hf(world_shape(args), tokenizer, d.device, world_dtype(args)))
    examples = load_examples(data_dir, "rl", args.prompts, args.image_size)
    run.seed_everything(0)
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
    return logprobs.chunked_token_logprobs(hidden, lm_head, targets)[0]


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
        label = "logprobs.chunked_token_logprobs" if path == "chunked" else "log_softmax(lm_head(h).float()).gather"
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


def random_text_batch(tokenizer, vocab: int, rows: int, length: int, device) -> tuple[batching.VLBatch, torch.Tensor]:
    """Text-only rows of random token ids above the special tokens (no padding), every token a target."""
    ids = torch.randint(len(toy_models.SPECIAL_TOKENS), vocab, (rows, length), device=device)
    ones = torch.ones_like(ids)
    none = torch.zeros(0, dtype=torch.long, device=device)
    batch = batching.VLBatch(input_ids=ids, attention_mask=ones, mm_token_type_ids=torch.zeros_like(ids),
                             pixel_values=None, image_grid_thw=None, images_per_row=torch.zeros(rows, dtype=torch.long),
                             image_index=none)
    return batch, ones


def sft_mfu_rows(args, d, shape: str, tokenizer) -> list[Row]:
    """sft.py's single-GPU step: fp32 weights under bf16 autocast, gradient checkpointing, AdamW, clipping."""
    policy = model.Policy(build_hf(shape, tokenizer, d.device, torch.float32))
    policy.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    a = sft.Args(policy="-", data=["-"], out="-", bf16=d.device.type == "cuda")
    optimizer, scheduler = run.make_optimizer(policy, a.lr, a.weight_decay, args.repeats + 1, 1, "cosine")
    vocab = policy.hf.config.text_config.vocab_size
    batch, target = random_text_batch(tokenizer, vocab, args.sft_rows, args.sft_seq, d.device)
    times = []
    for _ in range(args.repeats + 1):
        t0 = clock(d)
        sft.sft_step(policy, optimizer, scheduler, [(batch, target)], a, d)
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
        run.seed_everything(0)
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
