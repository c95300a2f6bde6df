r"""The discriminator (spec §3): sparse-upcycle a dense Qwen3-VL into a Qwen3-VL-MoE with a score head, then warm it up.

Upcycling (§3.1–§3.2). Every decoder MLP becomes E experts of top-k routing, each expert a noisy copy of the
dense MLP, expert 0 included; the router and the score head are new; everything else is copied:

    W_gate_up[e] = [W_gate; W_up] + ε_e,   W_down[e] = W_down + ε'_e,   ε, ε' ~ N(0, σ_noise²) i.i.d.
    W_router ~ N(0, σ_router²),   w_head ~ N(0, 0.02²),   D(x, y) = w_head · Dropout_0.1(h_last(x ⊕ y))

The top-k routing weights are renormalised to sum to 1, so with σ_noise = 0 the MoE computes exactly the
dense model's function; the noise is what lets the experts drift apart. `--experts 1` skips upcycling: the
dense model itself gets the score head (the paper's dense-discriminator ablation, spec §9.2).

Warm-up (§3.5–§3.6, §0.1). Each line of the pairs file gives two comparisons c of the teacher's response
y_ref against a student's y_π on the same prompt x: the perception (caption) segments and the reasoning
(think + answer + EOS) segments. x is the chat-templated prompt (system, user turn with the image, assistant
header) and the score is read at the segment's last token, with the model's own M-RoPE positions. With
T_c = clip(D(x ⊕ y_ref,c), ±10) and S_c = clip(D(x ⊕ y_π,c), ±10), one optimizer step minimises

    L = (1/C) Σ_c ℓ(T_c, S_c) + λ · ¼ Σ_{4 score sets} mean(s²) + β · L_aux
    ℓ_BCE = −log σ(T) − log(1 − σ(S))   (--disc-loss bce, default)      ℓ_BT = −log σ(T − S)   (--disc-loss bt)

over its C comparisons on all ranks and micro-batches; the four score sets are teacher/student ×
perception/reasoning, λ = 1e-3, and L_aux is the routers' load-balancing loss (β = 0.01), averaged over the
step's forwards (0 for a dense discriminator). With --disc-text-only the discriminator reads x without its
images: the system prompt and the question's text, no vision token (the text-only ablation, spec §9.2).

Usage:
    # CPU, the tiny world (see `make demo`)
    python upcycle_moe.py --dense runs/demo/tiny --out runs/demo/disc0
    python upcycle_moe.py warmup --discriminator runs/demo/disc0 --data runs/demo/data/pairs.jsonl \
        --eval-data runs/demo/data/pairs_test.jsonl --out runs/demo/warmup --steps 60 --disc-micro-batch 4 \
        --grad-accum 1 --disc-lr 1e-3
    # the published recipe: Qwen3-VL-2B → 4 experts top-2, warmed up on 8 GPUs (128 comparisons per step)
    python upcycle_moe.py --dense Qwen3-VL-2B-Instruct --out runs/disc-2b-4x
    torchrun --nproc_per_node 8 upcycle_moe.py warmup --discriminator runs/disc-2b-4x \
        --data qwen3_vl_moe_warmup_pairwise_120k.jsonl --out runs/warmup-2b --gradient-checkpointing --bf16
    # several nodes: torchrun --nnodes N --node_rank R --rdzv-endpoint HOST:PORT --nproc_per_node 8 \
    #     upcycle_moe.py warmup ...

Upcycling writes an HF directory that plain transformers loads as a Qwen3-VL-MoE, plus score_head.safetensors.
Warm-up writes OUT/discriminator (the same layout, for the alignment stage), OUT/checkpoints/step_N (with
training state for --resume) and OUT/metrics.jsonl.
"""

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

import batching
import data
import hf_checkpoint
import model
import run
from run import AT_LEAST_ONE, BELOW_ONE, NON_NEGATIVE, POSITIVE, arg

HEAD_STD = 0.02
# Config keys that describe a file or a class rather than the network; the MoE config gets its own.
_CONFIG_METADATA = ("model_type", "transformers_version", "architectures", "_name_or_path", "dtype")
# What the MoE's text config adds to the dense one; any other new setting is a class default that would
# change how the directory loads (a text_config.tie_word_embeddings the dense model never had).
_MOE_SETTINGS = ("num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
                 "decoder_sparse_step", "mlp_only_layers", "router_aux_loss_coef", "output_router_logits")


@dataclass
class UpcycleArgs:
    dense: str = arg(None, "HF directory of the dense Qwen3-VL to upcycle", required=True)
    out: str = arg(None, "output HF directory of the MoE discriminator", required=True)
    # spec §3.1: 4 experts, top-2, noise std 0.01 on every expert, router N(0, 0.02), aux coefficient 0.01
    experts: int = arg(4, "experts per decoder layer, each a noisy copy of the dense MLP; 1: no upcycling, the "
                          "dense model with a score head (the dense-discriminator ablation)", check=AT_LEAST_ONE)
    top_k: int = arg(2, "experts each token is routed to (unused with --experts 1)", check=AT_LEAST_ONE)
    noise_std: float = arg(0.01, "std of the i.i.d. Gaussian noise added to every expert weight (absolute)",
                           check=NON_NEGATIVE)
    router_std: float = arg(0.02, "std of the routers' Gaussian initialisation", check=NON_NEGATIVE)
    aux_coef: float = arg(0.01, "router_aux_loss_coef recorded in the MoE config", check=NON_NEGATIVE)
    dtype: Literal["auto", "bfloat16", "float32"] = arg("auto", "dtype of the written weights; auto: the dense "
                                                                "checkpoint's, so that zero noise gives its logits")
    seed: int = arg(0, "seed of the noise, the routers and the score head")


@dataclass
class WarmupArgs:
    discriminator: str = arg(None, "HF directory of the upcycled discriminator", required=True)
    data: list[str] = arg([], "warm-up pairs JSONL, one or more files (spec §3.5)", required=True)
    out: str = arg(None, "output directory", required=True)
    eval_data: str | None = arg(None, "held-out pairs JSONL: per-segment accuracy before training and at the end")
    seed: int = arg(0, "seed for data order and dropout")
    epochs: float = arg(1.0, "passes over the comparisons (ignored when --steps is given)", check=POSITIVE)
    steps: int = arg(0, "optimizer steps to run; 0 = derive from --epochs", check=NON_NEGATIVE)
    resume: bool = arg(False, "continue from the newest complete checkpoint in --out")
    # the loss (spec §0.1)
    disc_loss: Literal["bce", "bt"] = arg("bce", "pair loss: bce = −log σ(T) − log(1−σ(S)), bt = −log σ(T−S)")
    score_clip: float = arg(model.SCORE_CLIP, "scores are clamped to ±this before every loss and metric",
                            check=POSITIVE)
    score_reg: float = arg(1e-3, "coefficient λ of the L2 score regulariser", check=NON_NEGATIVE)
    aux_coef: float = arg(0.01, "coefficient β of the router load-balancing loss", check=NON_NEGATIVE)
    dropout: float = arg(0.1, "dropout before the score head", check=BELOW_ONE)
    # optimisation (spec §3.6: AdamW lr 1e-5, wd 0.01, cosine, warm-up 0.1, one epoch, clip 1.0, 128 per step)
    disc_lr: float = arg(1e-5, "peak learning rate of the discriminator", check=run.LEARNING_RATE)
    weight_decay: float = arg(0.01, "AdamW weight decay", check=NON_NEGATIVE)
    warmup_ratio: float = arg(0.1, "fraction of steps of linear warm-up before the cosine decay", check=BELOW_ONE)
    max_grad_norm: float = arg(1.0, "clip the global gradient norm to this", check=POSITIVE)
    disc_micro_batch: int = arg(2, "student responses (lines) per discriminator forward/backward on each rank, each "
                                   "scored with its teacher on both segments: 2 lines = the release's 4 pairs",
                                   check=AT_LEAST_ONE)
    grad_accum: int = arg(4, "micro-batches per optimizer step on each rank", check=AT_LEAST_ONE)
    max_length: int = arg(8192, "lines whose prompt plus whole teacher or student response is longer are dropped",
                          check=AT_LEAST_ONE)
    disc_text_only: bool = arg(False, "the discriminator reads the prompt without its images: system prompt and "
                                      "question text, no vision token (the text-only ablation)")
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


# ----------------------------------------------------------------------------------------------
# Upcycling
# ----------------------------------------------------------------------------------------------


def moe_config(dense_config, experts: int, top_k: int, aux_coef: float):
    """The Qwen3-VL-MoE config of a dense Qwen3-VL: same text and vision settings, every decoder layer sparse,
    each expert as wide as the dense MLP."""
    from transformers import Qwen3VLMoeConfig

    def settings(cfg) -> dict:
        return {k: v for k, v in cfg.to_dict().items() if k not in _CONFIG_METADATA}

    text = settings(dense_config.text_config)
    text |= dict(num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=text["intermediate_size"],
                 decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=aux_coef)
    top = {k: v for k, v in settings(dense_config).items() if k not in ("text_config", "vision_config")}
    return Qwen3VLMoeConfig(text_config=text, vision_config=settings(dense_config.vision_config), **top)


@torch.no_grad()
def upcycle(dense, experts: int = 4, top_k: int = 2, noise_std: float = 0.01, router_std: float = 0.02,
            aux_coef: float = 0.01, seed: int = 0) -> tuple[model.Discriminator, list[tuple[str, str]]]:
    """A Discriminator built from a dense Qwen3VLForConditionalGeneration, on the dense model's device and dtype.

    Returns (discriminator, sources): sources names, for every key of the discriminator's state dict in
    order, how it was filled: "copied" from the dense tensor of the same name, "tiled" from the dense MLP
    (gate_up_proj (E, 2I, H) = [gate; up] per expert, down_proj (E, H, I)) plus noise, or "initialised"
    (routers, score head). Every dense tensor must be used: a layout this code does not know fails here
    rather than leaving weights at random. Works on the meta device (nothing is allocated).
    """
    from transformers import AutoModelForImageTextToText

    device, dtype = dense.device, dense.dtype
    with torch.device(device):
        moe = AutoModelForImageTextToText.from_config(moe_config(dense.config, experts, top_k, aux_coef), dtype=dtype)
        disc = model.Discriminator(moe)
    for name in ("text_config", "vision_config"):
        kept = set(getattr(dense.config, name).to_dict()) | set(_MOE_SETTINGS)
        for key in set(getattr(moe.config, name).to_dict()) - kept:
            delattr(getattr(moe.config, name), key)
    disc.head.to(dtype)
    moe.generation_config = type(dense.generation_config).from_dict(dense.generation_config.to_dict())

    g = torch.Generator().manual_seed(seed)
    # Drawn on the CPU, whatever the device: the same seed gives the same discriminator on CPU and GPU.
    gaussian = (lambda shape, std: std * torch.randn(shape, generator=g).to(device))
    dense_state = dense.state_dict()
    used, sources = set(), []
    for key, target in disc.state_dict().items():
        name = key.removeprefix("hf.")
        if name in dense_state:
            target.copy_(dense_state[name])
            used.add(name)
            how = "copied"
        elif name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            mlp = name[:name.index("experts.")]
            parts = ["gate_proj", "up_proj"] if name.endswith("gate_up_proj") else ["down_proj"]
            used.update(f"{mlp}{p}.weight" for p in parts)
            weight = torch.cat([dense_state[f"{mlp}{p}.weight"] for p in parts]).float()  # (2I, H) or (H, I)
            target.copy_(weight.expand(experts, *weight.shape) + gaussian(target.shape, noise_std))
            how = "tiled"
        elif name.endswith("mlp.gate.weight"):
            target.copy_(gaussian(target.shape, router_std))
            how = "initialised"
        elif key == "head.weight":
            target.copy_(gaussian(target.shape, HEAD_STD))
            how = "initialised"
        else:
            raise KeyError(f"upcycling has no source for {key} {tuple(target.shape)}")
        sources.append((key, how))
    if unused := sorted(dense_state.keys() - used):
        raise KeyError(f"upcycling left dense tensors unused: {unused[:5]}{' …' if len(unused) > 5 else ''}")
    return disc, sources


@torch.no_grad()
def dense_discriminator(dense, seed: int = 0) -> tuple[model.Discriminator, list[tuple[str, str]]]:
    """The dense-discriminator ablation: the dense model itself with a new score head, no upcycling.

    Returns (discriminator, sources) as upcycle() does: every model tensor "copied", the head "initialised".
    """
    disc = model.Discriminator(dense).to(dense.dtype)
    g = torch.Generator().manual_seed(seed)
    disc.head.weight.copy_(HEAD_STD * torch.randn(disc.head.weight.shape, generator=g))
    return disc, [(key, "initialised" if key == "head.weight" else "copied") for key in disc.state_dict()]


def main_upcycle(args: UpcycleArgs) -> None:
    if args.experts > 1 and args.top_k > args.experts:
        raise run.flag_error("top_k", args.top_k, f"must be at most --experts {args.experts}")
    processor = hf_checkpoint.load_processor(args.dense)
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    dense = hf_checkpoint.load_hf_model(args.dense, dtype=dtype)
    if dense.config.model_type != "qwen3_vl":
        raise data.DataError(f"{args.dense}: expected a dense Qwen3-VL, got {dense.config.model_type!r}")
    n_dense = sum(p.numel() for p in dense.parameters())
    if args.experts == 1:
        disc, sources = dense_discriminator(dense, args.seed)
    else:
        disc, sources = upcycle(dense, args.experts, args.top_k, args.noise_std, args.router_std, args.aux_coef,
                                args.seed)
    out = Path(args.out)
    disc.save_pretrained(processor, out, run.Dist())
    counts = {how: sum(h == how for _, h in sources) for how in ("copied", "tiled", "initialised")}
    print(f"wrote {out}: {n_dense / 1e6:.2f}M dense → discriminator {disc.describe()}; tensors {counts}")


# ----------------------------------------------------------------------------------------------
# Warm-up: the math
# ----------------------------------------------------------------------------------------------


def pair_loss_share(teacher: torch.Tensor, student: torch.Tensor, loss: str, total_comparisons: float):
    """This micro-batch's share of the step's mean pair loss: Σ_c ℓ(T_c, S_c) / C.

    teacher, student: (n,) clipped scores of the n comparisons here, perception and reasoning alike.
    total_comparisons: C, the comparisons of the whole optimizer step on all ranks.
    """
    return model.DISCRIMINATOR_LOSSES[loss](teacher, student).sum() / total_comparisons


def score_reg_share(teacher: torch.Tensor, student: torch.Tensor, total_comparisons: float):
    """This micro-batch's share of R = ¼ Σ_{4 score sets} mean(s²) = Σ_c (T_c² + S_c²) / (2C).

    The two forms agree because every line of the step adds one score to each of the four sets, so each
    set holds C/2 scores. teacher, student: (n,) clipped scores.
    """
    return (teacher.square().sum() + student.square().sum()) / (2 * total_comparisons)


# ----------------------------------------------------------------------------------------------
# Warm-up: inputs, scores and one step
# ----------------------------------------------------------------------------------------------


def drop_long_pairs(processor, pairs: list[data.WarmupPair], max_len: int) -> tuple[list[data.WarmupPair], int]:
    """Lines whose prompt with the whole teacher response, and with the whole student one, fit in max_len tokens.

    Images are expanded; every scored sequence (prompt ⊕ one segment) is then shorter. Long lines are
    dropped and counted, never truncated. Returns (kept, number dropped).
    """

    def conversation(pair, caption, cot):
        return data.Conversation([("system", data.SYSTEM_PROMPT), ("user", pair.question),
                                  ("assistant", data.written_response(caption, cot))], pair.images, pair.where)

    kept = [p for p in pairs if len(batching.drop_long_conversations(processor, [
        conversation(p, p.teacher_caption, p.teacher_cot), conversation(p, p.student_caption, p.student_cot)],
        max_len)[0]) == 2]
    return kept, len(pairs) - len(kept)


def line_inputs(processor, pairs: list[data.WarmupPair], text_only: bool = False):
    """(prompts, teacher segments, student segments) of m lines, as model.score_segments takes them.

    Each line's prompt is chat-templated (system, user turn with its images, assistant header; without
    the images when text_only) and its written responses are split exactly as a rollout is
    (data.text_segments).
    """
    tok = processor.tokenizer
    examples = [data.Example(p.where, p.question, p.images, p.where) for p in pairs]
    prompts = batching.encode_prompts(processor, [batching.without_images(e) for e in examples] if text_only
                                      else examples)
    teacher = [data.text_segments(tok, p.teacher_caption, p.teacher_cot) for p in pairs]
    student = [data.text_segments(tok, p.student_caption, p.student_cot) for p in pairs]
    return prompts, teacher, student


def score_lines(disc, processor, pairs: list[data.WarmupPair], args: WarmupArgs, d: run.Dist, with_aux: bool):
    """Clipped scores of m lines' teacher and student segments, and the routers' aux loss (or None)."""
    prompts, teacher, student = line_inputs(processor, pairs, args.disc_text_only)
    return model.score_segments(disc, prompts, prompts.input_ids.shape[1], teacher, student, list(range(len(pairs))),
                                processor.tokenizer.pad_token_id, args.score_clip, d, args.bf16,
                                with_aux_loss=with_aux)


def warmup_step(disc, optimizer, scheduler, processor, lines: list[data.WarmupPair], args: WarmupArgs,
                d: run.Dist) -> dict:
    """One optimizer step on this rank's lines (two comparisons each), in micro-batches of
    --disc-micro-batch lines: the loss of the module docstring over the step's comparisons on all ranks."""
    total = run.global_sum(2 * len(lines), d)  # comparisons of the step
    forwards = run.global_sum(math.ceil(len(lines) / args.disc_micro_batch), d)
    sums = torch.zeros(3, dtype=torch.float64)  # pair loss, score regulariser, aux loss shares
    scored = []
    for k in range(0, len(lines), args.disc_micro_batch):
        scores, aux = score_lines(disc, processor, lines[k:k + args.disc_micro_batch], args, d, with_aux=True)
        teacher = torch.cat([scores.teacher_perception, scores.teacher_reasoning])  # both segments' comparisons
        student = torch.cat([scores.student_perception, scores.student_reasoning])
        pair_loss = pair_loss_share(teacher, student, args.disc_loss, total)
        reg = score_reg_share(teacher, student, total)
        aux = aux / forwards
        (pair_loss + args.score_reg * reg + args.aux_coef * aux).backward()
        sums += torch.stack([pair_loss.detach(), reg.detach(), aux.detach()]).double().cpu()
        scored.append(scores.detach())
    lr = scheduler.get_last_lr()[0]
    grad_norm, stepped = run.clip_and_step(disc, optimizer, scheduler, args.max_grad_norm)
    sums = run.all_reduce(sums.to(d.device)).tolist()
    scores = model.SegmentScores.cat(scored)
    every = torch.ones(len(lines), dtype=torch.bool, device=scores.student_perception.device)
    return {"loss/disc": sums[0], "loss/score_reg": sums[1], "loss/aux": sums[2],
            **model.segment_metrics(scores, every, d, "disc"), "optim/lr": lr, "optim/grad_norm": grad_norm,
            "optim/skipped_step": float(not stepped)}


@torch.no_grad()
def evaluate(disc, processor, pairs: list[data.WarmupPair], args: WarmupArgs, d: run.Dist) -> dict:
    """Held-out per-segment accuracy and mean scores, eval mode (no dropout), every rank a share of the lines.

    Ranks that run out of lines score line 0 again and discard it: FSDP2 needs the same forwards everywhere.
    """
    was_training = disc.training
    disc.eval()
    mine = list(range(d.rank, len(pairs), d.world_size))
    scored, valid = [], []
    for k in range(run.global_max(math.ceil(len(mine) / args.disc_micro_batch), d)):
        chunk = mine[k * args.disc_micro_batch:(k + 1) * args.disc_micro_batch]
        scored.append(score_lines(disc, processor, [pairs[i] for i in chunk or [0]], args, d, with_aux=False)[0])
        valid += [bool(chunk)] * max(len(chunk), 1)
    disc.train(was_training)
    scores = model.SegmentScores.cat(scored)
    return model.segment_metrics(scores, torch.tensor(valid, device=scores.student_perception.device), d,
                                 "disc/eval")


# ----------------------------------------------------------------------------------------------
# Warm-up: setup and the loop
# ----------------------------------------------------------------------------------------------


def main_warmup(args: WarmupArgs) -> None:
    d = run.init_distributed(args.device)
    run.seed_everything(args.seed)
    out = Path(args.out)
    processor = hf_checkpoint.load_processor(args.discriminator)
    # Every file is read and checked before any model is loaded: bad data fails here, naming the record.
    control = data.control_tokens(processor.tokenizer)
    loaded = [data.load_pairs(f, control) for f in args.data]
    pairs, skipped = [p for pairs, _ in loaded for p in pairs], sum(n for _, n in loaded)
    pairs, dropped = drop_long_pairs(processor, pairs, args.max_length)
    if not pairs:
        raise data.DataError(f"no usable pairs in {args.data} ({skipped} incomplete, {dropped} too long)")
    eval_pairs = drop_long_pairs(processor, data.load_pairs(args.eval_data, control)[0], args.max_length)[0] \
        if args.eval_data else []
    # A text-only discriminator's vision encoder never runs: no gradient, no optimizer state to save.
    text_only = args.disc_text_only
    disc = model.load_sharded(model.Discriminator, args.discriminator, d, args.bf16, model.training_setup(
        args.freeze_vision or text_only, args.freeze_merger or text_only, args.gradient_checkpointing),
        args.param_dtype)
    disc.dropout.p = args.dropout
    disc.train()
    lines_per_step = args.disc_micro_batch * args.grad_accum * d.world_size
    total_steps = args.steps or math.ceil(args.epochs * len(pairs) / lines_per_step)
    optimizer, scheduler = run.make_optimizer(disc, args.disc_lr, args.weight_decay, total_steps,
                                              round(args.warmup_ratio * total_steps), "cosine")
    training = run.TrainingRun(out, d, {"discriminator": disc}, {"discriminator": optimizer},
                               {"discriminator": scheduler}, args,
                               ("loss/disc", "disc/perception/accuracy", "disc/reasoning/accuracy",
                                "disc/eval/perception/accuracy", "disc/eval/reasoning/accuracy", "optim/lr",
                                "time/step_s"))
    if d.is_main:
        print(f"warm-up: {len(pairs)} lines = {2 * len(pairs)} comparisons ({skipped} incomplete, {dropped} too "
              f"long, dropped), {total_steps} steps of {2 * lines_per_step} comparisons (micro "
              f"{args.disc_micro_batch} lines × accum {args.grad_accum} × ranks {d.world_size}), loss "
              f"{args.disc_loss}; discriminator {disc.describe()}{', text only' if args.disc_text_only else ''}")
    if eval_pairs and training.start == 0:
        training.log.write(0, evaluate(disc, processor, eval_pairs, args, d))

    def step(k: int) -> dict:
        # This step's lines, and this rank's contiguous share of them.
        mine = run.rank_share(batching.stream_indices(len(pairs), args.seed, k * lines_per_step, lines_per_step), d)
        return warmup_step(disc, optimizer, scheduler, processor, [pairs[i] for i in mine], args, d)

    training.loop(total_steps, step, "warmup")
    if eval_pairs:
        training.log.write(total_steps, evaluate(disc, processor, eval_pairs, args, d))
    disc.save_pretrained(processor, out / "discriminator", d)
    if d.is_main:
        print(f"saved {out / 'discriminator'}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["warmup"]:
        del sys.argv[1]
        run.run_stage(main_warmup, WarmupArgs)
    else:
        run.run_stage(main_upcycle, UpcycleArgs)
