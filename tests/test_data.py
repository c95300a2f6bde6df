"""data.py: the response format, segment split, loaders and their errors, batching."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import batching
import data
import grading

VALID = "<caption>\n- red circle at top-left\n</caption>\n<think>\nOne shape.\n</think>\n<answer>1</answer>"


@pytest.mark.parametrize("text, valid, answer", [
    (VALID, True, "1"),
    ("  \n" + VALID + "\n ", True, "1"),  # surrounding whitespace is allowed
    ("Sure! " + VALID, False, ""),  # text before <caption>
    (VALID + " Done.", False, ""),  # text after </answer>
    (VALID.replace("<answer>1</answer>", "<answer>1"), False, ""),  # truncated
    ("<think>x</think><answer>1</answer>", False, ""),  # no caption
    ("<caption>a</caption><answer>1</answer><think>x</think>", False, ""),  # out of order
    ("<caption>a</caption><think>x</think>\n<answer> 7 </answer>", True, "7"),
    ("<caption>a</caption><think>x</think><answer>1</answer><answer>2</answer>", False, ""),  # text after the first
])
def test_parse_response_follows_the_validity_regex(text, valid, answer):
    parsed = data.parse_response(text)
    assert parsed.valid == valid
    assert parsed.answer == answer


def test_parse_response_groups():
    parsed = data.parse_response(VALID)
    assert parsed.caption == "<caption>\n- red circle at top-left\n</caption>"
    assert parsed.reasoning == "<think>\nOne shape.\n</think>\n<answer>1</answer>"


def test_split_puts_the_boundary_right_after_caption_close(processor):
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok.encode(VALID, add_special_tokens=False) + [eos]
    perception, reasoning, valid = data.split_segments(tok, ids)
    assert valid
    assert perception + reasoning == ids
    assert perception[-1] == tok.convert_tokens_to_ids("</caption>")
    assert tok.decode(perception) == "<caption>\n- red circle at top-left\n</caption>"
    assert reasoning[-1] == eos and tok.decode(reasoning, skip_special_tokens=True).startswith("\n<think>")


def test_split_finds_a_caption_close_spelled_in_pieces(processor):
    """A policy may emit "</caption>" as several ordinary tokens; the spec's definition still holds."""
    tok = processor.tokenizer
    pieces = tok.encode("<caption>\n- a\n", add_special_tokens=False) + \
        [tok.convert_tokens_to_ids(t) for t in tok.tokenize("</capt")] + tok.encode("ion>", add_special_tokens=False)
    rest = tok.encode("\n<think>x</think><answer>2</answer>", add_special_tokens=False)
    ids = pieces + rest
    assert tok.decode(ids) == "<caption>\n- a\n</caption>\n<think>x</think><answer>2</answer>"
    b = data.segment_boundary(tok, ids)
    assert b == len(pieces)  # smallest prefix whose decoding contains the caption block


def test_split_of_a_malformed_response_halves_it(processor):
    tok = processor.tokenizer
    ids = tok.encode("no format at all here", add_special_tokens=False)
    perception, reasoning, valid = data.split_segments(tok, ids)
    assert not valid and perception == ids[:len(ids) // 2] and reasoning == ids[len(ids) // 2:]


def test_text_segments_match_a_rollout_split(processor):
    tok = processor.tokenizer
    caption, cot = VALID.split("\n<think>")
    perception, reasoning = data.text_segments(tok, caption, "<think>" + cot)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert perception + reasoning == tok.encode(VALID, add_special_tokens=False) + [eos]


def test_reward_parts():
    assert grading.reward_parts(VALID, "1") == (1.0, 1.0, 1.0)
    assert grading.reward_parts(VALID, "2") == pytest.approx((0.2, 0.0, 1.0))
    assert grading.reward_parts(VALID.replace("<answer>1", "<answer>"), "1") == pytest.approx((0.2, 0.0, 1.0))
    long = VALID.replace("<answer>1", "<answer>" + "1" * grading.MAX_ANSWER_CHARS)
    assert grading.reward_parts(long, "1" * grading.MAX_ANSWER_CHARS) == pytest.approx((0.2, 0.0, 1.0))
    assert grading.reward_parts("Sure! " + VALID, "1") == (0.0, 0.0, 0.0)


def test_synthetic_files_round_trip_through_the_loaders(synth_dir):
    conversations = data.load_sft(synth_dir / "sft_public.jsonl")
    assert len(conversations) == 32 and all(c.messages[-1][0] == "assistant" for c in conversations)
    assert all(len(c.images) == 1 for c in conversations)
    align = data.load_prompts(synth_dir / "align.parquet")
    assert len(align) == 16 and all(e.teacher_caption and e.teacher_cot and e.answer for e in align)
    assert all(isinstance(e.images[0], bytes) for e in align)
    assert data.parse_response(align[0].teacher_response()).valid
    test = data.load_prompts(synth_dir / "test.jsonl")
    assert len(test) == 16 and all(e.question.startswith("<image>") for e in test)
    pairs, skipped = data.load_pairs(synth_dir / "pairs.jsonl")
    assert len(pairs) == 48 and skipped == 0
    img = data.load_image(pairs[0].images[0], "x")
    assert img.size == (64, 64) and img.mode == "RGB"


def test_label_mask_covers_exactly_the_assistant_tokens(processor, tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    record = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>\nWhat color?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "And the shape?"},
        {"role": "assistant", "content": "<answer>square</answer>"}], "images": ["a.png"]}
    (tmp_path / "sft.jsonl").write_text(json.dumps(record) + "\n")
    conv = data.load_sft(tmp_path / "sft.jsonl")
    batch, target = batching.encode_conversations(processor, conv)
    tok = processor.tokenizer
    ids = batch.input_ids[0].tolist()
    expected = []
    for text in ("red", "<answer>square</answer>"):
        expected += tok.encode(text, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert [i for i, t in zip(ids, target[0].tolist()) if t] == expected
    # Token by token: every target sits inside an assistant turn, right after its header.
    text = tok.decode([i for i, t in zip(ids, target[0].tolist()) if t])
    assert text == "red<|im_end|><answer>square</answer><|im_end|>"
    assert target[0][batch.input_ids[0] == tok.convert_tokens_to_ids("<|image_pad|>")].sum() == 0


def test_stream_indices_are_epoch_permutations_and_resumable():
    first = batching.stream_indices(10, seed=3, start=0, count=25)
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    assert first[:10] != first[10:20]
    assert batching.stream_indices(10, seed=3, start=7, count=5) == first[7:12]
    assert batching.stream_indices(10, seed=4, start=0, count=10) != first[:10]


def test_drop_long_prompts_counts_without_truncating(processor, synth_dir):
    examples = data.load_prompts(synth_dir / "test.jsonl")[:4]
    examples[1].question = examples[1].question + " word" * 400
    lengths = [batching.encode_prompts(processor, [e]).input_ids.shape[1] for e in examples]
    kept, dropped = batching.drop_long_prompts(processor, examples, max_len=max(lengths[0], lengths[2], lengths[3]))
    assert dropped == 1 and examples[1] not in kept and len(kept) == 3
    kept, dropped = batching.drop_long_prompts(processor, examples, max_len=max(lengths))
    assert dropped == 0


# ---------------------------------------------------------------------------- bad input


def _write(tmp_path: Path, name: str, lines: list) -> Path:
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


GOOD = {"messages": [{"role": "user", "content": "<image>\nQ?"}, {"role": "assistant", "content": "A"}],
        "images": ["a.png"]}


@pytest.mark.parametrize("record, message", [
    ("{not json", "sft.jsonl:2: malformed JSON"),
    ({"messages": []}, "sft.jsonl:2: the conversation is empty"),
    ({"images": ["a.png"]}, "sft.jsonl:2: missing field 'messages'"),
    ({**GOOD, "images": ["missing.png"]}, "sft.jsonl:2: image file .*missing.png does not exist"),
    ({**GOOD, "images": []}, "sft.jsonl:2: 1 <image> placeholders but 0 images"),
    ({"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": " "}],
      "images": ["a.png"]}, "sft.jsonl:2: turn 1 is an empty assistant turn"),
    ({"messages": [{"role": "user", "content": "<image>Q"}], "images": ["a.png"]}, "no assistant turn"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "sft.jsonl:2: turn 0 needs 'role'"),
])
def test_bad_sft_records_name_the_file_and_line(tmp_path, record, message):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    path = _write(tmp_path, "sft.jsonl", [GOOD, record])
    with pytest.raises(data.DataError, match=message):
        data.load_sft(path)


def test_unreadable_image_is_named_when_loaded(tmp_path, processor):
    (tmp_path / "a.png").write_bytes(b"not a png")
    path = _write(tmp_path, "sft.jsonl", [GOOD])
    conv = data.load_sft(path)
    with pytest.raises(data.DataError, match=r"sft.jsonl:1: cannot read .*a.png"):
        batching.encode_conversations(processor, conv)


def test_bad_prompt_files(tmp_path):
    with pytest.raises(data.DataError, match="test.jsonl:1: missing field 'answer'"):
        data.load_prompts(_write(tmp_path, "test.jsonl", [{"question": "Q?", "images": []}]))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(data.DataError, match="bad.parquet: not a readable parquet file"):
        data.load_prompts(tmp_path / "bad.parquet")
    with pytest.raises(data.DataError, match="no such file"):
        data.load_prompts(tmp_path / "absent.jsonl")


def test_parquet_with_wrong_column_types_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": [[{"role": "user", "content": "Q?"}]], "images": [[]],
                      "teacher_caption": [3]})
    pq.write_table(table, tmp_path / "x.parquet")
    with pytest.raises(data.DataError, match=r"x.parquet:row 0: field 'teacher_caption' must be str"):
        data.load_prompts(tmp_path / "x.parquet")


def test_answers_keep_their_lists_options_and_precision(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": "Q1", "answer": ["Lyon", "France"]}, {"question": "Q2", "answer": 6, "precision": 2.0},
            {"question": "Q3", "answer": "D", "choices": ["3", "4", "5", "6"]}]
    loaded = data.load_prompts(_write(tmp_path, "items.jsonl", rows))
    assert loaded[0].answer == ["Lyon", "France"]
    assert (loaded[1].answer, loaded[1].precision) == ("6", 2)
    assert loaded[2].choices == ["3", "4", "5", "6"] and loaded[2].precision is None
    for bad, message in (({"answer": ""}, "non-empty"), ({"answer": {"x": 1}}, "non-empty string"),
                         ({"answer": "1", "precision": 1.5}, "whole number"),
                         ({"answer": "1", "choices": "AB"}, "list")):
        with pytest.raises(data.DataError, match=message):
            data.load_prompts(_write(tmp_path, "bad.jsonl", [{"question": "Q", **bad}]))
    # verl's reward_model: a list ground truth stays a list; equivalent answers join it; "__EMPTY__" is none.
    prompt = [[{"role": "user", "content": "Q?"}]] * 2
    lists = pa.table({"prompt": prompt, "images": [[]] * 2, "reward_model": [
        {"ground_truth": ["4", "four"], "equivalent_answers": None},
        {"ground_truth": ["7"], "equivalent_answers": []}]})
    strings = pa.table({"prompt": prompt, "images": [[]] * 2, "reward_model": [
        {"ground_truth": "0.5", "equivalent_answers": ["1/2", "__EMPTY__"]},
        {"ground_truth": "7", "equivalent_answers": ["__EMPTY__"]}]})
    pq.write_table(lists, tmp_path / "lists.parquet")
    pq.write_table(strings, tmp_path / "strings.parquet")
    assert [e.answer for e in data.load_prompts(tmp_path / "lists.parquet")] == [["4", "four"], "7"]
    assert [e.answer for e in data.load_prompts(tmp_path / "strings.parquet")] == [["0.5", "1/2"], "7"]


def test_incomplete_pairs_are_skipped_and_counted(tmp_path):
    full = {"prompt": "Q", "teacher_caption": "a", "student_caption": "b", "teacher_cot": "c", "student_cot": "d"}
    path = _write(tmp_path, "pairs.jsonl", [full, {**full, "student_cot": ""}, full])
    pairs, skipped = data.load_pairs(path)
    assert len(pairs) == 2 and skipped == 1


def test_hostile_images(tmp_path):
    Image.new("L", (64, 64), 128).save(tmp_path / "grey.png")
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(tmp_path / "alpha.png")
    assert data.load_image(tmp_path / "grey.png", "x").mode == "RGB"
    assert data.load_image(tmp_path / "alpha.png", "x").mode == "RGB"
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:40])
    with pytest.raises(data.DataError, match="f.jsonl:3: cannot read"):
        data.load_image(tmp_path / "cut.png", "f.jsonl:3")
    big = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(big)  # 81M pixels: tiny on disk, huge decoded
    with pytest.raises(data.DataError, match="over the .* limit"):
        data.load_image(big, "f.jsonl:4")


def test_select_keeps_rows_and_images_together(processor, synth_dir):
    examples = data.load_prompts(synth_dir / "test.jsonl")[:3]
    batch = batching.encode_prompts(processor, examples)
    picked = batch.select([2, 0])
    assert torch.equal(picked.input_ids, batch.input_ids[[2, 0]])
    patches = batch.image_grid_thw.prod(-1)
    first = batch.pixel_values[:patches[0]]
    third = batch.pixel_values[patches[0] + patches[1]:]
    assert torch.equal(picked.model_inputs()["pixel_values"], torch.cat([third, first]))
    # Repeated rows share one stored copy of their image.
    repeated = batch.repeat_interleave(4)
    assert len(repeated.image_grid_thw) == 3 and repeated.image_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert repeated.model_inputs()["pixel_values"].shape[0] == 4 * batch.pixel_values.shape[0]
