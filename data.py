"""Examples for PRISM: everything about data, and nothing about weights.

Sections, in order:
  - the response format (spec §2): system prompt, validity check, perception/reasoning split;
  - records and the on-disk formats: ShareGPT SFT JSONL, the published RL parquet, warm-up pair
    JSONL, the evaluation JSONL; every bad input is a DataError naming file, record and problem.

Rendering (the chat template, length filters), tensors and micro-batches live in batching.py; the
answer grader and the verifiable reward in grading.py; benchmark schemas in benchmarks.py; the
synthetic task in toy/world.py.
"""

import ast
import base64
import binascii
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
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
THINK_FORMAT_TAGS = FORMAT_TAGS[2:]
THINK_FORMAT_PATTERN = re.compile(r"^\s*(<think>.*?</think>\s*<answer>.*?</answer>)\s*$", re.DOTALL)


@dataclass
class ParsedResponse:
    """A response split by the format of spec §2.2: valid iff the whole text matches FORMAT_PATTERN."""

    valid: bool
    caption: str = ""  # the <caption>…</caption> block, tags included
    reasoning: str = ""  # the <think>…</think> <answer>…</answer> part, tags included
    answer: str = ""  # the inside of the first <answer> block, stripped


def parse_response(text: str, response_format: str = "caption") -> ParsedResponse:
    """Spec §2.2 on decoded text (special tokens already skipped). Truncated responses are invalid.

    Beyond the release's regex, each tag must occur exactly once: the lazy groups would otherwise
    accept a second <answer> block or nested tags, and a hedging response could be rewarded.
    response_format "think": the format WeMath's own system prompt asks for (spec §8), <think> then
    <answer> and no caption (caption "" and no caption tag allowed).
    """
    # Counting first also keeps a response stuffed with tags from making the lazy regex backtrack.
    if response_format == "think":
        if any(text.count(tag) != (tag in THINK_FORMAT_TAGS) for tag in FORMAT_TAGS) or \
                not (m := THINK_FORMAT_PATTERN.match(text)):
            return ParsedResponse(valid=False)
        return ParsedResponse(True, "", m.group(1), _ANSWER.search(m.group(1)).group(1).strip())
    if any(text.count(tag) != 1 for tag in FORMAT_TAGS) or not (m := FORMAT_PATTERN.match(text)):
        return ParsedResponse(valid=False)
    return ParsedResponse(True, m.group(1), m.group(2), _ANSWER.search(m.group(2)).group(1).strip())


def caption_items(caption: str) -> list[str]:
    """The description items of a <caption> block: its bullet lines ("- red circle at top-left"), lower-cased
    and stripped; the spec's "description items per caption" (§9.4) is their count."""
    body = caption.removeprefix("<caption>").removesuffix("</caption>")
    return [" ".join(line.strip()[1:].lower().split()) for line in body.splitlines() if line.strip().startswith("-")]


def reasoning_steps(reasoning: str) -> int:
    """The spec's "number of reasoning steps" (§9.4): the non-empty lines of the <think> block."""
    think = reasoning.split("</think>")[0].removeprefix("<think>")
    return sum(1 for line in think.splitlines() if line.strip())


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


def written_response(caption: str, cot: str) -> str:
    """A written caption and reasoning (a teacher demonstration, a warm-up student) as one response, the
    way the policy writes it: the caption inside <caption> tags, added where the data leaves them out
    (the released loader shows no tags, spec §3.5), then the reasoning as written."""
    caption = caption.strip()
    if not caption.startswith("<caption>"):
        caption = f"<caption>\n{caption}\n</caption>"
    return f"{caption}\n{cot.strip()}"


def text_segments(tokenizer, caption: str, cot: str) -> tuple[list[int], list[int]]:
    """A written response (teacher demonstration, warm-up student) → (perception, reasoning) tokens.

    written_response(caption, cot) is tokenized, <|im_end|> appended, and split exactly as a rollout
    is, so teacher and student segments end the same way and the score is read at the same kind of
    token. A reasoning without the format's tags is split at the caption/cot seam.
    """
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = written_response(caption, cot)
    ids = tokenizer.encode(text, add_special_tokens=False) + [eos]
    perception, reasoning, valid = split_segments(tokenizer, ids)
    if valid:
        return perception, reasoning
    seam = text.index("</caption>") + len("</caption>")
    return tokenizer.encode(text[:seam], add_special_tokens=False), \
        tokenizer.encode(text[seam:], add_special_tokens=False) + [eos]


# ----------------------------------------------------------------------------------------------
# Records and the on-disk formats
# ----------------------------------------------------------------------------------------------


class DataError(ValueError):
    """Bad input, with the file, the record and what is wrong in the message."""


ImageRef = Path | bytes  # a file, or the encoded bytes of one (parquet rows carry bytes)

MAX_IMAGE_PIXELS = 64_000_000  # above this an image is refused as a possible decompression bomb


MAX_ASPECT_RATIO = 200  # Qwen-VL's image processor refuses anything more elongated


def check_aspect(width: int, height: int) -> None:
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
        check_aspect(img.width, img.height)
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
    response_format: str = "caption"  # "think": the system prompt asks for <think>/<answer> only (WeMath)
    meta: dict | None = None  # what a benchmark's own metrics group by (benchmarks.py), kept in eval's records

    def teacher_response(self) -> str:
        """The demonstration as one response in the policy's format (data.written_response). Alignment
        refuses one that is missing, blank or not in the format: the discriminator would tell it from the
        policy's rollouts by form alone."""
        if not (self.teacher_caption or "").strip() or not (self.teacher_cot or "").strip():
            raise DataError(f"{self.where}: alignment needs a non-blank teacher_caption and teacher_cot")
        response = written_response(self.teacher_caption, self.teacher_cot)
        if not parse_response(response).valid:
            raise DataError(f"{self.where}: the teacher demonstration does not follow the response format "
                            "(<caption>…</caption> <think>…</think> <answer>…</answer>)")
        return response


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


_DATA_URI = re.compile(r"data:image/[\w.+-]+;base64,(.*)", re.S)


def _shown(value: str) -> str:
    """A value as an error message quotes it: at most 60 characters."""
    return value if len(value) <= 60 else f"{value[:57]}... ({len(value)} characters)"


def _image_ref(value, base: Path, where: str) -> ImageRef:
    """A path relative to the data file, an absolute path, raw bytes, a `data:image/…;base64,` URI, or an HF
    {"bytes", "path"} struct."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: an image entry must be a path or bytes, got {type(value).__name__}")
    if value.startswith("data:"):
        try:
            return base64.b64decode(_DATA_URI.fullmatch(value).group(1), validate=True)
        except (AttributeError, binascii.Error):
            raise DataError(f"{where}: cannot decode the image data URI {_shown(value)!r}; expected "
                            "data:image/<format>;base64,<data>") from None
    if value.startswith(("http://", "https://")):
        raise DataError(f"{where}: image {_shown(value)} is a URL; download the images and give local paths")
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.is_file():
        raise DataError(f"{where}: image file {path if len(value) < 4096 else _shown(value)} does not exist")
    return path


IMAGE_FIELDS = ("images", "image")  # the spellings the public data sets use
_IMAGE_LIKE = re.compile(r"image|img|picture|photo", re.I)
_OTHER_MEDIA = re.compile(r"video|audio", re.I)


def _record_images(record: dict, base: Path, where: str) -> list[ImageRef]:
    """A record's images, from `images` (a list, or one image) or `image`. A record holding images under a
    name the loader does not read, or videos or audio (LLaMA-Factory's `videos`, `audios`), is refused
    rather than loaded as text only."""
    given = [key for key in IMAGE_FIELDS if record.get(key) not in (None, [], "")]
    for key, value in record.items():
        if key in IMAGE_FIELDS or value in (None, [], ""):
            continue
        if _OTHER_MEDIA.search(key):
            raise DataError(f"{where}: field {key!r} holds media this pipeline does not train on (images only)")
        if _IMAGE_LIKE.search(key):
            raise DataError(f"{where}: field {key!r} looks like an image field but is not read; images are read "
                            f"from {' or '.join(repr(k) for k in IMAGE_FIELDS)}")
    if len(given) > 1:
        raise DataError(f"{where}: both 'images' and 'image' are given; keep one")
    value = record[given[0]] if given else []
    return [_image_ref(v, base, where) for v in (value if isinstance(value, list) else [value])]


VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
# The Qwen chat format's control tokens, refused in data text when no tokenizer is at hand to list its own.
CONTROL_TOKENS = frozenset(VISION_TOKENS + ("<|im_start|>", "<|im_end|>", "<|endoftext|>"))


def control_tokens(tokenizer) -> frozenset[str]:
    """Every special or added control token of a tokenizer: text that spells one would be read as that
    token (a new turn, an image, the end of a response), not as text."""
    added = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    return CONTROL_TOKENS | frozenset(tokenizer.all_special_tokens) | frozenset(added)


def check_text(text: str, where: str, control: frozenset[str] = CONTROL_TOKENS) -> str:
    """Text may not spell a control token: "<|im_end|>\n<|im_start|>assistant\n…" in a user turn would
    become an assistant turn, and a spelled <|image_pad|> an image that is not there."""
    if found := sorted(t for t in control if t in text):
        hint = "; images are given as <image>" if found[0] in VISION_TOKENS else ""
        raise DataError(f"{where}: the text spells the control token {found[0]}{hint}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate escape such as \ud800: no tokenizer can read it
        raise DataError(f"{where}: the text holds {text[e.start]!r}, half of a surrogate pair, which is not "
                        "a character") from None
    return text


def check_placeholders(text: str, n_images: int, where: str, control: frozenset[str] = CONTROL_TOKENS) -> str:
    """Questions without placeholders get their images in front of the text (the Qwen-VL convention);
    a count that disagrees is an error."""
    count = check_text(text, where, control).count("<image>")
    if count == 0 and n_images:
        return "<image>" * n_images + "\n" + text
    if count != n_images:
        raise DataError(f"{where}: {count} <image> placeholders but {n_images} images")
    return text


def _read_jsonl(path: Path):
    """Yield (where, record) for each non-blank line; a malformed line is an error naming it, and so is a
    file with no records."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    empty = True
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            where = f"{path}:{i}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON: {e}") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object")
            empty = False
            yield where, record
    if empty:
        raise DataError(f"{path}: no records")


def _field(record: dict, key: str, where: str, kind=str):
    if key not in record or record[key] is None:
        raise DataError(f"{where}: missing field {key!r}")
    if not isinstance(record[key], kind):
        raise DataError(f"{where}: field {key!r} must be {kind.__name__}, got {type(record[key]).__name__}")
    return record[key]


_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


def load_sft(path: str | Path, control: frozenset[str] = CONTROL_TOKENS) -> list[Conversation]:
    """LLaMA-Factory ShareGPT multimodal JSONL: `messages` (role/content) or `conversations` (from/value).

    Images are placed by "<image>" placeholders, in user turns only (a chat template renders images
    there; elsewhere it drops them or makes them targets). control: tokens no text may spell.
    """
    path = Path(path)
    out = []
    for where, rec in _read_jsonl(path):
        if "messages" in rec and "conversations" in rec:
            raise DataError(f"{where}: both 'messages' and 'conversations' are given; keep one")
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
            check_text(turn[text_key], f"{where}: turn {j}", control)
            if role == "assistant" and not turn[text_key].strip():
                raise DataError(f"{where}: turn {j} is an empty assistant turn")
            if role == "system" and j > 0:
                raise DataError(f"{where}: turn {j} is a system turn; the chat format has one, and only as the "
                                "first turn")
            if role != "user" and "<image>" in turn[text_key]:
                raise DataError(f"{where}: turn {j} ({role}) holds an <image> placeholder; images go in user turns")
            messages.append((role, turn[text_key]))
        if not any(role == "assistant" for role, _ in messages):
            raise DataError(f"{where}: no assistant turn to learn from")
        images = _record_images(rec, path.parent, where)
        placeholders = sum(text.count("<image>") for _, text in messages)
        if placeholders != len(images):
            raise DataError(f"{where}: {placeholders} <image> placeholders but {len(images)} images")
        out.append(Conversation(messages, images, where))
    return out


def load_prompts(path: str | Path, control: frozenset[str] = CONTROL_TOKENS) -> list[Example]:
    """Prompts from the published RL parquet schema (spec §7) or the evaluation JSONL format.

    Parquet: `prompt` (system/user messages), `images`, `reward_model.ground_truth`, optional
    `teacher_caption` / `teacher_cot`, `extra_info.{index,type}`.
    JSONL: {"id", "question", "images", "answer", optional "choices", "precision", "type", "teacher_caption"}.
    An answer may be a list of accepted answers; it stays a list. Images come from `images` or `image`;
    a question with images and no "<image>" placeholder gets them in front of its text.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        return _load_parquet_prompts(path, control)
    out = []
    for where, rec in _read_jsonl(path):
        images = _record_images(rec, path.parent, where)
        question = check_placeholders(_field(rec, "question", where), len(images), where, control)
        if "answer" not in rec:
            raise DataError(f"{where}: missing field 'answer'")
        answer = read_answer(rec["answer"], [], f"{where}: field 'answer'")
        choices = read_choices(rec.get("choices"), f"{where}: choices")
        check_choice_answer(answer, choices, where)
        for key in ("teacher_caption", "teacher_cot"):
            _optional_text(rec, key, where, control)
        out.append(Example(str(rec.get("id", where)), question, images, where, answer=answer, choices=choices,
                           precision=read_precision(rec.get("precision"), where),
                           qtype=read_type(rec.get("type"), where), teacher_caption=rec.get("teacher_caption"),
                           teacher_cot=rec.get("teacher_cot")))
    return out


def _optional_text(rec: dict, key: str, where: str, control: frozenset[str]) -> str | None:
    if rec.get(key) is not None and not isinstance(rec[key], str):
        raise DataError(f"{where}: field {key!r} must be str, got {type(rec[key]).__name__}")
    return check_text(rec[key], f"{where}: {key}", control) if rec.get(key) is not None else None


def read_answer(truth, equivalent, where: str) -> str | list[str]:
    """A ground truth as a string, or the list of accepted answers (the truth and its equivalents).

    Lists may be stored as lists or as the text of a Python list of strings ("['Lyon', 'France']", as
    MMMU stores some); a single string given as the equivalents is one more accepted answer. verl's
    "__EMPTY__" stands for no answer and is left out; nothing left to grade against is an error.
    """
    accepted = []
    equivalent = [equivalent] if isinstance(equivalent, str) else list(equivalent or [])
    for value in _answer_list(truth) + [v for e in equivalent for v in _answer_list(e)]:
        bad = isinstance(value, bool) or not isinstance(value, (str, int, float)) or str(value).strip() == "" \
            or (isinstance(value, float) and not math.isfinite(value))
        if bad:
            raise DataError(f"{where}: an answer must be a non-empty string or finite number (or a list of them), "
                            f"got {value!r}"[:200])
        if value != "__EMPTY__":
            accepted.append(str(value))
    if not accepted:
        raise DataError(f"{where}: no answer to grade against")
    return accepted[0] if len(accepted) == 1 else accepted


def _string_list(text: str) -> list[str] | None:
    """The text of a Python list of strings, read without evaluating code; None for any other text."""
    if not text.lstrip().startswith("["):
        return None
    try:
        parsed = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return parsed if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed) else None


def _answer_list(value) -> list:
    """An answer field as a list of answers: a list, the text of a Python list of strings, or one answer.
    "[1, 2]" or "[0, 1)" is an interval or a vector, an answer in itself."""
    if isinstance(value, str) and (parsed := _string_list(value)) is not None:
        return parsed
    return value if isinstance(value, list) else [value]


def read_choices(choices, where: str) -> list[str] | None:
    """Option texts in letter order: a list, or the text of a Python list of strings (as MMMU stores them)."""
    if choices is None:
        return None
    if isinstance(choices, str):
        if (parsed := _string_list(choices)) is None:
            raise DataError(f"{where}: must be a list of option texts or the text of a Python list of them, "
                            f"got {_shown(choices)!r}")
        choices = parsed
    if not isinstance(choices, list) or not all(isinstance(c, (str, int, float)) for c in choices):
        raise DataError(f"{where}: must be a list of option texts")
    return [str(c) for c in choices] or None


_OPTION_LETTER = re.compile(r"\(?([A-Za-z])\)?(?:[.:]?|[.:)]?\s.*)", re.S)


def check_choice_answer(answer: str | list[str], choices: list[str] | None, where: str) -> None:
    """A multiple-choice truth must name one of the options: its letter ("B", "(B)", "B. text") or its text."""
    if not choices:
        return
    texts = {c.strip().casefold() for c in choices}
    for truth in answer if isinstance(answer, list) else [answer]:
        letter = _OPTION_LETTER.fullmatch(truth.strip())
        named = letter and ord(letter.group(1).upper()) - ord("A") < len(choices)
        if not named and truth.strip().casefold() not in texts:
            raise DataError(f"{where}: answer {truth!r} is neither the letter nor the text of one of the "
                            f"{len(choices)} choices")


def read_precision(precision, where: str) -> int | None:
    """The decimal places an item states (MathVista stores them as floats such as 2.0; NaN = none). At most 15:
    a double holds no more."""
    if precision is None or (isinstance(precision, float) and precision != precision):
        return None
    if isinstance(precision, bool) or not isinstance(precision, (int, float)) or not 0 <= precision <= 15 \
            or precision != int(precision):
        raise DataError(f"{where}: 'precision' must be a whole number of decimal places from 0 to 15, "
                        f"got {precision!r}")
    return int(precision)


def read_type(value, where: str) -> str | None:
    """A question-type label (results are reported per type): a string, or a number read as one."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: 'type' must be a string label, got {type(value).__name__}")


def read_parquet_rows(path: Path) -> list[dict]:
    """A parquet file's rows as dicts; a missing or unreadable file is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises many types for a bad file
        raise DataError(f"{path}: not a readable parquet file: {e}") from None


def _load_parquet_prompts(path: Path, control: frozenset[str]) -> list[Example]:
    rows = read_parquet_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    out = []
    for i, rec in enumerate(rows):
        where = f"{path}:row {i}"
        messages = _field(rec, "prompt", where, list)
        roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
        if roles not in (["user"], ["system", "user"]) or not all(isinstance(m.get("content"), str) for m in messages):
            raise DataError(f"{where}: 'prompt' must be [system, user] or [user] messages with string content, "
                            f"got roles {roles}")
        system = messages[0]["content"] if roles[0] == "system" else SYSTEM_PROMPT
        images = _record_images(rec, path.parent, where)
        question = check_placeholders(messages[-1]["content"], len(images), where, control)
        check_text(system, f"{where}: system prompt", control)
        reward_model = rec.get("reward_model") or {}
        truth, equivalent = (reward_model.get("ground_truth"), reward_model.get("equivalent_answers")) \
            if isinstance(reward_model, dict) else (None, None)
        extra = rec.get("extra_info") if isinstance(rec.get("extra_info"), dict) else {}
        out.append(Example(str(extra.get("index", i)), question, images, where,
                           answer=None if truth is None else read_answer(truth, equivalent, f"{where}: ground_truth"),
                           qtype=read_type(extra.get("type"), where),
                           teacher_caption=_optional_text(rec, "teacher_caption", where, control),
                           teacher_cot=_optional_text(rec, "teacher_cot", where, control), system=system))
    return out


def load_pairs(path: str | Path, control: frozenset[str] = CONTROL_TOKENS) -> tuple[list[WarmupPair], int]:
    """Warm-up pairs (spec §3.5). Lines missing a caption or cot side (absent, null or blank) are skipped
    and counted, as the released loader does; a side that is not text is an error."""
    path = Path(path)
    pairs, skipped = [], 0
    for where, rec in _read_jsonl(path):
        if "prompt" in rec and "question" in rec:
            raise DataError(f"{where}: both 'prompt' and 'question' are given; keep one")
        if rec.get("system") is not None:
            raise DataError(f"{where}: field 'system' is not read: warm-up prompts use the policy's system prompt")
        if rec.get("prompt") is None and rec.get("question") is None:
            raise DataError(f"{where}: missing field 'prompt' (or 'question')")
        question = _field(rec, "prompt" if "prompt" in rec else "question", where)
        texts = [_optional_text(rec, k, where, control)
                 for k in ("teacher_caption", "student_caption", "teacher_cot", "student_cot")]
        if not all(t and t.strip() for t in texts):
            skipped += 1
            continue
        images = _record_images(rec, path.parent, where)
        pairs.append(WarmupPair(check_placeholders(question, len(images), where, control), images, *texts, where))
    return pairs, skipped
