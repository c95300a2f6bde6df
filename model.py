"""The network: Qwen3-VL as policy and as MoE discriminator, plus the machinery every stage shares.

Everything that touches weights lives here, once:
  - distributed set-up from the torchrun environment, FSDP2 sharding, lockstep helpers;
  - the tiny random Qwen3-VL (with its own tokenizer, processor and chat template) used by the
    tests and the CPU demo: `python model.py tiny --out DIR`;
  - loading and saving HF-format checkpoints (safetensors only, no remote code);
  - `Policy`: a Qwen3-VL whose forward returns per-token log-probs of chosen tokens, computed
    from the final hidden states in chunks so that full-vocabulary float32 logits never exist;
  - `Discriminator`: a Qwen3-VL-MoE backbone plus a scalar score head read at the last real token;
  - rollouts: a hand-written wrapper around HF `generate`;
  - the optimizer step (clipping, non-finite guard) and atomic training checkpoints.

Shapes: B = rows in a batch, L = padded sequence length, H = hidden size, V = vocabulary size,
N = number of selected (target) tokens in a batch.
"""

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from data import FORMAT_TAGS, VISION_TOKENS, VLBatch

# ----------------------------------------------------------------------------------------------
# Distributed set-up
# ----------------------------------------------------------------------------------------------


@dataclass
class Dist:
    """Where this process sits in the job. A plain `python` run is rank 0 of a world of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> Dist:
    """Read torchrun's environment; NCCL on GPUs, gloo on CPU. `device` forces "cpu" or "cuda"."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world_size, local_rank, dev)


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce over all ranks (a no-op in a single process). op: sum | max | min."""
    if dist.is_initialized():
        dist.all_reduce(x, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return x


def global_sum(value: float, d: Dist) -> float:
    return all_reduce(torch.tensor(float(value), dtype=torch.float64, device=d.device)).item()


def global_max(value: int, d: Dist) -> int:
    return int(all_reduce(torch.tensor(int(value), device=d.device), "max").item())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# The tiny world's model: a random Qwen3-VL that keeps the real architecture's features
# ----------------------------------------------------------------------------------------------

SPECIAL_TOKENS = [
    "<|endoftext|>",  # pad
    "<|im_start|>",
    "<|im_end|>",  # end of turn = EOS of every response
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen-style template. Newlines are written as expressions: bare text between `{%- -%}` tags
# would have its "\n" trimmed away.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def tiny_config(vocab_size: int, token_ids: dict[str, int]):
    """hidden 128, 4 layers, vision depth 2 with DeepStack at both blocks, interleaved M-RoPE, 2×2 merger.

    About 1.3M parameters with a 1k vocabulary: the whole pipeline runs on 2 CPU cores in minutes.
    """
    from transformers import Qwen3VLConfig

    text = dict(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
        rms_norm_eps=1e-6, pad_token_id=token_ids["<|endoftext|>"],
        # head_dim 32 → 16 frequency pairs; [6, 5, 5] mirrors the real [24, 20, 20] of 128.
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [6, 5, 5],
                         "mrope_interleaved": True},
    )
    vision = dict(
        depth=2, hidden_size=64, intermediate_size=128, num_heads=4, in_channels=3, patch_size=16,
        spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=128, num_position_embeddings=64,
        deepstack_visual_indexes=[0, 1],
    )
    return Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False,
        image_token_id=token_ids["<|image_pad|>"], video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"], vision_end_token_id=token_ids["<|vision_end|>"],
    )


def build_tokenizer(corpus: list[str], vocab_size: int = 1024):
    """A byte-level BPE with the Qwen3-VL special tokens and the format tags as atomic tokens.

    The tags must be atomic: otherwise BPE merges across tag boundaries ("</caption><think>" →
    "</", "caption", "><", "think") and a response's segments stop being token-level prefixes.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in FORMAT_TAGS])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_processor(tokenizer):
    """Qwen3-VL processor for the tiny world: 64×64 images → 2×2 merged tokens, mean/std 0.5 as the real model."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64},
    )
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                            video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2),
                            chat_template=CHAT_TEMPLATE)


def build_tiny(out: str | Path, seed: int = 0) -> Path:
    """Write a random-init tiny Qwen3-VL with its tokenizer and processor as an HF directory."""
    from transformers import Qwen3VLForConditionalGeneration
    from transformers.utils import logging

    logging.disable_progress_bar()
    from data import synthetic_corpus

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(synthetic_corpus(seed=seed))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    model = Qwen3VLForConditionalGeneration(tiny_config(len(tokenizer), ids))
    set_generation_tokens(model, tokenizer)
    out = Path(out)
    model.save_pretrained(out)
    build_processor(tokenizer).save_pretrained(out)
    return out


# The published Qwen3-VL shapes (from the released config.json files), for structure tests and
# benchmarks with random weights: (text, vision) overrides of the shared settings below.
_QWEN3VL_VISION_SMALL = dict(depth=24, hidden_size=1024, intermediate_size=4096, deepstack_visual_indexes=[5, 11, 17])
_QWEN3VL_VISION_LARGE = dict(depth=27, hidden_size=1152, intermediate_size=4304, deepstack_visual_indexes=[8, 16, 24])
QWEN3VL_SHAPES = {
    "2B": (dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                num_key_value_heads=8), _QWEN3VL_VISION_SMALL, True),
    "4B": (dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8), _QWEN3VL_VISION_SMALL, True),
    "8B": (dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8), _QWEN3VL_VISION_LARGE, False),
    "32B": (dict(hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64,
                 num_key_value_heads=8), _QWEN3VL_VISION_LARGE, False),
    "30B-A3B": (dict(hidden_size=2048, moe_intermediate_size=768, num_hidden_layers=48, num_attention_heads=32,
                     num_key_value_heads=4, num_experts=128, num_experts_per_tok=8, decoder_sparse_step=1,
                     mlp_only_layers=[]), _QWEN3VL_VISION_LARGE, False),
}


def real_config(name: str):
    """The config of a published Qwen3-VL size ("2B", "4B", "8B", "32B", "30B-A3B")."""
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    text, vision, tied = QWEN3VL_SHAPES[name]
    text = dict(vocab_size=151936, head_dim=128, max_position_embeddings=262144, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                 "mrope_interleaved": True}) | text
    vision = dict(num_heads=16, in_channels=3, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                  num_position_embeddings=2304, out_hidden_size=text["hidden_size"]) | vision
    cls = Qwen3VLMoeConfig if "num_experts" in text else Qwen3VLConfig
    return cls(text_config=text, vision_config=vision, tie_word_embeddings=tied, image_token_id=151655,
               video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)


# ----------------------------------------------------------------------------------------------
# Loading and saving HF checkpoints
# ----------------------------------------------------------------------------------------------


def load_processor(path: str | Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(path), trust_remote_code=False)


def load_hf_model(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Any Qwen3-VL / Qwen3-VL-MoE checkpoint (2B … 32B dense, 30B-A3B MoE) from a local directory.

    Weights come only from safetensors and no code from the checkpoint is ever run.
    """
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging

    logging.disable_progress_bar()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not an HF model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path}: no *.safetensors weights (other weight formats are refused)")
    model = AutoModelForImageTextToText.from_pretrained(
        str(path), dtype=dtype, use_safetensors=True, trust_remote_code=False)
    return model.to(device)


def set_generation_tokens(hf_model, tokenizer) -> None:
    """Every response ends at <|im_end|>; without this, generate runs on past the end of the turn."""
    hf_model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    hf_model.generation_config.pad_token_id = tokenizer.pad_token_id


def gather_full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full, CPU state dict on rank 0 (empty elsewhere); a collective under FSDP2."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (read on every rank) into a plain or FSDP2-sharded module."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=True))


def _hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("hf."): v for k, v in state.items() if k.startswith("hf.")}


def save_hf_dir(hf_config, state: dict[str, torch.Tensor], processor, out: Path) -> None:
    """Write an HF directory from a full state dict: what plain transformers and the next stage load."""
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(hf_config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    set_generation_tokens(model, processor.tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)


# ----------------------------------------------------------------------------------------------
# Per-token log-probs without full-vocabulary float32 logits
# ----------------------------------------------------------------------------------------------


class _TokenLogProbs(torch.autograd.Function):
    """log π(y) through the lm_head chunk by chunk, keeping one number per position for backward.

    Backward rebuilds each chunk's softmax from the saved log-sum-exp and uses
        ∂ log π(y) / ∂ logits = (onehot(y) − softmax(logits / T)) / T,
    so neither pass ever holds more than one chunk's (chunk, V) float32 logits and their softmax.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, weight, targets, temperature, chunk_size, with_entropy):
        n = hidden.shape[0]
        logprobs, lse = (hidden.new_empty(n, dtype=torch.float32) for _ in range(2))
        entropy = hidden.new_empty(n if with_entropy else 0, dtype=torch.float32)
        for s in range(0, n, chunk_size):
            rows = slice(s, s + chunk_size)
            logits = F.linear(hidden[rows], weight).float() / temperature  # (chunk, V)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            logprobs[rows] = logits.gather(-1, targets[rows, None])[:, 0] - lse[rows]
            if with_entropy:  # H = logsumexp − Σ p·logits
                entropy[rows] = lse[rows] - (torch.exp(logits - lse[rows, None]) * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(s, s + ctx.chunk_size)
            h, g_out = hidden[rows], grad_logprobs[rows]
            logits = F.linear(h, weight).float() / ctx.temperature
            grad = torch.exp(logits - lse[rows, None]).mul_(-g_out[:, None])  # −softmax · ḡ
            grad.scatter_add_(-1, targets[rows, None], g_out[:, None])  # + onehot(y) · ḡ
            grad = (grad / ctx.temperature).to(h.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = grad @ weight.to(h.dtype)
            if grad_weight is not None:
                grad_weight += (grad.T @ h).float()
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None, None


def chunked_token_logprobs(hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor,
                           temperature: float = 1.0, chunk_size: int = 512, with_entropy: bool = False):
    """log π(y_t | ·) = logits[y_t]/T − logsumexp(logits/T), for N selected positions, in chunks.

    hidden: (N, H) final hidden states of the positions that predict `targets` (N,); lm_head: the
    bias-free output projection. Returns (logprobs (N,), entropy (N,) or None; entropy carries no
    gradient). Full-vocabulary float32 logits exist one chunk at a time, in forward and in
    backward, so peak memory is O(chunk·V) rather than O(N·V).
    """
    if lm_head.bias is not None:
        raise ValueError("chunked_token_logprobs expects a bias-free lm_head, as Qwen3-VL's")
    logprobs, entropy = _TokenLogProbs.apply(hidden, lm_head.weight, targets, temperature, chunk_size, with_entropy)
    return logprobs, entropy if with_entropy else None


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
                with_entropy: bool = False):
        """batch: B rows of length L. target_mask: (B, L), 1 where the token is scored.

        Returns (logprobs (B, L), entropy (B, L) or None), zero where target_mask is 0. Position t
        holds log π(x_t | x_<t), read from the hidden state at t − 1.
        """
        hidden = self.hf.model(**body_inputs(self.hf, batch), use_cache=False).last_hidden_state  # (B, L, H)
        predicted = target_mask[:, 1:].bool()  # (B, L-1)
        lp, ent = chunked_token_logprobs(hidden[:, :-1][predicted], self.hf.lm_head,
                                         batch.input_ids[:, 1:][predicted], temperature,
                                         self.logprob_chunk, with_entropy)
        logprobs = hidden.new_zeros(target_mask.shape, dtype=torch.float32)
        logprobs[:, 1:][predicted] = lp
        entropy = None
        if with_entropy:
            entropy = torch.zeros_like(logprobs)
            entropy[:, 1:][predicted] = ent
        return logprobs, entropy

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu") -> "Policy":
        return cls(load_hf_model(path, dtype, device))

    def save_pretrained(self, processor, out: Path, d: Dist) -> None:
        """Collective: every rank calls it; rank 0 writes the HF directory."""
        state = _hf_state(gather_full_state_dict(self))
        if d.is_main:
            save_hf_dir(self.hf.config, state, processor, out)
        barrier()


# ----------------------------------------------------------------------------------------------
# The discriminator: MoE backbone + scalar score head (spec §3.1–§3.2)
# ----------------------------------------------------------------------------------------------

SCORE_HEAD_FILE = "score_head.safetensors"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last real token of each row, for left- or right-padded rows."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(-1).long().argmax(-1)


class Discriminator(nn.Module):
    """D(x, y) = w · Dropout(h_last(x ⊕ y)): a Qwen3-VL-MoE read at the last real token.

    `self.hf` is a full Qwen3VLMoeForConditionalGeneration so that the directory stays loadable by
    plain transformers; its lm_head is never used here and is frozen.
    """

    def __init__(self, hf_model, dropout: float = 0.1):
        super().__init__()
        self.hf = hf_model
        if not hf_model.config.tie_word_embeddings:  # tied (2B, 4B): it is the input embedding, which trains
            self.hf.lm_head.weight.requires_grad_(False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hf_model.config.text_config.hidden_size, 1, bias=False)

    @property
    def config(self):
        return self.hf.config

    def forward(self, batch: VLBatch, with_aux_loss: bool = False):
        """batch: B scored sequences (prompt ⊕ segment). Returns (scores (B,), aux_loss or None).

        aux_loss is the router's load-balancing loss (Qwen3-MoE form, over all layers).
        """
        from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import load_balancing_loss_func

        out = self.hf.model(**body_inputs(self.hf, batch), use_cache=False, output_router_logits=with_aux_loss)
        rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
        last = out.last_hidden_state[rows, last_token_index(batch.attention_mask)]  # (B, H)
        scores = self.head(self.dropout(last)).squeeze(-1).float()
        aux = None
        if with_aux_loss:
            text = self.hf.config.text_config
            aux = load_balancing_loss_func(out.router_logits, text.num_experts, text.num_experts_per_tok,
                                           batch.attention_mask)
        return scores, aux

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu") -> "Discriminator":
        from safetensors.torch import load_file

        path = Path(path)
        hf = load_hf_model(path, dtype, device)
        if hf.config.model_type != "qwen3_vl_moe":
            raise ValueError(f"{path}: a discriminator must be a Qwen3-VL-MoE, got {hf.config.model_type!r} "
                             "(make one with upcycle_moe.py)")
        if not (path / SCORE_HEAD_FILE).is_file():
            raise FileNotFoundError(f"{path}: no {SCORE_HEAD_FILE} (make one with upcycle_moe.py)")
        disc = cls(hf)
        disc.head.load_state_dict(load_file(str(path / SCORE_HEAD_FILE)))
        return disc.to(device=device, dtype=dtype)

    def save_pretrained(self, processor, out: Path, d: Dist) -> None:
        """Collective: every rank calls it; rank 0 writes the MoE HF directory and the score head."""
        from safetensors.torch import save_file

        state = gather_full_state_dict(self)
        if d.is_main:
            save_hf_dir(self.hf.config, _hf_state(state), processor, out)
            save_file({"weight": state["head.weight"].contiguous()}, str(out / SCORE_HEAD_FILE))
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


# ----------------------------------------------------------------------------------------------
# Rollouts
# ----------------------------------------------------------------------------------------------


@dataclass
class Rollouts:
    """n sampled responses for each of G prompts: B = G·n rows, prompt-major (row = g·n + j).

    batch:          prompt ⊕ response, (B, P + R): prompts left-padded to P, responses right-padded;
                    images repeated per row, ready for the training forward.
    response_mask:  (B, R) 1 for response tokens up to and including the first <|im_end|>.
    truncated:      (B,) True where the response hit the length limit before <|im_end|>.
    group:          (B,) index of the prompt each row answers.
    prompt_len:     P.
    """

    batch: VLBatch
    response_mask: torch.Tensor
    truncated: torch.Tensor
    group: torch.Tensor
    prompt_len: int

    @property
    def response_ids(self) -> torch.Tensor:
        return self.batch.input_ids[:, self.prompt_len:]

    @property
    def target_mask(self) -> torch.Tensor:
        """(B, P + R) mask of the response tokens, the targets of the policy's log-probs."""
        prompt = torch.zeros_like(self.batch.input_ids[:, :self.prompt_len])
        return torch.cat([prompt, self.response_mask], dim=1)

    def micro_batch(self, rows: list[int]) -> tuple[VLBatch, torch.Tensor, int]:
        """Rows `rows` as a forward batch without the columns that are padding in all of them.

        Returns (batch, target_mask, R'): the batch's last R' columns are response positions
        0 … R'−1. Prompts are left-padded and responses right-padded, so the dropped columns are
        a prefix and a suffix, and a micro-batch of short responses costs only its own length.
        """
        batch = self.batch.select(rows)
        keep = batch.attention_mask.bool().any(0)
        return batch.columns(keep), self.target_mask[rows][:, keep], int(keep[self.prompt_len:].sum())

    def responses(self) -> list[list[int]]:
        """Each row's response tokens up to and including the EOS, as lists."""
        return [ids[mask.bool()].tolist() for ids, mask in zip(self.response_ids, self.response_mask)]


def response_mask_through_eos(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, R) → (mask (B, R): 1 up to and including the first EOS, truncated (B,): no EOS at all)."""
    is_eos = response_ids == eos_id
    before_or_at_eos = (is_eos.long().cumsum(-1) - is_eos.long()) == 0
    return before_or_at_eos.long(), ~is_eos.any(-1)


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


@torch.no_grad()
def generate_rollouts(policy: Policy, prompts: VLBatch, tokenizer, n: int, max_new_tokens: int,
                      temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False, bf16: bool = False,
                      compile_decode: bool = False) -> Rollouts:
    """Sample n responses per prompt with HF generate.

    prompts: G left-padded prompts ending with the assistant header. Sampling is from the full
    softmax at `temperature` (top_k=0: no hidden top-k), nucleus-truncated only if top_p < 1.
    generate encodes each prompt's images once and expands to n rows itself. The four vision
    special tokens are never sampled: a sampled <|image_pad|> would break every later forward.

    bf16: decode with bf16 weights on a GPU (see `decoding_weights`).
    compile_decode: a static KV cache and a torch.compile'd decode step. The cache is as long as
    prompt + max_new_tokens, so prompts are left-padded to a multiple of STATIC_CACHE_MULTIPLE:
    the compiled step then sees a handful of shapes over a run instead of one per batch. The
    first call of each shape compiles (tens of seconds); padding changes no sampled token.
    """
    hf = policy.hf
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    suppress = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=0,
                                                         top_p=top_p)
    cache = {}
    if compile_decode:
        prompts = prompts.padded(-prompts.input_ids.shape[1] % STATIC_CACHE_MULTIPLE, 0, tokenizer.pad_token_id)
        cache = dict(cache_implementation="static", compile_config=decode_compile_config(prompts.input_ids.device))
    was_training = policy.training
    policy.eval()
    with decoding_weights(policy, bf16):
        out = hf.generate(**prompts.model_inputs(), max_new_tokens=max_new_tokens, num_return_sequences=n,
                          eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id, suppress_tokens=suppress,
                          use_cache=True, **sampling, **cache)
    policy.train(was_training)
    prompt_len = prompts.input_ids.shape[1]
    response_ids = out[:, prompt_len:]
    response_mask, truncated = response_mask_through_eos(response_ids, eos_id)
    response_ids = response_ids.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    expanded = prompts.repeat_interleave(n)
    batch = expanded.extend(response_ids, response_mask)
    group = torch.arange(prompts.input_ids.shape[0], device=response_ids.device).repeat_interleave(n)
    return Rollouts(batch, response_mask, truncated, group, prompt_len)


# ----------------------------------------------------------------------------------------------
# FSDP2 sharding and mixed precision
# ----------------------------------------------------------------------------------------------


def shard(module: nn.Module, d: Dist, bf16: bool) -> nn.Module:
    """FSDP2: each text decoder layer, each vision block, the vision encoder, then the root.

    The vision encoder gets its own unit because generate calls it directly, bypassing the
    root's hooks. Gradients are summed, not averaged, over ranks (divide factor 1): every loss in
    this project is already normalised by a global count, so the sum is the exact global gradient.
    """
    if not d.distributed:
        return module
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(d.device.type, (d.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kw = dict(mesh=mesh) | (dict(mp_policy=mp) if mp else {})
    body = module.hf.model
    for layer in body.language_model.layers:
        fully_shard(layer, **kw)
    for block in body.visual.blocks:
        fully_shard(block, **kw)
    fully_shard(body.visual, **kw)
    fully_shard(module, **kw)
    # FSDP2 initialises lazily at the first forward, taking whichever unit runs first as the root.
    # generate calls the vision encoder directly, so the real root is initialised here, up front.
    module._get_fsdp_state()._lazy_init()
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no pre-multiplied sum
    return module


def autocast(d: Dist, bf16: bool):
    """bf16 autocast on a single GPU; FSDP2's mixed-precision policy does the casting when sharded."""
    if bf16 and d.device.type == "cuda" and not d.distributed:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def token_budget_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Group rows into micro-batches whose padded size (rows × longest row) stays within `budget` tokens.

    Rows are taken longest first, so rows of similar length share a micro-batch and little of
    each forward is padding; a row longer than the budget gets a micro-batch of its own.
    """
    batches, current, longest = [], [], 0
    for row in sorted(range(len(lengths)), key=lambda r: -lengths[r]):
        if current and (len(current) + 1) * max(longest, lengths[row]) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(row)
        longest = max(longest, lengths[row])
    return batches + ([current] if current else [])


def lockstep_count(local_count: int, d: Dist) -> int:
    """Forward/backward passes every rank must run: FSDP2 collectives need the same count everywhere."""
    return global_max(local_count, d)


# ----------------------------------------------------------------------------------------------
# Optimisation
# ----------------------------------------------------------------------------------------------


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def constant_with_warmup(step: int, total: int, warmup: int) -> float:
    return (step + 1) / warmup if step < warmup else 1.0


def make_optimizer(module: nn.Module, lr: float, weight_decay: float, total_steps: int, warmup_steps: int,
                   schedule: str = "cosine"):
    """AdamW over the trainable parameters, with a LambdaLR schedule (cosine or constant, both warm-up)."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
    fn = {"cosine": cosine_with_warmup, "constant": constant_with_warmup}[schedule]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: fn(s, total_steps, warmup_steps))
    return optimizer, scheduler


def clip_and_step(module: nn.Module, optimizer, scheduler, max_norm: float) -> tuple[float, bool]:
    """Clip the global grad norm, then step — unless the norm is not finite.

    The norm is a global reduction, so every rank takes the same decision: a NaN/inf gradient
    skips the step everywhere and leaves the weights untouched. Returns (grad_norm, stepped).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    norm = float(norm)
    stepped = math.isfinite(norm)
    if stepped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return norm, stepped


class TrainingError(RuntimeError):
    """A run that cannot go on: a corrupted checkpoint, gradients that stay non-finite."""


class RunGuard:
    """What may end a training run early, decided the same way on every rank.

    Preemption: SIGTERM (what schedulers and torchrun send) only raises a flag; the loop finishes
    its step, writes a resumable checkpoint and exits cleanly. Numerical faults: clip_and_step
    already skips a step whose gradient norm is not finite; after `max_skipped` such steps in a
    row the run stops with a clear error instead of training on nothing.
    """

    def __init__(self, d: Dist, max_skipped: int):
        self.d, self.max_skipped, self.skipped_in_a_row, self._signalled = d, max_skipped, 0, False
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self._signalled = True

    def record(self, step: int, stepped: bool) -> None:
        self.skipped_in_a_row = 0 if stepped else self.skipped_in_a_row + 1
        if self.skipped_in_a_row >= self.max_skipped:
            raise TrainingError(f"step {step}: {self.skipped_in_a_row} optimizer steps in a row had a non-finite "
                                "gradient and were skipped; stopping (see --max-skipped-steps)")

    def preempted(self) -> bool:
        """True on every rank as soon as any rank has received SIGTERM (a collective: call it every step)."""
        return bool(global_max(int(self._signalled), self.d))

    def exit(self, step: int, out: Path) -> None:
        if self.d.is_main:
            print(f"preempted: stopped after step {step} with a checkpoint in {out / 'checkpoints'}; "
                  "continue with --resume")
        barrier()
        sys.exit(0)


# ----------------------------------------------------------------------------------------------
# Training checkpoints: atomic directories, verified on resume
# ----------------------------------------------------------------------------------------------

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rng_state() -> dict:
    """Every generator a step draws from, in plain types and tensors so weights_only loading accepts it."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     gauss), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(out: Path, step: int, models: dict[str, nn.Module], optimizers: dict, schedulers: dict,
                    processor, d: Dist, extra: dict | None = None) -> Path:
    """Write out/checkpoints/step_N atomically: HF dirs, optimizer/scheduler state, per-rank RNG.

    Everything is written under a temporary name and renamed at the end, with a manifest of
    SHA-256 sums written last, so an interrupted save never looks like a complete checkpoint.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    final = out / "checkpoints" / f"step_{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    for name, model in models.items():
        model.save_pretrained(processor, tmp / name, d)
    train_state = {"step": step, "extra": extra or {}, "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                   "optimizers": {}}
    for name, opt in optimizers.items():
        train_state["optimizers"][name] = get_optimizer_state_dict(
            models[name], opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if d.is_main:
        torch.save(train_state, tmp / "train_state.pt")
    torch.save(rng_state(), tmp / f"rng_rank{d.rank}.pt")
    barrier()
    if d.is_main:
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {str(p.relative_to(tmp)): _sha256(p) for p in files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    barrier()
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (one with a manifest) under out/checkpoints, if any."""
    done = sorted(p for p in (out / "checkpoints").glob("step_*") if p.suffix != ".tmp" and (p / MANIFEST).is_file())
    return done[-1] if done else None


def verify_checkpoint(path: Path) -> None:
    """Raise naming the file if any file of the checkpoint is missing or differs from the manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"checkpoint {path} is corrupted: {MANIFEST} cannot be read ({e})") from None
    for rel, digest in manifest.items():
        f = path / rel
        if not f.is_file():
            raise TrainingError(f"checkpoint {path} is incomplete: {rel} is missing")
        if _sha256(f) != digest:
            raise TrainingError(f"checkpoint {path} is corrupted: {rel} does not match its checksum")


def load_checkpoint(path: Path, models: dict[str, nn.Module], optimizers: dict, schedulers: dict,
                    d: Dist) -> dict:
    """Restore weights, optimizer and scheduler states and this rank's RNG; returns the train state.

    Training state is read with weights_only=True: a pickle that carries code is refused.
    """
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    verify_checkpoint(path)
    for name, model in models.items():
        state = {"hf." + k: v for k, v in load_hf_model(path / name).state_dict().items()}
        if isinstance(model, Discriminator):
            state["head.weight"] = load_file(str(path / name / SCORE_HEAD_FILE))["weight"]
        load_full_state_dict(model, state)
    train_state = torch.load(path / "train_state.pt", weights_only=True, map_location="cpu")
    for name, opt in optimizers.items():
        set_optimizer_state_dict(models[name], opt, train_state["optimizers"][name],
                                 options=StateDictOptions(full_state_dict=True))
    for name, sched in schedulers.items():
        sched.load_state_dict(train_state["schedulers"][name])
    rng_file = path / f"rng_rank{d.rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return train_state


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


class MetricsLog:
    """Namespaced metrics (`loss/...`, `reward/...`, `time/...`), one JSON line per step in
    out/metrics.jsonl, and a console line with the few that matter (rank 0 only).

    On resume, lines after the resumed step are dropped so the file matches the weights.
    """

    def __init__(self, out: Path, d: Dist, console: tuple[str, ...], resume_step: int = 0):
        self.path = out / "metrics.jsonl"
        self.enabled = d.is_main
        self.console = console
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step] \
                if resume_step and self.path.is_file() else []
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: dict, bar=None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")
        line = f"step {step:>5} | " + " | ".join(f"{k} {_fmt(metrics[k])}" for k in self.console if k in metrics)
        (bar.write if bar is not None else print)(line)


def _fmt(v: float) -> str:
    v = float(v)
    return f"{v:.3e}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5) else f"{v:.4f}"


def arg(default, help: str, **kw):
    """A documented field of a stage's Args dataclass; `help` becomes the --help text."""
    from dataclasses import field

    factory = dict(default_factory=lambda: list(default)) if isinstance(default, list) else dict(default=default)
    return field(**factory, metadata=dict(help=help, **kw))


def parse_args(cls, argv=None):
    """Turn an Args dataclass into a command line: field `max_new_tokens` is flag `--max-new-tokens`.

    bool fields become --flag / --no-flag; list fields take several values; `choices` in a field's
    metadata restrict its values; fields without a default are required.
    """
    import dataclasses

    parser = argparse.ArgumentParser(description=sys.modules[cls.__module__].__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        kw = dict(help=f.metadata.get("help", ""), required=f.metadata.get("required", False), default=default)
        if f.type in (bool, "bool"):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list) or f.metadata.get("nargs"):
            kw["nargs"] = f.metadata.get("nargs", "+")
        else:
            kw["type"] = {"int": int, "float": float, "str": str}.get(str(f.type), None) or \
                (f.type if f.type in (int, float, str) else str)
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kw)
    return cls(**vars(parser.parse_args(argv)))


def run_stage(main, args_cls) -> None:
    """A stage's entry point: parse its Args; bad input ends the run with one clear line, no traceback."""
    from data import DataError

    args = parse_args(args_cls)
    try:
        main(args)
    except (DataError, TrainingError) as e:
        sys.exit(f"error: {e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="write a random-init tiny Qwen3-VL with tokenizer and processor")
    tiny.add_argument("--out", required=True, help="output HF directory")
    tiny.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = build_tiny(args.out, args.seed)
    n = sum(p.numel() for p in load_hf_model(path).parameters())
    print(f"wrote {path} ({n / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    main()
