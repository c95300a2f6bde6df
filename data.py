"""Examples for PRISM: everything about data, and nothing about weights.

Sections, in order:
  - the response format (spec §2): system prompt, validity check, perception/reasoning split;
  - records and the on-disk formats: ShareGPT SFT JSONL, the published RL parquet, warm-up pair
    JSONL, the evaluation JSONL; every bad input is a DataError naming file, record and problem;
  - batching: chat template, images, SFT target masks, discriminator inputs, token-budget
    micro-batches, the data stream.

The answer grader and the verifiable reward live in grading.py; the synthetic task in toy/world.py.
"""

import dataclasses
import functools
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

# ----------------------------------------------------------------------------------------------
# The response format (spec §2)
# ----------------------------------------------------------------------------------------------

SYSTEM_PROMPT = (
    "You are a helpful scientific assistant. Answer the user's question based on the image provided. "
    "Your output must strictly follow this XML format:\n"
    "<caption>\n- [Briefly describe the image style, key objects, and text using bullet points]\n</caption>\n"
    "<think>\n[Reason step-by-step to solve the problem]\n</think>\n"
    "<answer>\n[Final answer ONLY]\n</answer>"
)
FORMAT_TAGS = ("<caption>", "</caption>", "<think>", "</think>", "<answer>", "</answer>")
FORMAT_PATTERN = re.compile(
    r"^\s*(<caption>.*?</caption>)\s*(<think>.*?</think>\s*<answer>.*?</answer>)\s*$", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass
class ParsedResponse:
    """A response split by the format of spec §2.2: valid iff the whole text matches FORMAT_PATTERN."""

    valid: bool
    caption: str = ""  # the <caption>…</caption> block, tags included
    reasoning: str = ""  # the <think>…</think> <answer>…</answer> part, tags included
    answer: str = ""  # the inside of the first <answer> block, stripped


def parse_response(text: str) -> ParsedResponse:
    """Spec §2.2 on decoded text (special tokens already skipped). Truncated responses are invalid.

    Beyond the release's regex, each tag must occur exactly once: the lazy groups would otherwise
    accept a second <answer> block or nested tags, and a hedging response could be rewarded.
    """
    # Counting first also keeps a response stuffed with tags from making the lazy regex backtrack.
    if any(text.count(tag) != 1 for tag in FORMAT_TAGS) or not (m := FORMAT_PATTERN.match(text)):
        return ParsedResponse(valid=False)
    return ParsedResponse(True, m.group(1), m.group(2), _ANSWER.search(m.group(2)).group(1).strip())


def segment_boundary(tokenizer, response_ids: list[int]) -> int | None:
    """Spec §2.3: the smallest k such that decode(response[:k]) contains the caption block, or None.

    The release re-decodes every prefix (O(L²)). Here the caption's closing tag is located as a
    token (the tag is atomic in this project's tokenizer), and the definition is checked with two
    decodes; tokenizers that split the tag fall back to a binary search, valid because "the
    prefix contains the caption" can only switch from false to true as k grows.
    """
    text = tokenizer.decode(response_ids, skip_special_tokens=True)
    parsed = parse_response(text)
    if not parsed.valid:
        return None

    def contains(k: int) -> bool:
        return parsed.caption in tokenizer.decode(response_ids[:k], skip_special_tokens=True)

    close_id = tokenizer.convert_tokens_to_ids("</caption>")
    if close_id in response_ids:
        k = response_ids.index(close_id) + 1
        if contains(k) and not contains(k - 1):
            return k
    lo, hi = 1, len(response_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if contains(mid) else (mid + 1, hi)
    return lo


def split_segments(tokenizer, response_ids: list[int]) -> tuple[list[int], list[int], bool]:
    """(perception segment, reasoning segment, valid) of a response's tokens, EOS included.

    Perception = tokens through the end of </caption>; reasoning = the rest (think, answer, EOS).
    A malformed response is split in half (spec §2.4): its scores are discarded, but it is still
    scored so that every rank runs the same forwards.
    """
    b = segment_boundary(tokenizer, response_ids)
    valid = b is not None
    if not valid:
        b = max(1, len(response_ids) // 2)
    if b >= len(response_ids):  # empty reasoning: score the token at the boundary instead (§2.3)
        return response_ids[:b], response_ids[b - 1:b], valid
    return response_ids[:b], response_ids[b:], valid


def text_segments(tokenizer, caption: str, cot: str) -> tuple[list[int], list[int]]:
    """A written response (teacher demonstration, warm-up student) → (perception, reasoning) tokens.

    The text caption + "\n" + cot is tokenized, <|im_end|> appended, and split exactly as a
    rollout is, so teacher and student segments end the same way and the score is read at the
    same kind of token. Text that does not follow the format is split at the caption/cot seam.
    """
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = tokenizer.encode(caption + "\n" + cot, add_special_tokens=False) + [eos]
    perception, reasoning, valid = split_segments(tokenizer, ids)
    if valid:
        return perception, reasoning
    return tokenizer.encode(caption, add_special_tokens=False), \
        tokenizer.encode("\n" + cot, add_special_tokens=False) + [eos]


# ----------------------------------------------------------------------------------------------
# Records and the on-disk formats
# ----------------------------------------------------------------------------------------------


class DataError(ValueError):
    """Bad input, with the file, the record and what is wrong in the message."""


ImageRef = Path | bytes  # a file, or the encoded bytes of one (parquet rows carry bytes)

MAX_IMAGE_PIXELS = 64_000_000  # above this an image is refused as a possible decompression bomb


MAX_ASPECT_RATIO = 200  # Qwen-VL's image processor refuses anything more elongated


def _check_aspect(width: int, height: int) -> None:
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise DataError(f"a {width}×{height} image is more elongated than {MAX_ASPECT_RATIO}:1")


def load_image(ref: ImageRef, where: str) -> Image.Image:
    """Open an image as RGB; any failure is a DataError naming `where` (file:record)."""
    try:
        img = Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref)
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise DataError(f"{img.width}×{img.height} pixels is over the {MAX_IMAGE_PIXELS} limit")
        if img.width == 0 or img.height == 0:
            raise DataError("the image is empty")
        _check_aspect(img.width, img.height)
        img.load()
        return img.convert("RGB")
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        name = "embedded image" if isinstance(ref, bytes) else str(ref)
        raise DataError(f"{where}: cannot read {name}: {e}") from None


@dataclass
class Example:
    """One prompt: a question about images, plus what each stage needs to know about it.

    `question` marks each image's place with "<image>"; `where` is "file:record" for errors.
    """

    id: str
    question: str
    images: list[ImageRef]
    where: str
    answer: str | list[str] | None = None  # a list: several accepted answers
    choices: list[str] | None = None
    precision: int | None = None  # decimal places the item states its numeric answer to
    qtype: str | None = None
    teacher_caption: str | None = None
    teacher_cot: str | None = None
    system: str = SYSTEM_PROMPT

    def teacher_response(self) -> str:
        """The demonstration as one response in the policy's format (tags added where absent)."""
        if not self.teacher_caption or not self.teacher_cot:
            raise DataError(f"{self.where}: alignment needs teacher_caption and teacher_cot")
        caption = self.teacher_caption.strip()
        if not caption.startswith("<caption>"):
            caption = f"<caption>\n{caption}\n</caption>"
        return f"{caption}\n{self.teacher_cot.strip()}"


@dataclass
class Conversation:
    """An SFT record: (role, text) turns with "<image>" placeholders, and the images they refer to."""

    messages: list[tuple[str, str]]
    images: list[ImageRef]
    where: str


@dataclass
class WarmupPair:
    """A discriminator warm-up line (spec §3.5): teacher vs student caption and reasoning."""

    question: str
    images: list[ImageRef]
    teacher_caption: str
    student_caption: str
    teacher_cot: str
    student_cot: str
    where: str


def _image_ref(value, base: Path, where: str) -> ImageRef:
    """A path relative to the data file, an absolute path, raw bytes, or an HF {"bytes", "path"} struct."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: an image entry must be a path or bytes, got {type(value).__name__}")
    if value.startswith(("http://", "https://")):
        raise DataError(f"{where}: image {value} is a URL; download the images and give local paths")
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.is_file():
        raise DataError(f"{where}: image file {path} does not exist")
    return path


VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def _check_text(text: str, where: str) -> str:
    """Text may not spell a vision token: the processor would take it for an image that is not there."""
    if found := [t for t in VISION_TOKENS if t in text]:
        raise DataError(f"{where}: the text contains the vision token {found[0]}; images are given as <image>")
    return text


def _check_placeholders(text: str, n_images: int, where: str) -> str:
    """Questions without placeholders get them in front; a count that disagrees is an error."""
    count = _check_text(text, where).count("<image>")
    if count == 0 and n_images:
        return "<image>" * n_images + "\n" + text
    if count != n_images:
        raise DataError(f"{where}: {count} <image> placeholders but {n_images} images")
    return text


def _read_jsonl(path: Path):
    """Yield (where, record) for each non-blank line; a malformed line is an error naming it."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{i}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON: {e}") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object")
            yield where, record


def _field(record: dict, key: str, where: str, kind=str):
    if key not in record or record[key] is None:
        raise DataError(f"{where}: missing field {key!r}")
    if not isinstance(record[key], kind):
        raise DataError(f"{where}: field {key!r} must be {kind.__name__}, got {type(record[key]).__name__}")
    return record[key]


_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


def load_sft(path: str | Path) -> list[Conversation]:
    """LLaMA-Factory ShareGPT multimodal JSONL: `messages` (role/content) or `conversations` (from/value)."""
    path = Path(path)
    out = []
    for where, rec in _read_jsonl(path):
        key, role_key, text_key = ("messages", "role", "content") if "messages" in rec else \
            ("conversations", "from", "value")
        if key not in rec:
            raise DataError(f"{where}: missing field 'messages' (or 'conversations')")
        turns = _field(rec, key, where, list)
        if not turns:
            raise DataError(f"{where}: the conversation is empty")
        messages = []
        for j, turn in enumerate(turns):
            ok = isinstance(turn, dict) and turn.get(role_key) in _ROLES and isinstance(turn.get(text_key), str)
            if not ok:
                raise DataError(f"{where}: turn {j} needs {role_key!r} in {sorted(_ROLES)} and a string {text_key!r}")
            role = _ROLES[turn[role_key]]
            _check_text(turn[text_key], f"{where}: turn {j}")
            if role == "assistant" and not turn[text_key].strip():
                raise DataError(f"{where}: turn {j} is an empty assistant turn")
            messages.append((role, turn[text_key]))
        if not any(role == "assistant" for role, _ in messages):
            raise DataError(f"{where}: no assistant turn to learn from")
        images = [_image_ref(v, path.parent, where) for v in rec.get("images") or []]
        placeholders = sum(text.count("<image>") for _, text in messages)
        if placeholders != len(images):
            raise DataError(f"{where}: {placeholders} <image> placeholders but {len(images)} images")
        out.append(Conversation(messages, images, where))
    return out


def load_prompts(path: str | Path) -> list[Example]:
    """Prompts from the published RL parquet schema (spec §7) or the evaluation JSONL format.

    Parquet: `prompt` (system/user messages), `images`, `reward_model.ground_truth`, optional
    `teacher_caption` / `teacher_cot`, `extra_info.{index,type}`.
    JSONL: {"id", "question", "images", "answer", optional "choices", "precision", "type"}.
    An answer may be a list of accepted answers; it stays a list.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        return _load_parquet_prompts(path)
    out = []
    for where, rec in _read_jsonl(path):
        images = [_image_ref(v, path.parent, where) for v in rec.get("images") or []]
        question = _check_placeholders(_field(rec, "question", where), len(images), where)
        if "answer" not in rec:
            raise DataError(f"{where}: missing field 'answer'")
        out.append(Example(str(rec.get("id", where)), question, images, where,
                           answer=read_answer(rec["answer"], [], f"{where}: field 'answer'"),
                           choices=read_choices(rec.get("choices"), where),
                           precision=read_precision(rec.get("precision"), where),
                           qtype=rec.get("type")))
    return out


def read_answer(truth, equivalent, where: str) -> str | list[str]:
    """A ground truth as a string, or the list of accepted answers (the truth and its equivalents)."""
    accepted = []
    for value in (truth if isinstance(truth, list) else [truth]) + list(equivalent or []):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or str(value).strip() == "":
            raise DataError(f"{where}: an answer must be a non-empty string or number (or a list of them), "
                            f"got {value!r}"[:200])
        if value != "__EMPTY__":  # verl's placeholder for "no equivalent answers"
            accepted.append(str(value))
    return accepted[0] if len(accepted) == 1 else accepted


def read_choices(choices, where: str) -> list[str] | None:
    if choices is None:
        return None
    if not isinstance(choices, list) or not all(isinstance(c, (str, int, float)) for c in choices):
        raise DataError(f"{where}: 'choices' must be a list of option texts")
    return [str(c) for c in choices] or None


def read_precision(precision, where: str) -> int | None:
    """The decimal places an item states (MathVista stores them as floats such as 2.0; NaN = none)."""
    if precision is None or (isinstance(precision, float) and precision != precision):
        return None
    if isinstance(precision, bool) or not isinstance(precision, (int, float)) or precision < 0 \
            or precision != int(precision):
        raise DataError(f"{where}: 'precision' must be a whole number of decimal places, got {precision!r}")
    return int(precision)


def read_parquet_rows(path: Path) -> list[dict]:
    """A parquet file's rows as dicts; a missing or unreadable file is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises many types for a bad file
        raise DataError(f"{path}: not a readable parquet file: {e}") from None


def _load_parquet_prompts(path: Path) -> list[Example]:
    rows = read_parquet_rows(path)
    out = []
    for i, rec in enumerate(rows):
        where = f"{path}:row {i}"
        messages = _field(rec, "prompt", where, list)
        system = next((m["content"] for m in messages if isinstance(m, dict) and m.get("role") == "system"),
                      SYSTEM_PROMPT)
        user = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if len(user) != 1 or not isinstance(user[0], str):
            raise DataError(f"{where}: 'prompt' must hold exactly one user message with string content")
        images = [_image_ref(v, path.parent, where) for v in rec.get("images") or []]
        question = _check_placeholders(user[0], len(images), where)
        reward_model = rec.get("reward_model") or {}
        truth, equivalent = (reward_model.get("ground_truth"), reward_model.get("equivalent_answers")) \
            if isinstance(reward_model, dict) else (None, None)
        extra = rec.get("extra_info") if isinstance(rec.get("extra_info"), dict) else {}
        for key in ("teacher_caption", "teacher_cot"):
            if rec.get(key) is not None and not isinstance(rec[key], str):
                raise DataError(f"{where}: field {key!r} must be str, got {type(rec[key]).__name__}")
            _check_text(rec.get(key) or "", f"{where}: {key}")
        out.append(Example(str(extra.get("index", i)), question, images, where,
                           answer=None if truth is None else read_answer(truth, equivalent, f"{where}: ground_truth"),
                           qtype=extra.get("type"),
                           teacher_caption=rec.get("teacher_caption"), teacher_cot=rec.get("teacher_cot"),
                           system=system))
    return out


def load_pairs(path: str | Path) -> tuple[list[WarmupPair], int]:
    """Warm-up pairs (spec §3.5). Lines missing a caption or cot side are skipped and counted."""
    path = Path(path)
    pairs, skipped = [], 0
    for where, rec in _read_jsonl(path):
        question = rec.get("prompt") or rec.get("question")
        if not isinstance(question, str):
            raise DataError(f"{where}: missing field 'prompt' (or 'question')")
        texts = [rec.get(k) for k in ("teacher_caption", "student_caption", "teacher_cot", "student_cot")]
        if not all(isinstance(t, str) and t.strip() for t in texts):
            skipped += 1
            continue
        for text in texts:
            _check_text(text, where)
        images = [_image_ref(rec["image"], path.parent, where)] if rec.get("image") else []
        pairs.append(WarmupPair(_check_placeholders(question, len(images), where), images, *texts, where))
    return pairs, skipped




# ----------------------------------------------------------------------------------------------
# Batching: chat template, images, label masks, scored sequences
# ----------------------------------------------------------------------------------------------


@dataclass
class VLBatch:
    """Token rows plus the images they show, each distinct image stored (and encoded) once.

    input_ids, attention_mask, mm_token_type_ids: (B, L). pixel_values: (patches, C·T·P·P), the
    patches of U distinct images one after another; image_grid_thw: (U, 3). images_per_row: (B,);
    image_index: (Σ images_per_row,), for each row in order, which distinct image it shows where.
    The n rollouts of a prompt therefore share one copy of its images, and the training forward
    runs the vision encoder once per prompt, not once per rollout.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    images_per_row: torch.Tensor
    image_index: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def text_inputs(self) -> dict:
        return dict(input_ids=self.input_ids, attention_mask=self.attention_mask,
                    mm_token_type_ids=self.mm_token_type_ids)

    def model_inputs(self) -> dict:
        """Keyword arguments of a plain HF forward or generate: every image occurrence spelled out."""
        inputs = self.text_inputs()
        if self.pixel_values is not None:
            patches = self.image_grid_thw.prod(-1)
            first = torch.cumsum(patches, 0) - patches
            pixel_values = torch.cat([self.pixel_values[first[i]:first[i] + patches[i]]
                                      for i in self.image_index.tolist()])
            inputs |= dict(pixel_values=pixel_values, image_grid_thw=self.image_grid_thw[self.image_index])
        return inputs

    def to(self, device) -> "VLBatch":
        move = (lambda t: None if t is None else t.to(device))
        return VLBatch(*(move(getattr(self, f)) for f in self.__dataclass_fields__))

    def select(self, rows) -> "VLBatch":
        """Rows `rows` (any order, repeats allowed), keeping only the distinct images they show.

        Images move as whole patch blocks: repeating pixel rows one by one would keep the counts
        right but pair patches with the wrong images.
        """
        rows = torch.as_tensor(rows, dtype=torch.long)
        r = rows.to(self.input_ids.device)
        pixel_values = image_grid_thw = None
        image_index = self.image_index[:0]
        if self.image_grid_thw is not None:
            first_of_row = torch.cumsum(self.images_per_row, 0) - self.images_per_row
            shown = torch.cat([self.image_index[first_of_row[i]:first_of_row[i] + self.images_per_row[i]]
                               for i in rows.tolist()]) if len(rows) else self.image_index[:0]
            used, image_index = torch.unique(shown, return_inverse=True)
            patches = self.image_grid_thw.prod(-1)
            first = torch.cumsum(patches, 0) - patches
            pixel_values = torch.cat([self.pixel_values[first[i]:first[i] + patches[i]] for i in used.tolist()]) \
                if len(used) else self.pixel_values[:0]
            image_grid_thw = self.image_grid_thw[used]
        return VLBatch(self.input_ids[r], self.attention_mask[r], self.mm_token_type_ids[r], pixel_values,
                       image_grid_thw, self.images_per_row[rows], image_index)

    def repeat_interleave(self, n: int) -> "VLBatch":
        return self.select(torch.arange(len(self)).repeat_interleave(n))

    def columns(self, keep: torch.Tensor) -> "VLBatch":
        """Only the token columns where `keep` (L,) is true; the images are untouched."""
        return dataclasses.replace(self, input_ids=self.input_ids[:, keep], attention_mask=self.attention_mask[:, keep],
                                   mm_token_type_ids=self.mm_token_type_ids[:, keep])

    def padded(self, left: int, right: int, pad_id: int) -> "VLBatch":
        """Widen with `left` padding columns in front and `right` at the end."""
        def pad(t, value):
            return F.pad(t, (left, right), value=value)
        return dataclasses.replace(self, input_ids=pad(self.input_ids, pad_id),
                                   attention_mask=pad(self.attention_mask, 0),
                                   mm_token_type_ids=pad(self.mm_token_type_ids, 0))

    @staticmethod
    def concat(batches: list["VLBatch"]) -> "VLBatch":
        """Rows of equal-width batches, one after another; each batch's images keep their own entries."""
        def cat(field):
            parts = [getattr(b, field) for b in batches if getattr(b, field) is not None]
            return torch.cat(parts) if parts else None
        offsets = torch.tensor([0] + [len(b.image_grid_thw) if b.image_grid_thw is not None else 0
                                      for b in batches]).cumsum(0)
        image_index = torch.cat([b.image_index + offsets[k] for k, b in enumerate(batches)])
        return VLBatch(*(cat(f) for f in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                                          "image_grid_thw", "images_per_row")), image_index)

    def extend(self, tokens: torch.Tensor, mask: torch.Tensor) -> "VLBatch":
        """Append text columns (B, T) with their attention mask (B, T)."""
        return dataclasses.replace(self, input_ids=torch.cat([self.input_ids, tokens], 1),
                                   attention_mask=torch.cat([self.attention_mask, mask], 1),
                                   mm_token_type_ids=torch.cat([self.mm_token_type_ids, torch.zeros_like(tokens)], 1))


def chat_messages(system: str, turns: list[tuple[str, str]]) -> list[dict]:
    """(role, text) turns → chat-template messages; "<image>" becomes an image part in place."""
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    for role, text in turns:
        parts = []
        for j, piece in enumerate(text.split("<image>")):
            if j:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": parts})
    return messages


def _encode(processor, texts: list[str], images: list[list[ImageRef]], wheres: list[str]) -> VLBatch:
    """Processor call over rendered texts, left-padded."""
    flat = [load_image(ref, where) for refs, where in zip(images, wheres) for ref in refs]
    enc = processor(text=texts, images=flat or None, padding=True, padding_side="left", return_tensors="pt")
    return VLBatch(enc["input_ids"], enc["attention_mask"], enc["mm_token_type_ids"], enc.get("pixel_values"),
                   enc.get("image_grid_thw"), torch.tensor([len(refs) for refs in images], dtype=torch.long),
                   torch.arange(len(flat)))


def _image_tokens(processor, ref: ImageRef, where: str) -> int:
    """Tokens an image will take, from its header alone (no pixel decoding)."""
    try:
        with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as img:
            width, height = img.size
        _check_aspect(width, height)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: cannot read image: {e}") from None
    ip = processor.image_processor
    return ip.get_number_of_image_patches(height, width) // ip.merge_size**2


def _rendered_length(processor, text: str, images: list[ImageRef], where: str) -> int:
    """Token length of a rendered chat text once each image placeholder is expanded."""
    n_text = len(processor.tokenizer(text, add_special_tokens=False).input_ids)
    return n_text - len(images) + sum(_image_tokens(processor, ref, where) for ref in images)


def drop_long_prompts(processor, examples: list[Example], max_len: int) -> tuple[list[Example], int]:
    """Keep prompts of at most max_len tokens (images expanded); the rest are dropped and counted.

    Never truncated: a cut through image tokens would leave features without placeholders.
    """
    kept = [e for e in examples
            if _rendered_length(processor, _prompt_text(processor, e), e.images, e.where) <= max_len]
    return kept, len(examples) - len(kept)


def drop_long_conversations(processor, conversations: list[Conversation], max_len: int):
    """As drop_long_prompts, for SFT conversations: returns (kept, number dropped)."""
    kept = [c for c in conversations
            if _rendered_length(processor, _conversation_text(processor, c), c.images, c.where) <= max_len]
    return kept, len(conversations) - len(kept)


def _prompt_text(processor, e: Example) -> str:
    return processor.apply_chat_template(chat_messages(e.system, [("user", e.question)]), tokenize=False,
                                         add_generation_prompt=True)


def _conversation_text(processor, c: Conversation) -> str:
    system = next((text for role, text in c.messages if role == "system"), "")
    turns = [(role, text) for role, text in c.messages if role != "system"]
    return processor.apply_chat_template(chat_messages(system, turns), tokenize=False)


def encode_prompts(processor, examples: list[Example]) -> VLBatch:
    """Prompts ready to generate from: system, user turn with images, then the assistant header."""
    texts = [_prompt_text(processor, e) for e in examples]
    return _encode(processor, texts, [e.images for e in examples], [e.where for e in examples])


def encode_conversations(processor, conversations: list[Conversation]) -> tuple[VLBatch, torch.Tensor]:
    """SFT batch and its target mask (B, L): 1 exactly on assistant content tokens and their <|im_end|>.

    Assistant spans are found on the token ids: after each "<|im_start|>assistant\\n" header,
    up to and including the next <|im_end|>. System, user and image tokens are never targets.
    """
    tok = processor.tokenizer
    texts = [_conversation_text(processor, c) for c in conversations]
    batch = _encode(processor, texts, [c.images for c in conversations], [c.where for c in conversations])
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    target = torch.zeros_like(batch.input_ids)
    for row, ids in enumerate(batch.input_ids.tolist()):
        t = 0
        while t < len(ids):
            if ids[t:t + len(header)] == header:
                start = t + len(header)
                end = ids.index(im_end, start) if im_end in ids[start:] else len(ids) - 1
                target[row, start:end + 1] = 1
                t = end + 1
            else:
                t += 1
    return batch, target


def encode_scored(prompts: VLBatch, prompt_len: int, segments: list[list[int]], pad_id: int) -> VLBatch:
    """Discriminator inputs: each row's real prompt tokens ⊕ its segment, left-padded (spec §3.4, §0.1).

    prompts: a batch whose first `prompt_len` columns are left-padded prompts (a prompt batch or
    rollouts); segments: one token list per row. The score is read at the last token, which is the
    segment's last token for teacher and student alike; positions are the model's own M-RoPE.
    """
    device = prompts.input_ids.device  # built where the prompts are: no round trip through the CPU
    rows = []
    for i, seg in enumerate(segments):
        keep = prompts.attention_mask[i, :prompt_len].bool()
        ids = torch.cat([prompts.input_ids[i, :prompt_len][keep], torch.tensor(seg, dtype=torch.long, device=device)])
        mm = torch.cat([prompts.mm_token_type_ids[i, :prompt_len][keep].long(),
                        torch.zeros(len(seg), dtype=torch.long, device=device)])
        rows.append((ids, mm))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros_like(input_ids)
    mm_types = torch.zeros_like(input_ids)
    for i, (ids, mm) in enumerate(rows):
        input_ids[i, width - len(ids):] = ids
        attention[i, width - len(ids):] = 1
        mm_types[i, width - len(ids):] = mm
    return VLBatch(input_ids, attention, mm_types, prompts.pixel_values, prompts.image_grid_thw,
                   prompts.images_per_row, prompts.image_index)


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


def stream_indices(n_items: int, seed: int, start: int, count: int) -> list[int]:
    """Items start … start+count−1 of an endless stream of shuffled epochs over n_items.

    Epoch e is a permutation drawn from (seed, e) alone, so any position of the stream is
    reproducible from its index: resuming needs only the step number, and every rank can take
    its own slice of the same global batch without communicating.
    """
    out = []
    for k in range(start, start + count):
        epoch, pos = divmod(k, n_items)
        out.append(int(_epoch_permutation(n_items, seed, epoch)[pos]))
    return out


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n_items: int, seed: int, epoch: int):
    return torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
