"""The synthetic shapes task: a tiny world in which the whole pipeline runs without downloads.

It mirrors the paper's data story at toy scale: a perfect programmatic teacher (the high-fidelity
Gemini distill), a terser and ~25%-wrong public source (the 1.26M public demonstrations), a weaker
student for discriminator warm-up pairs, verl-style alignment/RL parquets and a held-out test
split, each in the published on-disk format. Images are 64×64 with one 32×32 cell per vision
token, so every cell is one token.

    python -m toy.world --out DIR [--seed N] [--n-test 100 ...]

It serves the demo, the tests and the benchmark; no pipeline module imports it.
"""

import argparse
import dataclasses
import inspect
import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from data import SYSTEM_PROMPT

SYNTH_IMAGE_SIZE = 64
SYNTH_CELL_SIZE = 32
SYNTH_BACKGROUND = (245, 245, 240)
SYNTH_CELLS = ("top-left", "top-right", "bottom-left", "bottom-right")
SYNTH_SHAPES = ("circle", "square", "triangle")
SYNTH_SIDES = {"circle": 0, "square": 4, "triangle": 3}
SYNTH_COLORS = {"red": (220, 50, 50), "green": (40, 160, 70), "blue": (50, 90, 220), "yellow": (235, 195, 35)}
SYNTH_TYPES = ("count", "color", "where", "sides", "compare")
SYNTH_DATA_SOURCE = "prism_synth"
SYNTH_ABILITY = "visual_reasoning"
_LETTERS = "ABCD"
_COLOR_NAMES = tuple(SYNTH_COLORS)
_PUBLIC_ERROR_RATE = 0.25
_STUDENT_ERROR_RATE = 0.5
# Every ShareGPT loader must accept both spellings, so a few public records use the older one.
_SHAREGPT_ALT_EVERY = 40

# One RNG stream per split: changing one split's size leaves the others' contents unchanged, and
# the held-out splits never share a stream with training.
_STREAMS = {"sft_teacher": 0, "sft_public": 1, "align": 2, "rl": 3, "pairs": 4, "pairs_test": 5, "test": 6,
            "corpus": 7}


@dataclasses.dataclass(frozen=True)
class _Question:
    type: str
    stem: str
    choices: tuple[str, ...] | None
    # What the stem refers to: a shape (color), a (shape, color) layout entry (where), or two colours (compare).
    target: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        if self.choices is None:
            return self.stem
        options = " ".join(f"({letter}) {c}" for letter, c in zip(_LETTERS, self.choices))
        return f"{self.stem}\nChoices: {options}"


@dataclasses.dataclass(frozen=True)
class _Item:
    id: str
    layout: tuple  # per cell in SYNTH_CELLS order: None or (shape, color)
    question: _Question
    png: bytes

    @property
    def image(self) -> str:
        return f"images/{self.id}.png"


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _random_layout(rng: np.random.Generator) -> tuple:
    filled = set(rng.choice(4, size=int(rng.integers(1, 5)), replace=False).tolist())
    return tuple((_pick(rng, SYNTH_SHAPES), _pick(rng, _COLOR_NAMES)) if c in filled else None for c in range(4))


def _make_question(layout: tuple, qtype: str, rng: np.random.Generator) -> _Question | None:
    """A question of `qtype` about `layout`, or None when the layout cannot support one unambiguously."""
    shapes = [s for s in layout if s]
    if qtype == "count":
        return _Question("count", "How many shapes are in the image?", None)
    if qtype == "sides":
        return _Question("sides", "What is the total number of sides of all shapes? (circle 0, triangle 3, square 4)",
                         None)
    if qtype == "color":
        unique = [s for s in SYNTH_SHAPES if sum(k == s for k, _ in shapes) == 1]
        if not unique:
            return None
        shape = _pick(rng, unique)
        choices = tuple(_COLOR_NAMES[i] for i in rng.permutation(4))
        return _Question("color", f"What color is the {shape}?", choices, (shape,))
    if qtype == "where":
        unique = [s for s in shapes if shapes.count(s) == 1]
        if not unique:
            return None
        shape, color = _pick(rng, unique)
        choices = tuple(SYNTH_CELLS[i] for i in rng.permutation(4))
        return _Question("where", f"Where is the {color} {shape}?", choices, (shape, color))
    present = sorted({c for _, c in shapes}, key=_COLOR_NAMES.index)
    # At least one of the two colours must be present, or every compare answer would be 0.
    a = _pick(rng, present)
    b = _pick(rng, [c for c in _COLOR_NAMES if c != a])
    if rng.random() < 0.5:
        a, b = b, a
    return _Question("compare", f"How many more {a} shapes than {b} shapes are there?", None, (a, b))


def _answer(layout: tuple, q: _Question) -> str:
    shapes = [s for s in layout if s]
    if q.type == "count":
        return str(len(shapes))
    if q.type == "sides":
        return str(sum(SYNTH_SIDES[s] for s, _ in shapes))
    if q.type == "compare":
        a, b = q.target
        return str(sum(c == a for _, c in shapes) - sum(c == b for _, c in shapes))
    if q.type == "color":
        value = next(c for s, c in shapes if s == q.target[0])
    else:
        value = SYNTH_CELLS[layout.index(q.target)]
    return _LETTERS[q.choices.index(value)]


def _render_png(layout: tuple, rng: np.random.Generator) -> bytes:
    img = Image.new("RGB", (SYNTH_IMAGE_SIZE, SYNTH_IMAGE_SIZE), SYNTH_BACKGROUND)
    draw = ImageDraw.Draw(img)
    for cell, item in enumerate(layout):
        if item is None:
            continue
        shape, color = item
        size = int(rng.integers(20, 27))
        # A gap of at least one pixel to the cell border keeps each shape inside its own token.
        x = (cell % 2) * SYNTH_CELL_SIZE + int(rng.integers(1, SYNTH_CELL_SIZE - size))
        y = (cell // 2) * SYNTH_CELL_SIZE + int(rng.integers(1, SYNTH_CELL_SIZE - size))
        box = (x, y, x + size - 1, y + size - 1)
        fill = SYNTH_COLORS[color]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x, y + size - 1), (x + size - 1, y + size - 1), (x + (size - 1) / 2, y)], fill=fill)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _detailed_caption(layout: tuple) -> str:
    lines = [f"- {color} {shape} at {SYNTH_CELLS[i]}" for i, (shape, color) in _filled(layout)]
    return "<caption>\n" + "\n".join(lines) + "\n</caption>"


def _filled(layout: tuple) -> list:
    return [(i, s) for i, s in enumerate(layout) if s]


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _cot(think: str, answer: str) -> str:
    return f"<think>\n{think}\n</think>\n<answer>{answer}</answer>"


def _color_counts(layout: tuple, q: _Question) -> tuple[int, int]:
    a, b = q.target
    return sum(s[1] == a for _, s in _filled(layout)), sum(s[1] == b for _, s in _filled(layout))


def _teacher_texts(layout: tuple, q: _Question) -> tuple[str, str]:
    """(caption, cot) of the perfect teacher: every shape described, every step derived from the caption."""
    answer = _answer(layout, q)
    if q.type == "count":
        names = ", ".join(f"{c} {s}" for _, (s, c) in _filled(layout))
        think = f"Caption lines: {names}.\nThat is {_plural(int(answer), 'shape')}."
    elif q.type == "sides":
        terms = " + ".join(f"{s} {SYNTH_SIDES[s]}" for _, (s, _c) in _filled(layout))
        think = f"Sides: {terms} = {answer}."
    elif q.type == "compare":
        (a, b), (na, nb) = q.target, _color_counts(layout, q)
        think = f"{a.capitalize()} shapes: {na}. {b.capitalize()} shapes: {nb}.\n{na} - {nb} = {answer}."
    elif q.type == "color":
        color = q.choices[_LETTERS.index(answer)]
        think = f"The {q.target[0]} is {color}.\n{color.capitalize()} is option ({answer})."
    else:
        cell = q.choices[_LETTERS.index(answer)]
        think = f"The {q.target[1]} {q.target[0]} is at {cell}.\n{cell.capitalize()} is option ({answer})."
    return _detailed_caption(layout), _cot(think, answer)


def _swap(layout: tuple, i: int, j: int) -> tuple:
    cells = list(layout)
    cells[i], cells[j] = cells[j], cells[i]
    return tuple(cells)


def _replace(layout: tuple, i: int, value) -> tuple:
    return layout[:i] + (value,) + layout[i + 1:]


def _other(rng: np.random.Generator, options, value):
    return _pick(rng, [o for o in options if o != value])


def _misperceive(layout: tuple, q: _Question, rng: np.random.Generator) -> tuple:
    """A layout that changes the answer to `q`: the public source's deliberate perception error."""
    filled = [i for i, _ in _filled(layout)]
    if q.type == "count":
        empty = [i for i, s in enumerate(layout) if s is None]
        if empty and (len(filled) == 1 or rng.random() < 0.5):
            return _replace(layout, _pick(rng, empty), (_pick(rng, SYNTH_SHAPES), _pick(rng, _COLOR_NAMES)))
        return _replace(layout, _pick(rng, filled), None)
    if q.type == "sides":
        i = _pick(rng, filled)
        return _replace(layout, i, (_other(rng, SYNTH_SHAPES, layout[i][0]), layout[i][1]))
    if q.type == "where":
        i = layout.index(q.target)
        return _swap(layout, i, _other(rng, range(4), i))
    if q.type == "color":
        i = next(i for i in filled if layout[i][0] == q.target[0])
    else:
        i = _pick(rng, [i for i in filled if layout[i][1] in q.target])
    return _replace(layout, i, (layout[i][0], _other(rng, _COLOR_NAMES, layout[i][1])))


def _public_texts(layout: tuple, q: _Question, rng: np.random.Generator) -> tuple[str, str]:
    """(caption, cot) in the public source's terser style, with a wrong answer about a quarter of the time."""
    seen = layout
    slip = 0
    if rng.random() < _PUBLIC_ERROR_RATE:
        # Sides questions sometimes get an arithmetic slip instead of a perception error.
        if q.type == "sides" and rng.random() < 0.5:
            slip = _pick(rng, (-1, 1))
        else:
            seen = _misperceive(layout, q, rng)
    shapes = [s for _, (s, _c) in _filled(seen)]
    caption = f"<caption>\n- {_plural(len(shapes), 'shape')}: {', '.join(shapes)}\n</caption>"
    answer = _answer(seen, q)
    if q.type == "count":
        think = f"{_plural(int(answer), 'shape')}."
    elif q.type == "sides":
        answer = str(int(answer) + slip)
        think = "+".join(str(SYNTH_SIDES[s]) for s in shapes) + f" = {answer}."
    elif q.type == "compare":
        na, nb = _color_counts(seen, q)
        think = f"{q.target[0]} {na}, {q.target[1]} {nb}, diff {answer}."
    elif q.type == "color":
        think = f"{q.target[0]} looks {q.choices[_LETTERS.index(answer)]}, so {answer}."
    else:
        think = f"{q.target[1]} {q.target[0]} is {q.choices[_LETTERS.index(answer)]}, so {answer}."
    return caption, _cot(think, answer)


def _caption_error(layout: tuple, rng: np.random.Generator) -> tuple:
    """The layout with one error in it: a wrong colour, a wrong position, a missing or an invented shape."""
    filled = [i for i, _ in _filled(layout)]
    empty = [i for i, s in enumerate(layout) if s is None]
    i = _pick(rng, filled)
    movable = [j for j in range(4) if layout[j] != layout[i]]
    kinds = ["color"] + ["move"] * bool(movable) + ["drop"] * (len(filled) > 1) + ["add"] * bool(empty)
    kind = _pick(rng, kinds)
    if kind == "color":
        return _replace(layout, i, (layout[i][0], _other(rng, _COLOR_NAMES, layout[i][1])))
    if kind == "move":
        return _swap(layout, i, _pick(rng, movable))
    if kind == "drop":
        return _replace(layout, i, None)
    return _replace(layout, _pick(rng, empty), (_pick(rng, SYNTH_SHAPES), _pick(rng, _COLOR_NAMES)))


def _wrong_answer(truth: str, q: _Question, rng: np.random.Generator) -> str:
    if q.choices is not None:
        return _other(rng, _LETTERS, truth)
    # A plausible guess stays in the range the question allows: 1-4 shapes, a non-negative side total.
    floor = {"count": 1, "sides": 0}.get(q.type, -4)
    return str(_pick(rng, [int(truth) + d for d in (-2, -1, 1, 2) if int(truth) + d >= floor]))


def _student_texts(layout: tuple, q: _Question, rng: np.random.Generator) -> tuple[str, str]:
    """(caption, cot) of the weaker student: a flawed caption, no derivation, wrong about half the time.

    Like the paper's pre-alignment policies, whose captions carry fewer description items than the
    teacher's, the student leaves positions out; one of its items is also wrong for the picture.
    """
    caption = re.sub(r" at [a-z-]+", "", _detailed_caption(_caption_error(layout, rng)))
    answer = _answer(layout, q)
    if rng.random() < _STUDENT_ERROR_RATE:
        answer = _wrong_answer(answer, q, rng)
    think = {"count": f"I count {answer}.", "sides": f"Adding the sides gives {answer}.",
             "compare": f"The difference is {answer}."}.get(q.type, f"It is ({answer}).")
    return caption, _cot(think, answer)


def _sample_items(split: str, n: int, seed: int, seen: set | None = None, banned: frozenset = frozenset()):
    """`n` rendered items, question types in rotation; (layout, stem) keys in `banned` are redrawn."""
    rng = np.random.default_rng([seed, _STREAMS[split]])
    items = []
    for k in range(n):
        qtype = SYNTH_TYPES[k % len(SYNTH_TYPES)]
        while True:
            layout = _random_layout(rng)
            q = _make_question(layout, qtype, rng)
            if q is not None and (layout, q.stem) not in banned:
                break
        if seen is not None:
            seen.add((layout, q.stem))
        items.append(_Item(f"{split}-{k:05d}", layout, q, _render_png(layout, rng)))
    return items, rng


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _sft_record(item: _Item, response: str, sharegpt_alt: bool = False) -> dict:
    turns = [("system", SYSTEM_PROMPT), ("user", f"<image>\n{item.question.text}"), ("assistant", response)]
    if sharegpt_alt:
        speaker = {"system": "system", "user": "human", "assistant": "gpt"}
        conv = [{"from": speaker[role], "value": text} for role, text in turns]
        return {"id": item.id, "conversations": conv, "images": [item.image]}
    return {"id": item.id, "messages": [{"role": r, "content": t} for r, t in turns], "images": [item.image]}


_VERL_SCHEMA = pa.schema([
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


def _write_verl_parquet(path: Path, split: str, items: list[_Item]) -> None:
    rows = []
    for index, item in enumerate(items):
        q = item.question
        answer = _answer(item.layout, q)
        caption, cot = _teacher_texts(item.layout, q)
        rows.append({
            "prompt": [{"role": "system", "content": SYSTEM_PROMPT},
                       {"role": "user", "content": f"<image>\n{q.text}\n"}],
            "images": [{"bytes": item.png, "path": None}],
            "data_source": SYNTH_DATA_SOURCE,
            "ability": SYNTH_ABILITY,
            "reward_model": {"style": "rule", "ground_truth": answer},
            "extra_info": {"split": split, "index": index, "answer": answer, "question": q.text, "type": q.type},
            "teacher_caption": caption,
            "teacher_cot": cot,
        })
    pq.write_table(pa.Table.from_pylist(rows, schema=_VERL_SCHEMA), path)


def _pair_record(item: _Item, rng: np.random.Generator) -> dict:
    t_caption, t_cot = _teacher_texts(item.layout, item.question)
    s_caption, s_cot = _student_texts(item.layout, item.question, rng)
    return {"prompt": item.question.text, "image": item.image, "teacher_caption": t_caption,
            "student_caption": s_caption, "teacher_cot": t_cot, "student_cot": s_cot}


def synthesize(out: Path, seed: int = 0, n_sft_teacher: int = 200, n_sft_public: int = 600,
               n_align: int = 64, n_rl: int = 128, n_pairs: int = 400, n_pairs_test: int = 100,
               n_test: int = 100) -> dict[str, Path]:
    """Write the synthetic task's files under `out`; byte-identical for a given seed. Returns name -> path."""
    out = Path(out)
    paths = {"images": out / "images", "sft_teacher": out / "sft_teacher.jsonl", "sft_public": out / "sft_public.jsonl",
             "align": out / "align.parquet", "rl": out / "rl.parquet", "pairs": out / "pairs.jsonl",
             "pairs_test": out / "pairs_test.jsonl", "test": out / "test.jsonl"}
    paths["images"].mkdir(parents=True, exist_ok=True)
    seen: set = set()
    sizes = {"sft_teacher": n_sft_teacher, "sft_public": n_sft_public, "align": n_align, "rl": n_rl,
             "pairs": n_pairs}
    split_items = {split: _sample_items(split, n, seed, seen) for split, n in sizes.items()}
    # Held-out splits redraw any (layout, question) seen in training, so they are disjoint by construction.
    banned = frozenset(seen)
    split_items["pairs_test"] = _sample_items("pairs_test", n_pairs_test, seed, banned=banned)
    split_items["test"] = _sample_items("test", n_test, seed, banned=banned)
    for items, _ in split_items.values():
        for item in items:
            (out / item.image).write_bytes(item.png)

    items, _ = split_items["sft_teacher"]
    _write_jsonl(paths["sft_teacher"], [_sft_record(it, "\n".join(_teacher_texts(it.layout, it.question)))
                                        for it in items])
    items, rng = split_items["sft_public"]
    _write_jsonl(paths["sft_public"], [
        _sft_record(it, "\n".join(_public_texts(it.layout, it.question, rng)), k % _SHAREGPT_ALT_EVERY == 0)
        for k, it in enumerate(items)])
    for split in ("align", "rl"):
        _write_verl_parquet(paths[split], split, split_items[split][0])
    for split in ("pairs", "pairs_test"):
        items, rng = split_items[split]
        _write_jsonl(paths[split], [_pair_record(it, rng) for it in items])
    items, _ = split_items["test"]
    _write_jsonl(paths["test"], [
        {"id": it.id, "question": it.question.text, "images": [it.image], "answer": _answer(it.layout, it.question),
         "type": it.question.type, "choices": list(it.question.choices) if it.question.choices else None}
        for it in items])
    return paths


def synthetic_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Texts covering everything the synthetic task makes a model read or write, for training a tokenizer."""
    items, rng = _sample_items("corpus", n, seed)
    texts = [SYSTEM_PROMPT]
    for it in items:
        texts.append(it.question.text)
        for caption, cot in (_teacher_texts(it.layout, it.question), _public_texts(it.layout, it.question, rng),
                             _student_texts(it.layout, it.question, rng)):
            texts.append(f"{caption}\n{cot}")
    return texts



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    for name, param in inspect.signature(synthesize).parameters.items():
        if name != "out":
            parser.add_argument("--" + name.replace("_", "-"), type=int, default=param.default,
                                help=f"(default {param.default})")
    paths = synthesize(**vars(parser.parse_args()))
    for name, path in paths.items():
        count = len(list(path.iterdir())) if path.is_dir() else \
            pq.read_metadata(path).num_rows if path.suffix == ".parquet" else len(path.read_text().splitlines())
        print(f"{name:12s} {count:5d}  {path}")


if __name__ == "__main__":
    main()
