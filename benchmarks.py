"""Benchmark files → examples: the evaluation JSONL, the RL parquet, and local copies of the public
benchmarks in their published Hugging Face schemas, told apart by their columns (spec §8).

Each adapter turns a row into a data.Example holding the prompt the release used, the images in
the order the text refers to them, and everything the grader needs (options, precision). Every
text goes through the same checks as training data (no spelled control tokens, one "<image>" per
image), so a row that cannot be evaluated as intended is a DataError naming it, never an item
silently asked without its picture or graded against an answer nothing can match.

    MathVista  (AI4Math/MathVista, testmini)          pid, query, decoded_image, answer, choices, …
    MMMU       (MMMU/MMMU or lmms-lab/MMMU, validation) id, question, options, answer, image_1…7, …
"""

import glob
import re
import string
from pathlib import Path

import pyarrow.parquet as pq

import data
from data import CONTROL_TOKENS, DataError, Example

LETTERS = string.ascii_uppercase
# lmms-eval's mmmu_val post-prompts (spec §8).
MMMU_CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."
MMMU_OPEN_PROMPT = "Answer the question using a single word or phrase."
_MMMU_IMAGE_REF = re.compile(r"<image (\d+)>")
_MMMU_IMAGE_COLUMN = re.compile(r"image_(\d+)")
_MMMU_SUBJECT = re.compile(r"^[a-z]+_(.+)_\d+$")  # "validation_Art_Theory_12" → "Art_Theory"
_MMMU_TYPES = {"multiple-choice": "multiple-choice", "multiple_choice": "multiple-choice", "open": "open"}


def _require(row: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if row.get(k) in (None, "")]
    if missing:
        raise DataError(f"{where}: empty or missing {', '.join(missing)}")


def _text(row: dict, key: str, where: str, control: frozenset[str]) -> str:
    if not isinstance(row[key], str):
        raise DataError(f"{where}: {key!r} must be text, got {type(row[key]).__name__}")
    return data.check_text(row[key], f"{where}: {key}", control)


def _image_bytes(value, where: str) -> bytes:
    """The encoded image of an HF {"bytes", "path"} struct: parquet exports embed it."""
    if not isinstance(value, dict) or not isinstance(value.get("bytes"), bytes):
        raise DataError(f"{where}: an image must be a {{'bytes', 'path'}} struct with embedded bytes")
    return value["bytes"]


def mathvista_examples(path: Path, control: frozenset[str] = CONTROL_TOKENS) -> list[Example]:
    """MathVista rows → examples. The prompt is the dataset's own `query`, which carries the
    answer-type hint (integer, float with its precision, option letter) and the lettered choices.

    A multiple-choice answer is stored as the option's text and becomes its letter, which the
    hint asks for; `choices` may be a list or the text of one. qtype: "multi_choice", else the answer
    type (integer, float, list, text), the split that shows whether errors concentrate on one form.
    """
    out = []
    for i, row in enumerate(data.read_parquet_rows(path)):
        where = f"{path}:row {i}"
        _require(row, ("pid", "query", "decoded_image", "answer", "question_type", "answer_type"), where)
        question = data.check_placeholders(_text(row, "query", where, control), 1, where, control)
        choices = data.read_choices(row.get("choices"), f"{where}: choices")
        for choice in choices or []:
            data.check_text(choice, f"{where}: choices", control)
        answer = data.read_answer(row["answer"], [], f"{where}: answer")
        if row["question_type"] == "multi_choice":
            if not choices or answer not in choices:
                raise DataError(f"{where}: answer {answer!r} is not one of the choices {choices}")
            answer, qtype = LETTERS[choices.index(answer)], "multi_choice"
        else:
            qtype = data.read_type(row["answer_type"], where)
        out.append(Example(str(row["pid"]), question, [_image_bytes(row["decoded_image"], where)], where,
                           answer=answer, choices=choices, qtype=qtype,
                           precision=data.read_precision(row.get("precision"), where)))
    return out


def _place_mmmu_images(text: str, row: dict, where: str) -> tuple[str, list[bytes]]:
    """Each "<image k>" → "<image>", with image_k's bytes appended to the images in the same order.

    An image column that no "<image k>" refers to still belongs to the item: it goes in front of the
    text (the Qwen-VL convention for unplaced images) rather than being dropped.
    """
    if "<image>" in text:
        raise DataError(f"{where}: the text holds a bare <image>; MMMU refers to its images as <image k>")
    images = []

    def place(match: re.Match) -> str:
        images.append(_image_bytes(row.get(f"image_{match.group(1)}"), f"{where} ({match.group(0)})"))
        return "<image>"

    placed = _MMMU_IMAGE_REF.sub(place, text)
    referenced = set(_MMMU_IMAGE_REF.findall(text))
    unplaced = sorted(int(m.group(1)) for key in row if (m := _MMMU_IMAGE_COLUMN.fullmatch(key))
                       and row[key] is not None and m.group(1) not in referenced)
    front = [_image_bytes(row[f"image_{k}"], f"{where} (image_{k})") for k in unplaced]
    return "<image>" * len(front) + ("\n" if front else "") + placed, front + images


def mmmu_examples(path: Path, control: frozenset[str] = CONTROL_TOKENS) -> list[Example]:
    """MMMU rows → examples: question, lettered options and lmms-eval's post-prompt.

    Every "<image k>" reference, in the question or in an option, becomes an image in place, so
    the images follow the order of reference; an image referenced twice is shown twice, because
    the text points at it both times. qtype is the subject, as MMMU reports per subject.
    """
    out = []
    for i, row in enumerate(data.read_parquet_rows(path)):
        where = f"{path}:row {i}"
        _require(row, ("id", "question", "options", "answer", "question_type"), where)
        options = data.read_choices(row["options"], f"{where}: options") or []
        for option in options:
            data.check_text(option, f"{where}: options", control)
        question = _text(row, "question", where, control)
        kind = _MMMU_TYPES.get(str(row["question_type"]).strip().lower())
        if kind is None:
            raise DataError(f"{where}: question_type {row['question_type']!r} is neither multiple-choice nor open")
        answer = data.read_answer(row["answer"], [], f"{where}: answer")
        if kind == "multiple-choice":
            if not isinstance(answer, str) or answer not in LETTERS[:len(options)]:
                raise DataError(f"{where}: answer {answer!r} is not the letter of one of {len(options)} options")
            lettered = "\n".join(f"({LETTERS[k]}) {option}" for k, option in enumerate(options))
            text = f"{question}\n{lettered}\n{MMMU_CHOICE_PROMPT}"
        else:
            text = f"{question}\n{MMMU_OPEN_PROMPT}"
        text, images = _place_mmmu_images(text, row, where)
        subject = _MMMU_SUBJECT.match(str(row["id"]))
        out.append(Example(str(row["id"]), text, images, where, answer=answer, choices=options or None,
                           qtype=subject.group(1) if subject else data.read_type(row.get("subfield"), where)))
    return out


def load_benchmark_file(path: Path, control: frozenset[str] = CONTROL_TOKENS) -> list[Example]:
    """One file's items: JSONL, or a parquet whose columns say which schema it follows.

    control: the tokens no text may spell (data.control_tokens of the checkpoints' tokenizers).
    """
    if path.suffix != ".parquet":
        return data.load_prompts(path, control)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        columns = set(pq.read_schema(path).names)
    except Exception as e:  # pyarrow raises many types for a bad file
        raise DataError(f"{path}: not a readable parquet file: {e}") from None
    if {"pid", "decoded_image", "query"} <= columns:
        return mathvista_examples(path, control)
    if {"image_1", "options"} <= columns:
        return mmmu_examples(path, control)
    if {"prompt", "reward_model"} <= columns:
        return data.load_prompts(path, control)
    raise DataError(f"{path}: unknown benchmark schema with columns {sorted(columns)}; expected MathVista "
                    "(pid, query, decoded_image, …), MMMU (image_1, options, …) "
                    "or the RL parquet (prompt, reward_model, …)")


def expand(entry: str) -> list[Path]:
    """A --data entry: one file, or every file a glob pattern matches, in sorted order."""
    if not any(c in entry for c in "*?["):
        return [Path(entry)]
    files = sorted(Path(f) for f in glob.glob(entry))
    if not files:
        raise DataError(f"{entry}: no file matches")
    return files


def short_names(entries: list[str], flag: str) -> list[str]:
    """The shortest path endings that tell the entries apart: runs/a/sft/model, runs/a/prism/model → sft/model, …"""
    parts = [Path(e).parts for e in entries]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise DataError(f"the same path is given twice; name each one with {flag}")


def load_benchmarks(entries: list[str], names: list[str], limit: int, control: frozenset[str] = CONTROL_TOKENS
                    ) -> dict[str, tuple[list[Path], list[Example]]]:
    """name → (files, examples), every file read and checked before any model is loaded."""
    names = names or short_names(entries, "--data-names")
    if len(names) != len(entries) or len(set(names)) != len(names):
        raise DataError(f"--data-names needs {len(entries)} distinct names, got {names}")
    benchmarks = {}
    for name, entry in zip(names, entries):
        files = expand(entry)
        examples = [e for f in files for e in load_benchmark_file(f, control)][:limit or None]
        if not examples:
            raise DataError(f"{entry}: no items")
        for e in examples:
            if e.answer is None:
                raise DataError(f"{e.where}: no ground-truth answer to grade against")
        benchmarks[name] = (files, examples)
    return benchmarks
