"""How model.load_sharded scales: peak memory per rank, load time and logits on 1, 2 and 4 CPU ranks (gloo).

    python scripts/sharded_load.py --out /tmp/sharded_load --ranks 1 2 4

Builds a random Qwen3-VL with the real 2B architecture made shallower (--layers text layers, --vision-depth
vision blocks; about 0.6B parameters at the defaults), saves it in bf16, then loads it as a Policy under
torchrun with each rank count and prints, per rank count: the peak resident memory of the worst rank while
loading (VmHWM: it includes the safetensors pages the rank mapped, which the kernel can drop), that
peak above the rank's memory before loading, the model's float32 bytes divided by the ranks (what each
rank must hold), the load time, and the largest logit difference from the one-rank load on a fixed
32-token input. With --checkpoint it then also writes a training checkpoint of the loaded policy with an
AdamW state (run.save_checkpoint: each rank its own shards) and resumes from it, timing both and reporting the
bytes each rank wrote. Results go to OUT/results.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mib() -> float:
    """Peak resident memory of this process image so far: /proc's VmHWM, which unlike getrusage's ru_maxrss
    does not carry over the parent's peak across exec."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def build(out: Path, layers: int, vision_depth: int) -> int:
    from transformers import Qwen3VLForConditionalGeneration

    from toy.models import real_config

    config = real_config("2B")
    config.text_config.num_hidden_layers = layers
    config.vision_config.depth = vision_depth
    config.vision_config.deepstack_visual_indexes = [0, vision_depth // 2, vision_depth - 1]
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def worker(model_dir: Path, out: Path, param_dtype: str, checkpoint: bool) -> None:
    import model as m
    import run

    d = run.init_distributed("cpu")
    before = rss_mib()
    t0 = time.perf_counter()
    policy = m.load_sharded(m.Policy, model_dir, d, bf16=False, param_dtype=param_dtype)
    load_s = time.perf_counter() - t0
    local = sum(t.numel() * t.element_size() for t in (p.to_local() if hasattr(p, "to_local") else p
                                                         for p in policy.parameters()))
    loaded = rss_mib()  # the peak of loading, before the logit check gathers the root's embeddings
    ids = (torch.arange(1000, 1032) % policy.hf.config.text_config.vocab_size).unsqueeze(0)
    if d.distributed:
        policy.unshard()  # the root unit's parameters (embeddings, norm): hf's forward bypasses the root's hooks
    with torch.no_grad():
        logits = policy.hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
    if d.distributed:
        policy.reshard()
    save_s = resume_s = 0.0
    if checkpoint:
        optimizer, scheduler = run.make_optimizer(policy, 1e-5, 0.0, 10, 1)
        models, optimizers, schedulers = {"policy": policy}, {"policy": optimizer}, {"policy": scheduler}
        t0 = time.perf_counter()
        saved = run.save_checkpoint(out.parent / f"{out.stem}_ckpt", 1, models, optimizers, schedulers, d)
        save_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        run.load_checkpoint(saved, models, optimizers, schedulers, d)
        resume_s = time.perf_counter() - t0
    stats = torch.tensor([loaded, loaded - before, load_s, local / 2**20, save_s, resume_s, rss_mib()],
                         dtype=torch.float64)
    gathered = [torch.zeros_like(stats) for _ in range(d.world_size)] if d.distributed else [stats]
    if d.distributed:
        torch.distributed.all_gather(gathered, stats)
    if d.is_main:
        torch.save(logits, out.with_suffix(".pt"))
        rows = torch.stack(gathered)
        out.write_text(json.dumps({"peak_rss_mib": rows[:, 0].max().item(), "loaded_mib": rows[:, 1].max().item(),
                                   "load_s": rows[:, 2].max().item(), "local_param_mib": rows[:, 3].tolist(),
                                   "save_s": rows[:, 4].max().item(), "resume_s": rows[:, 5].max().item(),
                                   "final_peak_rss_mib": rows[:, 6].max().item()}))
    if d.distributed:  # an orderly end: a process group left to interpreter exit sometimes aborts in gloo's threads
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vision-depth", type=int, default=8)
    parser.add_argument("--param-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--checkpoint", action="store_true", help="also time a training checkpoint's save and resume")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.out, args.worker, args.param_dtype, args.checkpoint)
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.out / "model"
    n = build(model_dir, args.layers, args.vision_depth)
    print(f"{n / 1e9:.2f}B parameters ({4 * n / 2**20:.0f} MiB in float32) in {model_dir}")
    results, reference = {}, None
    for ranks in args.ranks:
        record = args.out / f"ranks{ranks}.json"
        cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
                                  if ranks > 1 else []) + [__file__, "--out", str(model_dir), "--worker", str(record),
                                                                 "--param-dtype", args.param_dtype]
        cmd += ["--checkpoint"] if args.checkpoint else []
        subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
        r = json.loads(record.read_text())
        logits = torch.load(record.with_suffix(".pt"), weights_only=True)
        reference = logits if reference is None else reference
        r["max_logit_diff"] = (logits - reference).abs().max().item()
        r["model_mib_per_rank"] = 4 * n / 2**20 / ranks
        results[ranks] = r
        if args.checkpoint:
            ckpt = args.out / f"ranks{ranks}_ckpt"
            r["checkpoint_mib_per_rank"] = [sum(f.stat().st_size for f in ckpt.rglob(f"shard-{rank + 1:05d}-*")) / 2**20
                                            for rank in range(ranks)]
            print(f"   checkpoint (weights + AdamW moments): save {r['save_s']:.1f} s, resume {r['resume_s']:.1f} s, "
                  f"per rank {[round(b) for b in r['checkpoint_mib_per_rank']]} MiB written, peak RSS per rank "
                  f"{r['final_peak_rss_mib']:.0f} MiB")
            shutil.rmtree(ckpt)
        print(f"{ranks} ranks: peak RSS {r['peak_rss_mib']:.0f} MiB (+{r['loaded_mib']:.0f} MiB for the model; "
              f"its float32 share {r['model_mib_per_rank']:.0f} MiB), load {r['load_s']:.1f} s, "
              f"max |Δ logit| {r['max_logit_diff']:.2e}")
    (args.out / "results.json").write_text(json.dumps({"parameters": n, "ranks": results}, indent=1))


if __name__ == "__main__":
    main()
