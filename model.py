"""The network: Qwen3-VL as the policy and as the MoE discriminator.

Everything that touches weights lives here, once:
  - HF directories written from plain or sharded modules without gathering them (reading: hf_checkpoint.py);
  - `Policy`: a Qwen3-VL whose forward returns per-token log-probs of chosen tokens, computed
    from the final hidden states in chunks (logprobs.py) so that full-vocabulary float32 logits
    never exist, and which runs each distinct prompt of an update once for all its rollouts;
  - `Discriminator`: a Qwen3-VL-MoE backbone plus a scalar score head read at the last real token,
    its pair losses, and `score_segments`, the one scoring pass of warm-up and alignment;
  - rollouts: a hand-written wrapper around HF `generate`;
  - FSDP2 sharding and mixed precision.

Shapes: B = rows in a batch, L = padded sequence length, H = hidden size, V = vocabulary size,
N = number of selected (target) tokens in a batch.
"""

import contextlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from batching import Rollouts, SharedPrompt, VLBatch, encode_scored, response_mask_through_eos
from data import VISION_TOKENS, DataError
from hf_checkpoint import empty_hf_model, is_quantized, load_hf_model, read_score_head, save_hf_config, write_score_head
from logprobs import chunked_token_logprobs
from run import Dist, all_reduce, barrier, save_consolidated, stored_weights

# ----------------------------------------------------------------------------------------------
# The weights of plain or FSDP2-sharded modules under their HF names (written by run.save_consolidated)
# ----------------------------------------------------------------------------------------------

def _hf_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The HF model's tensors under their stored names: `hf.` dropped, a tied lm_head (the embedding, named
    first) left out as in a released checkpoint (run.stored_weights)."""
    return {name.removeprefix("hf."): t for name, t in stored_weights(module).items() if name.startswith("hf.")}


def body_inputs(hf_model, batch: VLBatch) -> dict:
    """Keyword arguments of the model body, with each distinct image through the vision encoder once.

    The n rollouts of a prompt show the same images: they are encoded once and the features
    (merger output and DeepStack features) are placed in every row that shows them, so gradients
    from all rows reach the vision tower through one encoder pass. transformers releases whose
    body takes no precomputed features (before `mm_encoder_outputs`) get every occurrence instead.
    """
    import inspect

    from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

    body = hf_model.model
    if batch.pixel_values is None or "mm_encoder_outputs" not in inspect.signature(body.forward).parameters:
        return batch.model_inputs()
    encoded = body.get_image_features(batch.pixel_values, batch.image_grid_thw)
    shown = batch.image_index.tolist()
    placed = BaseModelOutputWithDeepstackFeatures(
        pooler_output=[encoded.pooler_output[i] for i in shown],
        deepstack_features=[[layer[i] for i in shown] for layer in encoded.deepstack_features])
    return batch.text_inputs() | dict(mm_encoder_outputs={"image": placed},
                                      image_grid_thw=batch.image_grid_thw[batch.image_index])


def text_positions(hf_model, batch: VLBatch) -> torch.Tensor:
    """(3, B, L) the M-RoPE positions a full forward of `batch` gives its tokens: HF's `get_rope_index` for
    every row when the batch carries images; for a batch without images, HF's default 0 … L−1, padding
    included."""
    body, (B, L) = hf_model.model, batch.input_ids.shape
    if batch.image_grid_thw is None:
        return torch.arange(L, device=batch.input_ids.device).expand(3, B, L)
    given = dict(input_ids=batch.input_ids, image_grid_thw=batch.image_grid_thw[batch.image_index],
                 attention_mask=batch.attention_mask, mm_token_type_ids=batch.mm_token_type_ids)
    wanted = inspect.signature(body.get_rope_index).parameters  # the arguments moved within transformers 5.x
    return body.get_rope_index(**{k: v for k, v in given.items() if k in wanted})[0]


def hidden_after_shared_prompts(hf_model, batch: VLBatch, prompt: SharedPrompt) -> torch.Tensor:
    """(B, L − P, H): the final hidden states that predict columns P … L − 1, each distinct prompt run once.

    The G distinct prompts (columns 0 … P − 1 of rows `prompt.first`) go through the model with a
    KV cache; every row then gets its prompt's keys and values by indexing, so the gradients of the
    n rows of a group meet in one prompt pass, and the rows' own columns attend to them. Positions
    are the ones a full forward computes, so the states equal a full forward's up to the order of
    floating-point sums (tests/test_model.py) at G·P + B·(L − P) tokens instead of B·L.
    """
    from transformers import DynamicCache

    body, P, name = hf_model.model, prompt.length, cache_kwarg(hf_model)
    device = batch.input_ids.device
    first, of = prompt.first.to(device), prompt.of.to(device)
    positions = text_positions(hf_model, batch)
    prompts = batch.select(prompt.first).columns(torch.arange(batch.input_ids.shape[1], device=device) < P)
    cache = DynamicCache(config=hf_model.config)
    shared = body(**body_inputs(hf_model, prompts), position_ids=positions[:, first, :P], use_cache=True,
                  **{name: cache}).last_hidden_state  # (G, P, H)
    cache.batch_select_indices(of)
    own = body(input_ids=batch.input_ids[:, P:], attention_mask=batch.attention_mask,
               position_ids=positions[:, :, P:], use_cache=True, **{name: cache}).last_hidden_state  # (B, L − P, H)
    return torch.cat([shared[of, -1:], own[:, :-1]], dim=1)


class Policy(nn.Module):
    """A Qwen3-VL (`self.hf`) whose forward returns log-probs of the tokens marked by `target_mask`.

    Wrapping the HF model makes this module the FSDP2 root, so the embedding, final norm and
    lm_head are gathered once around the whole forward, including the chunked log-prob head.
    """

    def __init__(self, hf_model, logprob_chunk: int = 512):
        super().__init__()
        self.hf = hf_model
        self.logprob_chunk = logprob_chunk

    @property
    def config(self):
        return self.hf.config

    def forward(self, batch: VLBatch, target_mask: torch.Tensor, temperature: float = 1.0,
                with_entropy: bool = False, prompt: SharedPrompt | None = None):
        """batch: B rows of length L. target_mask: (B, L), 1 where the token is scored.

        Returns (logprobs (B, L), entropy (B, L) or None), zero where target_mask is 0. Position t
        holds log π(x_t | x_<t), read from the hidden state at t − 1. With `prompt` (rows that
        continue common prompts, none of whose tokens is scored) each distinct prompt runs through
        the model once (`hidden_after_shared_prompts`); every row runs in full where no two rows
        share a prompt, and under gradient checkpointing, whose layers drop the KV cache it needs.
        """
        checkpointed = any(layer.gradient_checkpointing for layer in self.hf.model.language_model.layers)
        if prompt is None or checkpointed or len(prompt.first) == len(batch):  # nothing to share, or no cache
            start = 1
            hidden = self.hf.model(**body_inputs(self.hf, batch), use_cache=False).last_hidden_state[:, :-1]
        else:
            if target_mask[:, :prompt.length].any():
                raise ValueError("Policy.forward: a shared prompt's tokens cannot be targets")
            start, hidden = prompt.length, hidden_after_shared_prompts(self.hf, batch, prompt)
        predicted = target_mask[:, start:].bool()  # hidden[:, j] predicts column start + j
        lp, ent = chunked_token_logprobs(hidden[predicted], self.hf.lm_head, batch.input_ids[:, start:][predicted],
                                         temperature, self.logprob_chunk, with_entropy)
        logprobs = hidden.new_zeros(target_mask.shape, dtype=torch.float32)
        logprobs[:, start:][predicted] = lp
        entropy = None
        if with_entropy:
            entropy = torch.zeros_like(logprobs)
            entropy[:, start:][predicted] = ent
        return logprobs, entropy

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu") -> "Policy":
        return cls(load_hf_model(path, dtype, device))

    def save_pretrained(self, processor, out: Path, d: Dist) -> None:
        """Collective: every rank writes its own slices and none gathers the model (save_consolidated); rank 0
        adds the config and processor. The result is a directory plain transformers loads."""
        save_consolidated(_hf_weights(self), out, d)
        if d.is_main:
            save_hf_config(self.hf, processor, out)
        barrier()


# ----------------------------------------------------------------------------------------------
# The discriminator: MoE backbone + scalar score head (spec §3.1–§3.2)
# ----------------------------------------------------------------------------------------------

def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last real token of each row, for left- or right-padded rows."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(-1).long().argmax(-1)


class Discriminator(nn.Module):
    """D(x, y) = w · Dropout(h_last(x ⊕ y)): a Qwen3-VL-MoE read at the last real token.

    `self.hf` is a full Qwen3VLMoeForConditionalGeneration so that the directory stays loadable by
    plain transformers; its lm_head is never used here and is frozen. A dense Qwen3VLForConditionalGeneration
    is accepted too: the paper's dense-discriminator ablation (spec §9.2), made by `upcycle_moe.py --experts 1`.
    """

    def __init__(self, hf_model, dropout: float = 0.1):
        super().__init__()
        self.hf = hf_model
        if not hf_model.config.tie_word_embeddings:  # tied (2B, 4B): it is the input embedding, which trains
            self.hf.lm_head.weight.requires_grad_(False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hf_model.config.text_config.hidden_size, 1, bias=False, dtype=hf_model.dtype)

    @property
    def config(self):
        return self.hf.config

    @property
    def is_moe(self) -> bool:
        return self.hf.config.model_type == "qwen3_vl_moe"

    def describe(self) -> str:
        """One line for start-up logs: the kind of discriminator and its parameter count."""
        text = self.hf.config.text_config
        kind = f"MoE, {text.num_experts} experts top-{text.num_experts_per_tok}" if self.is_moe else "dense"
        return f"{kind}, {sum(p.numel() for p in self.parameters()) / 1e6:.2f}M parameters"

    def forward(self, batch: VLBatch, with_aux_loss: bool = False):
        """batch: B scored sequences (prompt ⊕ segment). Returns (scores (B,), aux_loss or None).

        aux_loss is the router's load-balancing loss (Qwen3-MoE form, over all layers); a dense
        discriminator has no router and returns 0.
        """
        from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import load_balancing_loss_func

        routed = with_aux_loss and self.is_moe
        out = self.hf.model(**body_inputs(self.hf, batch), use_cache=False,
                            **({"output_router_logits": True} if routed else {}))
        rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
        last = out.last_hidden_state[rows, last_token_index(batch.attention_mask)]  # (B, H)
        scores = self.head(self.dropout(last)).squeeze(-1).float()
        aux = None
        if routed:
            text = self.hf.config.text_config
            aux = load_balancing_loss_func(out.router_logits, text.num_experts, text.num_experts_per_tok,
                                           batch.attention_mask)
        elif with_aux_loss:
            aux = scores.new_zeros(())
        return scores, aux

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu") -> "Discriminator":
        path = Path(path)
        hf = load_hf_model(path, dtype, device)
        if hf.config.model_type not in ("qwen3_vl_moe", "qwen3_vl"):
            raise DataError(f"{path}: a discriminator must be a Qwen3-VL-MoE (or a dense Qwen3-VL), got "
                            f"{hf.config.model_type!r} (make one with upcycle_moe.py)")
        disc = cls(hf)
        with torch.no_grad():
            disc.head.weight.copy_(read_score_head(path, hf.config.text_config.hidden_size))
        return disc.to(device=device, dtype=dtype)

    def save_pretrained(self, processor, out: Path, d: Dist) -> None:
        """Collective: the MoE HF directory as Policy.save_pretrained writes it, and the score head
        (1 × H, gathered: it is tiny) in score_head.safetensors."""
        from torch.distributed.tensor import DTensor

        save_consolidated(_hf_weights(self), out, d)
        head = self.head.weight.detach()
        head = head.full_tensor() if isinstance(head, DTensor) else head
        if d.is_main:
            save_hf_config(self.hf, processor, out)
            write_score_head(head.cpu(), out)
        barrier()


def bce_pair_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """GAN / binary cross-entropy form (this project's default, spec §0.1), per pair:

        ℓ_BCE = −log σ(D(x, y_ref)) − log(1 − σ(D(x, y_π))) = softplus(−T) + softplus(S)

    teacher, student: (B,) scores T = D(x, y_ref), S = D(x, y_π). Returns (B,).
    """
    return F.softplus(-teacher) + F.softplus(student)


def bt_pair_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry form (the authors' release, spec §3.6/§4.4), per pair:

        ℓ_BT = −log σ(D(x, y_ref) − D(x, y_π)) = softplus(S − T)

    teacher, student: (B,) scores. Returns (B,).
    """
    return F.softplus(student - teacher)


DISCRIMINATOR_LOSSES = {"bce": bce_pair_loss, "bt": bt_pair_loss}
SCORE_CLIP = 10.0


def clip_scores(scores: torch.Tensor, limit: float = SCORE_CLIP) -> torch.Tensor:
    """clip(s, −limit, limit): a hard clamp, so scores outside the range get no gradient (spec §4.3)."""
    return scores.clamp(-limit, limit)


SEGMENTS = ("perception", "reasoning")


@dataclass
class SegmentScores:
    """Clipped discriminator scores of B student responses and of their teachers, per segment, each (B,).

    teacher_*[i] is the score of the teacher demonstration for student i's prompt.
    """

    teacher_perception: torch.Tensor
    student_perception: torch.Tensor
    teacher_reasoning: torch.Tensor
    student_reasoning: torch.Tensor

    def pairs(self):
        """(segment name, teacher scores, student scores) for the two segments, in SEGMENTS order."""
        return (("perception", self.teacher_perception, self.student_perception),
                ("reasoning", self.teacher_reasoning, self.student_reasoning))

    @staticmethod
    def cat(parts: list["SegmentScores"]) -> "SegmentScores":
        return SegmentScores(*(torch.cat([getattr(p, f) for p in parts]) for f in SegmentScores.__dataclass_fields__))

    def detach(self) -> "SegmentScores":
        return SegmentScores(*(getattr(self, f).detach() for f in SegmentScores.__dataclass_fields__))


def scoring_batch(prompts: VLBatch, prompt_len: int, teacher: list[tuple[list[int], list[int]]],
                  student: list[tuple[list[int], list[int]]], prompt_of: list[int], pad_id: int) -> VLBatch:
    """The 2G + 2B scored sequences of score_segments, left-padded, in its four blocks."""
    rows = list(range(len(teacher))) + list(prompt_of)
    segments = [t[0] for t in teacher] + [s[0] for s in student] + [t[1] for t in teacher] + [s[1] for s in student]
    return encode_scored(prompts.select(rows + rows), prompt_len, segments, pad_id)


def score_segments(disc: Discriminator, prompts: VLBatch, prompt_len: int, teacher: list[tuple[list[int], list[int]]],
                   student: list[tuple[list[int], list[int]]], prompt_of: list[int], pad_id: int, clip: float,
                   d: Dist, bf16: bool, with_aux_loss: bool = False) -> tuple[SegmentScores, torch.Tensor | None]:
    """The discriminator's one scoring pass (warm-up, alignment reward and step, held-out evaluation).

    prompts: G rows whose first `prompt_len` columns are left-padded prompts, one per teacher
    demonstration; teacher: G (perception, reasoning) token lists; student: B of them, student i
    answering prompt prompt_of[i]. One forward scores the 2G + 2B sequences prompt ⊕ segment, in
    four blocks (teacher perception, student perception, teacher reasoning, student reasoning) that
    share the prompts' images; each score is read at the segment's last token (spec §0.1).
    Returns (clipped scores, the routers' load-balancing loss or None).
    """
    G = len(teacher)
    batch = scoring_batch(prompts, prompt_len, teacher, student, prompt_of, pad_id).to(d.device)
    with autocast(d, bf16):
        scores, aux = disc(batch, with_aux_loss=with_aux_loss)
    scores = clip_scores(scores, clip)
    teacher_of = torch.as_tensor(prompt_of, device=scores.device)
    B = len(student)
    return SegmentScores(scores[:G][teacher_of], scores[G:G + B], scores[G + B:2 * G + B][teacher_of],
                         scores[2 * G + B:]), aux


def segment_metrics(scores: SegmentScores, valid: torch.Tensor, d: Dist, prefix: str = "disc") -> dict:
    """Per segment over the valid responses of all ranks: mean teacher and student score, their gap
    T − S (the quantity of the paper's training-dynamics figure, spec §9.4), and the discriminator's
    accuracy, the share of responses whose teacher scores higher. valid: (B,) bool."""
    sums = []
    for _, t, s in scores.pairs():
        t, s = t.detach().float(), s.detach().float()
        sums += [t[valid].sum(), s[valid].sum(), (t > s)[valid].sum()]
    sums = all_reduce(torch.stack(sums + [valid.sum()]).double().to(d.device)).tolist()
    n = max(sums[-1], 1.0)
    out = {}
    for k, name in enumerate(SEGMENTS):
        teacher, student, correct = (v / n for v in sums[3 * k:3 * k + 3])
        out |= {f"{prefix}/{name}/teacher_score": teacher, f"{prefix}/{name}/student_score": student,
                f"{prefix}/{name}/gap": teacher - student, f"{prefix}/{name}/accuracy": correct}
    return out


# ----------------------------------------------------------------------------------------------
# Rollouts
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def gathered_weights(module: nn.Module):
    """Hold FSDP2-sharded weights unsharded for a whole generate call.

    Decoding then runs no collectives at all (no all-gather per token), so ranks may stop at
    different lengths. With FSDP2's bf16 mixed-precision policy the unsharded weights are bf16.
    A no-op on an unsharded module.
    """
    from torch.distributed.fsdp import FSDPModule

    fsdp_modules = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for m in fsdp_modules:
        m.unshard()
        m.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for m in fsdp_modules:
            m.reshard()
            m.set_reshard_after_forward(True)


@contextlib.contextmanager
def bf16_weights(module: nn.Module):
    """Swap every parameter for a bf16 copy, and back to the very same fp32 tensors afterwards.

    Decoding is bound by reading the weights once per token: an unsharded fp32 policy reads 4
    bytes per weight at every step (under autocast, plus a bf16 copy written and read again);
    from a copy made once per rollout phase it reads 2, as after FSDP2's mixed-precision unshard.
    The copies are kept (2 bytes per weight) and refilled in place, so their addresses never
    change: a compiled decode step's CUDA graphs are recorded once, not once per phase.
    """
    params = list(module.parameters())
    if getattr(module, "_bf16_copies", None) is None:
        module._bf16_copies = [torch.empty_like(p, dtype=torch.bfloat16) for p in params]
    originals = [p.data for p in params]
    for p, copy in zip(params, module._bf16_copies):
        p.data = copy.copy_(p.data)
    try:
        yield
    finally:
        for p, fp32 in zip(params, originals):
            p.data = fp32


def decoding_weights(module: nn.Module, bf16: bool):
    """The weights generate reads: unsharded FSDP2 units, or a bf16 copy of a single-GPU policy."""
    from torch.distributed.fsdp import FSDPModule

    if bf16 and next(module.parameters()).device.type == "cuda" and not isinstance(module, FSDPModule):
        return bf16_weights(module)
    return gathered_weights(module)


STATIC_CACHE_MULTIPLE = 64


def decode_compile_config(device: torch.device):
    """torch.compile settings for generate's decode step (its prefill, vision encoder included, stays eager).

    CUDA graphs ("reduce-overhead") on a GPU, where a decode step of a few-billion-parameter model
    is otherwise dominated by launching hundreds of small kernels. transformers compiles only on
    accelerators unless told otherwise; the flag makes the option mean the same on CPU.
    """
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=False, dynamic=False,
                           mode="reduce-overhead" if device.type == "cuda" else "default")
    config._compile_all_devices = True
    return config


def end_of_response_ids(hf_model, tokenizer) -> list[int]:
    """<|im_end|>, and every EOS id the model's generation config lists (the released Qwen3-VL's also
    stop at <|endoftext|>)."""
    listed = hf_model.generation_config.eos_token_id
    listed = [] if listed is None else [listed] if isinstance(listed, int) else list(listed)
    return list(dict.fromkeys([tokenizer.convert_tokens_to_ids("<|im_end|>"), *listed]))


def cache_kwarg(hf) -> str:
    """The name the model's forward and generate take a KV cache under: transformers renamed `past_key_values`
    to `cache` within the range this project supports."""
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


@torch.no_grad()
def shared_prefill(hf, inputs: dict, n: int) -> tuple[dict, dict]:
    """The G prompts' KV cache computed once each and repeated for their n rollouts, where generate's own
    expansion would run the prefill (images and text) n times over.

    inputs: generate's inputs for G left-padded prompts, images among them (the decode positions come from the
    M-RoPE offsets the prefill computes, which a batch without images does not). All but each prompt's last
    token are prefilled; generate then feeds that token on each of the G·n rows, so every rollout samples its
    first token from its own row, as before (the same seed gives the same tokens: tests/test_model.py).
    Returns generate's inputs for the G·n rows (the images are in the cache) and the cache keyword.
    """
    from transformers import DynamicCache

    cache, name = DynamicCache(config=hf.config), cache_kwarg(hf)
    text = [k for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in inputs]
    hf(**{k: v[:, :-1] if k in text else v for k, v in inputs.items()}, **{name: cache}, use_cache=True,
       logits_to_keep=1)
    cache.batch_repeat_interleave(n)
    # The prompts' M-RoPE offsets, which the decode positions are built from, for the G·n rows.
    hf.model.rope_deltas = hf.model.rope_deltas.repeat_interleave(n, 0)
    return {k: inputs[k].repeat_interleave(n, 0) for k in text}, {name: cache}


@torch.no_grad()
def generate_rollouts(policy: Policy, prompts: VLBatch, tokenizer, n: int, max_new_tokens: int,
                      temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False, bf16: bool = False,
                      compile_decode: bool = False) -> Rollouts:
    """Sample n responses per prompt with HF generate.

    prompts: G left-padded prompts ending with the assistant header. Sampling is from the full
    softmax at `temperature` (top_k=0: no hidden top-k), nucleus-truncated only if top_p < 1.
    Prompts with images are prefilled once for their n rollouts (shared_prefill; not with
    compile_decode, whose static cache generate builds itself). The four vision special
    tokens are never sampled: a sampled <|image_pad|> would break every later forward.

    bf16: decode with bf16 weights on a GPU (see `decoding_weights`).
    compile_decode: a static KV cache and a torch.compile'd decode step. The cache is as long as
    prompt + max_new_tokens, so prompts are left-padded to a multiple of STATIC_CACHE_MULTIPLE:
    the compiled step then sees a handful of shapes over a run instead of one per batch. The
    first call of each shape compiles (tens of seconds); padding changes no sampled token.
    """
    hf = policy.hf
    eos_ids = end_of_response_ids(hf, tokenizer)
    suppress = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=0,
                                                         top_p=top_p)
    cache = {}
    if compile_decode:
        prompts = prompts.padded(-prompts.input_ids.shape[1] % STATIC_CACHE_MULTIPLE, 0, tokenizer.pad_token_id)
        cache = dict(cache_implementation="static", compile_config=decode_compile_config(prompts.input_ids.device))
    was_training = policy.training
    policy.eval()
    inputs, prefilled = prompts.model_inputs(), {}
    with decoding_weights(policy, bf16):
        if n > 1 and not compile_decode and inputs.get("image_grid_thw") is not None:
            inputs, prefilled = shared_prefill(hf, inputs, n)
        out = hf.generate(**inputs, max_new_tokens=max_new_tokens, num_return_sequences=1 if prefilled else n,
                          eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id, suppress_tokens=suppress,
                          use_cache=True, **sampling, **cache, **prefilled)
    policy.train(was_training)
    prompt_len = prompts.input_ids.shape[1]
    response_ids = out[:, prompt_len:]
    response_mask, truncated = response_mask_through_eos(response_ids, eos_ids)
    response_ids = response_ids.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    expanded = prompts.repeat_interleave(n)
    batch = expanded.extend(response_ids, response_mask)
    group = torch.arange(prompts.input_ids.shape[0], device=response_ids.device).repeat_interleave(n)
    return Rollouts(batch, response_mask, truncated, group, prompt_len)


# ----------------------------------------------------------------------------------------------
# FSDP2 sharding and mixed precision
# ----------------------------------------------------------------------------------------------


def freeze_vision(hf_model, tower: bool, merger: bool) -> None:
    """Leave the vision tower (patch and position embeddings, blocks) and/or the vision-language mergers
    (the final one and DeepStack's) out of training. A pretrained tower is often frozen in SFT; in the
    tiny world a trained random tower inflates its outputs until colour and shape no longer stand out."""
    visual = hf_model.model.visual
    if tower:
        for part in (visual.patch_embed, visual.pos_embed, visual.blocks):
            part.requires_grad_(False)
    if merger:
        visual.merger.requires_grad_(False)
        visual.deepstack_merger_list.requires_grad_(False)


def shard_plan(module: nn.Module, mesh, bf16: bool) -> None:
    """The FSDP2 units: each text decoder layer (a Qwen3-VL-MoE layer with its fused experts, every expert
    weight split along the expert dimension), each vision block, the vision encoder, then the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kw = dict(mesh=mesh) | (dict(mp_policy=mp) if mp else {})
    body = module.hf.model
    for layer in body.language_model.layers:
        fully_shard(layer, **kw)
    for block in body.visual.blocks:
        fully_shard(block, **kw)
    fully_shard(body.visual, **kw)
    fully_shard(module, **kw)


def shard(module: nn.Module, d: Dist, bf16: bool) -> nn.Module:
    """FSDP2 over the ranks (shard_plan); a module built on the meta device (load_sharded) gets only this
    rank's shards allocated, its computed buffers kept.

    The vision encoder gets its own unit because generate calls it directly, bypassing the
    root's hooks. Gradients are summed, not averaged, over ranks (divide factor 1): every loss in
    this project is already normalised by a global count, so the sum is the exact global gradient.
    """
    if not d.distributed:
        return module
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    shard_plan(module, init_device_mesh(d.device.type, (d.world_size,)), bf16)
    if any(p.is_meta for p in module.parameters()):  # built by load_sharded: allocate this rank's shards only
        buffers = {name: b.detach().clone() for name, b in module.named_buffers()}  # computed, not stored
        module.to_empty(device=d.device)
        with torch.no_grad():
            for name, b in buffers.items():
                module.get_buffer(name).copy_(b)
    # FSDP2 initialises lazily at the first forward, taking whichever unit runs first as the root.
    # generate calls the vision encoder directly, so the real root is initialised here, up front.
    module._get_fsdp_state()._lazy_init()
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no pre-multiplied sum
    return module


def training_setup(freeze_tower: bool, freeze_merger: bool, gradient_checkpointing: bool):
    """The `prepare` of load_sharded for a model that trains: freeze_vision, then activation checkpointing."""
    def prepare(module: nn.Module) -> None:
        freeze_vision(module.hf, freeze_tower, freeze_merger)
        if gradient_checkpointing:
            module.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return prepare


ParamDtype = Literal["float32", "bfloat16"]  # every training stage's --param-dtype


def load_sharded(cls, path, d: Dist, bf16: bool, prepare=None, param_dtype: ParamDtype = "float32") -> nn.Module:
    """A Policy or Discriminator (cls) from an HF directory, ready to train: FSDP2-sharded over the ranks,
    and no rank ever holding the whole model.

    One process: cls.from_pretrained on the device, as before. Several: the network is built on the meta
    device (hf_checkpoint.empty_hf_model: names and shapes checked, buffers computed), `prepare(module)`
    runs (freezing, gradient checkpointing), shard() shards it, and every rank reads only its own slices
    of each stored tensor straight into its shards (torch.distributed.checkpoint's Hugging Face safetensors
    reader), converting to param_dtype (float32 master weights by default; bfloat16 halves the weights' and
    the optimizer moments' memory, at the cost of updates rounded to 8 bits of mantissa). A discriminator's
    head comes from score_head.safetensors the same way.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    path = Path(path)
    # A quantised checkpoint is dequantised by transformers as it loads, whole on each rank, then sharded.
    whole = not d.distributed or is_quantized(path)
    dtype = getattr(torch, param_dtype)
    module = cls.from_pretrained(path, dtype, d.device) if whole else cls(empty_hf_model(path, dtype))
    if prepare:
        prepare(module)
    module = shard(module, d, bf16)
    if whole:
        return module
    # File names: the HF model's own; the score head is "weight" in its file; a tied lm_head is the embedding.
    stored = {name: tensor for name, tensor in get_model_state_dict(module).items()
              if not (name == "hf.lm_head.weight" and module.hf.config.tie_word_embeddings)}
    by_file_name = {("weight" if name == "head.weight" else name.removeprefix("hf.")): t for name, t in stored.items()}
    if isinstance(module, Discriminator):
        read_score_head(path, module.config.text_config.hidden_size)  # its own checks, before the collective read
    dcp.load(by_file_name, storage_reader=dcp.HuggingFaceStorageReader(str(path)))
    return module


def autocast(d: Dist, bf16: bool):
    """bf16 autocast on a single GPU; FSDP2's mixed-precision policy does the casting when sharded."""
    if bf16 and d.device.type == "cuda" and not d.distributed:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
