"""Models for the toy world and for structure tests: a tiny random Qwen3-VL, and the published shapes.

    python -m toy.models --out DIR [--seed N]      # a tiny Qwen3-VL with its tokenizer and processor

The tiny model keeps the real architecture's features (vision tower with DeepStack, interleaved
M-RoPE, 2×2 merger) at about a million parameters, with a byte-level BPE trained on the synthetic
task's texts, so that the whole pipeline runs on 2 CPU cores in minutes. `real_config` gives the
published Qwen3-VL configs (2B … 32B dense, 30B-A3B MoE) for tests and benchmarks on random weights.
"""

import argparse
from pathlib import Path

import torch

from data import FORMAT_TAGS
from hf_checkpoint import load_hf_model
from toy.world import synthetic_corpus

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


def set_generation_tokens(hf_model, tokenizer) -> None:
    """A new model's generation settings: a response ends at <|im_end|> or <|endoftext|>, as the released
    Qwen3-VL's do; without this, generate runs on past the end of the turn."""
    hf_model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>",
                                                                                             "<|endoftext|>")]
    hf_model.generation_config.pad_token_id = tokenizer.pad_token_id


def build_tiny(out: str | Path, seed: int = 0) -> Path:
    """Write a random-init tiny Qwen3-VL with its tokenizer and processor as an HF directory."""
    from transformers import Qwen3VLForConditionalGeneration
    from transformers.utils import logging

    logging.disable_progress_bar()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output HF directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tokenizer corpus and the weights")
    args = parser.parse_args()
    path = build_tiny(args.out, args.seed)
    n = sum(p.numel() for p in load_hf_model(path).parameters())
    print(f"wrote {path} ({n / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    main()
