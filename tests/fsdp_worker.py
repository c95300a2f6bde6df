"""Worker for tests/test_model.py: one loss/gradient computation, then a saved HF directory.

Run as one process or under torchrun; each rank takes its contiguous share of the same global
batch. Writes loss and full gradients (rank 0) to OUT/result.pt and the policy to OUT/saved.
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


def main(model_dir: str, data_file: str, out: str) -> None:
    d = run.init_distributed("cpu")
    processor = hf_checkpoint.load_processor(model_dir)
    policy = model.shard(model.Policy.from_pretrained(model_dir), d, bf16=False)
    conversations = data.load_sft(data_file)[:4]
    share = len(conversations) // d.world_size
    mine = conversations[d.rank * share:(d.rank + 1) * share]
    batch, target = batching.encode_conversations(processor, mine)
    total_tokens = run.global_sum(target[:, 1:].sum().item(), d)
    logprobs, _ = policy(batch, target)
    loss = -logprobs.sum() / total_tokens
    loss.backward()
    global_loss = run.global_sum(loss.item(), d)
    grads = {}
    for name, p in policy.named_parameters():
        if p.grad is not None:
            g = p.grad
            grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
    policy.save_pretrained(processor, Path(out) / "saved", d)
    if d.is_main:
        torch.save({"loss": global_loss, "grads": grads}, Path(out) / "result.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
