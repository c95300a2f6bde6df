"""Worker for tests/test_model.py: two loss/gradient computations, then a saved HF directory.

    fsdp_worker.py MODEL_DIR PROMPTS SFT_FILE PROMPTS_FILE OUT

Run as one process or under torchrun; each rank takes its contiguous share of the same global
batches: SFT conversations, then fixed responses to prompts, each prompt run once for its rows
(PROMPTS "shared") or every row in full ("full"). Writes each loss and its full gradients
(rank 0) to OUT/result.pt and the policy to OUT/saved.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import batching
import data
import hf_checkpoint
import model
import run


def shared_prompt_rows(processor, examples, d: run.Dist, n: int = 3):
    """This rank's prompts, each followed by n fixed responses of different lengths, as one micro-batch."""
    share = len(examples) // d.world_size
    first = d.rank * share
    prompts = batching.encode_prompts(processor, examples[first:first + share])
    texts = [f"<caption>{g} shapes</caption><think>{' step' * j}</think><answer>{g + j}</answer>"
             for g in range(first, first + share) for j in range(n)]
    responses = processor.tokenizer(texts, padding=True, padding_side="right", return_tensors="pt")
    rollouts = batching.Rollouts(prompts.repeat_interleave(n).extend(responses.input_ids, responses.attention_mask),
                                 responses.attention_mask, torch.zeros(len(texts), dtype=torch.bool),
                                 torch.arange(share).repeat_interleave(n), prompts.input_ids.shape[1])
    batch, target, _, prompt = rollouts.micro_batch(list(range(len(texts))))
    return batch, target, prompt


def loss_and_gradients(policy, batch, target, prompt, d: run.Dist) -> dict:
    policy.zero_grad(set_to_none=True)
    total_tokens = run.global_sum(target[:, 1:].sum().item(), d)
    logprobs, _ = policy(batch, target, prompt=prompt)
    loss = -logprobs.sum() / total_tokens
    loss.backward()
    grads = {name: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
             for name, p in policy.named_parameters() if p.grad is not None}
    return {"loss": run.global_sum(loss.item(), d), "grads": grads}


def main(model_dir: str, prompts: str, sft_file: str, prompts_file: str, out: str) -> None:
    d = run.init_distributed("cpu")
    processor = hf_checkpoint.load_processor(model_dir)
    policy = model.shard(model.Policy.from_pretrained(model_dir), d, bf16=False)
    conversations = data.load_sft(sft_file)[:4]
    share = len(conversations) // d.world_size
    batch, target = batching.encode_conversations(processor, conversations[d.rank * share:(d.rank + 1) * share])
    results = {"sft": loss_and_gradients(policy, batch, target, None, d)}
    batch, target, prompt = shared_prompt_rows(processor, data.load_prompts(prompts_file)[:2], d)
    results["rollouts"] = loss_and_gradients(policy, batch, target, prompt if prompts == "shared" else None, d)
    policy.save_pretrained(processor, Path(out) / "saved", d)
    if d.is_main:
        torch.save(results, Path(out) / "result.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
