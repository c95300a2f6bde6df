"""The demo pipeline end to end at its smallest size (SMOKE=1): every stage hands on to the next."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from report import caption_following  # noqa: E402


def test_demo_pipeline_smoke(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(["bash", "scripts/demo.sh", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={"PATH": "/usr/bin:/bin", "SMOKE": "1", "PYTHON": sys.executable,
                                            "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())["results"]
    assert list(results) == ["Base", "SFT", "PRISM", "SFT+GRPO", "PRISM+GRPO"]
    assert all(r["benchmarks"]["synthetic-test"]["summary"]["n"] == 4 for r in results.values())
    assert (out / "curves.png").stat().st_size > 10_000
    table = (out / "table.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == list(results)
    assert "demo finished" in proc.stdout
    assert (out / "proxies.png").stat().st_size > 10_000

    # The ablation rows (scripts/ablations.sh) from the same run, at the same smallest size.
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "HOME": str(tmp_path),
           "WARMUP_STEPS": "2", "ALIGN_STEPS": "1", "RL_STEPS": "1", "NEW_TOKENS": "8"}
    proc = subprocess.run(["bash", "scripts/ablations.sh", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ablations = json.loads((out / "ablations" / "results.json").read_text())["results"]
    assert list(ablations) == ["SFT", "PRISM", "PRISM-dense", "PRISM-text", "SFT+GRPO", "PRISM+GRPO",
                               "PRISM-dense+GRPO", "PRISM-text+GRPO"]
    assert "discriminator dense" in proc.stdout and "text only" in proc.stdout

    # The multi-seed table (scripts/seeds.py), here over the one run seen twice: every spread is 0.
    for seed in ("seed0", "seed1"):
        (tmp_path / seed).symlink_to(out)
    proc = subprocess.run([sys.executable, "scripts/seeds.py", tmp_path / "seed0", tmp_path / "seed1", "--out",
                           tmp_path], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy, _, following, differences = (section.splitlines() for section in
                                           (tmp_path / "seeds-synthetic-test.md").read_text().split("### ")[1:])
    assert following[0].startswith("Answers that follow the policy's own caption")
    rows = [line.split("|")[1].strip() for line in following[3:] if line.startswith("|")]
    assert rows == list(results)[1:]  # every checkpoint but Base
    assert next(line for line in accuracy if line.startswith("| SFT+GRPO |")).endswith("± 0.0 (n=2) |")
    assert any(line.startswith("| Δ PRISM+GRPO − SFT+GRPO (headline) | +0.0 | +0.0 |") for line in differences)


def test_caption_following_is_the_share_of_answers_their_own_caption_implies(tmp_path):
    questions = tmp_path / "test.jsonl"
    questions.write_text('{"id": "a", "question": "How many red circles are in the image?"}\n'
                         '{"id": "b", "question": "Is there a blue circle in the image?"}\n')

    def response(answer):
        return ("<caption>\n- top-left: red circle\n- top-right: empty\n</caption>\n"
                f"<think>\nx\n</think>\n<answer>{answer}</answer>")

    items = [{"id": "a", "response": response("1")},  # one red circle stated: follows
             {"id": "b", "response": response("yes")},  # no blue one stated: does not follow
             {"id": "b", "response": response("no")},  # follows
             {"id": "a", "response": "1"},  # not well-formed: not counted
             {"id": "c", "response": response("2")}]  # a question the world derives nothing for: not counted
    questions.write_text(questions.read_text() + '{"id": "c", "question": "Which circle is largest?"}\n')
    results = {"benchmarks": {"split": {"files": ["elsewhere/test.jsonl"]}},  # read by name from tmp_path
               "results": {"P": {"benchmarks": {"split": {"items": items}}},
                           "Q": {"benchmarks": {"split": {"items": items[3:]}}}}}
    assert caption_following(results, "split", tmp_path) == {"P": 2 / 3, "Q": None}
    # At its recorded path, the file is read from there.
    results["benchmarks"]["split"]["files"] = [str(questions)]
    assert caption_following(results, "split", tmp_path / "nowhere") == {"P": 2 / 3, "Q": None}
    # An item whose question is in no file of the split, or no file at all: one error line.
    results["results"]["P"]["benchmarks"]["split"]["items"].append({"id": "d", "response": response("1")})
    with pytest.raises(SystemExit, match="error: split: item d of P is in no question file"):
        caption_following(results, "split", tmp_path)
    results["benchmarks"]["split"]["files"] = ["elsewhere/val.jsonl"]
    with pytest.raises(SystemExit, match="error: elsewhere/val.jsonl: the questions of split are neither there"):
        caption_following(results, "split", tmp_path)
