"""rlvr.py: DAPO's overlong shaping and dynamic sampling on worked numbers, then the loop for each algorithm,
2 ranks and resume (the shared policy-gradient math is tested in test_policy_gradient.py)."""

import json
import math
import shutil

import pytest
import torch
from conftest import run_script

import hf_checkpoint
import rlvr


def test_overlong_penalty():
    lengths = torch.tensor([100, 4096, 6144, 8192])
    assert rlvr.overlong_penalty(lengths, 8192, 4096, 1.0).tolist() == pytest.approx([0, 0, -0.5, -1.0])


def test_dynamic_sampling_filter():
    acc = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    assert rlvr.groups_with_varying_accuracy(acc, torch.tensor([0, 0, 1, 1, 2, 2])).tolist() == [False, False, True]
    # A group of one rollout is kept, as the release keeps it (--rollouts-per-prompt 1 would otherwise stop).
    assert rlvr.groups_with_varying_accuracy(torch.tensor([1.0, 0.0]), torch.tensor([0, 1])).tolist() == [True, True]


def _metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


SMALL = ["--prompts-per-step", "2", "--rollouts-per-prompt", "4", "--max-new-tokens", "16", "--lr", "1e-4",
         "--micro-batch-tokens", "600", "--save-every", "1"]


@pytest.mark.parametrize("algo", ["grpo", "dapo", "gspo"])
def test_each_algorithm_runs_with_finite_metrics(tiny_dir, synth_dir, tmp_path, algo):
    extra = ["--overlong-buffer", "8"] if algo == "dapo" else []
    run_script(["tests/rlvr_worker.py", "--policy", tiny_dir, "--data", synth_dir / "rl.parquet", "--algo", algo,
                "--out", tmp_path, "--steps", "2", *SMALL, *extra])
    metrics = _metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(v) for m in metrics for v in m.values())
    assert metrics[-1]["optim/grad_norm"] > 0


def _prompts_file(tmp_path, synth_dir, answers):
    lines = (synth_dir / "test.jsonl").read_text().splitlines()
    records = [json.loads(line) | {"answer": a, "images": [str(synth_dir / json.loads(line)["images"][0])]}
               for line, a in zip(lines, answers)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_dapo_drops_uniform_groups_and_two_ranks_stay_identical(tiny_dir, synth_dir, tmp_path):
    # 8 prompts: half always right or never right (dropped), half with varying outcomes (kept).
    prompts = _prompts_file(tmp_path, synth_dir, ["ALWAYS", "1", "NEVER", "2", "ALWAYS", "3", "NEVER", "4"])
    args = ["tests/rlvr_worker.py", "--policy", tiny_dir, "--data", prompts, "--algo", "dapo", "--steps", "2",
            "--overlong-buffer", "8",
            "--prompts-per-round", "4", *SMALL]
    run_script(args + ["--out", tmp_path / "one"])
    kept = [m["sampling/kept_group_ratio"] for m in _metrics(tmp_path / "one")]
    assert all(0 < k < 1 for k in kept)
    # Two ranks draw different prompts, so each keeps a different number of groups.
    run_script(args + ["--out", tmp_path / "two"], nproc=2)
    digests = [(tmp_path / "two" / f"digest_rank{r}.txt").read_text() for r in range(2)]
    assert digests[0] == digests[1]
    assert all(math.isfinite(v) for m in _metrics(tmp_path / "two") for v in m.values())


def test_dynamic_sampling_gives_up_with_a_clear_error(tiny_dir, synth_dir, tmp_path):
    prompts = _prompts_file(tmp_path, synth_dir, ["ALWAYS", "NEVER"] * 4)
    with pytest.raises(AssertionError, match="dynamic sampling kept 0 of 2 groups after 2 rounds"):
        run_script(["tests/rlvr_worker.py", "--policy", tiny_dir, "--data", prompts, "--algo", "dapo",
                    "--overlong-buffer", "8", "--steps",
                    "1", "--max-sampling-rounds", "2", "--out", tmp_path / "run", *SMALL])


def test_resume_equals_an_uninterrupted_run(tiny_dir, synth_dir, tmp_path):
    args = ["tests/rlvr_worker.py", "--policy", tiny_dir, "--data", synth_dir / "rl.parquet", "--algo", "grpo",
            "--steps", "3", *SMALL]
    run_script(args + ["--out", tmp_path / "full"])
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    for name in ("step_00000002", "step_00000003"):
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / name)
    shutil.rmtree(tmp_path / "resumed" / "model")
    run_script(args + ["--out", tmp_path / "resumed", "--resume"])
    a = hf_checkpoint.load_hf_model(tmp_path / "full" / "model").state_dict()
    b = hf_checkpoint.load_hf_model(tmp_path / "resumed" / "model").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    untimed = lambda rows: [{k: v for k, v in m.items() if not k.startswith("time/")} for m in rows]  # noqa: E731
    assert untimed(_metrics(tmp_path / "full")) == untimed(_metrics(tmp_path / "resumed"))
