"""align.py: the advantage and discriminator loss on worked numbers, then the loop: runs, 2 ranks, resume."""

import json
import math
import shutil

import pytest
import torch
from conftest import run_script

import align
import model
import run


def test_advantages_with_an_invalid_rollout():
    group = torch.tensor([0, 0, 0, 0])
    valid = torch.tensor([True, True, False, True])
    r_cap = torch.tensor([2.0, 1.0, 0.0, 3.0])
    r_rea = torch.tensor([1.0, 1.0, 0.0, -1.0])
    adv = align.alignment_advantages(r_cap, r_rea, valid, group, alpha=0.5, format_penalty=1.5)
    # cap: invalid → min(2, 1, 3) − 1 = 0 → [2, 1, 0, 3], mean 1.5, std √(5/3) = 1.290994
    # rea: invalid → min(1, 1, −1) − 1 = −2 → [1, 1, −2, −1], mean −0.25, std 1.5
    expected = [0.5 * (0.387298 + 0.833333), 0.5 * (-0.387298 + 0.833333),
                0.5 * (-1.161895 - 1.166667) - 1.5, 0.5 * (1.161895 - 0.5)]
    assert adv.tolist() == pytest.approx(expected, abs=1e-5)


def test_advantages_when_a_whole_group_is_invalid():
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    valid = torch.tensor([False, False, False, True, True, False])
    r = torch.tensor([5.0, -3.0, 2.0, 1.0, 3.0, 0.0])
    filled = align.fill_invalid_scores(r, valid, group)
    assert filled.tolist() == [-1.0, -1.0, -1.0, 1.0, 3.0, 0.0]  # no valid member: 0 − 1; else min(1, 3) − 1
    adv = align.alignment_advantages(r, r, valid, group, alpha=0.3, format_penalty=1.5)
    assert adv[:3].tolist() == pytest.approx([-1.5, -1.5, -1.5])  # equal scores: z = 0, only the penalty left
    # group 1: [1, 3, 0], mean 4/3, std √(7/3) = 1.527525
    assert adv[3:].tolist() == pytest.approx([-0.218218, 1.091089, -0.872872 - 1.5], abs=1e-5)


def test_discriminator_loss_worked_example():
    t_cap, s_cap = torch.tensor([2.0, 2.0]), torch.tensor([1.0, 3.0])
    t_rea, s_rea = torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0])
    valid = torch.tensor([True, False])
    reg = (1 + 9 + 0 + 1 + 4 + 4 + 0 + 0) / 8 * 1e-3
    bt = align.discriminator_loss(t_cap, s_cap, t_rea, s_rea, valid, model.bt_pair_loss, 1, 2, 1e-3)
    assert bt.item() == pytest.approx(math.log(1 + math.exp(-1)) + math.log(2) + reg, abs=1e-6)
    bce = align.discriminator_loss(t_cap, s_cap, t_rea, s_rea, valid, model.bce_pair_loss, 1, 2, 1e-3)
    sp = lambda x: math.log(1 + math.exp(x))  # noqa: E731
    assert bce.item() == pytest.approx(sp(-2) + sp(1) + sp(0) + sp(0) + reg, abs=1e-6)
    fallback = align.discriminator_loss(t_cap, s_cap, t_rea, s_rea, torch.tensor([False, False]),
                                        model.bt_pair_loss, 0, 2, 1e-3)
    assert fallback.item() == pytest.approx(0.01 * (2 * sp(-2) + 2 * sp(0)) / 2 + reg, abs=1e-6)


@pytest.fixture(scope="module")
def disc_dir(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("disc") / "disc"
    run_script(["upcycle_moe.py", "--dense", tiny_dir, "--out", out])
    return out


SMALL = ["--prompts-per-step", "2", "--rollouts-per-prompt", "4", "--max-new-tokens", "16", "--lr", "1e-4",
         "--disc-lr", "1e-4", "--save-every", "1"]


def _metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_a_short_run_completes_and_both_models_reload(tiny_dir, disc_dir, synth_dir, tmp_path):
    run_script(["tests/align_worker.py", "--policy", tiny_dir, "--discriminator", disc_dir, "--data",
                synth_dir / "align.parquet", "--out", tmp_path, "--steps", "2", *SMALL], env={"VALID_RANKS": "0"})
    metrics = _metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(v) for m in metrics for v in m.values())
    assert metrics[0]["reward/format"] == 1.0 and metrics[0]["optim/disc_grad_norm"] > 0
    for name in ("disc/perception/gap", "disc/reasoning/accuracy", "loss/policy", "time/disc_update_s"):
        assert name in metrics[0]
    policy = model.Policy.from_pretrained(tmp_path / "model")
    disc = model.Discriminator.from_pretrained(tmp_path / "discriminator")
    trained = run.read_sharded(tmp_path / "checkpoints" / "step_00000002" / "discriminator")
    assert torch.equal(disc.head.weight, trained["head.weight"])
    assert not torch.equal(disc.head.weight, model.Discriminator.from_pretrained(disc_dir).head.weight)
    assert sum(p.numel() for p in policy.parameters()) > 1e6


@pytest.mark.parametrize("valid_ranks", ["0", ""])
def test_two_ranks_with_invalid_rollouts_stay_in_lockstep(tiny_dir, disc_dir, synth_dir, tmp_path, valid_ranks):
    """Rank 1's rollouts are all malformed (and, in the second case, rank 0's too: the fallback loss)."""
    run_script(["tests/align_worker.py", "--policy", tiny_dir, "--discriminator", disc_dir, "--data",
                synth_dir / "align.parquet", "--out", tmp_path, "--steps", "2", *SMALL],
               nproc=2, timeout=240, env={"VALID_RANKS": valid_ranks})
    digests = [(tmp_path / f"digest_rank{r}.txt").read_text() for r in range(2)]
    assert digests[0] == digests[1]
    metrics = _metrics(tmp_path)
    assert metrics[0]["reward/format"] == (0.5 if valid_ranks else 0.0)
    assert all(math.isfinite(v) for m in metrics for v in m.values())


def test_resume_equals_an_uninterrupted_run(tiny_dir, disc_dir, synth_dir, tmp_path):
    args = ["tests/align_worker.py", "--policy", tiny_dir, "--discriminator", disc_dir, "--data",
            synth_dir / "align.parquet", "--steps", "3", *SMALL]
    run_script(args + ["--out", tmp_path / "full"], env={"VALID_RANKS": "0"})
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    for name in ("step_00000002", "step_00000003"):
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / name)
    for name in ("model", "discriminator"):
        shutil.rmtree(tmp_path / "resumed" / name)
    run_script(args + ["--out", tmp_path / "resumed", "--resume"], env={"VALID_RANKS": "0"})
    digest = lambda run: (tmp_path / run / "digest_rank0.txt").read_text()  # noqa: E731
    assert digest("full") == digest("resumed")
