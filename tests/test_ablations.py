"""The paper's discriminator ablations by flag (spec §9.2): a dense discriminator (`upcycle_moe.py --experts 1`)
and a text-only one (`--disc-text-only`), each built, warmed up, resumed and used by align.py on the tiny model."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_script

import align
import batching
import data
import hf_checkpoint
import model
import upcycle_moe


@pytest.fixture(scope="module")
def dense_disc_dir(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dense_disc") / "disc"
    printed = run_script(["upcycle_moe.py", "--dense", tiny_dir, "--out", out, "--experts", "1"])
    assert "discriminator dense" in printed.stdout
    return out


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dense_discriminator_is_the_dense_model_plus_a_score_head(tiny_dir, dense_disc_dir):
    dense = hf_checkpoint.load_hf_model(tiny_dir)
    disc = model.Discriminator.from_pretrained(dense_disc_dir)
    assert type(disc.hf).__name__ == "Qwen3VLForConditionalGeneration" and not disc.is_moe
    hidden = dense.config.text_config.hidden_size
    assert disc.head.weight.shape == (1, hidden)
    # No upcycling: every weight is the dense model's, and the only new parameters are the head's H.
    state = disc.hf.state_dict()
    assert all(torch.equal(state[k], v) for k, v in dense.state_dict().items())
    assert sum(p.numel() for p in disc.parameters()) == sum(p.numel() for p in dense.parameters()) + hidden
    assert disc.describe().startswith("dense, ")
    moe_line = model.Discriminator(upcycle_moe.upcycle(dense, experts=4, top_k=2)[0].hf).describe()
    assert moe_line.startswith("MoE, 4 experts top-2")


def test_dense_discriminator_scores_and_has_no_router_loss(dense_disc_dir, synth_dir, processor):
    disc = model.Discriminator.from_pretrained(dense_disc_dir).eval()
    pairs = data.load_pairs(synth_dir / "pairs_test.jsonl")[0][:2]
    prompts, teacher, student = upcycle_moe.line_inputs(processor, pairs)
    batch = model.scoring_batch(prompts, prompts.input_ids.shape[1], teacher, student, [0, 1],
                                processor.tokenizer.pad_token_id)
    with torch.no_grad():
        scores, aux = disc(batch, with_aux_loss=True)
    assert scores.shape == (8,) and torch.isfinite(scores).all() and aux.item() == 0.0


def _warmup_full_and_resumed(disc_dir, synth_dir, tmp_path, steps: int, *flags) -> tuple[dict, dict, str]:
    """A warm-up of `steps` steps, and the same run resumed from its last-but-one checkpoint: (full weights,
    resumed weights, the full run's console output)."""
    common = ["upcycle_moe.py", "warmup", "--discriminator", disc_dir, "--data", synth_dir / "pairs.jsonl", "--steps",
              str(steps), "--disc-micro-batch", "4", "--grad-accum", "1", "--disc-lr", "1e-3", "--save-every",
              str(steps // 2), *flags]
    printed = run_script(common + ["--out", tmp_path / "full"]).stdout
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step_{steps:08d}")
    shutil.rmtree(resumed / "discriminator")
    run_script(common + ["--out", resumed, "--resume"])
    return (model.Discriminator.from_pretrained(tmp_path / "full" / "discriminator").state_dict(),
            model.Discriminator.from_pretrained(resumed / "discriminator").state_dict(), printed)


def test_warmup_with_a_dense_discriminator_learns_and_resumes(dense_disc_dir, synth_dir, tmp_path):
    a, b, printed = _warmup_full_and_resumed(dense_disc_dir, synth_dir, tmp_path, 4)
    assert "discriminator dense" in printed
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    start = model.Discriminator.from_pretrained(dense_disc_dir).state_dict()
    assert not torch.equal(a["head.weight"], start["head.weight"])
    assert all(line["loss/aux"] == 0.0 for line in _metrics(tmp_path / "full") if "loss/aux" in line)


def _vision_ids(processor) -> torch.Tensor:
    return torch.tensor([processor.tokenizer.convert_tokens_to_ids(t) for t in data.VISION_TOKENS])


def test_text_only_inputs_hold_no_vision_token_and_keep_the_question(synth_dir, processor):
    pairs = data.load_pairs(synth_dir / "pairs_test.jsonl")[0][:3]
    seeing, *_ = upcycle_moe.line_inputs(processor, pairs)
    blind, teacher, student = upcycle_moe.line_inputs(processor, pairs, text_only=True)
    assert torch.isin(seeing.input_ids, _vision_ids(processor)).any()
    assert not torch.isin(blind.input_ids, _vision_ids(processor)).any() and blind.pixel_values is None
    for row, pair in zip(blind.input_ids, pairs):
        text = processor.tokenizer.decode(row, skip_special_tokens=False)
        assert pair.question.replace("<image>", "").strip() in text and data.SYSTEM_PROMPT in text
    scored = model.scoring_batch(blind, blind.input_ids.shape[1], teacher, student, [0, 1, 2],
                                 processor.tokenizer.pad_token_id)
    assert not torch.isin(scored.input_ids, _vision_ids(processor)).any()


def test_text_only_scores_do_not_depend_on_the_image(tiny_dir, synth_dir, processor):
    """The ablation's point: swap every image for another and the text-only scores stay put, the full ones move."""
    disc = upcycle_moe.dense_discriminator(hf_checkpoint.load_hf_model(tiny_dir))[0].eval()
    pairs = data.load_pairs(synth_dir / "pairs_test.jsonl")[0][:2]
    swapped = [dataclasses.replace(p, images=pairs[1 - k].images) for k, p in enumerate(pairs)]

    def scores(lines, text_only):
        prompts, teacher, student = upcycle_moe.line_inputs(processor, lines, text_only)
        with torch.no_grad():
            return disc(model.scoring_batch(prompts, prompts.input_ids.shape[1], teacher, student, [0, 1],
                                            processor.tokenizer.pad_token_id))[0]

    assert torch.equal(scores(pairs, True), scores(swapped, True))
    assert not torch.allclose(scores(pairs, False), scores(swapped, False))


def test_align_discriminator_prompts_text_only(tiny_dir, synth_dir, processor):
    examples = data.load_prompts(synth_dir / "align.parquet")[:2]
    policy = model.Policy.from_pretrained(tiny_dir)
    rollouts = model.generate_rollouts(policy, batching.encode_prompts(processor, examples), processor.tokenizer,
                                       3, 4, 1.0, 1.0)
    seeing, seeing_len = align.discriminator_prompts(processor, rollouts, examples, text_only=False)
    assert seeing_len == rollouts.prompt_len and torch.equal(seeing.input_ids, rollouts.batch.input_ids[[0, 3]])
    blind, blind_len = align.discriminator_prompts(processor, rollouts, examples, text_only=True)
    assert len(blind) == 2 and blind_len == blind.input_ids.shape[1] and blind.pixel_values is None
    assert not torch.isin(blind.input_ids, _vision_ids(processor)).any()


def test_align_with_a_dense_text_only_discriminator_runs_and_resumes(tiny_dir, dense_disc_dir, synth_dir, tmp_path):
    args = ["tests/align_worker.py", "--policy", tiny_dir, "--discriminator", dense_disc_dir, "--data",
            synth_dir / "align.parquet", "--steps", "2", "--prompts-per-step", "2", "--rollouts-per-prompt", "4",
            "--max-new-tokens", "16", "--lr", "1e-4", "--disc-lr", "1e-4", "--save-every", "1", "--disc-text-only"]
    printed = run_script(args + ["--out", tmp_path / "full"], env={"VALID_RANKS": "0"})
    assert "discriminator dense" in printed.stdout and "text only" in printed.stdout
    metrics = _metrics(tmp_path / "full")
    assert [m["step"] for m in metrics] == [1, 2] and metrics[0]["optim/disc_grad_norm"] > 0
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step_00000002")
    for name in ("model", "discriminator"):
        shutil.rmtree(tmp_path / "resumed" / name)
    run_script(args + ["--out", tmp_path / "resumed", "--resume"], env={"VALID_RANKS": "0"})
    digest = lambda run: (tmp_path / run / "digest_rank0.txt").read_text()  # noqa: E731
    assert digest("full") == digest("resumed")


def test_warmup_text_only_runs_and_resumes(dense_disc_dir, synth_dir, tmp_path):
    """The text-only discriminator's vision encoder never runs; resuming must not expect optimizer state for it."""
    a, b, printed = _warmup_full_and_resumed(dense_disc_dir, synth_dir, tmp_path, 2, "--disc-text-only")
    assert "text only" in printed
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    start = model.Discriminator.from_pretrained(dense_disc_dir).state_dict()
    assert all(torch.equal(a[k], start[k]) for k in a if ".visual." in k)  # never seen, never trained
