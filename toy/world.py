"""The synthetic shapes task: a tiny world in which each stage of PRISM has something to fix.

Each image holds one to four coloured circles, one per quadrant. The world mirrors the paper's data
story at toy scale (spec §1, §9.4):
  - a perfect programmatic teacher (the high-fidelity Gemini distill): every quadrant described,
    "- top-left: red circle" or "- top-left: empty", and a two-step derivation from that caption;
  - a public source (the 1.26M public demonstrations) that outnumbers the teacher three to one, captions
    tersely (circles only) and misperceives systematically: it sees yellow as green most of the time
    (PUBLIC_CONFUSIONS), and derives its answer in the teacher's two steps from what it saw — so SFT on
    the mixture inherits a perception error, and answers that depend on it go wrong. (A one-line
    derivation, "So red.", was dropped: the 1.2M-parameter policy could not do the lookup in one step,
    and answered wrongly from right captions; results/search.md §6);
  - warm-up students that write exactly as the teacher does but get the content wrong (a misperceived
    caption, reasoned from consistently or, for a quarter of them, with a slip as well), so that the
    discriminator can only tell them apart by checking the content against the picture;
  - verl-style alignment/RL parquets, a validation split for choosing hyperparameters, and a held-out
    test split that carries the teacher's caption, so that evaluation can score each caption's facts.

Questions are one lookup or count away from a right caption: how many circles of a colour, the colour
in a quadrant, whether a colour is there. Answers are a number or one word. Images are 64×64 with one
32×32 quadrant per vision token. Two things were tried and dropped because the 1.2M-parameter model did
not learn them within the demo's budget (results/search.md): shape kinds as a second attribute, and
"where is the <colour> circle?" (held-out accuracy stayed at chance after SFT and RL).

    python -m toy.world --out DIR [--seed N] [--n-test 200 ...]

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

from data import SYSTEM_PROMPT, caption_items

SYNTH_IMAGE_SIZE = 64
SYNTH_CELL_SIZE = 32
SYNTH_BACKGROUND = (245, 245, 240)
SYNTH_CELLS = ("top-left", "top-right", "bottom-left", "bottom-right")
SYNTH_COLORS = {"red": (220, 50, 50), "green": (40, 160, 70), "blue": (50, 90, 220), "yellow": (235, 195, 35)}
SYNTH_TYPES = ("count_color", "color", "exists")
# Each type's question, around what it asks about (a colour, or a quadrant for "color").
QUESTIONS = {"count_color": "How many {} circles are in the image?", "color": "What color is the circle at the {}?",
             "exists": "Is there a {} circle in the image?"}
SYNTH_DATA_SOURCE = "prism_synth"
SYNTH_ABILITY = "visual_reasoning"
_COLOR_NAMES = tuple(SYNTH_COLORS)
# The public source's systematic misperception: what it reports for a true colour, and how often.
PUBLIC_CONFUSIONS = {"yellow": ("green", 0.8)}
# Warm-up students: the share whose reasoning also slips (every student misperceives).
_STUDENT_SLIP_RATE = 0.25
# Every ShareGPT loader must accept both spellings, so a few public records use the older one.
_SHAREGPT_ALT_EVERY = 40

# One RNG stream per split: changing one split's size leaves the others' contents unchanged, and
# the held-out splits never share a stream with training.
_STREAMS = {"sft_teacher": 0, "sft_public": 1, "align": 2, "rl": 3, "pairs": 4, "pairs_test": 5, "test": 6,
            "corpus": 7, "val": 8}


@dataclasses.dataclass(frozen=True)
class _Question:
    type: str
    text: str
    target: str  # what the text refers to: a colour (count_color, exists) or a quadrant (color)


@dataclasses.dataclass(frozen=True)
class _Item:
    id: str
    layout: tuple  # per quadrant in SYNTH_CELLS order: None or the circle's colour
    question: _Question
    png: bytes

    @property
    def image(self) -> str:
        return f"images/{self.id}.png"


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _random_layout(rng: np.random.Generator) -> tuple:
    filled = set(rng.choice(4, size=int(rng.integers(1, 5)), replace=False).tolist())
    return tuple(_pick(rng, _COLOR_NAMES) if c in filled else None for c in range(4))


def _make_question(layout: tuple, qtype: str, rng: np.random.Generator) -> _Question:
    """A question of `qtype` about `layout`; "exists" asks about a colour that is there half of the time."""
    if qtype == "count_color":
        color = _pick(rng, _COLOR_NAMES)
        return _Question("count_color", QUESTIONS["count_color"].format(color), color)
    if qtype == "color":
        cell = SYNTH_CELLS[_pick(rng, [i for i, c in enumerate(layout) if c])]
        return _Question("color", QUESTIONS["color"].format(cell), cell)
    present = sorted({c for c in layout if c})
    absent = [c for c in _COLOR_NAMES if c not in present]
    color = _pick(rng, present if not absent or rng.random() < 0.5 else absent)
    return _Question("exists", QUESTIONS["exists"].format(color), color)


def _lookup(layout: tuple, q: _Question) -> list[int]:
    """The quadrants the question is about, as `layout` has them: the circles counted, or the one looked up."""
    if q.type == "color":
        return [SYNTH_CELLS.index(q.target)]
    return [i for i, c in enumerate(layout) if c == q.target]


def _answer(layout: tuple, q: _Question) -> str:
    """The answer `layout` gives to `q`; "none" when it does not hold what the question asks about (as a
    misperceived layout may not)."""
    found = _lookup(layout, q)
    if q.type == "count_color":
        return str(len(found))
    if q.type == "color":
        return layout[found[0]] or "none"
    return "yes" if found else "no"


def caption_answer(caption: str, question: str) -> str | None:
    """The answer `caption` gives to `question`, derived as the teacher derives it: the quadrants the
    caption states, one it leaves out taken as empty. Comparing it with the answer a policy wrote
    under that caption tells whether the policy answers from its own caption or around it.

    caption: a <caption> block, read item by item as eval reads it (data.caption_items: case and
    spacing do not matter). Returns None where there is nothing to derive from: a caption with no
    item, an item that is not "<quadrant>: <colour> circle" or "<quadrant>: empty", or a question
    that is not one of QUESTIONS about a quadrant or colour of this world.
    """
    cells = "|".join(SYNTH_CELLS)
    items = [re.fullmatch(rf"({cells}): (?:({'|'.join(_COLOR_NAMES)}) circle|empty)", item)
             for item in caption_items(caption)]
    if not items or not all(items):
        return None
    layout = [None] * len(SYNTH_CELLS)
    for m in items:
        layout[SYNTH_CELLS.index(m.group(1))] = m.group(2)
    for qtype, template in QUESTIONS.items():
        target = cells if qtype == "color" else "|".join(_COLOR_NAMES)
        if m := re.fullmatch(re.escape(template).replace(r"\{\}", f"({target})"), question.strip()):
            return _answer(tuple(layout), _Question(qtype, question, m.group(1)))
    return None


def _render_png(layout: tuple, rng: np.random.Generator) -> bytes:
    img = Image.new("RGB", (SYNTH_IMAGE_SIZE, SYNTH_IMAGE_SIZE), SYNTH_BACKGROUND)
    draw = ImageDraw.Draw(img)
    for cell, color in enumerate(layout):
        if color is None:
            continue
        size = int(rng.integers(20, 27))
        # A gap of at least one pixel to the cell border keeps each shape inside its own token.
        x = (cell % 2) * SYNTH_CELL_SIZE + int(rng.integers(1, SYNTH_CELL_SIZE - size))
        y = (cell // 2) * SYNTH_CELL_SIZE + int(rng.integers(1, SYNTH_CELL_SIZE - size))
        box = (x, y, x + size - 1, y + size - 1)
        draw.ellipse(box, fill=SYNTH_COLORS[color])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _caption(layout: tuple, with_empty: bool) -> str:
    """The caption of `layout`: one item per quadrant in reading order (empty ones too, or only the circles)."""
    items = [f"- {SYNTH_CELLS[i]}: " + (f"{c} circle" if c else "empty") for i, c in enumerate(layout)
             if c or with_empty]
    return "<caption>\n" + "\n".join(items) + "\n</caption>"


def _cot(think: str, answer: str) -> str:
    return f"<think>\n{think}\n</think>\n<answer>{answer}</answer>"


def _derivation(layout: tuple, q: _Question, answer: str) -> str:
    """Two steps: what the caption says about the question, then the answer."""
    cells = ", ".join(SYNTH_CELLS[i] for i in _lookup(layout, q)) or "none"
    if q.type == "count_color":
        think = f"{q.target.capitalize()} circles at: {cells}.\nThat is {answer}."
    elif q.type == "color":
        color = layout[SYNTH_CELLS.index(q.target)]
        think = f"At {q.target}: {f'a {color} circle' if color else 'empty'}.\nIt is {answer}."
    else:
        think = f"{q.target.capitalize()} circles at: {cells}.\nSo {answer}."
    return _cot(think, answer)


def _teacher_texts(layout: tuple, q: _Question) -> tuple[str, str]:
    """(caption, cot) of the perfect teacher: every quadrant described, the answer derived from the caption."""
    return _caption(layout, with_empty=True), _derivation(layout, q, _answer(layout, q))


def _replace(layout: tuple, i: int, value) -> tuple:
    return layout[:i] + (value,) + layout[i + 1:]


def _other(rng: np.random.Generator, options, value):
    return _pick(rng, [o for o in options if o != value])


def public_perception(layout: tuple, rng: np.random.Generator) -> tuple:
    """What the public source sees: each circle's colour through PUBLIC_CONFUSIONS."""
    seen = []
    for color in layout:
        if color in PUBLIC_CONFUSIONS and rng.random() < PUBLIC_CONFUSIONS[color][1]:
            color = PUBLIC_CONFUSIONS[color][0]
        seen.append(color)
    return tuple(seen)


def _public_texts(layout: tuple, q: _Question, rng: np.random.Generator) -> tuple[str, str]:
    """(caption, cot) of the public source: a terse caption of what it misperceived, and the two-step
    derivation from it."""
    seen = public_perception(layout, rng)
    answer = _answer(seen, q)
    return _caption(seen, with_empty=False), _derivation(seen, q, answer)


def _misperceive_once(layout: tuple, rng: np.random.Generator) -> tuple:
    """The layout with one error in it: a wrong colour, a missing or an invented circle."""
    filled = [i for i, c in enumerate(layout) if c]
    empty = [i for i, c in enumerate(layout) if c is None]
    kind, i = _pick(rng, ["color"] + ["drop"] * (len(filled) > 1) + ["add"] * bool(empty)), _pick(rng, filled)
    if kind == "color":
        return _replace(layout, i, _other(rng, _COLOR_NAMES, layout[i]))
    if kind == "drop":
        return _replace(layout, i, None)
    return _replace(layout, _pick(rng, empty), _pick(rng, _COLOR_NAMES))


def _misperceive(layout: tuple, errors: int, rng: np.random.Generator) -> tuple:
    for _ in range(errors):
        layout = _misperceive_once(layout, rng)
    return layout


def _student_texts(layout: tuple, q: _Question, rng: np.random.Generator) -> tuple[str, str]:
    """(caption, cot) of a warm-up student, in the teacher's exact style with the content wrong.

    Every student misperceives in a way that changes the answer — the public source's confusion where
    that does, one error of any kind otherwise. Most reason correctly from their caption; the rest also
    slip, giving the answer of another misperception. Both segments differ from the teacher's and read
    like them.
    """
    answer = _answer(layout, q)
    # Every question has an answer-changing error (recolour, add or drop what it asks about): draw until one
    # comes, with up to four errors at once (a colour that is there twice takes two to miss).
    errors = (public_perception(layout, rng) if k == 0 else _misperceive(layout, 1 + k % 4, rng) for k in range(1000))
    wrong = next(e for e in errors if _answer(e, q) != answer)
    reasoned_from = wrong
    if rng.random() < _STUDENT_SLIP_RATE:
        reasoned_from = next((e for e in (_misperceive_once(layout, rng) for _ in range(50))
                              if _answer(e, q) not in (answer, _answer(wrong, q))), wrong)
    return _caption(wrong, with_empty=True), _derivation(reasoned_from, q, _answer(reasoned_from, q))


def _sample_items(split: str, n: int, seed: int, seen: set | None = None, banned: frozenset = frozenset()):
    """`n` rendered items, question types in rotation; (layout, stem) keys in `banned` are redrawn."""
    rng = np.random.default_rng([seed, _STREAMS[split]])
    items = []
    for k in range(n):
        qtype = SYNTH_TYPES[k % len(SYNTH_TYPES)]
        while True:
            layout = _random_layout(rng)
            q = _make_question(layout, qtype, rng)
            if (layout, q.text) not in banned:
                break
        if seen is not None:
            seen.add((layout, q.text))
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
            # The release's prompts end in "\n"; here every split asks in one form, so that no stage meets a
            # prompt the others never saw.
            "prompt": [{"role": "system", "content": SYSTEM_PROMPT},
                       {"role": "user", "content": f"<image>\n{q.text}"}],
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


def _eval_record(item: _Item) -> dict:
    """The evaluation JSONL: question, image, answer, type, choices, and the teacher's caption (facts to check)."""
    q = item.question
    return {"id": item.id, "question": q.text, "images": [item.image], "answer": _answer(item.layout, q),
            "type": q.type, "teacher_caption": _caption(item.layout, with_empty=True)}


def synthesize(out: Path, seed: int = 0, n_sft_teacher: int = 1000, n_sft_public: int = 3000,
               n_align: int = 256, n_rl: int = 512, n_pairs: int = 1000, n_pairs_test: int = 200,
               n_val: int = 200, n_test: int = 200) -> dict[str, Path]:
    """Write the synthetic task's files under `out`; byte-identical for a given seed. Returns name -> path.

    val and test are both held out; hyperparameters are chosen on val, and test is reported.
    """
    out = Path(out)
    paths = {"images": out / "images", "sft_teacher": out / "sft_teacher.jsonl", "sft_public": out / "sft_public.jsonl",
             "align": out / "align.parquet", "rl": out / "rl.parquet", "pairs": out / "pairs.jsonl",
             "pairs_test": out / "pairs_test.jsonl", "val": out / "val.jsonl", "test": out / "test.jsonl"}
    paths["images"].mkdir(parents=True, exist_ok=True)
    seen: set = set()
    sizes = {"sft_teacher": n_sft_teacher, "sft_public": n_sft_public, "align": n_align, "rl": n_rl,
             "pairs": n_pairs}
    split_items = {split: _sample_items(split, n, seed, seen) for split, n in sizes.items()}
    # Held-out splits redraw any (layout, question) seen in training, so they are disjoint by construction.
    banned = frozenset(seen)
    for split, n in (("pairs_test", n_pairs_test), ("val", n_val), ("test", n_test)):
        split_items[split] = _sample_items(split, n, seed, banned=banned)
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
    for split in ("val", "test"):
        _write_jsonl(paths[split], [_eval_record(it) for it in split_items[split][0]])
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
