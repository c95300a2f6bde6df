"""model.py: the tiny model, loading/saving, log-probs, rollouts, FSDP2 equivalence."""

from pathlib import Path

import pytest
import torch
from conftest import run_script

import batching
import data
import hf_checkpoint
import logprobs
import model
import run
from toy.models import QWEN3VL_SHAPES, SPECIAL_TOKENS, real_config


def _examples(synth_dir: Path, n: int) -> list:
    return data.load_prompts(synth_dir / "test.jsonl")[:n]


def test_tiny_model_loads_with_plain_transformers_and_keeps_architecture(tiny_dir, synth_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    hf = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    n_params = sum(p.numel() for p in hf.parameters())
    assert 1e6 <= n_params <= 5e6
    assert hf.config.vision_config.deepstack_visual_indexes == [0, 1]
    assert hf.config.text_config.rope_parameters["mrope_interleaved"]
    assert list(processor.image_processor.image_mean) == [0.5, 0.5, 0.5]
    tok = processor.tokenizer
    for tag in data.FORMAT_TAGS + tuple(SPECIAL_TOKENS):
        assert len(tok.encode(tag, add_special_tokens=False)) == 1, tag
    # Atomic tags keep "caption then reasoning" a token-level concatenation.
    a, b = "<caption>\n- red circle\n</caption>", "\n<think>\nok\n</think>\n<answer>1</answer>"
    assert tok.encode(a + b, add_special_tokens=False) == tok.encode(a, add_special_tokens=False) + \
        tok.encode(b, add_special_tokens=False)
    assert hf.generation_config.eos_token_id == [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>",
                                                                                        "<|endoftext|>")]
    # 64×64 images become 2×2 merged tokens.
    batch = batching.encode_prompts(processor, _examples(synth_dir, 1))
    assert (batch.input_ids == tok.convert_tokens_to_ids("<|image_pad|>")).sum() == 4


def test_save_load_round_trip_gives_identical_logits(tiny_dir, synth_dir, processor, tmp_path):
    policy = model.Policy.from_pretrained(tiny_dir)
    policy.save_pretrained(processor, tmp_path / "copy", run.Dist())
    again = model.Policy.from_pretrained(tmp_path / "copy")
    batch = batching.encode_prompts(processor, _examples(synth_dir, 3))
    with torch.no_grad():
        a = policy.hf(**batch.model_inputs()).logits
        b = again.hf(**batch.model_inputs()).logits
    assert torch.equal(a, b)


def test_refuses_weights_that_are_not_safetensors(tiny_dir, tmp_path):
    import shutil

    bad = tmp_path / "pickled"
    shutil.copytree(tiny_dir, bad)
    sd = {k: v for k, v in hf_checkpoint.load_hf_model(tiny_dir).state_dict().items()}
    (bad / "model.safetensors").unlink()
    torch.save(sd, bad / "pytorch_model.bin")
    with pytest.raises(data.DataError, match="safetensors"):
        hf_checkpoint.load_hf_model(bad)


def test_chunked_logprobs_match_full_log_softmax_with_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False)
    targets = torch.randint(0, 50, (37,))
    lp, ent = logprobs.chunked_token_logprobs(hidden, head, targets, temperature=0.7, chunk_size=8, with_entropy=True)
    full = torch.log_softmax(head(hidden) / 0.7, -1)
    ref = full.gather(-1, targets[:, None]).squeeze(-1)
    assert torch.allclose(lp, ref, atol=1e-6)
    assert torch.allclose(ent, -(full.exp() * full).sum(-1), atol=1e-5)
    weights = torch.randn(37)  # an arbitrary upstream gradient
    g1 = torch.autograd.grad((lp * weights).sum(), (hidden, head.weight))
    g2 = torch.autograd.grad((ref * weights).sum(), (hidden, head.weight))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))


def test_response_mask_runs_through_the_first_eos():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    mask, truncated = batching.response_mask_through_eos(ids, eos_ids=[2])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_select_moves_whole_image_blocks(tiny_dir, synth_dir, processor):
    policy = model.Policy.from_pretrained(tiny_dir)
    examples = _examples(synth_dir, 3)
    examples[1].question = "<image>\n<image>\n" + examples[1].question.replace("<image>", "")
    examples[1].images = examples[1].images + examples[2].images
    batch = batching.encode_prompts(processor, examples)
    picked = batch.select([2, 1, 1])
    alone = batching.encode_prompts(processor, [examples[2], examples[1], examples[1]])
    with torch.no_grad():
        a = policy.hf(**picked.model_inputs()).logits
        b = policy.hf(**alone.model_inputs()).logits
    keep = alone.attention_mask.bool()
    assert torch.allclose(a[keep], b[keep], atol=1e-5)


def test_training_logprobs_equal_generate_logits(tiny_dir, synth_dir, processor):
    """Left-padded prompts of different lengths, one with two images: the shared prefill samples the tokens of
    generate's own expansion (same seed), and forward == generate within 1e-4."""
    policy = model.Policy.from_pretrained(tiny_dir)
    examples = _examples(synth_dir, 3)
    examples[0].question = "<image>\n<image>\nCompare the two pictures, please."
    examples[0].images = examples[0].images + examples[1].images
    prompts = batching.encode_prompts(processor, examples)
    assert prompts.attention_mask[:, 0].min() == 0  # really left-padded
    tok = processor.tokenizer
    torch.manual_seed(3)
    rollouts = model.generate_rollouts(policy, prompts, tok, n=4, max_new_tokens=24)
    torch.manual_seed(3)
    suppress = [tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                       "<|vision_end|>")]
    ref = policy.hf.generate(**prompts.model_inputs(), max_new_tokens=24, num_return_sequences=4, do_sample=True,
                             top_k=0, top_p=1.0, temperature=1.0, suppress_tokens=suppress,
                             eos_token_id=[tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")],
                             pad_token_id=tok.pad_token_id,
                             return_dict_in_generate=True, output_logits=True)
    P = rollouts.prompt_len
    sampled = ref.sequences[:, P:]
    assert torch.equal(sampled.masked_fill(rollouts.response_mask == 0, tok.pad_token_id), rollouts.response_ids)
    assert rollouts.group.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    gen_logprobs = torch.log_softmax(torch.stack(ref.logits, 1).float(), -1).gather(-1, sampled[..., None])[..., 0]
    with torch.no_grad():
        logprobs, _ = policy(rollouts.batch, rollouts.target_mask)
    diff = ((logprobs[:, P:] - gen_logprobs) * rollouts.response_mask).abs().max().item()
    print(f"max |log-prob(forward) - log-prob(generate)| = {diff:.2e}")
    assert diff < 1e-4
    ids = rollouts.response_ids
    assert not torch.isin(ids, torch.tensor(suppress)).any()


def test_text_only_prompts_sample_as_generates_own_expansion(tiny_dir, synth_dir, processor):
    """Prompts without images (no M-RoPE offsets to share) keep generate's own expansion: same seed, same tokens."""
    from dataclasses import replace

    policy = model.Policy.from_pretrained(tiny_dir)
    examples = [replace(e, question=e.question.replace("<image>", "").strip(), images=[])
                for e in _examples(synth_dir, 2)]
    prompts = batching.encode_prompts(processor, examples)
    assert prompts.pixel_values is None
    tok = processor.tokenizer
    torch.manual_seed(5)
    rollouts = model.generate_rollouts(policy, prompts, tok, n=3, max_new_tokens=12)
    torch.manual_seed(5)
    ref = policy.hf.generate(**prompts.model_inputs(), max_new_tokens=12, num_return_sequences=3, do_sample=True,
                             top_k=0, top_p=1.0, temperature=1.0, pad_token_id=tok.pad_token_id,
                             suppress_tokens=[tok.convert_tokens_to_ids(t) for t in model.VISION_TOKENS],
                             eos_token_id=model.end_of_response_ids(policy.hf, tok))
    sampled = ref[:, rollouts.prompt_len:]
    assert torch.equal(sampled.masked_fill(rollouts.response_mask == 0, tok.pad_token_id), rollouts.response_ids)


def test_compiled_static_cache_decoding_samples_the_same_tokens(tiny_dir, synth_dir, processor):
    """--compile-decode: same seed, same sampled tokens and log-probs as the eager dynamic-cache path."""
    from torch._dynamo.utils import counters

    policy = model.Policy.from_pretrained(tiny_dir)
    prompts = batching.encode_prompts(processor, _examples(synth_dir, 2))
    tok = processor.tokenizer
    torch.manual_seed(5)
    eager = model.generate_rollouts(policy, prompts, tok, n=4, max_new_tokens=16)
    graphs_before = counters["stats"]["unique_graphs"]
    torch.manual_seed(5)
    compiled = model.generate_rollouts(policy, prompts, tok, n=4, max_new_tokens=16, compile_decode=True)
    assert counters["stats"]["unique_graphs"] > graphs_before  # torch.compile really ran
    assert compiled.prompt_len % model.STATIC_CACHE_MULTIPLE == 0 and compiled.prompt_len > eager.prompt_len
    assert torch.equal(compiled.response_ids, eager.response_ids)
    assert torch.equal(compiled.response_mask, eager.response_mask)
    eager_batch, eager_target, R, _ = eager.micro_batch(list(range(8)))
    compiled_batch, compiled_target, _, _ = compiled.micro_batch(list(range(8)))
    with torch.no_grad():
        a, _ = policy(eager_batch, eager_target)
        b, _ = policy(compiled_batch, compiled_target)
    assert torch.allclose(a[:, -R:], b[:, -R:], atol=1e-5)
    # An optimizer step changes the weights in place: the compiled step must decode with the new ones.
    torch.manual_seed(6)
    stale = model.generate_rollouts(policy, prompts, tok, n=4, max_new_tokens=16)
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(1.5)
    torch.manual_seed(6)
    eager = model.generate_rollouts(policy, prompts, tok, n=4, max_new_tokens=16)
    torch.manual_seed(6)
    compiled = model.generate_rollouts(policy, prompts, tok, n=4, max_new_tokens=16, compile_decode=True)
    assert torch.equal(compiled.response_ids, eager.response_ids)
    assert not torch.equal(stale.response_ids, eager.response_ids)  # the change is visible in the tokens


def test_bf16_weights_decode_then_restore_the_same_fp32_tensors(tiny_dir, synth_dir, processor):
    policy = model.Policy.from_pretrained(tiny_dir)
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in policy.named_parameters()}
    prompts = batching.encode_prompts(processor, _examples(synth_dir, 2))
    with model.bf16_weights(policy):
        assert all(p.dtype == torch.bfloat16 for p in policy.parameters())
        out = policy.hf.generate(**prompts.model_inputs(), max_new_tokens=4, do_sample=False)
    assert out.shape[1] == prompts.input_ids.shape[1] + 4
    for n, p in policy.named_parameters():
        assert p.dtype == torch.float32 and p.data_ptr() == before[n][0] and torch.equal(p, before[n][1]), n
    # A second phase refills the same bf16 buffers with the updated weights.
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    addresses = [c.data_ptr() for c in policy._bf16_copies]
    with model.bf16_weights(policy):
        assert [p.data_ptr() for p in policy.parameters()] == addresses
        assert all(torch.equal(p, (before[n][1] + 1).bfloat16()) for n, p in policy.named_parameters())


def test_fsdp2_two_processes_match_one(tiny_dir, synth_dir, tmp_path):
    # SFT rows, then rollout rows: two ranks running each prompt once against one process running every row in full
    files = [synth_dir / "sft_teacher.jsonl", synth_dir / "test.jsonl"]
    run_script(["tests/fsdp_worker.py", tiny_dir, "full", *files, tmp_path / "one"], nproc=1)
    run_script(["tests/fsdp_worker.py", tiny_dir, "shared", *files, tmp_path / "two"], nproc=2)
    one, two = torch.load(tmp_path / "one" / "result.pt"), torch.load(tmp_path / "two" / "result.pt")
    for rows in ("sft", "rollouts"):
        assert abs(one[rows]["loss"] - two[rows]["loss"]) < 1e-5
        assert one[rows]["grads"].keys() == two[rows]["grads"].keys() and len(one[rows]["grads"]) > 50
        worst = max((one[rows]["grads"][k] - two[rows]["grads"][k]).abs().max().item() for k in one[rows]["grads"])
        print(f"{rows}: loss {one[rows]['loss']:.6f} vs {two[rows]['loss']:.6f}; max grad diff {worst:.2e}")
        assert worst < 1e-5
    a = hf_checkpoint.load_hf_model(tmp_path / "one" / "saved").state_dict()
    b = hf_checkpoint.load_hf_model(tmp_path / "two" / "saved").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", list(QWEN3VL_SHAPES))
def test_real_qwen3vl_shapes_build_on_meta_device(name):
    from transformers import AutoModelForImageTextToText

    expected = {"2B": 2.13e9, "4B": 4.44e9, "8B": 8.77e9, "32B": 33.36e9, "30B-A3B": 31.07e9}[name]
    with torch.device("meta"):
        hf = AutoModelForImageTextToText.from_config(real_config(name))
        policy = model.Policy(hf)
    n = sum(p.numel() for p in policy.parameters())
    assert abs(n - expected) / expected < 0.01
    body = policy.hf.model
    assert len(body.language_model.layers) == hf.config.text_config.num_hidden_layers
    assert len(body.visual.deepstack_merger_list) == 3


def test_token_budget_batches_group_similar_lengths_within_budget():
    lengths = [10, 50, 12, 48, 11, 100]
    batches = batching.token_budget_batches(lengths, budget=100)
    assert sorted(r for b in batches for r in b) == list(range(6))
    assert batches[0] == [5]  # alone: 100 tokens fill the budget
    assert batches[1] == [1, 3]  # 2 × 50
    assert batches[2] == [2, 4, 0]  # 3 × 12
    assert all(len(b) * max(lengths[r] for r in b) <= 100 for b in batches)
    assert batching.token_budget_batches([300], budget=100) == [[0]]


def test_rollout_micro_batches_drop_shared_padding(tiny_dir, synth_dir, processor):
    policy = model.Policy.from_pretrained(tiny_dir)
    prompts = batching.encode_prompts(processor, _examples(synth_dir, 2))
    torch.manual_seed(0)
    rollouts = model.generate_rollouts(policy, prompts, processor.tokenizer, n=3, max_new_tokens=12)
    # Make responses of very different lengths: cut rows 0–2 after 2 tokens.
    rollouts.response_mask[:3, 2:] = 0
    rollouts.batch.attention_mask[:3, rollouts.prompt_len + 2:] = 0
    batch, target, R, _ = rollouts.micro_batch([0, 1, 2])
    assert R == 2 and batch.input_ids.shape[1] <= rollouts.prompt_len + 2
    with torch.no_grad():
        full, _ = policy(rollouts.batch.select([0, 1, 2]), rollouts.target_mask[[0, 1, 2]])
        trimmed, _ = policy(batch, target)
    P = rollouts.prompt_len
    assert torch.allclose(trimmed[:, -R:], full[:, P:P + R], atol=1e-5)


def test_learning_rate_schedules():
    # warm-up 10 of 100 steps: linear to 1 over steps 0–9, then cos decay to 0 at step 100
    assert run.cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert run.cosine_with_warmup(9, 100, 10) == pytest.approx(1.0)
    assert run.cosine_with_warmup(10, 100, 10) == pytest.approx(1.0)
    assert run.cosine_with_warmup(55, 100, 10) == pytest.approx(0.5)  # half-way through the decay
    assert run.cosine_with_warmup(100, 100, 10) == pytest.approx(0.0)
    assert [run.constant_with_warmup(s, 100, 4) for s in (0, 3, 4, 99)] == pytest.approx([0.25, 1, 1, 1])


@pytest.mark.parametrize("images", ["one", "two", "none"])
def test_each_prompt_run_once_gives_the_full_forwards_logprobs_and_gradients(tiny_dir, synth_dir, processor, images,
                                                                              monkeypatch):
    examples = _examples(synth_dir, 3)
    if images == "two":
        examples[1].question = "<image>\n<image>\n" + examples[1].question.replace("<image>", "")
        examples[1].images = examples[1].images + examples[2].images
    examples[1].question = "A longer question, so that the prompts are left-padded by different amounts. " \
        + examples[1].question
    if images == "none":
        examples = [batching.without_images(e) for e in examples]
    policy = model.Policy.from_pretrained(tiny_dir)
    torch.manual_seed(0)
    # Two generate rounds of different prompt lengths, joined as DAPO's dynamic sampling joins them; generate
    # leaves its M-RoPE offsets behind in the model.
    rounds = [model.generate_rollouts(policy, batching.encode_prompts(processor, part), processor.tokenizer, n=3,
                                      max_new_tokens=10) for part in (examples[:2], examples[2:])]
    assert rounds[0].prompt_len != rounds[1].prompt_len
    rollouts = batching.Rollouts.concat(rounds, processor.tokenizer.pad_token_id)
    rows = [7, 0, 4, 3, 8]  # out of order, every group partly present
    batch, target, R, prompt = rollouts.micro_batch(rows)
    assert prompt.first.tolist() == [1, 2, 0] and prompt.of.tolist() == [2, 0, 1, 1, 2]
    weights = torch.randn(target.shape)
    shared_runs, run_once = [], model.hidden_after_shared_prompts
    monkeypatch.setattr(model, "hidden_after_shared_prompts", lambda *a: shared_runs.append(1) or run_once(*a))
    results = []
    for shared in (None, prompt):
        policy.zero_grad()
        logp, entropy = policy(batch, target, 0.7, with_entropy=True, prompt=shared)
        (logp * weights).sum().backward()
        results.append((logp, entropy, {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}))
    (full, full_entropy, full_grads), (once, once_entropy, once_grads) = results
    assert shared_runs == [1]  # the second pass took the shared path
    assert torch.allclose(once, full, atol=1e-5) and torch.allclose(once_entropy, full_entropy, atol=1e-5)
    assert (once[:, -R:] != 0).any() and (once[:, :-R] == 0).all()
    assert full_grads.keys() == once_grads.keys() and len(full_grads) > 10
    assert any("visual" in n for n in full_grads) == (images != "none")  # the vision tower's, through both paths
    for n, g in full_grads.items():
        assert torch.allclose(once_grads[n], g, atol=1e-5, rtol=1e-4), n
