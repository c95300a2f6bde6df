"""Tests of the synthetic shapes task. Answers are re-derived from the PNG pixels, not from synth's internals."""

import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data import SYSTEM_PROMPT
from toy.world import synthesize, synthetic_corpus

VALID = re.compile(r"^\s*(<caption>.*?</caption>)\s*(<think>.*?</think>\s*<answer>.*?</answer>)\s*$", re.DOTALL)
CELLS = ("top-left", "top-right", "bottom-left", "bottom-right")
SIDES = {"circle": 0, "square": 4, "triangle": 3}
TYPES = {"count", "color", "where", "sides", "compare"}
SMALL = {"n_sft_teacher": 10, "n_sft_public": 20, "n_align": 5, "n_rl": 5, "n_pairs": 10, "n_pairs_test": 5,
         "n_test": 10}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), seed=0)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- reading the picture back


def _pixel_color(rgb):
    r, g, b = rgb
    if r > 150 and g > 150 and b < 120:
        return "yellow"
    for name, channel in (("red", 0), ("green", 1), ("blue", 2)):
        if rgb[channel] > max(rgb[c] for c in range(3) if c != channel) + 50:
            return name
    raise AssertionError(f"unclassifiable colour {rgb}")


def _pixel_shape(mask):
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    # Filled fraction of the bounding box: square 1, circle pi/4, triangle 1/2.
    if fill > 0.93:
        return "square"
    return "circle" if fill > 0.68 else "triangle"


_layout_cache: dict = {}


def read_layout(png_path):
    """Per cell: None or (shape, color), from the image alone."""
    key = str(png_path)
    if key not in _layout_cache:
        a = np.asarray(Image.open(png_path).convert("RGB")).astype(int)
        assert a.shape == (64, 64, 3)
        background = a[0, 0]
        cells = []
        for r in (0, 1):
            for c in (0, 1):
                cell = a[32 * r:32 * r + 32, 32 * c:32 * c + 32]
                mask = np.abs(cell - background).sum(-1) > 60
                if mask.sum() < 50:
                    cells.append(None)
                    continue
                cells.append((_pixel_shape(mask), _pixel_color(cell[mask].mean(0))))
        _layout_cache[key] = tuple(cells)
    return _layout_cache[key]


def parse_choices(question):
    return dict(re.findall(r"\(([A-D])\) ([a-z-]+)", question))


def solve(layout, question):
    """The correct answer to `question` about `layout`, from the question text alone."""
    shapes = [s for s in layout if s]
    choices = parse_choices(question)
    letter = {v: k for k, v in choices.items()}
    if question.startswith("How many shapes"):
        return str(len(shapes))
    if "total number of sides" in question:
        return str(sum(SIDES[s] for s, _ in shapes))
    m = re.match(r"How many more (\w+) shapes than (\w+) shapes", question)
    if m:
        a, b = m.groups()
        return str(sum(c == a for _, c in shapes) - sum(c == b for _, c in shapes))
    m = re.match(r"What color is the (\w+)\?", question)
    if m:
        (color,) = [c for s, c in shapes if s == m.group(1)]
        return letter[color]
    m = re.match(r"Where is the (\w+) (\w+)\?", question)
    assert m, question
    (cell,) = [CELLS[i] for i, s in enumerate(layout) if s == (m.group(2), m.group(1))]
    return letter[cell]


def caption_layout(caption):
    cells = [None] * 4
    for color, shape, cell in re.findall(r"^- (\w+) (\w+) at ([a-z-]+)$", caption, re.MULTILINE):
        cells[CELLS.index(cell)] = (shape, color)
    return tuple(cells)


def answer_of(response):
    return re.search(r"<answer>(.*?)</answer>", response, re.DOTALL).group(1).strip()


def stem(question):
    return question.split("\nChoices:")[0]


def sft_turns(record):
    """(system, user, assistant) from either ShareGPT spelling."""
    if "messages" in record:
        assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
        return tuple(m["content"] for m in record["messages"])
    assert [m["from"] for m in record["conversations"]] == ["system", "human", "gpt"]
    return tuple(m["value"] for m in record["conversations"])


def sft_items(paths, name):
    """(image path, question, response) for each record of an SFT file."""
    items = []
    for record in _jsonl(paths[name]):
        system, user, response = sft_turns(record)
        assert system == SYSTEM_PROMPT and user.startswith("<image>\n")
        items.append((paths[name].parent / record["images"][0], user[len("<image>\n"):], response))
    return items


def verl_items(paths, name):
    rows = pq.read_table(paths[name]).to_pylist()
    items = []
    for row in rows:
        png = io.BytesIO(row["images"][0]["bytes"])
        items.append((png, row["prompt"][1]["content"][len("<image>\n"):-1], row))
    return items


# ---------------------------------------------------------------- tests


def test_determinism_per_seed(tmp_path):
    def files(out):
        return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    a = files(synthesize(tmp_path / "a", seed=0, **SMALL)["test"].parent)
    b = files(synthesize(tmp_path / "b", seed=0, **SMALL)["test"].parent)
    c = files(synthesize(tmp_path / "c", seed=1, **SMALL)["test"].parent)
    assert len(a) == 10 + 20 + 5 + 5 + 10 + 5 + 10 + 7
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.suffix != ".png")
    assert sum(a[k] != c[k] for k in a if k.suffix == ".png") > 0.9 * (len(a) - 7)


def test_files_and_image_paths(paths):
    assert set(paths) == {"images", "sft_teacher", "sft_public", "align", "rl", "pairs", "pairs_test", "test"}
    sizes = {"sft_teacher": 200, "sft_public": 600, "pairs": 400, "pairs_test": 100, "test": 100}
    for name, n in sizes.items():
        records = _jsonl(paths[name])
        assert len(records) == n
        for r in records:
            images = r["images"] if "images" in r else [r["image"]]
            assert all((paths[name].parent / p).is_file() for p in images)
    assert pq.read_table(paths["align"]).num_rows == 64 and pq.read_table(paths["rl"]).num_rows == 128
    assert len(list(paths["images"].glob("*.png"))) == 200 + 600 + 64 + 128 + 400 + 100 + 100


def question_type(question):
    for prefix, kind in (("How many shapes", "count"), ("What color", "color"), ("Where", "where"),
                         ("What is the total number of sides", "sides"), ("How many more", "compare")):
        if question.startswith(prefix):
            return kind
    raise AssertionError(question)


def test_teacher_answers_match_pixels(paths):
    root = paths["test"].parent
    items = [(image, q, resp) for image, q, resp in sft_items(paths, "sft_teacher")]
    items += [(root / r["image"], r["prompt"], r["teacher_caption"] + "\n" + r["teacher_cot"])
              for r in _jsonl(paths["pairs"])]
    for name in ("align", "rl"):
        for png, question, row in verl_items(paths, name):
            assert row["extra_info"]["type"] == question_type(question)
            assert row["extra_info"]["answer"] == row["reward_model"]["ground_truth"] == answer_of(row["teacher_cot"])
            items.append((png, question, row["teacher_caption"] + "\n" + row["teacher_cot"]))
    assert {question_type(q) for _, q, _ in items} == TYPES and len(items) >= 30
    for image, question, response in items:
        layout = read_layout(image)
        assert caption_layout(response) == layout, response
        assert answer_of(response) == solve(layout, question), (question, response)
    for r in _jsonl(paths["test"]):
        assert r["type"] == question_type(r["question"])
        assert r["answer"] == solve(read_layout(root / r["images"][0]), r["question"])


def test_teacher_format(paths):
    responses = [resp for _, _, resp in sft_items(paths, "sft_teacher")]
    for _, _, row in verl_items(paths, "align") + verl_items(paths, "rl"):
        responses.append(row["teacher_caption"] + "\n" + row["teacher_cot"])
        m = VALID.match(responses[-1])
        assert m.groups() == (row["teacher_caption"], row["teacher_cot"])
    for r in _jsonl(paths["pairs"]):
        m = VALID.match(r["teacher_caption"] + "\n" + r["teacher_cot"])
        assert m.groups() == (r["teacher_caption"], r["teacher_cot"])
    for response in responses:
        assert VALID.match(response), response
        assert "<think>\n" in response and "\n</think>\n<answer>" in response
        assert len(response.split()) < 100


def test_public_source_is_noisy_and_terse(paths):
    records = _jsonl(paths["sft_public"])
    spellings = {"messages" in r for r in records}
    assert spellings == {True, False}
    wrong = 0
    items = sft_items(paths, "sft_public")
    for image, question, response in items:
        assert VALID.match(response), response
        assert " at " not in response.split("</caption>")[0]
        wrong += answer_of(response) != solve(read_layout(image), question)
    assert 0.15 <= wrong / len(items) <= 0.35


def test_student_differs_from_teacher(paths):
    for name in ("pairs", "pairs_test"):
        records = _jsonl(paths[name])
        wrong = 0
        for r in records:
            layout = read_layout(paths[name].parent / r["image"])
            assert r["student_caption"] != r["teacher_caption"]
            assert caption_layout(r["student_caption"]) != layout == caption_layout(r["teacher_caption"])
            assert VALID.match(r["student_caption"] + "\n" + r["student_cot"])
            wrong += answer_of(r["student_cot"]) != solve(layout, r["prompt"])
        assert 0.3 <= wrong / len(records) <= 0.7


def test_heldout_disjoint_from_training(paths):
    root = paths["test"].parent
    train = set()
    for name in ("sft_teacher", "sft_public"):
        train |= {(read_layout(image), stem(q)) for image, q, _ in sft_items(paths, name)}
    train |= {(read_layout(root / r["image"]), stem(r["prompt"])) for r in _jsonl(paths["pairs"])}
    for name in ("align", "rl"):
        train |= {(read_layout(png), stem(q)) for png, q, _ in verl_items(paths, name)}
    test = [(read_layout(root / r["images"][0]), stem(r["question"])) for r in _jsonl(paths["test"])]
    test += [(read_layout(root / r["image"]), stem(r["prompt"])) for r in _jsonl(paths["pairs_test"])]
    assert len(train) > 500
    assert not set(test) & train


def test_test_split_schema(paths):
    records = _jsonl(paths["test"])
    assert {r["type"] for r in records} == TYPES
    for r in records:
        assert set(r) == {"id", "question", "images", "answer", "type", "choices"}
        assert r["images"] == [f"images/{r['id']}.png"]
        if r["type"] in ("color", "where"):
            assert len(r["choices"]) == 4 and r["answer"] in "ABCD"
            assert parse_choices(r["question"]) == dict(zip("ABCD", r["choices"]))
            assert r["question"].endswith("Choices: " + " ".join(f"({k}) {v}" for k, v in zip("ABCD", r["choices"])))
        else:
            assert r["choices"] is None and re.fullmatch(r"-?\d+", r["answer"])


def test_parquet_schema(paths):
    expected = pa.schema([
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("data_source", pa.string()),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64()), ("answer", pa.string()),
                                  ("question", pa.string()), ("type", pa.string())])),
        ("teacher_caption", pa.string()),
        ("teacher_cot", pa.string()),
    ])
    for name in ("align", "rl"):
        table = pq.read_table(paths[name])
        assert table.schema.remove_metadata().equals(expected), table.schema
        for index, row in enumerate(table.to_pylist()):
            assert row["data_source"] == "prism_synth" and row["ability"] == "visual_reasoning"
            assert row["reward_model"]["style"] == "rule"
            assert row["extra_info"]["index"] == index and row["extra_info"]["split"] == name
            assert [m["role"] for m in row["prompt"]] == ["system", "user"]
            assert row["prompt"][0]["content"] == SYSTEM_PROMPT
            assert row["prompt"][1]["content"] == f"<image>\n{row['extra_info']['question']}\n"
            (image,) = row["images"]
            assert image["path"] is None
            assert Image.open(io.BytesIO(image["bytes"])).format == "PNG"


def test_corpus():
    texts = synthetic_corpus(n=50, seed=3)
    assert texts == synthetic_corpus(n=50, seed=3) != synthetic_corpus(n=50, seed=4)
    assert texts[0] == SYSTEM_PROMPT and len(texts) == 1 + 50 * 4
    responses = [t for t in texts if t.startswith("<caption>")]
    assert len(responses) == 150 and all(VALID.match(t) for t in responses)
    assert any("Choices: (A)" in t for t in texts)
