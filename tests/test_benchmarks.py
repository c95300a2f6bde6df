"""benchmarks.py: MathVerse, MathVision, WeMath, MMMU-Pro and HallusionBench rows in their published schemas
become the prompts the release asked; their own metrics by hand; eval.py end to end over all seven files."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_script
from PIL import Image

import benchmarks
import data
import eval as evaluation

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
THINK = "<think>\nlooked\n</think>\n<answer>{}</answer>"
FULL = "<caption>\n- a figure\n</caption>\n" + THINK


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="PNG")
    return buf.getvalue()


def _img(color=(200, 0, 0)) -> dict:
    return {"bytes": _png(color), "path": None}


def _write(rows: list[dict], schema: list[tuple], path):
    blank = {name: None for name, _ in schema}
    pq.write_table(pa.Table.from_pylist([blank | r for r in rows], schema=pa.schema(schema)), path)
    return path


# ----------------------------------------------------------------------------------------------
# One builder per schema: the columns as published (helper-checked against the data cards and lmms-eval)
# ----------------------------------------------------------------------------------------------

MATHVERSE = [("sample_index", pa.string()), ("problem_index", pa.string()), ("problem_version", pa.string()),
             ("question", pa.string()), ("image", IMAGE), ("answer", pa.string()), ("question_type", pa.string()),
             ("metadata", pa.struct([("split", pa.string()), ("subject", pa.string())])), ("query_wo", pa.string()),
             ("query_cot", pa.string()), ("question_for_eval", pa.string())]
MC_WO = "Please directly answer the question and provide the correct option letter, e.g., A, B, C, D.\nQuestion: "


def mathverse_rows() -> list[dict]:
    q = "As shown in the figure, angle CED is ()\nChoices:\nA:40°\nB:60°\nC:80°\nD:100°"
    return [
        {"sample_index": "1", "problem_index": "1", "problem_version": "Text Dominant", "question": q,
         "image": _img(), "answer": "B", "question_type": "multi-choice", "query_wo": MC_WO + q},
        {"sample_index": "2", "problem_index": "2", "problem_version": "Vision Only", "question": "",
         "image": _img((0, 90, 0)), "answer": "14", "question_type": "free-form",
         "query_wo": "According to the question shown in the image, please directly answer the question and provide "
                     "the final value, e.g., 1, 2.5, 300."},
        {"sample_index": "3", "problem_index": "3", "problem_version": "Text Only", "question": "What is 3 + 4?",
         "image": None, "answer": "7", "question_type": "free-form", "query_wo": "Question: What is 3 + 4?"},
    ]


MATHVISION = [("id", pa.string()), ("question", pa.string()), ("options", pa.list_(pa.string())),
              ("image", pa.string()), ("decoded_image", IMAGE), ("answer", pa.string()), ("solution", pa.string()),
              ("level", pa.int64()), ("subject", pa.string())]


def mathvision_rows() -> list[dict]:
    return [
        {"id": "4", "question": "<image1>\nWhich number is missing?", "options": ["2", "3", "4", "5", "6"],
         "image": "images/4.jpg", "decoded_image": _img(), "answer": "C", "level": 2, "subject": "arithmetic"},
        {"id": "9", "question": "How many edges does the cube in <image1> have?", "options": [],
         "image": "images/9.jpg", "decoded_image": _img((0, 0, 90)), "answer": "12", "level": 1,
         "subject": "solid geometry"},
    ]


WEMATH = [("ID", pa.string()), ("split", pa.string()), ("knowledge concept", pa.string()), ("question", pa.string()),
          ("option", pa.string()), ("answer", pa.string()), ("image_path", IMAGE), ("key", pa.string()),
          ("question number", pa.int64()), ("knowledge concept description", pa.string())]


def wemath_rows() -> list[dict]:
    """Two two-step problems (parts 1, 2 and the multi-step question each) and one incomplete three-step one."""
    rows = []
    for problem, n in (("2steps_1", 2), ("2steps_2", 2), ("3steps_1", 1)):
        for part in [str(k) for k in range(1, n + 1)] + (["multi"] if n == 2 else []):
            rows.append({"ID": problem, "split": "testmini", "knowledge concept": "Angles", "question": "Find x.",
                         "option": "A. 30;B. 45; C. 60;D. 90;E. No correct answer", "answer": "B",
                         "image_path": _img(), "key": f"{problem.split('_')[0]}_{part}",
                         "question number": len(rows) + 1})
    return rows


MMMU_PRO = ([("id", pa.string()), ("question", pa.string()), ("options", pa.string()), ("explanation", pa.string())]
            + [(f"image_{k}", IMAGE) for k in range(1, 8)]
            + [("img_type", pa.string()), ("answer", pa.string()), ("topic_difficulty", pa.string()),
               ("subject", pa.string())])
MMMU_PRO_VISION = [("id", pa.string()), ("image", IMAGE), ("options", pa.string()), ("answer", pa.string()),
                   ("subject", pa.string())]
TEN = "['Zinc', 'Potassium', 'Iron', 'Copper', 'Lead', 'Tin', 'Gold', 'Silver', 'Nickel', 'Cobalt']"


def mmmu_pro_rows() -> list[dict]:
    return [{"id": "test_Chemistry_1", "question": "Which metal is shown in <image 1>?", "options": TEN,
             "answer": "J", "subject": "Chemistry", "image_1": _img(), "img_type": "['Photos']"}]


HALLUSION = [("category", pa.string()), ("subcategory", pa.string()), ("visual_input", pa.string()),
             ("set_id", pa.string()), ("figure_id", pa.string()), ("sample_note", pa.string()),
             ("question_id", pa.string()), ("question", pa.string()), ("gt_answer_details", pa.string()),
             ("gt_answer", pa.string()), ("filename", pa.string()), ("image", IMAGE)]


def hallusion_rows() -> list[dict]:
    """One set: questions 0 and 1 about the original figure 0 and the edited figure 1."""
    return [{"category": "VD", "subcategory": "illusion", "visual_input": "1", "set_id": "0", "figure_id": fig,
             "question_id": q, "question": f"Is line {q} longer?", "gt_answer": truth, "image": _img()}
            for fig, q, truth in (("0", "0", "1"), ("0", "1", "0"), ("1", "0", "0"), ("1", "1", "0"))]


# ----------------------------------------------------------------------------------------------
# Rows → prompts
# ----------------------------------------------------------------------------------------------


def test_mathverse_prompt_is_query_wo_and_options_reach_the_grader(tmp_path):
    kind, (mc, vision_only, text_only) = benchmarks.load_benchmark_file(
        _write(mathverse_rows(), MATHVERSE, tmp_path / "testmini.parquet"))
    assert kind == "mathverse"
    assert mc.question == "<image>\n" + mathverse_rows()[0]["query_wo"] and len(mc.images) == 1
    assert (mc.answer, mc.choices, mc.qtype) == ("B", ["40°", "60°", "80°", "100°"], "Text Dominant")
    assert evaluation.grade_item(0, mc, FULL.format("60°"), 9, False)["accuracy"] == 1.0
    assert evaluation.grade_item(0, mc, FULL.format("B"), 9, False)["accuracy"] == 1.0
    assert evaluation.grade_item(0, mc, FULL.format("A"), 9, False)["accuracy"] == 0.0
    assert (vision_only.answer, vision_only.choices, vision_only.qtype) == ("14", None, "Vision Only")
    assert text_only.images == [] and "<image>" not in text_only.question and text_only.qtype == "Text Only"


def test_mathvision_prompt_and_letter_or_value(tmp_path):
    path = _write(mathvision_rows(), MATHVISION, tmp_path / "testmini.parquet")
    kind, (mc, free) = benchmarks.load_benchmark_file(path)
    assert kind == "mathvision"
    assert mc.question == ("<image>\n" + benchmarks.MATHVISION_PREFIX + "<image1>\nWhich number is missing?\n"
                           "Choices: A. 2\nB. 3\nC. 4\nD. 5\nE. 6\n" + benchmarks.MATHVISION_CHOICE_PROMPT)
    assert (mc.answer, mc.choices, mc.qtype, mc.meta) == ("C", ["2", "3", "4", "5", "6"], "arithmetic", {"level": 2})
    for said, right in (("C", 1.0), ("4", 1.0), ("B", 0.0)):  # the letter or the option's value (lmms-eval)
        assert evaluation.grade_item(0, mc, FULL.format(said), 9, False)["accuracy"] == right
    assert free.question.endswith(benchmarks.MATHVISION_PREFIX + "How many edges does the cube in <image1> have?")
    assert (free.answer, free.choices) == ("12", None)


def test_wemath_uses_its_own_system_prompt_and_think_format(tmp_path):
    kind, items = benchmarks.load_benchmark_file(_write(wemath_rows(), WEMATH, tmp_path / "testmini.parquet"))
    assert kind == "wemath" and len(items) == 7
    first = items[0]
    assert first.question == "<image>\nFind x.\nA. 30;B. 45; C. 60;D. 90;E. No correct answer"
    assert (first.answer, first.choices) == ("B", ["30", "45", "60", "90", "No correct answer"])
    assert first.system == benchmarks.WEMATH_SYSTEM_PROMPT and first.response_format == "think"
    assert first.meta == {"problem": "2steps_1", "steps": 2, "part": "1"} and items[2].qtype == "multi-step"
    # Graded in its own format: <think>/<answer> is well formed, a caption is not asked for.
    assert evaluation.grade_item(0, first, THINK.format("B"), 9, False)["accuracy"] == 1.0
    assert evaluation.grade_item(0, first, THINK.format("45"), 9, False)["accuracy"] == 1.0
    assert evaluation.grade_item(0, first, FULL.format("B"), 9, False)["format"] == 0.0


def test_mmmu_pro_standard_ten_options_and_vision(tmp_path):
    kind, (item,) = benchmarks.load_benchmark_file(_write(mmmu_pro_rows(), MMMU_PRO, tmp_path / "standard.parquet"))
    assert kind == "mmmu_pro" and item.answer == "J" and len(item.choices) == 10
    assert item.question == ("Which metal is shown in <image>?\nA. Zinc\nB. Potassium\nC. Iron\nD. Copper\nE. Lead\n"
                             "F. Tin\nG. Gold\nH. Silver\nI. Nickel\nJ. Cobalt\n\n" + benchmarks.MMMU_PRO_PROMPT)
    assert (item.qtype, item.meta) == ("Chemistry", {"setting": "standard"})
    vision_rows = [{"id": "test_Art_2", "image": _img(), "options": "['a', 'b', 'c']", "answer": "C",
                    "subject": "Art"}]
    kind, (shot,) = benchmarks.load_benchmark_file(_write(vision_rows, MMMU_PRO_VISION, tmp_path / "vision.parquet"))
    assert kind == "mmmu_pro" and shot.question == "<image>\n" + benchmarks.MMMU_PRO_PROMPT
    assert shot.meta == {"setting": "vision"} and shot.choices == ["a", "b", "c"]


def test_hallusionbench_yes_no_and_its_groups(tmp_path):
    kind, items = benchmarks.load_benchmark_file(_write(hallusion_rows(), HALLUSION, tmp_path / "image.parquet"))
    assert kind == "hallusionbench" and [e.answer for e in items] == ["yes", "no", "no", "no"]
    assert items[0].meta == {"figure": "VD/illusion/0/0", "question": "VD/illusion/0/0", "no_visual": False}
    assert items[2].meta["question"] == items[0].meta["question"] and items[2].meta["figure"] != items[0].meta["figure"]
    assert evaluation.grade_item(0, items[0], FULL.format("Yes"), 9, False)["accuracy"] == 1.0
    assert evaluation.grade_item(0, items[0], FULL.format("No"), 9, False)["accuracy"] == 0.0


@pytest.mark.parametrize("builder, schema, change, message", [
    (wemath_rows, WEMATH, {"key": "2steps_x"}, "key '2steps_x' is not"),
    (wemath_rows, WEMATH, {"option": "A. 1;C. 2"}, "option 'C. 2' is not lettered B"),
    (hallusion_rows, HALLUSION, {"gt_answer": "yes"}, "gt_answer 'yes' is neither '1' (yes) nor '0' (no)"),
    (mathvision_rows, MATHVISION, {"answer": "F"}, "answer 'F' is not the letter of one of 5 options"),
    (mmmu_pro_rows, MMMU_PRO, {"image_1": None}, "(<image 1>): an image must be"),
    (mathverse_rows, MATHVERSE, {"image": {"bytes": None, "path": "fig.png"}}, "image 'fig.png' is neither embedded"),
    (mathverse_rows, MATHVERSE, {"image": None}, "image: no image, but the row is not marked text-only"),
    (hallusion_rows, HALLUSION, {"image": None}, "image: no image, but the row is not marked text-only"),
])
def test_rows_that_cannot_be_asked_as_published_are_refused(tmp_path, builder, schema, change, message):
    path = _write([builder()[0] | change], schema, tmp_path / "bench.parquet")
    with pytest.raises(data.DataError, match="row 0.*" + message.replace("(", r"\(").replace(")", r"\)")):
        benchmarks.load_benchmark_file(path)


def test_an_image_named_beside_the_parquet_is_read(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "fig.png").write_bytes(_png((1, 2, 3)))
    row = mathverse_rows()[1] | {"image": {"bytes": None, "path": "images/fig.png"}}
    _, (item,) = benchmarks.load_benchmark_file(_write([row], MATHVERSE, tmp_path / "testmini.parquet"))
    assert item.images == [tmp_path / "images" / "fig.png"]


# ----------------------------------------------------------------------------------------------
# The benchmarks' own metrics, by hand
# ----------------------------------------------------------------------------------------------


def _records(metas_and_grades) -> list[dict]:
    return [{"meta": meta, "accuracy": acc} for meta, acc in metas_and_grades]


def test_hallusionbench_aacc_facc_qacc_by_hand():
    fig = lambda f, q: {"figure": f"s/{f}", "question": f"s/{q}", "no_visual": False}  # noqa: E731
    # figure 0: q0 right, q1 right → figure right; figure 1: q0 wrong, q1 right → figure wrong.
    # question 0: right on fig 0, wrong on fig 1 → wrong; question 1: right on both → right.
    # A no-visual VS question (no figure): counts in aAcc and qAcc, not in fAcc.
    records = _records([(fig(0, 0), 1.0), (fig(0, 1), 1.0), (fig(1, 0), 0.0), (fig(1, 1), 1.0),
                        ({"figure": "v/0", "question": "v/9", "no_visual": True}, 0.0)])
    assert benchmarks.hallusionbench_scores(records) == {"aAcc": 3 / 5, "fAcc": 1 / 2, "qAcc": 1 / 3}


def test_wemath_strict_and_loose_by_hand():
    def problem(name, steps, parts, whole):
        return [({"problem": name, "steps": steps, "part": str(k + 1)}, acc) for k, acc in enumerate(parts)] + \
               [({"problem": name, "steps": steps, "part": "multi"}, whole)]

    records = _records(problem("a", 2, [1.0, 1.0], 1.0)    # CM (both)
                       + problem("b", 2, [1.0, 0.0], 1.0)  # RM strict, CM loose
                       + problem("c", 2, [0.0, 0.0], 1.0)  # RM (both)
                       + problem("d", 3, [1.0, 1.0, 1.0], 0.0)  # IG
                       + problem("e", 2, [0.0, 1.0], 0.0)  # IK
                       + [({"problem": "f", "steps": 3, "part": "1"}, 1.0)])  # incomplete: not counted
    scores = benchmarks.wemath_scores(records)
    # P = 5: strict = (5 − 0.5·1 − 2 − 1) / 5 = 0.3; loose = (5 − 0.5·1 − 1 − 1) / 5 = 0.5
    assert scores["problems"] == 5 and scores["strict"] == pytest.approx(0.3) and scores["loose"] == pytest.approx(0.5)
    assert (scores["IK"], scores["IG"], scores["CM_strict"], scores["RM_strict"], scores["CM_loose"],
            scores["RM_loose"]) == (1, 1, 1, 2, 2, 1)
    assert scores["one_step_accuracy"] == pytest.approx(8 / 12)  # the parts of a–e and f's lone part: 8 of 12
    assert scores["2_step_accuracy"] == pytest.approx(3 / 4) and scores["3_step_accuracy"] == 0.0


def test_table_has_a_column_per_benchmark_the_average_and_their_own_metrics():
    def summary(acc, extra):
        return {"accuracy": acc, "format_rate": 1.0, "mean_tokens": 10.0, "benchmark": extra}

    table = evaluation.markdown_table({
        "SFT": {"HallusionBench": summary(0.5, {"aAcc": 0.5, "fAcc": 0.25, "qAcc": 0.125}),
                "WeMath": summary(0.25, {"strict": 0.1, "loose": 0.2, "problems": 5})},
    }).splitlines()
    assert table[0] == "| model | HallusionBench acc % | WeMath acc % | Avg |"
    assert table[2] == "| SFT | 50.0 | 25.0 | 37.5 |"
    assert table[4].startswith("| model | HallusionBench format % | HallusionBench tokens | HallusionBench aAcc |")
    assert table[6] == "| SFT | 100.0 | 10 | 50.0 | 25.0 | 12.5 | 100.0 | 10 | 10.0 | 20.0 |"


# ----------------------------------------------------------------------------------------------
# eval.py over all seven schemas on the tiny model
# ----------------------------------------------------------------------------------------------


def test_eval_reads_all_seven_schemas_end_to_end(tiny_dir, tmp_path):
    from test_inputs import _mathvista, _mmmu  # the MathVista and MMMU rows of the inputs suite

    files = {
        "MathVista": tmp_path / "mathvista.parquet",
        "MathVerse": _write(mathverse_rows(), MATHVERSE, tmp_path / "mathverse.parquet"),
        "MathVision": _write(mathvision_rows(), MATHVISION, tmp_path / "mathvision.parquet"),
        "WeMath": _write(wemath_rows(), WEMATH, tmp_path / "wemath.parquet"),
        "MMMU": tmp_path / "mmmu.parquet",
        "MMMU-Pro": _write(mmmu_pro_rows(), MMMU_PRO, tmp_path / "mmmu_pro.parquet"),
        "HallusionBench": _write(hallusion_rows(), HALLUSION, tmp_path / "hallusion.parquet"),
    }
    pq.write_table(pa.Table.from_pylist([_mathvista()]), files["MathVista"])
    pq.write_table(pa.Table.from_pylist([_mmmu()]), files["MMMU"])
    out = tmp_path / "results.json"
    printed = run_script(["eval.py", "--policy", tiny_dir, "--policy-names", "tiny", "--data", *files.values(),
                          "--data-names", *files, "--max-new-tokens", "6", "--batch-size", "4", "--device", "cpu",
                          "--out", out], timeout=600).stdout
    report = json.loads(out.read_text())
    assert list(report["benchmarks"]) == list(files)
    assert [b["schema"] for b in report["benchmarks"].values()] == ["mathvista", "mathverse", "mathvision", "wemath",
                                                                    "mmmu", "mmmu_pro", "hallusionbench"]
    results = report["results"]["tiny"]["benchmarks"]
    assert set(results["HallusionBench"]["summary"]["benchmark"]) == {"aAcc", "fAcc", "qAcc"}
    assert {"strict", "loose"} <= set(results["WeMath"]["summary"]["benchmark"])
    assert set(results["MathVerse"]["summary"]["accuracy_by_type"]) == {"Text Dominant", "Vision Only", "Text Only"}
    assert "| model | MathVista acc % | MathVerse acc % | MathVision acc % | WeMath acc % | MMMU acc % | " \
           "MMMU-Pro acc % | HallusionBench acc % | Avg |" in printed
    # --max-new-tokens overrides every published limit, and the report says which limit each benchmark ran with.
    assert all(b["max_new_tokens"] == 6 for b in report["benchmarks"].values())
    assert all(r["tokens"] <= 6 for b in results.values() for r in b["items"])


def test_published_limits_per_benchmark():
    assert benchmarks.MAX_NEW_TOKENS["wemath"] == 49152 and benchmarks.MAX_NEW_TOKENS["mathvision"] == 24576
    assert benchmarks.Benchmark([], "hallusionbench", []).max_new_tokens == 8192


def test_benchmarks_figure_draws_every_benchmark(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    item = {"caption_items": 2, "reasoning_steps": 3}
    results = {"benchmarks": {"A": {}, "B": {}, "C": {}},
               "results": {name: {"benchmarks": {b: {"summary": {"accuracy": acc, "mean_tokens": tokens},
                                                     "items": [item]} for b in "ABC"}}
                           for name, acc, tokens in (("SFT", 0.5, 900.0), ("PRISM+GRPO", 0.6, 700.0))}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    proc = subprocess.run([sys.executable, "scripts/benchmarks_figure.py", tmp_path / "results.json", "--out",
                           tmp_path / "fig.png"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "fig.png").size[0] >= 1200


def test_a_text_only_hallusionbench_row_is_asked_without_an_image(tmp_path):
    row = hallusion_rows()[0] | {"visual_input": "0", "image": None, "category": "VS", "figure_id": "0"}
    _, (item,) = benchmarks.load_benchmark_file(_write([row], HALLUSION, tmp_path / "non_image.parquet"))
    assert item.images == [] and item.meta["no_visual"] and "<image>" not in item.question


def test_each_schema_is_read_by_its_own_adapter_even_without_optional_columns(tmp_path):
    """MathVision with its image only as a path beside the file (no decoded_image) is still MathVision,
    not MMMU-Pro's vision setting, which shares image, options, answer and subject."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "9.jpg").write_bytes(_png((0, 0, 90)))
    schema = [c for c in MATHVISION if c[0] != "decoded_image"]
    rows = [{k: v for k, v in mathvision_rows()[1].items() if k != "decoded_image"}]
    kind, (item,) = benchmarks.load_benchmark_file(_write(rows, schema, tmp_path / "testmini.parquet"))
    assert kind == "mathvision" and item.images == [tmp_path / "images" / "9.jpg"] and item.answer == "12"


def test_a_tensor_stored_twice_is_refused(tiny_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    import hf_checkpoint

    shutil.copytree(tiny_dir, tmp_path / "m")
    (weights,) = (tmp_path / "m").glob("*.safetensors")
    state = load_file(weights)
    name = sorted(state)[0]
    save_file({name: state[name]}, tmp_path / "m" / "stale.safetensors")
    with pytest.raises(data.DataError, match=f"{name.replace('.', '[.]')} is stored in both"):
        hf_checkpoint.load_hf_model(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "stale.safetensors").unlink()
    (tmp_path / "m" / "config.json").write_text(json.dumps(config | {"quantization_config": "fp8"}))
    with pytest.raises(data.DataError, match="quantization_config must be an object"):
        hf_checkpoint.load_hf_model(tmp_path / "m")
