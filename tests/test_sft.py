"""sft.py: the objective against an independent reference, overfitting, 2 ranks = 1, exact resume, bad data."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_script

import batching
import data
import model
import sft
from run import read_sharded


def _metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _weights(path):
    return model.load_hf_model(path).state_dict()


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_loss_equals_plain_cross_entropy_on_full_logits(tiny_dir, synth_dir, processor):
    policy = model.Policy.from_pretrained(tiny_dir)
    batch, target = batching.encode_conversations(processor, data.load_sft(synth_dir / "sft_teacher.jsonl")[:4])
    logprobs, _ = policy(batch, target)
    ours = sft.sft_loss(logprobs, target, total_targets=target[:, 1:].sum().item())
    labels = batch.input_ids.masked_fill(target == 0, -100)
    logits = policy.hf(**batch.model_inputs()).logits.float()
    reference = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                  labels[:, 1:].reshape(-1), ignore_index=-100)
    assert abs(ours.item() - reference.item()) < 1e-5


def test_overfitting_a_handful_of_examples_drives_the_loss_down(tiny_dir, synth_dir, tmp_path):
    few = tmp_path / "few.jsonl"
    lines = (synth_dir / "sft_teacher.jsonl").read_text().splitlines()[:4]
    few.write_text("\n".join(lines) + "\n")
    shutil.copytree(synth_dir / "images", tmp_path / "images")
    run_script(["sft.py", "--policy", tiny_dir, "--data", few, "--out", tmp_path / "run", "--steps", "40",
                "--micro-batch", "4", "--lr", "3e-3", "--warmup-ratio", "0.05", "--save-every", "1000"])
    losses = [m["loss/sft"] for m in _metrics(tmp_path / "run")]
    print(f"overfit loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.35 * losses[0]


def test_two_ranks_match_one_and_resume_is_exact(tiny_dir, synth_dir, tmp_path):
    common = ["sft.py", "--policy", tiny_dir, "--data", synth_dir / "sft_teacher.jsonl", synth_dir / "sft_public.jsonl",
              "--steps", "4", "--micro-batch", "2", "--lr", "1e-3", "--save-every", "2"]
    # The same global batch of 8: 4 micro-batches on one rank, 2 on each of two ranks.
    run_script(common + ["--grad-accum", "4", "--out", tmp_path / "one"])
    run_script(common + ["--grad-accum", "2", "--out", tmp_path / "two"], nproc=2)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [m["step"] for m in one] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert abs(a["loss/sft"] - b["loss/sft"]) < 1e-4
    diff = _max_diff(_weights(tmp_path / "one" / "model"), _weights(tmp_path / "two" / "model"))
    print(f"1 vs 2 ranks: max weight diff {diff:.2e}")
    assert diff < 1e-4

    # Resume: drop everything after step 2, continue, and land on the uninterrupted weights and moments.
    resumed = _resume_from_step_2(tmp_path / "one", tmp_path / "resumed", common + ["--grad-accum", "4"], nproc=1)
    assert _max_diff(_weights(tmp_path / "one" / "model"), _weights(resumed / "model")) <= 1e-6
    assert [m["step"] for m in _metrics(resumed)] == [1, 2, 3, 4]
    ckpt, ref = (read_sharded(out / "checkpoints" / "step_00000004" / "policy.optimizer")
                 for out in (resumed, tmp_path / "one"))
    assert ckpt.keys() == ref.keys() and any(k.endswith("exp_avg_sq") for k in ckpt)
    assert all(torch.allclose(ckpt[k], ref[k], atol=1e-12, rtol=1e-6) for k in ckpt)

    # The two-rank checkpoint holds one file per rank; resumed on one rank, and the one-rank checkpoint on
    # two, each run continues to the same weights (resharded, up to the 1-vs-2-rank summation order).
    shards = sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "step_00000002" / "policy").iterdir())
    assert shards == ["shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    two_to_one = _resume_from_step_2(tmp_path / "two", tmp_path / "two_to_one", common + ["--grad-accum", "4"], nproc=1)
    one_to_two = _resume_from_step_2(tmp_path / "one", tmp_path / "one_to_two", common + ["--grad-accum", "2"], nproc=2)
    for out in (two_to_one, one_to_two):
        diff = _max_diff(_weights(tmp_path / "one" / "model"), _weights(out / "model"))
        print(f"{out.name}: max weight diff {diff:.2e}")
        assert diff < 1e-4


def _resume_from_step_2(done: Path, out: Path, flags: list, nproc: int) -> Path:
    shutil.copytree(done, out)
    shutil.rmtree(out / "checkpoints" / "step_00000004")
    shutil.rmtree(out / "model")
    run_script(flags + ["--out", out, "--resume"], nproc=nproc)
    return out


def test_bad_data_stops_before_any_step(tiny_dir, synth_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = (synth_dir / "sft_teacher.jsonl").read_text().splitlines()[0]
    bad.write_text(good.replace("images/", str(synth_dir / "images") + "/") + "\n{\"messages\": []}\n")
    proc = subprocess.run([sys.executable, "sft.py", "--policy", str(tiny_dir), "--data", str(bad), "--out",
                           str(tmp_path / "run"), "--steps", "2"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"error: {bad}:2: the conversation is empty" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("freeze", ["--freeze-vision", "--freeze-merger"])
def test_freezing_keeps_the_vision_side_fixed(tiny_dir, synth_dir, tmp_path, freeze):
    run_script(["sft.py", "--policy", tiny_dir, "--data", synth_dir / "sft_teacher.jsonl", "--out", tmp_path,
                "--steps", "2", "--micro-batch", "2", "--lr", "1e-2", freeze])
    before, after = _weights(tiny_dir), _weights(tmp_path / "model")
    frozen = "blocks" if freeze == "--freeze-vision" else "merger"
    names = [k for k in before if k.startswith("model.visual.") and frozen in k]
    assert names and all(torch.equal(before[k], after[k]) for k in names)
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])
