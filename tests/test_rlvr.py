"""rlvr.py: every equation on worked numbers, then the loop for each algorithm, 2 ranks and resume."""

import json
import math
import shutil

import pytest
import torch
from conftest import run_script

import model
import rlvr


def test_group_advantages_worked_example():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.7])
    group = torch.tensor([0, 0, 0, 0, 1])
    adv = rlvr.group_advantages(rewards, group)
    # group 0: mean 0.5, unbiased std sqrt(4·0.25/3) = 0.57735; group 1 is alone: mean 0, std 1
    expected = [0.5 / (0.5773503 + 1e-6), -0.5 / (0.5773503 + 1e-6)] * 1
    assert adv[0].item() == pytest.approx(expected[0], rel=1e-5)
    assert adv[1].item() == pytest.approx(expected[1], rel=1e-5)
    assert adv[4].item() == pytest.approx(0.7 / (1 + 1e-6), rel=1e-6)
    dr = rlvr.group_advantages(rewards, group, std_normalize=False)
    assert dr[:4].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])


def test_ppo_clip_every_branch():
    ratios = torch.tensor([[1.5, 0.5, 0.5, 5.0, 1.1]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0]])
    logp = torch.log(ratios)
    old = torch.zeros_like(logp)
    loss, low, high = rlvr.ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    # A>0, ρ=1.5: max(−1.5, −1.28) = −1.28 (clipped high) | A>0, ρ=0.5: max(−0.5, −0.8) = −0.5 (unclipped)
    # A<0, ρ=0.5: max(0.5, 0.8) = 0.8 (clipped low)       | A<0, ρ=5: max(5, 1.28) = 5 → dual clip min(5, 3) = 3
    # A<0, ρ=1.1: max(1.1, 1.1) = 1.1
    assert loss[0].tolist() == pytest.approx([-1.28, -0.5, 0.8, 3.0, 1.1], abs=1e-6)
    assert high[0].tolist() == [True, False, False, False, False]
    assert low[0].tolist() == [False, False, True, False, False]
    no_dual, _, _ = rlvr.ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.28, dual_clip=0.0)
    assert no_dual[0, 3].item() == pytest.approx(5.0)


def test_aggregation_modes_and_their_split_over_micro_batches():
    token_loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    expected = {"token-mean": 10 / 4, "seq-mean-token-mean": (2 + 4) / 2, "seq-mean-token-sum": (6 + 4) / 2,
                "seq-mean-token-sum-norm": 10 / (2 * 3)}
    for mode, value in expected.items():
        whole = rlvr.aggregate_loss(token_loss, mask, mode, total_tokens=4, total_seqs=2, max_len=3)
        parts = sum(rlvr.aggregate_loss(token_loss[i:i + 1], mask[i:i + 1], mode, 4, 2, 3) for i in range(2))
        assert whole.item() == pytest.approx(value) and parts.item() == pytest.approx(value), mode


def test_kl_estimators():
    logp, ref = torch.tensor([math.log(2.0)]), torch.tensor([0.0])
    assert rlvr.kl_penalty(logp, ref, "k1").item() == pytest.approx(0.693147, abs=1e-6)
    assert rlvr.kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * 0.693147**2, abs=1e-6)
    assert rlvr.kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + 0.693147, abs=1e-6)


def test_overlong_penalty():
    lengths = torch.tensor([100, 4096, 6144, 8192])
    assert rlvr.overlong_penalty(lengths, 8192, 4096, 1.0).tolist() == pytest.approx([0, 0, -0.5, -1.0])


def test_dynamic_sampling_filter():
    acc = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    assert rlvr.groups_with_varying_accuracy(acc, torch.tensor([0, 0, 1, 1, 2, 2])).tolist() == [False, False, True]


def test_gspo_value_and_gradient_equal_the_sequence_objective():
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    logp = (-torch.rand(2, 4)).requires_grad_()
    old = (logp.detach() + 1e-4 * torch.randn(2, 4))  # ratios inside the clip range
    adv = torch.tensor([0.7, -1.3])
    loss, _, _ = rlvr.gspo_loss(logp, old, adv, mask, 3e-4, 4e-4)
    total = rlvr.aggregate_loss(loss, mask, "seq-mean-token-mean", mask.sum().item(), 2, 4)
    grad, = torch.autograd.grad(total, logp)
    # Sequence objective: J = −(1/2) Σ_i A_i s_i,  s_i = exp(mean_t(log π − log π_old))
    lengths = mask.sum(-1)
    s = torch.exp(((logp.detach() - old) * mask).sum(-1) / lengths)
    assert total.item() == pytest.approx((-(adv * s).sum() / 2).item(), abs=1e-7)
    analytic = (-adv * s / (2 * lengths))[:, None] * mask  # ∂J/∂log π_{i,t}
    assert torch.allclose(grad, analytic, atol=1e-7)


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
    a = model.load_hf_model(tmp_path / "full" / "model").state_dict()
    b = model.load_hf_model(tmp_path / "resumed" / "model").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    untimed = lambda rows: [{k: v for k, v in m.items() if not k.startswith("time/")} for m in rows]  # noqa: E731
    assert untimed(_metrics(tmp_path / "full")) == untimed(_metrics(tmp_path / "resumed"))


def test_an_overlong_buffer_longer_than_the_responses_is_refused(tiny_dir, synth_dir, tmp_path):
    with pytest.raises(AssertionError, match="--overlong-buffer 4096 must be shorter than --max-new-tokens 16"):
        run_script(["rlvr.py", "--policy", tiny_dir, "--data", synth_dir / "rl.parquet", "--algo", "dapo",
                    "--out", tmp_path, *SMALL])
