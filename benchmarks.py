"""Benchmark files → examples: the evaluation JSONL, the RL parquet, and local copies of the public
benchmarks in their published Hugging Face schemas, told apart by their columns (spec §8).

Each adapter turns a row into a data.Example holding the prompt the release used, the images in
the order the text refers to them, and everything the grader needs (options, precision). Every
text goes through the same checks as training data (no spelled control tokens, one "<image>" per
image), so a row that cannot be evaluated as intended is a DataError naming it, never an item
silently asked without its picture or graded against an answer nothing can match.

    MathVista       (AI4Math/MathVista, testmini)              pid, query, decoded_image, answer, choices, …
    MathVerse       (CaraJ/MathVerse-lmmseval, testmini)       sample_index, problem_version, query_wo, image, …
    MathVision      (MathLLMs/MathVision, testmini)            id, question, options, decoded_image, answer, …
    WeMath          (We-Math/We-Math, testmini)                ID, key, question, option, image_path, answer, …
    MMMU            (MMMU/MMMU or lmms-lab/MMMU, validation)   id, question, options, answer, image_1…7, …
    MMMU-Pro        (MMMU/MMMU_Pro, "standard (10 options)"    id, question, options, image_1…7, answer, subject
                     and "vision", test)                       id, image, options, answer, subject
    HallusionBench  (lmms-lab/HallusionBench, image)           category, subcategory, set_id, figure_id, …

Each benchmark also keeps the published generation limit (spec §8, MAX_NEW_TOKENS) and its own
metrics beyond accuracy (benchmark_metrics): HallusionBench aAcc / fAcc / qAcc, WeMath strict and
loose scores; per problem version (MathVerse), subject (MathVision, MMMU, MMMU-Pro) and question
type (MathVista) through each item's qtype.
"""

import glob
import re
import string
from collections import defaultdict
from dataclasses import dataclass
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
# MMMU-Pro's post-prompt (lmms-eval mmmu_pro, spec §8); its vision setting shows only this text.
MMMU_PRO_PROMPT = "Answer with the option letter from the given choices directly."
# MathVision: the release's answer-tag instruction, prepended with no separator (spec §8), and the MC prompt.
MATHVISION_PREFIX = "Please solve the problem step by step and put your final answer in <answer></answer> tags."
MATHVISION_CHOICE_PROMPT = "Answer the question with the option's letter from the given choices directly."
# WeMath's own system prompt (lmms-eval wemath_testmini_reasoning, verbatim, its missing space included).
WEMATH_SYSTEM_PROMPT = (
    "You are a helpful assistant. When the user asks a question, your response must include two parts: first, the "
    "reasoning process enclosed in <think>...</think> tags, then the final answer enclosed in <answer>...</answer> "
    "tags.Please provide a clear, concise response within <answer> </answer> tags that directly addresses the "
    "question.")
_WEMATH_OPTION = re.compile(r"\s*([A-H])\s*[.:：]\s*")
_MATHVERSE_CHOICE = re.compile(r"^\s*\(?([A-H])\)?\s*[:.：]\s*(.+?)\s*$", re.M)
_WEMATH_KEY = re.compile(r"([23])steps_(\d+|multi)")

# The release's max_new_tokens per benchmark (spec §8); the JSONL and RL parquet formats get MMMU's.
MAX_NEW_TOKENS = {"mathvista": 16384, "mathverse": 16384, "mathvision": 24576, "wemath": 49152, "mmmu": 8192,
                  "mmmu_pro": 8192, "hallusionbench": 8192, "prompts": 8192}


def _require(row: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if row.get(k) in (None, "")]
    if missing:
        raise DataError(f"{where}: empty or missing {', '.join(missing)}")


def _text(row: dict, key: str, where: str, control: frozenset[str]) -> str:
    if not isinstance(row[key], str):
        raise DataError(f"{where}: {key!r} must be text, got {type(row[key]).__name__}")
    return data.check_text(row[key], f"{where}: {key}", control)


def _image_bytes(value, where: str, base: Path | None = None) -> data.ImageRef:
    """An image column's value: an HF {"bytes", "path"} struct (parquet exports embed the bytes), raw bytes,
    or, given `base` (the parquet's folder), a struct or text naming a file beside the parquet."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, dict) and isinstance(value.get("bytes"), bytes):
        return value["bytes"]
    name = value.get("path") if isinstance(value, dict) else value
    if base is not None and isinstance(name, str) and name.strip():
        if (base / name).is_file():
            return base / name
        raise DataError(f"{where}: image {name!r} is neither embedded nor a file beside the parquet ({base / name})")
    raise DataError(f"{where}: an image must be a {{'bytes', 'path'}} struct with embedded bytes, bytes, or the "
                    "name of a file beside the parquet")


def _optional_image(value, where: str, base: Path, text_only: bool) -> list[data.ImageRef]:
    """The item's image, or none for an item the benchmark marks as text-only (MathVerse's Text Only version,
    HallusionBench's visual_input 0), whose image column is empty. Any other item without its image is an
    error: it would be asked without the picture it is about."""
    empty = value is None or (isinstance(value, str) and not value.strip()) or \
        (isinstance(value, dict) and value.get("bytes") is None and not value.get("path"))
    if empty and not text_only:
        raise DataError(f"{where}: no image, but the row is not marked text-only")
    return [] if empty else [_image_bytes(value, where, base)]


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


def _lettered(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[k]}. {option}" for k, option in enumerate(options))


def _letter_answer(row: dict, n_options: int, where: str) -> str:
    answer = data.read_answer(row["answer"], [], f"{where}: answer")
    if not isinstance(answer, str) or answer.strip().upper() not in LETTERS[:n_options]:
        raise DataError(f"{where}: answer {answer!r} is not the letter of one of {n_options} options")
    return answer.strip().upper()


def mathverse_examples(path: Path, control: frozenset[str] = CONTROL_TOKENS) -> list[Example]:
    """MathVerse rows → examples. The prompt is the dataset's own `query_wo`, verbatim, as lmms-eval's
    mathverse_testmini (format-prompt) sends it: it carries the instruction and, for multi-choice items, the
    options ("A:40°"), which are read back so that an answer stating the option's value is graded too.

    The answer is the option letter (multi-choice) or the value (free-form). qtype is the problem version
    (Text Dominant … Vision Only, Text Only), the paper's per-version view; Text Only rows have no image.
    """
    out = []
    for i, row in enumerate(data.read_parquet_rows(path)):
        where = f"{path}:row {i}"
        _require(row, ("sample_index", "problem_version", "query_wo", "answer", "question_type"), where)
        images = _optional_image(row.get("image"), f"{where}: image", path.parent,
                                 text_only=str(row["problem_version"]).strip() == "Text Only")
        question = data.check_placeholders(_text(row, "query_wo", where, control), len(images), where, control)
        found = _MATHVERSE_CHOICE.findall(str(row.get("question") or "") or question)
        choices = [text for _, text in found] if [k for k, _ in found] == list(LETTERS[:len(found)]) else None
        if str(row["question_type"]).strip().lower() in ("multi-choice", "multiple-choice", "multi_choice"):
            answer = _letter_answer(row, len(choices) if choices else len(LETTERS), where)
        else:
            answer, choices = data.read_answer(row["answer"], [], f"{where}: answer"), None
        version = data.read_type(row["problem_version"], where)
        out.append(Example(str(row["sample_index"]), question, images, where, answer=answer, choices=choices,
                           qtype=version, meta={"problem": str(row.get("problem_index")), "version": version}))
    return out


def mathvision_examples(path: Path, control: frozenset[str] = CONTROL_TOKENS) -> list[Example]:
    """MathVision rows → examples: the release's answer-tag instruction directly followed by the question
    (no separator, as released), then for multi-choice items "Choices: A. …" and the letter prompt.

    `options` is a list (possibly empty: a free-form item) or the text of one; a multi-choice answer is
    the letter, and the grader also accepts the option's text, as lmms-eval does. The question's own
    "<image1>" markers stay in the text (lmms-eval keeps them); the image goes in front. qtype: subject.
    """
    out = []
    for i, row in enumerate(data.read_parquet_rows(path)):
        where = f"{path}:row {i}"
        _require(row, ("id", "question", "answer"), where)
        image = row.get("decoded_image") if row.get("decoded_image") is not None else row.get("image")
        images = [_image_bytes(image, f"{where}: image", path.parent)]
        options = data.read_choices(row.get("options"), f"{where}: options") or []
        for option in options:
            data.check_text(option, f"{where}: options", control)
        question = _text(row, "question", where, control)
        if options:
            answer = _letter_answer(row, len(options), where)
            text = f"{MATHVISION_PREFIX}{question}\nChoices: {_lettered(options)}\n{MATHVISION_CHOICE_PROMPT}"
        else:
            answer, text = data.read_answer(row["answer"], [], f"{where}: answer"), f"{MATHVISION_PREFIX}{question}"
        out.append(Example(str(row["id"]), data.check_placeholders(text, 1, where, control), images, where,
                           answer=answer, choices=options or None, qtype=data.read_type(row.get("subject"), where),
                           meta={"level": row.get("level")}))
    return out


def _wemath_options(text: str, where: str) -> list[str]:
    """"A. 300, 400;B. 400, 300; E. No correct answer" → the option texts in letter order."""
    parts = re.split(r";\s*(?=[A-H]\s*[.:：])", text.strip())
    options = []
    for k, part in enumerate(parts):
        m = _WEMATH_OPTION.match(part)
        if not m or m.group(1) != LETTERS[k]:
            raise DataError(f"{where}: option {part!r} is not lettered {LETTERS[k]} (options must read "
                            "'A. …;B. …')")
        options.append(part[m.end():].strip())
    return options


def wemath_examples(path: Path, control: frozenset[str] = CONTROL_TOKENS) -> list[Example]:
    """We-Math rows → examples: `question` + newline + `option` (verbatim, as lmms-eval's
    wemath_testmini_reasoning), under WeMath's own system prompt, which asks for <think>/<answer> and no
    caption (response_format "think"). The answer is an option letter.

    `ID` names a problem and `key` each row's role in it ("2steps_1", "2steps_2", "2steps_multi",
    "3steps_1" … "3steps_multi"): the strict and loose scores compare a problem's one-step parts with
    its multi-step question (wemath_scores). qtype: "one-step" or "multi-step".
    """
    out = []
    for i, row in enumerate(data.read_parquet_rows(path)):
        where = f"{path}:row {i}"
        _require(row, ("ID", "key", "question", "option", "answer", "image_path"), where)
        if not (key := _WEMATH_KEY.fullmatch(str(row["key"]).strip())):
            raise DataError(f"{where}: key {row['key']!r} is not '<2|3>steps_<n|multi>'")
        options = _wemath_options(_text(row, "option", where, control), f"{where}: option")
        text = f"{_text(row, 'question', where, control)}\n{row['option']}".strip()
        out.append(Example(str(row.get("question number", i)), data.check_placeholders(text, 1, where, control),
                           [_image_bytes(row["image_path"], f"{where}: image_path", path.parent)], where,
                           answer=_letter_answer(row, len(options), where), choices=options,
                           qtype="multi-step" if key.group(2) == "multi" else "one-step",
                           system=WEMATH_SYSTEM_PROMPT, response_format="think",
                           meta={"problem": str(row["ID"]), "steps": int(key.group(1)), "part": key.group(2)}))
    return out


def mmmu_pro_examples(path: Path, control: frozenset[str] = CONTROL_TOKENS) -> list[Example]:
    """MMMU-Pro rows → examples, either setting by its columns (lmms-eval mmmu_pro_standard / _vision):

    standard (10 options): question, options lettered "A. …", then the post-prompt, "<image k>" placed
    as in MMMU; vision: the screenshot alone with the post-prompt, the question and options being in the
    image (the text lmms-eval sends since its PR #1336). qtype: the subject.
    """
    out = []
    rows = data.read_parquet_rows(path)
    vision = bool(rows) and "question" not in rows[0]
    for i, row in enumerate(rows):
        where = f"{path}:row {i}"
        _require(row, ("id", "options", "answer", "subject") + (("image",) if vision else ("question",)), where)
        options = data.read_choices(row["options"], f"{where}: options") or []
        for option in options:
            data.check_text(option, f"{where}: options", control)
        answer = _letter_answer(row, len(options), where)
        if vision:
            text, images = f"<image>\n{MMMU_PRO_PROMPT}", [_image_bytes(row["image"], f"{where}: image", path.parent)]
        else:
            text = f"{_text(row, 'question', where, control)}\n{_lettered(options)}\n\n{MMMU_PRO_PROMPT}"
            text, images = _place_mmmu_images(text, row, where)
        out.append(Example(str(row["id"]), data.check_placeholders(text, len(images), where, control), images, where,
                           answer=answer, choices=options, qtype=data.read_type(row["subject"], where),
                           meta={"setting": "vision" if vision else "standard"}))
    return out


def hallusionbench_examples(path: Path, control: frozenset[str] = CONTROL_TOKENS) -> list[Example]:
    """HallusionBench rows → examples: the raw yes/no question (lmms-eval hallusion_bench_image), the truth
    "yes" for gt_answer "1" and "no" for "0"; rows of the non-image split have no image.

    meta keeps the groups of the benchmark's own metrics: a figure is (category, subcategory, set_id,
    figure_id), a question (category, subcategory, set_id, question_id) (hallusionbench_scores).
    qtype: "category/subcategory".
    """
    out = []
    for i, row in enumerate(data.read_parquet_rows(path)):
        where = f"{path}:row {i}"
        keys = ("category", "subcategory", "set_id", "figure_id", "question_id", "question", "gt_answer")
        _require(row, keys, where)
        truth = {"1": "yes", "0": "no"}.get(str(row["gt_answer"]).strip())
        if truth is None:
            raise DataError(f"{where}: gt_answer {row['gt_answer']!r} is neither '1' (yes) nor '0' (no)")
        images = _optional_image(row.get("image"), f"{where}: image", path.parent,
                                 text_only=str(row.get("visual_input", "")).strip() == "0")
        question = data.check_placeholders(_text(row, "question", where, control), len(images), where, control)
        ids = {k: str(row[k]).strip() for k in keys[:5]}
        group = f"{ids['category']}/{ids['subcategory']}/{ids['set_id']}"
        out.append(Example(f"{group}/{ids['figure_id']}/{ids['question_id']}", question, images, where, answer=truth,
                           qtype=f"{ids['category']}/{ids['subcategory']}",
                           meta={"figure": f"{group}/{ids['figure_id']}", "question": f"{group}/{ids['question_id']}",
                                 "no_visual": ids["category"] == "VS" and ids["figure_id"] == "0"}))
    return out


# ----------------------------------------------------------------------------------------------
# The benchmarks' own metrics
# ----------------------------------------------------------------------------------------------


def hallusionbench_scores(records: list[dict]) -> dict:
    """HallusionBench's three accuracies (lmms-eval hallusion_bench, fractions in [0, 1]):

        aAcc = mean over all questions
        fAcc = share of figures whose every question is right (a visual-supplement question without
               its figure, figure_id 0, belongs to no figure)
        qAcc = share of questions right on every figure of their set (the original and the edited ones)
    """
    figures, questions = defaultdict(list), defaultdict(list)
    for r in records:
        if not r["meta"]["no_visual"]:
            figures[r["meta"]["figure"]].append(r["accuracy"])
        questions[r["meta"]["question"]].append(r["accuracy"])
    return {"aAcc": sum(r["accuracy"] for r in records) / len(records),
            "fAcc": sum(all(v) for v in figures.values()) / max(len(figures), 1),
            "qAcc": sum(all(v) for v in questions.values()) / max(len(questions), 1)}


def wemath_scores(records: list[dict]) -> dict:
    """We-Math's four-dimensional metrics (its evaluation/four_dimensional_metrics.py), over the problems
    whose multi-step question and every one-step part were evaluated. With P such problems:

        IK  insufficient knowledge: some part wrong and the multi-step question wrong
        IG  inadequate generalisation: every part right, the multi-step question wrong
        CM  complete mastery: multi-step right and every part right (strict) / some part right (loose)
        RM  rote memorisation: multi-step right and some part wrong (strict) / every part wrong (loose)
        score = (P − 0.5·IG − RM − IK) / P,  strict and loose

    plus one-step accuracy over the parts (S1) and multi-step accuracy for 2- and 3-step problems.
    Returns fractions in [0, 1] and the counts; {} when no problem is complete.
    """
    problems = defaultdict(dict)
    for r in records:
        problems[r["meta"]["problem"]][r["meta"]["part"]] = (r["meta"]["steps"], r["accuracy"] == 1.0)
    counts = {"IK": 0, "IG": 0, "CM_strict": 0, "RM_strict": 0, "CM_loose": 0, "RM_loose": 0}
    multi = {2: [], 3: []}
    complete = 0
    for parts in problems.values():
        steps = next(iter(parts.values()))[0]
        if set(parts) != {"multi", *map(str, range(1, steps + 1))}:
            continue
        complete += 1
        subs = [right for part, (_, right) in parts.items() if part != "multi"]
        whole = parts["multi"][1]
        multi[steps].append(whole)
        if not whole:
            counts["IK" if not all(subs) else "IG"] += 1
            continue
        counts["CM_strict" if all(subs) else "RM_strict"] += 1
        counts["CM_loose" if any(subs) else "RM_loose"] += 1
    if not complete:
        return {}
    one_step = [r["accuracy"] for r in records if r["meta"]["part"] != "multi"]

    def score(kind: str) -> float:
        return (complete - 0.5 * counts["IG"] - counts[f"RM_{kind}"] - counts["IK"]) / complete

    return {"strict": score("strict"), "loose": score("loose"), "problems": complete, **counts,
            "one_step_accuracy": sum(one_step) / len(one_step),
            **{f"{n}_step_accuracy": sum(v) / len(v) for n, v in multi.items() if v}}


def benchmark_metrics(kind: str, records: list[dict]) -> dict:
    """The benchmark's own metrics beyond accuracy (per type / version / subject is eval's accuracy_by_type)."""
    return {"hallusionbench": hallusionbench_scores, "wemath": wemath_scores}.get(kind, lambda _: {})(records)


# ----------------------------------------------------------------------------------------------
# Files → benchmarks
# ----------------------------------------------------------------------------------------------

# Each schema by the columns its file must have; the first match wins (MMMU has question_type, MMMU-Pro does
# not; MathVision has question and level, MMMU-Pro's vision setting neither).
SCHEMAS = [("mathvista", {"pid", "decoded_image", "query"}, mathvista_examples),
           ("mathverse", {"problem_version", "query_wo"}, mathverse_examples),
           ("wemath", {"ID", "key", "option", "image_path"}, wemath_examples),
           ("hallusionbench", {"gt_answer", "figure_id", "question_id", "set_id"}, hallusionbench_examples),
           ("mmmu", {"image_1", "options", "question_type"}, mmmu_examples),
           ("mmmu_pro", {"image_1", "options", "subject"}, mmmu_pro_examples),
           ("mathvision", {"question", "options", "level", "subject"}, mathvision_examples),
           ("mmmu_pro", {"image", "options", "subject", "answer"}, mmmu_pro_examples),
           ("prompts", {"prompt", "reward_model"}, lambda path, control: data.load_prompts(path, control))]


def load_benchmark_file(path: Path, control: frozenset[str] = CONTROL_TOKENS) -> tuple[str, list[Example]]:
    """One file's (schema, items): JSONL ("prompts"), or a parquet whose columns say which schema it follows.

    control: the tokens no text may spell (data.control_tokens of the checkpoints' tokenizers).
    """
    if path.suffix != ".parquet":
        return "prompts", data.load_prompts(path, control)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        columns = set(pq.read_schema(path).names)
    except Exception as e:  # pyarrow raises many types for a bad file
        raise DataError(f"{path}: not a readable parquet file: {e}") from None
    for kind, needed, read in SCHEMAS:
        if needed <= columns:
            return kind, read(path, control)
    expected = "; ".join(f"{kind} ({', '.join(sorted(needed))})" for kind, needed, _ in SCHEMAS)
    raise DataError(f"{path}: unknown benchmark schema with columns {sorted(columns)}; expected one of: {expected}")


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


@dataclass
class Benchmark:
    """One --data entry: its files, their schema and items, and the published generation limit."""

    files: list[Path]
    kind: str  # a SCHEMAS name
    examples: list[Example]

    @property
    def max_new_tokens(self) -> int:
        return MAX_NEW_TOKENS[self.kind]


def load_benchmarks(entries: list[str], names: list[str], limit: int, control: frozenset[str] = CONTROL_TOKENS
                    ) -> dict[str, Benchmark]:
    """name → Benchmark, every file read and checked before any model is loaded; the files of one entry
    must share a schema."""
    names = names or short_names(entries, "--data-names")
    if len(names) != len(entries) or len(set(names)) != len(names):
        raise DataError(f"--data-names needs {len(entries)} distinct names, got {names}")
    benchmarks = {}
    for name, entry in zip(names, entries):
        files = expand(entry)
        loaded = [load_benchmark_file(f, control) for f in files]
        if len(kinds := {kind for kind, _ in loaded}) > 1:
            raise DataError(f"{entry}: its files follow different schemas ({', '.join(sorted(kinds))}); give each "
                            "benchmark its own --data entry")
        examples = [e for _, items in loaded for e in items][:limit or None]
        if not examples:
            raise DataError(f"{entry}: no items")
        for e in examples:
            if e.answer is None:
                raise DataError(f"{e.where}: no ground-truth answer to grade against")
        benchmarks[name] = Benchmark(files, loaded[0][0], examples)
    return benchmarks
