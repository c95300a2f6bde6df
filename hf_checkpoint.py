"""HF checkpoint directories in and out: what every stage reads its models from and writes them to.

A directory holds config.json, safetensors weights, the processor's files (tokenizer, chat
template, image processor), generation_config.json, and for a discriminator its score head.
Only safetensors are read and no code from a checkpoint is ever run. Everything that can be wrong
with a directory — unreadable JSON, a truncated weight file, a missing, unexpected or misshapen
tensor, no tokenizer or chat template — is a DataError naming the directory and the problem,
found before any training step; transformers' own load report is silenced, since ours replaces it.
"""

import contextlib
import copy
import json
import warnings
from pathlib import Path

import torch

from data import DataError

QWEN3VL_TYPES = ("qwen3_vl", "qwen3_vl_moe")
SCORE_HEAD_FILE = "score_head.safetensors"


@contextlib.contextmanager
def _quiet_transformers():
    """transformers at error level only: its loading table and warnings would stand beside our one-line error."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def read_config(path: Path) -> dict:
    """config.json as a dict; it must be JSON and describe a Qwen3-VL or Qwen3-VL-MoE."""
    file = path / "config.json"
    if not file.is_file():
        raise DataError(f"{path}: not an HF model directory (no config.json)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{file}: not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("model_type") not in QWEN3VL_TYPES:
        found = config.get("model_type") if isinstance(config, dict) else None
        raise DataError(f"{file}: model_type {found!r} is not one of {', '.join(QWEN3VL_TYPES)}")
    return config


def load_processor(path: str | Path):
    """The checkpoint's processor: tokenizer, chat template and image processor, all required."""
    from transformers import AutoProcessor

    path = Path(path)
    read_config(path)
    try:
        with _quiet_transformers():
            processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot load the processor (tokenizer, image processor): {first}") from None
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise DataError(f"{path}: the processor has no tokenizer and image processor; a Qwen3-VL one is needed")
    if not processor.chat_template:
        raise DataError(f"{path}: no chat template (chat_template.jinja); prompts cannot be rendered")
    return processor


def stored_weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a directory's model safetensors files, read from their headers alone."""
    from safetensors import safe_open

    shapes, where = {}, {}
    for file in sorted(path.glob("*.safetensors")):
        if file.name == SCORE_HEAD_FILE:
            continue
        try:
            with safe_open(str(file), framework="pt") as f:
                found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for a damaged header
            raise DataError(f"{file}: not a readable safetensors file: {e}") from None
        # Two files holding one tensor (a stale copy beside a sharded set): which one loads would depend on the loader.
        if twice := sorted(found.keys() & shapes.keys()):
            raise DataError(f"{path}: {twice[0]} is stored in both {where[twice[0]]} and {file.name}; remove the "
                            "stale file")
        shapes |= found
        where |= dict.fromkeys(found, file.name)
    return shapes


def stored_weight_names(path: Path) -> set[str]:
    """The tensor names of a directory's safetensors files, read from their headers alone."""
    return set(stored_weight_shapes(path))


def _report_mismatch(path: Path, missing, unexpected, mismatched) -> None:
    for problem, keys in (("missing from the checkpoint", missing), ("in the checkpoint but not in the model",
                          unexpected), ("of the wrong shape", mismatched)):
        if keys:
            keys = sorted(str(k) for k in keys)
            raise DataError(f"{path}: weights {problem}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}")


def _config(path: Path, stored: set[str]):
    """The checkpoint's transformers config, with tied embeddings recognised (see load_hf_model)."""
    from transformers import AutoConfig

    config_dict = read_config(path)
    if not stored:
        raise DataError(f"{path}: no *.safetensors weights (other weight formats are refused)")
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise DataError(f"{path}/config.json: not a usable {config_dict['model_type']} config: {e}") from None
    text = config.get_text_config()
    if "lm_head.weight" not in stored and \
            bool(getattr(config, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False)):
        config.tie_word_embeddings = True
    return config


def empty_hf_model(path: str | Path, dtype: torch.dtype = torch.float32):
    """The network of an HF directory with its parameters on the meta device (nothing allocated) and its
    buffers (the rotary frequencies) computed on the CPU, for sharding before any weight is read.

    The stored tensors are checked against the parameters by name and shape from the file headers, as
    load_hf_model checks them; a checkpoint whose layout transformers converts while loading (the released
    30B-A3B's transposed experts) is refused here — load it once with one process and save it again.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText, GenerationConfig

    path = Path(path)
    stored = stored_weight_shapes(path)
    config = _config(path, set(stored))
    with init_empty_weights(include_buffers=False), _quiet_transformers():
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.tie_weights()  # from_config leaves a tied lm_head separate; from_pretrained ties it
    if config.tie_word_embeddings and model.lm_head.weight is not model.get_input_embeddings().weight:
        raise DataError(f"{path}: the config ties the embeddings but transformers did not tie lm_head")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    _report_mismatch(path, expected.keys() - stored.keys() - tied, stored.keys() - expected.keys(),
                     [f"{k} (stored {stored[k]}, expected {expected[k]})" for k in expected.keys() & stored.keys()
                      if stored[k] != expected[k]])
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    return model


def load_hf_model(path: str | Path, dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu"):
    """Any Qwen3-VL / Qwen3-VL-MoE checkpoint (2B … 32B dense, 30B-A3B MoE) from a local directory.

    dtype "auto" keeps the stored one. Every parameter must come from the checkpoint and every stored
    tensor must be used, at its shape: a missing, unexpected or misshapen weight is a DataError naming
    it, never a freshly initialised layer trained on. Tied embeddings are recognised wherever the
    config states them (top level or text_config) when the checkpoint stores no lm_head. Layout
    conversions transformers knows (the released MoE's transposed experts) are applied on the way in.
    """
    from transformers import AutoModelForImageTextToText

    path = Path(path)
    stored = stored_weight_names(path)
    quantized = {}
    dequantize = is_quantized(path)
    config = _config(path, stored)
    tied = "lm_head.weight" not in stored and config.tie_word_embeddings
    if dequantize:  # FP8 (compressed-tensors): dequantised on the way in, by transformers' integration
        from transformers import CompressedTensorsConfig

        quantized = dict(quantization_config=CompressedTensorsConfig(dequantize=True))
    try:
        with _quiet_transformers(), warnings.catch_warnings():
            # transformers notes that ours (dequantize=True) overrides the checkpoint's loading options: intended
            warnings.filterwarnings("ignore", message="You passed `quantization_config`")
            model, info = AutoModelForImageTextToText.from_pretrained(
                str(path), config=config, dtype=dtype, use_safetensors=True, trust_remote_code=False,
                output_loading_info=True, ignore_mismatched_sizes=True, **quantized)
    except Exception as e:  # safetensors and torch raise their own types for a damaged file
        raise DataError(f"{path}: cannot read the weights: {str(e).strip().splitlines()[0]}") from None
    _report_mismatch(path, set(info["missing_keys"]) - ({"lm_head.weight"} if tied else set()),
                     info["unexpected_keys"],
                     [f"{name} (stored {tuple(a)}, expected {tuple(b)})" for name, a, b in info["mismatched_keys"]])
    if quantized:  # what this model now is, and what save_pretrained writes: dense weights in the training dtype
        model.config.__dict__.pop("quantization_config", None)
        model.hf_quantizer = None
    return model.to(device)


def is_quantized(path: Path) -> bool:
    """Whether config.json declares a quantised checkpoint; only compressed-tensors (FP8 and other float or
    integer schemes written by llm-compressor) is read, dequantised."""
    quantization = read_config(path).get("quantization_config")
    if quantization is not None and not isinstance(quantization, dict):
        raise DataError(f"{path}/config.json: quantization_config must be an object, got {quantization!r:.80}")
    method = (quantization or {}).get("quant_method")
    if method not in (None, "compressed-tensors"):
        raise DataError(f"{path}/config.json: quant_method {method!r} is not read; only compressed-tensors "
                        "checkpoints (llm-compressor's FP8 and others) are, dequantised")
    return method is not None


def save_hf_config(hf_model, processor, out: Path) -> None:
    """The files of an HF directory beside its weights (written by run.save_consolidated): the config, naming
    the architecture and the weights' dtype, and the source model's serving files unchanged — its generation
    config (the EOS ids the released Qwen3-VL stops at, its sampling defaults) and the processor's chat
    template and settings."""
    config = copy.deepcopy(hf_model.config)
    config.architectures = [type(hf_model).__name__]
    config.dtype = next(hf_model.parameters()).dtype
    for sub_config in (config.text_config, config.vision_config):
        if hasattr(sub_config, "dtype"):  # set in memory on loading; the top level's dtype describes the weights
            delattr(sub_config, "dtype")
    config.save_pretrained(out)
    hf_model.generation_config.save_pretrained(out)
    processor.save_pretrained(out)


def read_score_head(path: Path, hidden_size: int) -> torch.Tensor:
    """The discriminator's score head w, (1, H), from path/score_head.safetensors."""
    from safetensors.torch import load_file

    file = path / SCORE_HEAD_FILE
    if not file.is_file():
        raise DataError(f"{path}: no {SCORE_HEAD_FILE} (make one with upcycle_moe.py)")
    try:
        state = load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise DataError(f"{file}: not a readable safetensors file: {e}") from None
    weight = state.get("weight")
    if set(state) != {"weight"} or tuple(weight.shape) != (1, hidden_size):
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        raise DataError(f"{file}: expected one tensor 'weight' of shape (1, {hidden_size}), got {shapes}")
    return weight


def write_score_head(weight: torch.Tensor, out: Path) -> None:
    from safetensors.torch import save_file

    save_file({"weight": weight.contiguous()}, str(out / SCORE_HEAD_FILE))
