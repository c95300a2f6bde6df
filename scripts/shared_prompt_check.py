"""The policy's forward + backward with each distinct prompt run once (model.hidden_after_shared_prompts) against
every row in full: time, peak memory, and how far log-probs and gradients differ.

    python scripts/shared_prompt_check.py IMAGE_SIZE RESPONSE_TOKENS PROMPTS     # 8 rows per prompt
    DEV=cpu SHAPE=tiny python scripts/shared_prompt_check.py 64 16 2            # the same on the tiny model

On a GPU: random weights of the published 2B shape, float32 weights under bf16 autocast (as the training
stages run), fixed random responses of RESPONSE_TOKENS/2 … RESPONSE_TOKENS tokens; one warm-up of each path,
then 5 interleaved timed repeats. REF=1 adds a float32 gradient of the full path as the reference both bf16
paths are compared with. Writes $OUT/shared_prompt_*.json.
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import batching  # noqa: E402
import bench.__main__ as bench_main  # noqa: E402
import model  # noqa: E402
import run  # noqa: E402
from bench import sections  # noqa: E402

ROLLOUTS = 8


def gradient(policy) -> torch.Tensor:
    return torch.cat([p.grad.flatten().float() for p in policy.parameters() if p.grad is not None])


def main() -> None:
    device, shape = os.environ.get("DEV", "cuda"), os.environ.get("SHAPE", "2B")
    image_size, R, G = (int(a) for a in sys.argv[1:4])
    out = Path(os.environ.get("OUT", "/tmp"))
    d = run.init_distributed(device)
    cuda = device == "cuda"
    tokenizer, processor = sections.tiny_tokenizer_and_processor(image_size)
    policy = model.Policy(sections.build_hf(shape, tokenizer, d.device, torch.float32)).train()
    examples = sections.load_examples(bench_main.synth_data(Path("/tmp/shared_prompt_data")), "rl", G, image_size)
    prompts = batching.encode_prompts(processor, examples)
    gen = torch.Generator().manual_seed(0)
    B = G * ROLLOUTS
    ids = torch.randint(60, 400, (B, R), generator=gen)
    assert not set(ids.unique().tolist()) & set(tokenizer.all_special_ids)
    mask = (torch.arange(R)[None] < torch.randint(R // 2, R + 1, (B,), generator=gen)[:, None]).long()
    ids = ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    rollouts = batching.Rollouts(prompts.repeat_interleave(ROLLOUTS).extend(ids, mask), mask,
                                 torch.zeros(B, dtype=torch.bool), torch.arange(G).repeat_interleave(ROLLOUTS),
                                 prompts.input_ids.shape[1])
    batch, target, R_kept, shared = rollouts.micro_batch(list(range(B)))
    batch, target = batch.to(d.device), target.to(d.device)
    weights = torch.randn(target.shape, device=d.device)  # an arbitrary upstream gradient

    def step(prompt, bf16: bool = True):
        policy.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and bf16):
            logp, _ = policy(batch, target, with_entropy=True, prompt=prompt)
        (logp * weights).sum().backward()
        if cuda:
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        return time.perf_counter() - t0, peak, logp.detach(), gradient(policy)

    paths = {"full": None, "shared": shared}
    for prompt in paths.values():
        step(prompt)
    times, peaks, results = {"full": [], "shared": []}, {}, {}
    for k in range(5):
        for name in (("full", "shared") if k % 2 == 0 else ("shared", "full")):
            t, peaks[name], logp, grad = step(paths[name])
            times[name].append(t)
            results[name] = (logp, grad)
    (lp_full, g_full), (lp_shared, g_shared) = results["full"], results["shared"]
    scored = target.bool()
    summary = dict(shape=shape, image_size=image_size, prompt_len=shared.length, response_len=R_kept, rows=B,
                   prompts=G, tokens_full=int(batch.attention_mask.numel()),
                   tokens_shared=G * shared.length + B * R_kept, full_s=times["full"], shared_s=times["shared"],
                   ratio_shared_over_full=statistics.median(times["shared"]) / statistics.median(times["full"]),
                   peak_gib=peaks, logprob_max_abs_diff=(lp_full[scored] - lp_shared[scored]).abs().max().item(),
                   grad_rel_diff=((g_full - g_shared).norm() / g_full.norm()).item())
    if os.environ.get("REF"):
        _, _, lp_ref, g_ref = step(None, bf16=False)
        summary |= dict(grad_rel_diff_full_vs_fp32=((g_full - g_ref).norm() / g_ref.norm()).item(),
                        grad_rel_diff_shared_vs_fp32=((g_shared - g_ref).norm() / g_ref.norm()).item(),
                        logprob_max_abs_diff_full_vs_fp32=(lp_full[scored] - lp_ref[scored]).abs().max().item())
    print(json.dumps(summary, indent=1))
    (out / f"shared_prompt_{image_size}_{R}_{G}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
