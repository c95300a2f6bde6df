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
from toy.world import caption_answer, synthesize, synthetic_corpus

VALID = re.compile(r"^\s*(<caption>.*?</caption>)\s*(<think>.*?</think>\s*<answer>.*?</answer>)\s*$", re.DOTALL)
CELLS = ("top-left", "top-right", "bottom-left", "bottom-right")
COLORS = ("red", "green", "blue", "yellow")
TYPES = {"count_color", "color", "exists"}
SMALL = {"n_sft_teacher": 10, "n_sft_public": 20, "n_align": 5, "n_rl": 5, "n_pairs": 10, "n_pairs_test": 5,
         "n_val": 5, "n_test": 10}
CONFUSED = {("yellow", "green")}  # what the public source may report instead


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


_layout_cache: dict = {}


def read_layout(png_path):
    """Per quadrant: None or the circle's colour, from the image alone (a path, or PNG bytes in a BytesIO)."""
    # A BytesIO is keyed by its bytes: its str() is its address, which a later BytesIO can reuse.
    key = png_path.getvalue() if isinstance(png_path, io.BytesIO) else str(png_path)
    if key not in _layout_cache:
        a = np.asarray(Image.open(png_path).convert("RGB")).astype(int)
        assert a.shape == (64, 64, 3)
        background = a[0, 0]
        cells = []
        for r in (0, 1):
            for c in (0, 1):
                cell = a[32 * r:32 * r + 32, 32 * c:32 * c + 32]
                mask = np.abs(cell - background).sum(-1) > 60
                cells.append(_pixel_color(cell[mask].mean(0)) if mask.sum() >= 50 else None)
        _layout_cache[key] = tuple(cells)
    return _layout_cache[key]


def solve(layout, question):
    """The correct answer to `question` about `layout`, from the question text alone."""
    if m := re.match(r"How many (\w+) circles", question):
        return str(layout.count(m.group(1)))
    if m := re.match(r"What color is the circle at the ([a-z-]+)\?", question):
        return layout[CELLS.index(m.group(1))] or "none"
    m = re.match(r"Is there a (\w+) circle in the image\?", question)
    assert m, question
    return "yes" if m.group(1) in layout else "no"


def caption_layout(caption):
    """Per quadrant: None or a colour, as the caption states it; "?" for a quadrant it leaves out."""
    cells = ["?"] * 4
    for cell, what in re.findall(r"^- ([a-z-]+): (empty|\w+ circle)$", caption, re.MULTILINE):
        cells[CELLS.index(cell)] = None if what == "empty" else what.split()[0]
    return tuple(cells)


def answer_of(response):
    return re.search(r"<answer>(.*?)</answer>", response, re.DOTALL).group(1).strip()


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
        items.append((png, row["prompt"][1]["content"][len("<image>\n"):], row))
    return items


# ---------------------------------------------------------------- tests


def test_determinism_per_seed(tmp_path):
    def files(out):
        return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    a = files(synthesize(tmp_path / "a", seed=0, **SMALL)["test"].parent)
    b = files(synthesize(tmp_path / "b", seed=0, **SMALL)["test"].parent)
    c = files(synthesize(tmp_path / "c", seed=1, **SMALL)["test"].parent)
    assert len(a) == sum(SMALL.values()) + 8
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.suffix != ".png")
    assert sum(a[k] != c[k] for k in a if k.suffix == ".png") > 0.9 * (len(a) - 8)


def test_files_and_image_paths(paths):
    assert set(paths) == {"images", "sft_teacher", "sft_public", "align", "rl", "pairs", "pairs_test", "val", "test"}
    sizes = {"sft_teacher": 1000, "sft_public": 3000, "pairs": 1000, "pairs_test": 200, "val": 200, "test": 200}
    for name, n in sizes.items():
        records = _jsonl(paths[name])
        assert len(records) == n
        for r in records:
            images = r["images"] if "images" in r else [r["image"]]
            assert all((paths[name].parent / p).is_file() for p in images)
    assert pq.read_table(paths["align"]).num_rows == 256 and pq.read_table(paths["rl"]).num_rows == 512
    assert len(list(paths["images"].glob("*.png"))) == sum(sizes.values()) + 256 + 512


def question_type(question):
    for prefix, kind in (("How many", "count_color"), ("What color", "color"), ("Is there", "exists")):
        if question.startswith(prefix):
            return kind
    raise AssertionError(question)


def test_teacher_answers_match_pixels(paths):
    root = paths["test"].parent
    items = [(image, q, resp) for image, q, resp in sft_items(paths, "sft_teacher")[:300]]
    items += [(root / r["image"], r["prompt"], r["teacher_caption"] + "\n" + r["teacher_cot"])
              for r in _jsonl(paths["pairs"])[:200]]
    for name in ("align", "rl"):
        for png, question, row in verl_items(paths, name)[:100]:
            assert row["extra_info"]["type"] == question_type(question)
            assert row["extra_info"]["answer"] == row["reward_model"]["ground_truth"] == answer_of(row["teacher_cot"])
            items.append((png, question, row["teacher_caption"] + "\n" + row["teacher_cot"]))
    assert {question_type(q) for _, q, _ in items} == TYPES
    for image, question, response in items:
        layout = read_layout(image)
        assert caption_layout(response) == layout, response  # every quadrant, empty ones included
        assert answer_of(response) == solve(layout, question), (question, response)
    for name in ("val", "test"):
        for r in _jsonl(paths[name]):
            layout = read_layout(root / r["images"][0])
            assert r["type"] == question_type(r["question"]) and caption_layout(r["teacher_caption"]) == layout
            assert r["answer"] == solve(layout, r["question"])


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
        think = response.split("<think>\n")[1].split("\n</think>")[0]
        assert response.count("\n- ") == 4 and len(think.splitlines()) == 2, response


def test_public_source_captions_tersely_and_misperceives_only_through_its_confusions(paths):
    records = _jsonl(paths["sft_public"])
    assert {"messages" in r for r in records} == {True, False}
    yellow = yellow_as_green = 0
    for image, question, response in sft_items(paths, "sft_public"):
        assert VALID.match(response), response
        layout, said = read_layout(image), caption_layout(response)
        think = response.split("<think>\n")[1].split("\n</think>")[0]
        # Terse captions (circles only), and the teacher's two-step derivation from what it saw: the
        # quadrants its caption gives for the question, then the answer.
        assert "empty" not in response and len(think.splitlines()) == 2
        seen = tuple(None if c == "?" else c for c in said)
        if m := re.match(r"What color is the circle at the ([a-z-]+)\?", question):
            color = seen[CELLS.index(m.group(1))]
            first = f"At {m.group(1)}: " + (f"a {color} circle." if color else "empty.")
        else:
            color = re.search(r"(\w+) circle", question).group(1)
            first = f"{color.capitalize()} circles at: " + (
                ", ".join(c for c, s in zip(CELLS, seen) if s == color) or "none") + "."
        assert think.splitlines()[0] == first, response
        for s, t in zip(said, layout):
            assert (s == "?") == (t is None) and (s == t or (t, s) in CONFUSED or t is None), (said, layout)
            yellow += t == "yellow"
            yellow_as_green += t == "yellow" and s == "green"
        # It reasons correctly from what it saw.
        assert solve(tuple(None if s == "?" else s for s in said), question) == answer_of(response)
    assert 0.75 <= yellow_as_green / yellow <= 0.85  # PUBLIC_CONFUSIONS: yellow seen as green 80 % of the time


def test_caption_answer_is_what_a_caption_implies():
    caption = "<caption>\n- top-left: yellow circle\n- top-right: empty\n- bottom-right: yellow circle\n</caption>"
    assert caption_answer(caption, "How many yellow circles are in the image?") == "2"
    assert caption_answer(caption, "How many red circles are in the image?") == "0"
    assert caption_answer(caption, "What color is the circle at the bottom-right?") == "yellow"
    assert caption_answer(caption, "What color is the circle at the bottom-left?") == "none"  # left out: empty
    assert caption_answer(caption, "Is there a yellow circle in the image?") == "yes"
    assert caption_answer(caption, "Is there a blue circle in the image?") == "no"
    assert caption_answer(caption, "Which circle is largest?") is None
    # Read as eval reads caption items: case and spacing do not matter.
    odd_spacing = "<caption>\n-  Top-Left:   RED circle \n</caption>"
    assert caption_answer(odd_spacing, "How many red circles are in the image?") == "1"
    # Nothing to derive from: no item, an item of another form, a quadrant or colour the world has not.
    assert caption_answer("<caption>\n</caption>", "Is there a blue circle in the image?") is None
    square = "<caption>\n- top-left: red square\n</caption>"
    assert caption_answer(square, "Is there a red circle in the image?") is None
    assert caption_answer(caption, "What color is the circle at the middle?") is None
    assert caption_answer(caption, "How many purple circles are in the image?") is None


def test_every_demonstration_answers_from_its_own_caption(paths):
    """Teacher and public source alike derive the answer from the caption they wrote (the public one
    from its misperception), so caption_answer recovers every demonstration's answer."""
    for name in ("sft_teacher", "sft_public"):
        for _, question, response in sft_items(paths, name):
            caption = response.split("</caption>")[0] + "</caption>"
            assert caption_answer(caption, question) == answer_of(response) == \
                solve(tuple(None if c == "?" else c for c in caption_layout(caption)), question), response


def test_students_write_as_the_teacher_and_differ_in_content(paths):
    for name in ("pairs", "pairs_test"):
        records = _jsonl(paths[name])
        answer_wrong = 0
        for r in records:
            layout = read_layout(paths[name].parent / r["image"])
            student = r["student_caption"] + "\n" + r["student_cot"]
            think = r["student_cot"].split("<think>\n")[1].split("\n</think>")[0]
            assert VALID.match(student) and student.count("\n- ") == 4 and len(think.splitlines()) == 2
            assert caption_layout(r["student_caption"]) != layout and r["student_cot"] != r["teacher_cot"], r
            answer_wrong += answer_of(r["student_cot"]) != solve(layout, r["prompt"])
        assert answer_wrong / len(records) >= 0.8


def test_heldout_disjoint_from_training(paths):
    root = paths["test"].parent
    train = set()
    for name in ("sft_teacher", "sft_public"):
        train |= {(read_layout(image), q) for image, q, _ in sft_items(paths, name)}
    train |= {(read_layout(root / r["image"]), r["prompt"]) for r in _jsonl(paths["pairs"])}
    for name in ("align", "rl"):
        train |= {(read_layout(png), q) for png, q, _ in verl_items(paths, name)}
    heldout = [(read_layout(root / r["images"][0]), r["question"]) for name in ("val", "test")
               for r in _jsonl(paths[name])]
    heldout += [(read_layout(root / r["image"]), r["prompt"]) for r in _jsonl(paths["pairs_test"])]
    assert len(train) > 2000
    assert not set(heldout) & train


def test_test_split_schema(paths):
    records = _jsonl(paths["test"])
    assert {r["type"] for r in records} == TYPES
    for r in records:
        assert set(r) == {"id", "question", "images", "answer", "type", "teacher_caption"}
        assert r["images"] == [f"images/{r['id']}.png"]
        assert re.fullmatch(r"[0-4]", r["answer"]) if r["type"] == "count_color" else \
            r["answer"] in ({"yes", "no"} if r["type"] == "exists" else COLORS)


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
            assert row["prompt"][1]["content"] == f"<image>\n{row['extra_info']['question']}"
            (image,) = row["images"]
            assert image["path"] is None
            assert Image.open(io.BytesIO(image["bytes"])).format == "PNG"


def test_corpus():
    texts = synthetic_corpus(n=50, seed=3)
    assert texts == synthetic_corpus(n=50, seed=3) != synthetic_corpus(n=50, seed=4)
    assert texts[0] == SYSTEM_PROMPT and len(texts) == 1 + 50 * 4
    responses = [t for t in texts if t.startswith("<caption>")]
    assert len(responses) == 150 and all(VALID.match(t) for t in responses)
    assert {t.split()[0] for t in texts if not t.startswith(("<caption>", "You"))} == {"How", "What", "Is"}
