"""eval.py: grading and metrics by hand, 2 ranks = 1 item for item, the MathVista and MMMU adapters."""

import io
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import run_script
from PIL import Image

import batching
import benchmarks
import data
import eval as evaluation
import grading
import hf_checkpoint
import model

GOOD = "<caption>\n- two shapes\n</caption>\n<think>\nI count them.\n</think>\n<answer>{}</answer>"


def _example(answer: str, qtype: str | None) -> data.Example:
    return data.Example("x", "<image>\nq", [], "fixture", answer=answer, qtype=qtype)


def test_grading_and_summary_of_a_hand_written_fixture():
    # (truth, qtype, response, tokens, truncated) → expected (accuracy, format, parsed answer)
    fixture = [
        ("2", "count", GOOD.format("2"), 10, False, 1.0, 1.0, "2"),
        ("2", "count", GOOD.format("3"), 20, False, 0.0, 1.0, "3"),
        ("B", "color", GOOD.format("(B)"), 30, False, 1.0, 1.0, "(B)"),
        ("B", "color", "<think>\nno caption\n</think>\n<answer>B</answer>", 12, False, 0.0, 0.0, None),
        ("4", "sides", "<caption>\n- a square\n</caption>\n<think>\nfour sid", 64, True, 0.0, 0.0, None),
    ]
    records = [evaluation.grade_item(i, _example(truth, qtype), text, tokens, truncated)
               for i, (truth, qtype, text, tokens, truncated, *_) in enumerate(fixture)]
    for record, (*_, accuracy, fmt, parsed) in zip(records, fixture):
        assert (record["accuracy"], record["format"], record["parsed_answer"]) == (accuracy, fmt, parsed)
    summary = evaluation.summarise(records)
    assert summary["n"] == 5
    assert summary["accuracy"] == pytest.approx(2 / 5)
    assert summary["format_rate"] == pytest.approx(3 / 5)
    assert summary["mean_tokens"] == pytest.approx((10 + 20 + 30 + 12 + 64) / 5)  # 27.2
    assert summary["median_tokens"] == 20
    assert summary["truncation_rate"] == pytest.approx(1 / 5)
    assert summary["accuracy_by_type"] == {"color": {"n": 2, "accuracy": 0.5}, "count": {"n": 2, "accuracy": 0.5},
                                           "sides": {"n": 1, "accuracy": 0.0}}
    table = evaluation.markdown_table({"sft": {"synth": summary}, "prism": {"synth": summary}}).splitlines()
    assert table[0] == "| model | synth acc % |" and table[2:4] == ["| sft | 40.0 |", "| prism | 40.0 |"]
    assert table[5] == "| model | synth format % | synth tokens |"
    assert table[7:] == ["| sft | 60.0 | 27 |", "| prism | 60.0 | 27 |"]


ITEMS = 15  # an odd count: the ranks answer different numbers of items


def _stopping_tiny_model(tiny_dir, synth_dir, out):
    """The tiny model with <|im_end|> tied to the output row of a token that its greedy answers to
    some items contain and to others do not: it then stops exactly where it would have said that
    token (argmax takes the first of equal logits, and <|im_end|> has the lower id), so responses
    come in several lengths, some truncated."""
    shutil.copytree(tiny_dir, out)
    hf, processor = hf_checkpoint.load_hf_model(out), hf_checkpoint.load_processor(out)
    prompts = batching.encode_prompts(processor, data.load_prompts(synth_dir / "test.jsonl")[:ITEMS])
    responses = model.generate_rollouts(model.Policy(hf), prompts, processor.tokenizer, 1, 24, greedy=True).responses()
    # The token whose first occurrences give the most different lengths: absent from some responses (they run
    # to the limit) and never the first token of one (no response is empty).
    def lengths(t):
        return {r.index(t) + 1 if t in r else len(r) for r in responses}
    candidates = {t for r in responses for t in r} - {r[0] for r in responses}
    stop = max(sorted(candidates), key=lambda t: (len(lengths(t)) if any(t not in r for r in responses) else 0))
    with torch.no_grad():
        hf.lm_head.weight[processor.tokenizer.convert_tokens_to_ids("<|im_end|>")] = hf.lm_head.weight[stop]
    hf.save_pretrained(out)
    return out


def test_two_ranks_give_exactly_the_single_process_results(tiny_dir, synth_dir, tmp_path):
    stopping = _stopping_tiny_model(tiny_dir, synth_dir, tmp_path / "stopping")
    # 15 items in batches of 2: rank 0 answers items 0, 1, 4, 5, … and rank 1 items 2, 3, 6, 7, …, 14.
    common = ["eval.py", "--policy", stopping, stopping, "--policy-names", "a", "b", "--data", synth_dir / "test.jsonl",
              "--limit", str(ITEMS), "--batch-size", "2", "--max-new-tokens", "24", "--device", "cpu"]
    one = run_script(common + ["--out", tmp_path / "one.json"], nproc=1)
    run_script(common + ["--out", tmp_path / "two.json"], nproc=2)
    one_report = json.loads((tmp_path / "one.json").read_text())
    two_report = json.loads((tmp_path / "two.json").read_text())
    assert two_report["settings"]["world_size"] == 2
    assert one_report["results"] == two_report["results"]
    items = one_report["results"]["a"]["benchmarks"]["test.jsonl"]["items"]
    assert items == two_report["results"]["b"]["benchmarks"]["test.jsonl"]["items"]  # greedy is deterministic
    truth = data.load_prompts(synth_dir / "test.jsonl")[:ITEMS]
    assert [r["index"] for r in items] == list(range(ITEMS))
    assert [r["id"] for r in items] == [e.id for e in truth]
    assert [r["truth"] for r in items] == [e.answer for e in truth]
    for r in items:
        assert 1 <= r["tokens"] <= 24 and (r["tokens"] == 24 or not r["truncated"])
        assert (r["accuracy"], r["format"]) == grading.reward_parts(r["response"], r["truth"])[1:]
    assert {r["truncated"] for r in items} == {True, False} and len({r["tokens"] for r in items}) >= 2
    assert one_report["results"]["a"]["benchmarks"]["test.jsonl"]["summary"] == evaluation.summarise(items)
    assert "| a |" in one.stdout and "| b |" in one.stdout


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="PNG")
    return buf.getvalue()


IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_mathvista_rows_become_examples(tmp_path):
    schema = pa.schema([
        ("pid", pa.string()), ("question", pa.string()), ("image", pa.string()), ("decoded_image", IMAGE),
        ("choices", pa.list_(pa.string())), ("unit", pa.string()), ("precision", pa.float64()),
        ("answer", pa.string()), ("question_type", pa.string()), ("answer_type", pa.string()),
        ("metadata", pa.struct([("category", pa.string()), ("task", pa.string()), ("img_width", pa.int64())])),
        ("query", pa.string()),
    ])
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    meta = {"category": "math-targeted-vqa", "task": "geometry problem solving", "img_width": 40}
    rows = [
        {"pid": "1", "question": "Which is larger?", "image": "images/1.jpg",
         "decoded_image": {"bytes": red, "path": "1.jpg"}, "choices": ["3 cm", "5 cm", "7 cm"], "unit": None,
         "precision": None, "answer": "5 cm", "question_type": "multi_choice", "answer_type": "text",
         "metadata": meta,
         "query": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the "
                  "end.\nQuestion: Which is larger?\nChoices:\n(A) 3 cm\n(B) 5 cm\n(C) 7 cm"},
        {"pid": "2", "question": "How long is it?", "image": "images/2.png",
         "decoded_image": {"bytes": blue, "path": "2.png"}, "choices": None, "unit": "cm", "precision": 1.0,
         "answer": "1.5", "question_type": "free_form", "answer_type": "float", "metadata": meta,
         "query": "Hint: Please answer the question requiring a floating-point number with one decimal place and "
                  "provide the final value, e.g., 1.2, 1.3, 1.4, at the end.\nQuestion: How long is it? (Unit: cm)"},
    ]
    path = tmp_path / "testmini-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    kind, (choice, number) = benchmarks.load_benchmark_file(path)
    assert kind == "mathvista"
    assert (choice.id, choice.answer, choice.choices, choice.qtype) == ("1", "B", ["3 cm", "5 cm", "7 cm"],
                                                                        "multi_choice")
    assert choice.question == "<image>\n" + rows[0]["query"] and choice.images == [red]
    assert (number.answer, number.choices, number.qtype, number.precision) == ("1.5", None, "float", 1)
    # The item's options and stated precision reach the grader: the value of option B, and 1.46 at one place.
    respond = "<caption>\n- a bar\n</caption>\n<think>\nmeasured\n</think>\n<answer>{}</answer>".format
    assert evaluation.grade_item(0, choice, respond("5 cm"), 9, False)["accuracy"] == 1.0
    assert evaluation.grade_item(0, choice, respond("7 cm"), 9, False)["accuracy"] == 0.0
    assert evaluation.grade_item(1, number, respond("1.46"), 9, False)["accuracy"] == 1.0
    assert evaluation.grade_item(1, number, respond("1.4"), 9, False)["accuracy"] == 0.0
    assert number.question.startswith("<image>\nHint:") and number.question.count("<image>") == 1
    assert number.images == [blue]
    # The examples go through the project's batching like any other prompt.
    assert data.load_image(choice.images[0], choice.where).size == (40, 30)

    rows[0]["answer"] = "6 cm"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    with pytest.raises(data.DataError, match="row 0.*not one of the choices"):
        benchmarks.load_benchmark_file(path)


def _mmmu_table(rows: list[dict]) -> pa.Table:
    fields = [("id", pa.string()), ("question", pa.string()), ("options", pa.string()), ("explanation", pa.string())]
    fields += [(f"image_{k}", IMAGE) for k in range(1, 8)]
    fields += [("img_type", pa.string()), ("answer", pa.string()), ("topic_difficulty", pa.string()),
               ("question_type", pa.string()), ("subfield", pa.string())]
    blank = {name: None for name, _ in fields}
    return pa.Table.from_pylist([blank | row for row in rows], schema=pa.schema(fields))


def test_mmmu_rows_become_examples(tmp_path):
    imgs = {k: _png((40 * k, 0, 0)) for k in range(1, 4)}
    rows = [
        {"id": "validation_Art_Theory_3", "question": "Look at <image 1>. Which sketch shows the same style?",
         "options": "['<image 2>', '<image 3>', 'Neither']", "answer": "B", "question_type": "multiple-choice",
         "subfield": "Art History", "img_type": "['Sketches']", "topic_difficulty": "Easy",
         **{f"image_{k}": {"bytes": b, "path": None} for k, b in imgs.items()}},
        {"id": "validation_Math_12", "question": "Is <image 2> larger than <image 1>? By how much is <image 2> wider?",
         "options": "[]", "answer": "12", "question_type": "open", "subfield": "Geometry",
         "image_1": {"bytes": imgs[1], "path": None}, "image_2": {"bytes": imgs[2], "path": None}},
        {"id": "validation_Geography_5", "question": "Where is <image 1> taken?", "options": "[]",
         "answer": "['Lyon', 'France']", "question_type": "open", "image_1": {"bytes": imgs[1], "path": None}},
    ]
    path = tmp_path / "validation-00000-of-00001.parquet"
    pq.write_table(_mmmu_table(rows), path)
    kind, (choice, open_question, listed) = benchmarks.load_benchmark_file(path)
    assert kind == "mmmu"
    assert listed.answer == ["Lyon", "France"]  # the text of a list of accepted answers becomes the list
    assert choice.question == ("Look at <image>. Which sketch shows the same style?\n(A) <image>\n(B) <image>\n"
                               "(C) Neither\n" + benchmarks.MMMU_CHOICE_PROMPT)
    assert choice.images == [imgs[1], imgs[2], imgs[3]]
    assert (choice.answer, choice.choices, choice.qtype) == ("B", ["<image 2>", "<image 3>", "Neither"], "Art_Theory")
    assert open_question.question == ("Is <image> larger than <image>? By how much is <image> wider?\n"
                                      + benchmarks.MMMU_OPEN_PROMPT)
    assert open_question.images == [imgs[2], imgs[1], imgs[2]]  # in order of reference, repeats included
    assert (open_question.answer, open_question.choices, open_question.qtype) == ("12", None, "Math")

    # Options are read as a literal, never run; a reference to a missing image and a letter out of range fail.
    for change, message in [({"options": "__import__('os').getcwd()"}, "options: must be a list of option texts or"),
                            ({"question": "See <image 4>."}, r"row 0 \(<image 4>\).*embedded bytes"),
                            ({"answer": "D"}, "not the letter of one of 3 options")]:
        pq.write_table(_mmmu_table([rows[0] | change]), path)
        with pytest.raises(data.DataError, match=message):
            benchmarks.load_benchmark_file(path)


def test_unknown_parquet_schema_names_the_file_and_its_columns(tmp_path):
    path = tmp_path / "mystery.parquet"
    pq.write_table(pa.table({"question": ["q"], "label": ["a"]}), path)
    with pytest.raises(data.DataError, match=r"mystery.parquet: unknown benchmark schema.*\['label', 'question'\]"):
        benchmarks.load_benchmark_file(path)


def test_default_names_are_the_shortest_distinct_path_endings():
    assert benchmarks.short_names(["runs/d/sft/model", "runs/d/prism/model"], "--policy-names") == ["sft/model",
                                                                                              "prism/model"]
    assert benchmarks.short_names(["ckpt/A", "ckpt/B"], "--policy-names") == ["A", "B"]
    with pytest.raises(data.DataError, match="--policy-names"):
        benchmarks.short_names(["ckpt/A", "ckpt/A"], "--policy-names")
