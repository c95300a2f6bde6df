"""upcycle_moe.py: exact upcycling, tensor accounting on the real 2B shapes, the score read position, the losses
by hand, and the warm-up CLI (learning, checkpoints, resume, FSDP2)."""

import dataclasses
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import run_script

import batching
import data
import hf_checkpoint
import model
import run
import upcycle_moe
from toy.models import real_config


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matrices are too small to gain from threads, and on a shared 2-core machine a busy
    neighbour stalls every multi-threaded op (measured: 15 s instead of 0.1 s for the greedy generations)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dense(tiny_dir):
    return hf_checkpoint.load_hf_model(tiny_dir)


@pytest.fixture(scope="module")
def upcycled_dir(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("upcycled") / "disc"
    run_script(["upcycle_moe.py", "--dense", tiny_dir, "--out", out, "--dtype", "float32", "--seed", "1"])
    return out


def _lines_batch(processor, pairs) -> batching.VLBatch:
    """The 4m scored sequences of m warm-up lines, as the warm-up's forward sees them."""
    prompts, teacher, student = upcycle_moe.line_inputs(processor, pairs)
    return model.scoring_batch(prompts, prompts.input_ids.shape[1], teacher, student, list(range(len(pairs))),
                               processor.tokenizer.pad_token_id)


def _scores(disc, processor, pairs) -> torch.Tensor:
    disc.eval()
    with torch.no_grad():
        return disc(_lines_batch(processor, pairs))[0]


def test_zero_noise_upcycle_gives_the_dense_logits_and_greedy_generation(dense, synth_dir, processor):
    disc, _ = upcycle_moe.upcycle(dense, experts=4, top_k=2, noise_std=0.0)
    moe = disc.hf.eval()
    examples = data.load_prompts(synth_dir / "test.jsonl")[:3]
    examples[0].question = "<image>\n<image>\nCompare the two pictures, please."
    examples[0].images = examples[0].images + examples[1].images
    prompts = batching.encode_prompts(processor, examples)
    with torch.no_grad():
        a = dense(**prompts.model_inputs()).logits
        b = moe(**prompts.model_inputs()).logits
    keep = prompts.attention_mask.bool()
    diff = (a[keep] - b[keep]).abs().max().item()
    print(f"zero-noise upcycle: max |dense - MoE logit| = {diff:.2e}")
    assert diff <= 1e-5
    tok = processor.tokenizer
    greedy = [model.generate_rollouts(model.Policy(m), prompts, tok, n=1, max_new_tokens=16, greedy=True)
              for m in (dense, moe)]
    assert torch.equal(greedy[0].response_ids, greedy[1].response_ids)
    assert greedy[0].response_mask.sum() >= 3 * 8  # real text was compared, not only EOS


def test_upcycle_noise_router_and_head_initialisation(dense):
    disc, sources = upcycle_moe.upcycle(dense, experts=4, top_k=2, noise_std=0.01, router_std=0.02, seed=3)
    again, _ = upcycle_moe.upcycle(dense, experts=4, top_k=2, noise_std=0.01, router_std=0.02, seed=3)
    state, dense_state = disc.state_dict(), dense.state_dict()
    assert all(torch.equal(state[k], v) for k, v in again.state_dict().items())
    layer = "model.language_model.layers.1.mlp."
    gate_up = torch.cat([dense_state[layer + "gate_proj.weight"], dense_state[layer + "up_proj.weight"]])
    gate_up_noise = state[f"hf.{layer}experts.gate_up_proj"] - gate_up  # (E, 2I, H)
    down_noise = state[f"hf.{layer}experts.down_proj"] - dense_state[layer + "down_proj.weight"]  # (E, H, I)
    for e in range(4):  # expert 0 is noisy too
        noise = torch.cat([gate_up_noise[e].flatten(), down_noise[e].flatten()])
        assert abs(noise.std().item() - 0.01) < 3e-4 and abs(noise.mean().item()) < 3e-4
    assert abs(state[f"hf.{layer}gate.weight"].std().item() - 0.02) < 2e-3
    assert abs(state["head.weight"].std().item() - upcycle_moe.HEAD_STD) < 4e-3
    qkv = "model.visual.blocks.0.attn.qkv.weight"
    assert torch.equal(state["hf." + qkv], dense_state[qkv])
    assert dict(sources)[f"hf.{layer}gate.weight"] == "initialised"


def test_real_2b_upcycle_accounts_for_every_tensor_on_meta():
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        dense = AutoModelForImageTextToText.from_config(real_config("2B"))
    E = 4
    disc, sources = upcycle_moe.upcycle(dense, experts=E, top_k=2)
    keys = Counter(k for k, _ in sources)
    assert set(keys) == set(disc.state_dict()) and max(keys.values()) == 1
    text = dense.config.text_config
    L, H, inter = text.num_hidden_layers, text.hidden_size, text.intermediate_size
    kinds = Counter(how for _, how in sources)
    assert kinds == {"copied": len(dense.state_dict()) - 3 * L, "tiled": 2 * L, "initialised": L + 1}
    n_dense = sum(p.numel() for p in dense.parameters())
    expected = n_dense + L * (E - 1) * (3 * H * inter) + L * E * H
    assert sum(p.numel() for p in disc.hf.parameters()) == expected
    assert sum(p.numel() for p in disc.parameters()) == expected + H
    print(f"2B: {n_dense / 1e9:.3f}B dense → {expected / 1e9:.3f}B MoE backbone")
    moe_text = disc.config.text_config
    assert (moe_text.num_experts, moe_text.num_experts_per_tok, moe_text.moe_intermediate_size) == (E, 2, inter)
    assert moe_text.mlp_only_layers == [] and moe_text.decoder_sparse_step == 1
    assert disc.config.tie_word_embeddings and disc.config.vision_config.deepstack_visual_indexes == [5, 11, 17]


def _row_alone(batch: batching.VLBatch, row: int) -> batching.VLBatch:
    one = batch.select([row])
    return one.columns(one.attention_mask[0].bool())


def _right_padded(batch: batching.VLBatch) -> batching.VLBatch:
    order = torch.argsort(batch.attention_mask == 0, dim=1, stable=True)  # real tokens first, in order
    return dataclasses.replace(batch, input_ids=batch.input_ids.gather(1, order),
                               attention_mask=batch.attention_mask.gather(1, order),
                               mm_token_type_ids=batch.mm_token_type_ids.gather(1, order))


def test_score_is_read_at_the_last_real_token_left_or_right_padded(upcycled_dir, synth_dir, processor):
    disc = model.Discriminator.from_pretrained(upcycled_dir).eval()
    pairs = data.load_pairs(synth_dir / "pairs_test.jsonl")[0][:3]
    left = _lines_batch(processor, pairs)
    right = _right_padded(left)
    assert left.attention_mask[:, 0].min() == 0 and right.attention_mask[:, -1].min() == 0
    with torch.no_grad():
        alone = torch.stack([disc(_row_alone(left, r))[0][0] for r in range(len(left))])
        for batch in (left, right):
            diff = (disc(batch)[0] - alone).abs().max().item()
            assert diff <= 1e-5, diff
    assert alone.abs().min() > 0  # a real, non-degenerate score


def test_losses_match_hand_computed_values():
    sig = lambda x: 1 / (1 + math.exp(-x))
    T, S = [2.0, -1.0, 0.0, 12.0], [0.5, 0.0, 0.0, -15.0]  # the last pair lies outside the ±10 clip
    t = torch.tensor(T, requires_grad=True)
    s = torch.tensor(S, requires_grad=True)
    tc, sc = model.clip_scores(t), model.clip_scores(s)
    Tc, Sc = [2.0, -1.0, 0.0, 10.0], [0.5, 0.0, 0.0, -10.0]
    bce = [-math.log(sig(a)) - math.log(1 - sig(b)) for a, b in zip(Tc, Sc)]
    bt = [-math.log(sig(a - b)) for a, b in zip(Tc, Sc)]
    assert bce[2] == pytest.approx(2 * math.log(2)) and bt[2] == pytest.approx(math.log(2))
    assert model.bce_pair_loss(tc, sc).tolist() == pytest.approx(bce, abs=1e-6)
    assert model.bt_pair_loss(tc, sc).tolist() == pytest.approx(bt, abs=1e-6)
    # A step of four comparisons in two micro-batches: the shares add up to the step's means.
    for name, per_pair in (("bce", bce), ("bt", bt)):
        shares = sum(upcycle_moe.pair_loss_share(tc[k:k + 2], sc[k:k + 2], name, 4) for k in (0, 2))
        assert shares.item() == pytest.approx(sum(per_pair) / 4, abs=1e-6)
    # Comparisons 0, 1 are one line's perception and reasoning, 2, 3 another's: four score sets of two.
    sets = [[Tc[0], Tc[2]], [Sc[0], Sc[2]], [Tc[1], Tc[3]], [Sc[1], Sc[3]]]
    reg = sum(sum(x * x for x in v) / len(v) for v in sets) / 4
    shares = sum(upcycle_moe.score_reg_share(tc[k:k + 2], sc[k:k + 2], 4) for k in (0, 2))
    assert shares.item() == pytest.approx(reg, abs=1e-6)
    (shares + upcycle_moe.pair_loss_share(tc, sc, "bce", 4)).backward()
    assert t.grad[3] == 0 and s.grad[3] == 0 and (t.grad[:3] != 0).all()  # clipped scores get no gradient


# ----------------------------------------------------------------------------------------------
# The warm-up CLI
# ----------------------------------------------------------------------------------------------

WARMUP_STEPS, RESUME_FROM = 16, 12


def _warmup(upcycled_dir, pairs: Path, out: Path, *extra, nproc: int = 1):
    return run_script(["upcycle_moe.py", "warmup", "--discriminator", upcycled_dir, "--data", pairs,
                       "--out", out, *extra], nproc=nproc)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return model.Discriminator.from_pretrained(path).state_dict()


@pytest.fixture(scope="module")
def form_pairs(synth_dir) -> tuple[Path, Path]:
    """The synthetic pairs with every student side replaced by one fixed, well-formed response: a difference a
    random-init discriminator can learn in a few steps. (The world's own students differ from the teacher in
    content alone; telling them apart needs a model that sees colours — the demo's SFT-based discriminator,
    whose warm-up the README reports.)"""
    paths = []
    for name in ("pairs", "pairs_test"):
        lines = [json.loads(line) for line in (synth_dir / f"{name}.jsonl").read_text().splitlines()]
        for line in lines:
            line |= {"student_caption": "<caption>\n- a picture\n</caption>",
                     "student_cot": "<think>\nI guess.\n</think>\n<answer>unknown</answer>"}
        paths.append(synth_dir / f"{name}_form.jsonl")
        paths[-1].write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tuple(paths)


@pytest.fixture(scope="module")
def warmed(upcycled_dir, form_pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("warmup") / "run"
    _warmup(upcycled_dir, form_pairs[0], out, "--eval-data", form_pairs[1],
            "--steps", WARMUP_STEPS, "--disc-micro-batch", 4, "--grad-accum", 1, "--disc-lr", 1e-3,
            "--save-every", RESUME_FROM)
    return out


def test_warmup_lifts_heldout_accuracy_on_both_segments(warmed):
    lines = _metrics(warmed)
    before, after = lines[0], lines[-1]
    assert before["step"] == 0 and after["step"] == WARMUP_STEPS
    for key in ("loss/disc", "loss/aux", "loss/score_reg", "optim/lr", "optim/grad_norm", "time/step_s",
                "disc/perception/accuracy", "disc/reasoning/teacher_score", "disc/reasoning/student_score"):
        assert all(key in line for line in lines[1:-1]), key
    for seg in model.SEGMENTS:
        key = f"disc/eval/{seg}/accuracy"
        print(f"{seg}: held-out accuracy {before[key]:.3f} before → {after[key]:.3f} after")
        assert after[key] >= 0.75


def test_warmup_checkpoint_round_trips(warmed, upcycled_dir, synth_dir, processor):
    from transformers import AutoModelForImageTextToText

    pairs = data.load_pairs(synth_dir / "pairs_test.jsonl")[0][:2]
    final = _scores(model.Discriminator.from_pretrained(warmed / "discriminator"), processor, pairs)
    ckpt = run.latest_checkpoint(warmed)
    assert ckpt.name == f"step_{WARMUP_STEPS:08d}"
    # Restoring the (sharded) training checkpoint into a fresh discriminator gives the final scores.
    fresh = model.Discriminator.from_pretrained(upcycled_dir)
    assert not torch.equal(final, _scores(fresh, processor, pairs))
    optimizer, scheduler = run.make_optimizer(fresh, 1e-3, 0.01, WARMUP_STEPS, 3)
    state = run.load_checkpoint(ckpt, {"discriminator": fresh}, {"discriminator": optimizer},
                                  {"discriminator": scheduler}, run.Dist())
    assert state["step"] == WARMUP_STEPS
    assert torch.equal(final, _scores(fresh, processor, pairs))
    hf = AutoModelForImageTextToText.from_pretrained(warmed / "discriminator")
    assert type(hf).__name__ == "Qwen3VLMoeForConditionalGeneration"


def test_warmup_resume_continues_to_the_same_weights(warmed, upcycled_dir, form_pairs, tmp_path):
    resumed = tmp_path / "run"
    shutil.copytree(warmed, resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step_{WARMUP_STEPS:08d}")
    shutil.rmtree(resumed / "discriminator")
    assert run.latest_checkpoint(resumed).name == f"step_{RESUME_FROM:08d}"
    _warmup(upcycled_dir, form_pairs[0], resumed, "--steps", WARMUP_STEPS, "--disc-micro-batch", 4,
            "--grad-accum", 1, "--disc-lr", 1e-3, "--save-every", RESUME_FROM, "--resume")
    a, b = _weights(warmed / "discriminator"), _weights(resumed / "discriminator")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"resume from step {RESUME_FROM} of {WARMUP_STEPS}: max weight diff {worst:.2e}")
    assert a.keys() == b.keys() and worst <= 1e-6
    steps = {line["step"]: line for line in _metrics(warmed) if "loss/disc" in line}
    again = {line["step"]: line for line in _metrics(resumed) if "loss/disc" in line}
    assert sorted(again) == sorted(steps)
    for step in range(RESUME_FROM + 1, WARMUP_STEPS + 1):
        assert again[step]["loss/disc"] == pytest.approx(steps[step]["loss/disc"], abs=1e-6)


def test_warmup_two_processes_match_one(upcycled_dir, synth_dir, tmp_path):
    common = ["--steps", 2, "--disc-micro-batch", 2, "--disc-lr", 1e-3, "--dropout", 0.0, "--disc-loss", "bt"]
    _warmup(upcycled_dir, synth_dir / "pairs.jsonl", tmp_path / "one", *common, "--grad-accum", 2)
    _warmup(upcycled_dir, synth_dir / "pairs.jsonl", tmp_path / "two", *common, "--grad-accum", 1, nproc=2)
    for x, y in zip(_metrics(tmp_path / "one"), _metrics(tmp_path / "two")):
        for key in ("loss/disc", "loss/aux", "loss/score_reg", "disc/perception/accuracy", "optim/grad_norm"):
            assert x[key] == pytest.approx(y[key], abs=1e-5), key
    a, b = _weights(tmp_path / "one" / "discriminator"), _weights(tmp_path / "two" / "discriminator")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"1 vs 2 processes after 2 steps: max weight diff {worst:.2e}")
    assert worst <= 1e-4  # AdamW's g/√v turns 1e-8 gradient noise into ~1e-5 at lr 1e-3
