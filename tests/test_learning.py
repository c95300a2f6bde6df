"""Learning goes the right way: a change that breaks it (an advantage's sign, a mask, a log-prob shift) fails here,
not only in the demo.

GRPO on the tiny model with a reward it can learn within a few steps (the share of vowels at the start of the
response: random text earns some of it, and every token can move it) must raise the reward, and the same steps
with the advantage's sign flipped must lower it. One alignment update must move a rollout's probability the way
its discriminator score moved its advantage.
"""

import pytest
import torch

import align
import batching
import data
import hf_checkpoint
import model
import policy_gradient as pg
import rlvr
import run

STEPS = 10


def vowel_share(text: str, example) -> tuple[float, float, float]:
    """(reward, accuracy, format): the share of vowels among the first 16 characters, or 0 if there are none."""
    head = text[:16]
    share = sum(c in "aeiou" for c in head) / len(head) if head else 0.0
    return share, share, 1.0


def _grpo_run(tiny_dir, synth_dir, sign: float) -> list[float]:
    """The measured vowel share of each of STEPS GRPO steps, the advantage multiplied by `sign`."""
    run.seed_everything(0)
    args = rlvr.with_preset(run.parse_args(rlvr.Args, [
        "--policy", str(tiny_dir), "--data", "unused", "--out", "unused", "--algo", "grpo", "--prompts-per-step", "4",
        "--rollouts-per-prompt", "8", "--max-new-tokens", "8", "--lr", "1e-2", "--micro-batch-tokens", "4096"]))
    processor = hf_checkpoint.load_processor(tiny_dir)
    policy = model.Policy.from_pretrained(tiny_dir)
    optimizer, scheduler = run.make_optimizer(policy, args.lr, args.weight_decay, STEPS, 0, "constant")
    prompts = data.load_prompts(synth_dir / "test.jsonl")

    def reward(text, example):  # the sign enters the reward, so it reaches the advantage and nothing else
        share, accuracy, fmt = vowel_share(text, example)
        return sign * share, accuracy, fmt

    progress, shares = {"prompts_consumed": 0}, []
    for _ in range(STEPS):
        metrics = rlvr.rlvr_step(policy, optimizer, scheduler, processor, prompts, args, pg.LossConfig.from_args(args),
                                 progress, run.Dist(), reward_fn=reward)
        shares.append(metrics["reward/accuracy"])
    return shares


def test_grpo_raises_a_learnable_reward_and_the_flipped_sign_lowers_it(tiny_dir, synth_dir):
    up = _grpo_run(tiny_dir, synth_dir, +1.0)
    down = _grpo_run(tiny_dir, synth_dir, -1.0)
    assert 0.05 < up[0] < 0.6 and down[0] == pytest.approx(up[0])  # partial competence, the same start
    first, last = slice(0, 2), slice(-2, None)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(up[last]) > mean(up[first]) + 0.1, up
    assert mean(down[last]) < mean(down[first]) - 0.05, down


def test_a_higher_discriminator_score_raises_the_advantage_and_then_the_probability(tiny_dir, synth_dir):
    run.seed_everything(0)
    processor = hf_checkpoint.load_processor(tiny_dir)
    examples = data.load_prompts(synth_dir / "test.jsonl")[:1]
    group = torch.zeros(8, dtype=torch.long)
    valid = torch.ones(8, dtype=torch.bool)
    r_cap, r_rea = torch.randn(8), torch.randn(8)
    base = align.alignment_advantages(r_cap, r_rea, valid, group, alpha=0.5, format_penalty=1.5)
    for scores in (r_cap, r_rea):  # either segment's score, raised for rollout 0 alone
        raised = scores.clone()
        raised[0] += 2.0
        bumped = align.alignment_advantages(*((raised, r_rea) if scores is r_cap else (r_cap, raised)), valid, group,
                                            alpha=0.5, format_penalty=1.5)
        assert bumped[0] > base[0]

    def logprob_of_rollout_0_after(advantages: torch.Tensor) -> tuple[float, float]:
        policy = model.Policy.from_pretrained(tiny_dir)
        run.seed_everything(1)
        rollouts = model.generate_rollouts(policy, batching.encode_prompts(processor, examples), processor.tokenizer,
                                           8, 8, 1.0, 1.0)
        batch, target, R, _ = rollouts.micro_batch([0])

        def logprob() -> float:
            with torch.no_grad():
                return policy(batch, target)[0][:, -R:][rollouts.response_mask[:1, :R].bool()].sum().item()

        before = logprob()
        optimizer, scheduler = run.make_optimizer(policy, 1e-3, 0.0, 1, 0, "constant")
        cfg = pg.LossConfig(max_len=8)  # the alignment stage's PPO-clip 0.2, token-mean
        pg.policy_update(policy, optimizer, scheduler, rollouts, advantages, rollouts.response_mask, cfg, 4096, 1.0,
                         run.Dist())
        return before, logprob()

    raised = r_cap.clone()
    raised[0] = r_cap.max() + 2.0  # rollout 0 is now the group's best perception
    before, after = logprob_of_rollout_0_after(align.alignment_advantages(raised, r_rea, valid, group, 0.5, 1.5))
    assert after > before
    lowered = r_cap.clone()
    lowered[0] = r_cap.min() - 2.0
    before, after = logprob_of_rollout_0_after(align.alignment_advantages(lowered, r_rea, valid, group, 0.5, 1.5))
    assert after < before
