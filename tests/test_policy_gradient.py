"""policy_gradient.py: the group advantage, the clipped losses, aggregation and KL estimators on worked numbers."""

import math

import pytest
import torch

import policy_gradient as pg


def test_group_advantages_worked_example():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.7])
    group = torch.tensor([0, 0, 0, 0, 1])
    adv = pg.group_advantages(rewards, group)
    # group 0: mean 0.5, unbiased std sqrt(4·0.25/3) = 0.57735; group 1 is alone: mean 0, std 1
    expected = [0.5 / (0.5773503 + 1e-6), -0.5 / (0.5773503 + 1e-6)] * 1
    assert adv[0].item() == pytest.approx(expected[0], rel=1e-5)
    assert adv[1].item() == pytest.approx(expected[1], rel=1e-5)
    assert adv[4].item() == pytest.approx(0.7 / (1 + 1e-6), rel=1e-6)
    dr = pg.group_advantages(rewards, group, std_normalize=False)
    assert dr[:4].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])


def test_ppo_clip_every_branch():
    ratios = torch.tensor([[1.5, 0.5, 0.5, 5.0, 1.1]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0]])
    logp = torch.log(ratios)
    old = torch.zeros_like(logp)
    loss, low, high = pg.ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    # A>0, ρ=1.5: max(−1.5, −1.28) = −1.28 (clipped high) | A>0, ρ=0.5: max(−0.5, −0.8) = −0.5 (unclipped)
    # A<0, ρ=0.5: max(0.5, 0.8) = 0.8 (clipped low)       | A<0, ρ=5: max(5, 1.28) = 5 → dual clip min(5, 3) = 3
    # A<0, ρ=1.1: max(1.1, 1.1) = 1.1
    assert loss[0].tolist() == pytest.approx([-1.28, -0.5, 0.8, 3.0, 1.1], abs=1e-6)
    assert high[0].tolist() == [True, False, False, False, False]
    assert low[0].tolist() == [False, False, True, False, False]
    no_dual, _, _ = pg.ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.28, dual_clip=0.0)
    assert no_dual[0, 3].item() == pytest.approx(5.0)


def test_aggregation_modes_and_their_split_over_micro_batches():
    token_loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    expected = {"token-mean": 10 / 4, "seq-mean-token-mean": (2 + 4) / 2, "seq-mean-token-sum": (6 + 4) / 2,
                "seq-mean-token-sum-norm": 10 / (2 * 3)}
    for mode, value in expected.items():
        whole = pg.aggregate_loss(token_loss, mask, mode, total_tokens=4, total_seqs=2, max_len=3)
        parts = sum(pg.aggregate_loss(token_loss[i:i + 1], mask[i:i + 1], mode, 4, 2, 3) for i in range(2))
        assert whole.item() == pytest.approx(value) and parts.item() == pytest.approx(value), mode


def test_kl_estimators():
    logp, ref = torch.tensor([math.log(2.0)]), torch.tensor([0.0])
    assert pg.kl_penalty(logp, ref, "k1").item() == pytest.approx(0.693147, abs=1e-6)
    assert pg.kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * 0.693147**2, abs=1e-6)
    assert pg.kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + 0.693147, abs=1e-6)


def test_gspo_value_and_gradient_equal_the_sequence_objective():
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    logp = (-torch.rand(2, 4)).requires_grad_()
    old = (logp.detach() + 1e-4 * torch.randn(2, 4))  # ratios inside the clip range
    adv = torch.tensor([0.7, -1.3])
    loss, _, _ = pg.gspo_loss(logp, old, adv, mask, 3e-4, 4e-4)
    total = pg.aggregate_loss(loss, mask, "seq-mean-token-mean", mask.sum().item(), 2, 4)
    grad, = torch.autograd.grad(total, logp)
    # Sequence objective: J = −(1/2) Σ_i A_i s_i,  s_i = exp(mean_t(log π − log π_old))
    lengths = mask.sum(-1)
    s = torch.exp(((logp.detach() - old) * mask).sum(-1) / lengths)
    assert total.item() == pytest.approx((-(adv * s).sum() / 2).item(), abs=1e-7)
    analytic = (-adv * s / (2 * lengths))[:, None] * mask  # ∂J/∂log π_{i,t}
    assert torch.allclose(grad, analytic, atol=1e-7)


def test_a_group_of_equal_rewards_has_advantage_exactly_zero():
    # The release's float32 formula gives sixteen rewards of 0.2 an advantage of −0.0147 each.
    rewards = torch.full((16,), 0.2)
    assert ((rewards - rewards.mean()) / (rewards.std() + 1e-6)).abs().max() > 1e-2
    group = torch.zeros(16, dtype=torch.long)
    assert pg.group_advantages(rewards, group).tolist() == [0.0] * 16
    mixed = torch.cat([torch.full((55,), 2.2), torch.tensor([1.0, 3.0])])
    adv = pg.group_advantages(mixed, torch.tensor([0] * 55 + [1, 1]))
    assert adv[:55].tolist() == [0.0] * 55 and adv[55] < 0 < adv[56]


def test_k3_is_clamped_as_verl_does_with_no_gradient_where_clamped():
    logp = torch.tensor([-5.0, -0.5], requires_grad=True)
    ref = torch.tensor([-0.1, -0.4])
    kl = pg.kl_penalty(logp, ref, "k3")
    # δ = −4.9: exp(4.9) − 1 − 4.9 = 128.4 unclamped → 10; δ = −0.1: exp(0.1) − 1 − 0.1 = 0.0051709.
    assert kl.tolist() == pytest.approx([10.0, math.exp(0.1) - 1.1], abs=1e-6)
    kl.sum().backward()
    assert logp.grad[0] == 0 and logp.grad[1] == pytest.approx(1 - math.exp(0.1), abs=1e-6)
    huge = pg.kl_penalty(torch.tensor([0.0]), torch.tensor([-50.0]), "k3")  # δ = 50 → 20: e^−20 − 1 + 20
    assert huge.item() == pytest.approx(10.0)
