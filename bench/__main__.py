"""Benchmarks of the RL stages' hot paths, as a table that compares across machines (and as JSON).

Not a test: nothing here asserts. Every measurement calls the project's own functions (rlvr.rlvr_step,
align.alignment_step, sft.sft_step, model.generate_rollouts, logprobs.chunked_token_logprobs, ...), so it times the
code that training runs. The sections live in bench/sections.py; this file runs each in a fresh Python process,
so its peak memory is its own and no section warms another's caches, then prints and saves the table.

CPU (the default): the tiny Qwen3-VL of toy_models.tiny_config (text hidden 128, 4 layers, 4 heads / 2 KV heads,
vision depth 2), built in memory from seed 0 with the tiny tokenizer and processor; prompts from the synthetic
task (toy_world.synthesize, one 64×64 image each, or an upscaled copy with --image-size); the standard setting of
4 prompts × 8 rollouts × at most 64 new tokens. Sections:
    grpo       one GRPO step of rlvr.py, split as rlvr.main times it: rollout, reward, old log-probs, update
    align      one PRISM alignment step of align.py: rollout, split + scoring, discriminator update, policy update
    rollouts   model.generate_rollouts against repeating each prompt n times through processor and vision encoder,
               and against itself with --compile-decode (static KV cache, compiled decode step)
    logprobs   per-token log-probs of one 8,192-token response at the real vocabulary (151,936): the chunked path
               against full-vocabulary logits, forward and backward; peak memory and time
CUDA (--device cuda; written for one H100 but NOT run on the CPU machine it was written on): random-init models
of the published Qwen3-VL-2B / -4B shapes (toy_models.real_config, vocabulary 151,936), bf16. Sections:
    logprobs   as above, on the GPU (torch.cuda.max_memory_allocated)
    sft        sft.py's step (fp32 weights, bf16 autocast, gradient checkpointing): tokens/s and MFU
               = 6 · N · tokens / time / --peak-tflops
    decode     rollout decoding at batch 64, eager and --compile-decode: tokens/s against the HBM bound
               rows · --hbm-tbps / weight bytes
    align      the alignment step's split with a 2B-shape policy and its 4-expert upcycled discriminator

Usage:
    make bench                                         # = .venv/bin/python -m bench, about 3 minutes on 2 cores
    .venv/bin/python -m bench --repeats 5 --threads 2 --out runs/bench.json
    .venv/bin/python -m bench --sections grpo rollouts  # a subset
    .venv/bin/python -m bench --sections rollouts --image-size 448  # grouping at a real image resolution
    python -m bench --device cuda --peak-tflops 989 --hbm-tbps 3.35 --out runs/bench_h100.json

Reading the table: median over --repeats timed repeats after one warm-up (the log-prob rows: --logprob-repeats
runs after a short warm-up); spread = min–max of those repeats; ratios are taken per repeat (paired) before the
median. The header names the machine, torch version, thread count and the load average before the run (other work
on a 2-core machine slows the small models' many small kernels by up to 100×; a warning line says so): compare
rows across machines only with the same settings line.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import run
from bench import sections, trl_baseline
from bench.sections import FOOTNOTES, REAL_VOCAB, Row, fmt, log, spread
from toy import models as toy_models
from toy import world as toy_world

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------
# Workers (one fresh process per section) and the parent that runs them
# ----------------------------------------------------------------------------------------------


WORKERS = {"grpo": sections.run_grpo, "align": sections.run_align, "rollouts": sections.run_rollouts,
           "sft": sections.run_sft, "decode": sections.run_decode, "project-vs-trl": sections.run_project_vs_trl,
           "trl": trl_baseline.run_trl}


def run_worker(args) -> None:
    """Inside the fresh process: measure one section and write its result as JSON."""
    torch.set_num_threads(args.threads)
    d = run.init_distributed(args.device)
    if args.worker.startswith("logprobs-"):
        result = sections.logprob_worker(args, d, args.worker.removeprefix("logprobs-"))
    else:
        result = {"rows": [r.summary() for r in WORKERS[args.worker](args, d, Path(args.data_dir))]}
    Path(args.worker_out).write_text(json.dumps(result))


def spawn(name: str, args, data_dir: Path) -> dict | None:
    """Run one worker process; None if it failed (its stderr has already streamed through)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, "-m", "bench", *sys.argv[1:], "--worker", name,
           "--worker-out", str(out), "--data-dir", str(data_dir)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=sys.stderr, cwd=ROOT)
    log(f"{name}: {time.perf_counter() - t0:.0f} s" + (f", FAILED with exit code {proc.returncode}"
                                                        if proc.returncode else ""))
    try:
        return json.loads(out.read_text()) if proc.returncode == 0 else None
    finally:
        out.unlink(missing_ok=True)


def run_logprobs(args, data_dir: Path) -> list[dict]:
    results = {"chunked": spawn("logprobs-chunked", args, data_dir)}
    fits, reason = sections.naive_logprob_fits(args) if args.device == "cpu" else (True, "")
    results["naive"] = spawn("logprobs-naive", args, data_dir) if fits else {"skipped": reason}
    return [r.summary() for r in sections.logprob_rows({k: v for k, v in results.items() if v is not None}, args)]


def run_trl_pairs(args, data_dir: Path) -> list[dict]:
    """TRL's GRPOTrainer and the project's GRPO step side by side: --pairs pairs of fresh processes, interleaved
    (every other pair runs the project first), each timing args.repeats steps after a warm-up. Ratios are taken
    within each pair, between the two runs' medians."""
    runs = {"project": [], "trl": []}
    for pair in range(args.pairs):
        order = ("project", "trl") if pair % 2 else ("trl", "project")
        for side in order:
            result = spawn("trl" if side == "trl" else "project-vs-trl", args, data_dir)
            if result is None:
                return [Row(f"trl: {side} failed", [], "", "see the error above").summary()]
            runs[side].append({r["measurement"].split(": ", 1)[1]: r["median"] for r in result["rows"]})
    project, trl = runs["project"], runs["trl"]
    paired = f"{args.pairs} interleaved pairs of processes, each the median of {args.repeats} steps"
    rows = []
    for phase in ("step total", "rollout", "update"):
        rows += [Row(f"vs TRL: TRL {phase}", [t[phase] for t in trl], "s", paired),
                 Row(f"vs TRL: project {phase}", [p[phase] for p in project], "s", paired),
                 Row(f"vs TRL: project / TRL, {phase}", sections.ratios([p[phase] for p in project],
                                                                          [t[phase] for t in trl]), "×", "per pair")]
    for side, results in (("TRL", trl), ("project", project)):
        rows += [Row(f"vs TRL: {side} mean response length", [r["mean response length"] for r in results], "tokens"),
                 Row(f"vs TRL: {side} peak RSS", [r["peak RSS"] for r in results], "MiB", "[rss]")]
    return [r.summary() for r in rows]


def synth_data(out: Path) -> Path:
    """The synthetic task's prompts (align and rl splits carry teacher texts and answers); the rest minimal."""
    toy_world.synthesize(out, seed=0, n_sft_teacher=1, n_sft_public=1, n_align=16, n_rl=16, n_pairs=1,
                         n_pairs_test=1, n_test=1)
    return out


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=ROOT, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info(args, start: dict) -> dict:
    """Where the numbers come from. `start` holds the date and the 1/5/15-minute load average before the first
    section: other work on the machine slows every row, small CPU models most (threads wait on each other)."""
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), usable_cores=len(os.sched_getaffinity(0)),
                memory_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
                threads=args.threads, device=args.device, git=git_revision(), **start)
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def settings(args) -> dict:
    tok, _ = sections.tiny_tokenizer_and_processor()
    ids = {t: tok.convert_tokens_to_ids(t) for t in toy_models.SPECIAL_TOKENS}
    cfg = toy_models.tiny_config(len(tok), ids)
    text, vision = cfg.text_config, cfg.vision_config
    tiny = (f"tiny Qwen3-VL (toy_models.tiny_config): text hidden {text.hidden_size}, {text.num_hidden_layers} layers, "
            f"{text.num_attention_heads} heads / {text.num_key_value_heads} KV, vocab {text.vocab_size}; vision "
            f"hidden {vision.hidden_size}, depth {vision.depth}; random init, seed 0")
    s = dict(model=tiny if args.device == "cpu" else f"Qwen3-VL {'/'.join(args.shapes)} shapes "
             "(toy_models.real_config), random init, seed 0", prompts=args.prompts, rollouts=args.rollouts,
             max_new_tokens=args.max_new_tokens, image_size=args.image_size, repeats=args.repeats, warmup=1,
             micro_batch_tokens=args.micro_batch_tokens or "stage default",
             logprob=dict(tokens=args.logprob_tokens, vocab=REAL_VOCAB, hidden=args.logprob_hidden,
                          repeats=args.logprob_repeats))
    if args.device == "cuda":
        s |= dict(peak_tflops=args.peak_tflops, hbm_tbps=args.hbm_tbps, sft=f"{args.sft_rows}×{args.sft_seq}",
                  decode=f"{args.decode_prompts}×{args.rollouts}×{args.decode_tokens}")
    return s


def render(info: dict, setting: dict, rows: list[dict], footnotes: list[str]) -> str:
    """The markdown table, with a header that says which machine produced it."""
    where = f"{info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), {info['memory_gib']} GiB"
    if "gpu" in info:
        where += f", GPU {info['gpu']}"
    lines = [f"## PRISM benchmark ({info['device']})", "",
             f"- machine: {where}",
             f"- software: Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}; "
             f"torch threads {info['threads']}; git {info['git']}; started {info['date']}",
             f"- load average before the run (1/5/15 min): {' / '.join(map(str, info['load_at_start']))}",
             f"- model: {setting['model']}",
             f"- setting: {setting['prompts']} prompts × {setting['rollouts']} rollouts × ≤{setting['max_new_tokens']} "
             f"new tokens; one {setting['image_size']}×{setting['image_size']} image per prompt; median of "
             f"{setting['repeats']} repeats after {setting['warmup']} warm-up; "
             "spread = min–max", ""]
    # The load during the run would count this run's own threads, so only the load before it is judged.
    if info["load_at_start"][0] > 0.5 * info["usable_cores"]:
        lines.insert(2, "- WARNING: other work was running on this machine (see the load average): the timings are "
                        "not representative; rerun on an idle machine")
    if info["device"] == "cuda":
        lines.insert(2, "- NOTE: the CUDA path was written on a CPU-only machine and had not been run there. "
                        f"[{len(footnotes)}]")
    lines += ["| measurement | median | spread | unit | notes |", "|---|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['measurement']} | {fmt(r['median'])} | {spread(r)} | {r['unit']} | {r['notes']} |")
    lines += [""] + [f"[{k + 1}] {text}" for k, text in enumerate(footnotes)]
    return "\n".join(lines)


def number_footnotes(rows: list[dict], device: str) -> list[str]:
    """Replace [key] markers in the notes by numbers, keeping only the footnotes that are used."""
    used = []
    for r in rows:
        for key, text in FOOTNOTES.items():
            marker = f"[{key}]"
            if marker in r["notes"]:
                if text not in used:
                    used.append(text)
                r["notes"] = r["notes"].replace(marker, f"[{used.index(text) + 1}]")
    if device == "cuda":
        used.append(FOOTNOTES["cuda"])
    return used


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--sections", nargs="+", choices=sections.ALL_SECTIONS, help="default: all of the device's sections")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch intra-op threads")
    p.add_argument("--out", default="runs/bench.json", help="JSON output")
    p.add_argument("--prompts", type=int, default=4, help="prompts (groups) per step")
    p.add_argument("--rollouts", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--image-size", type=int, default=toy_world.SYNTH_IMAGE_SIZE,
                   help="side of the prompts' square images in pixels (the synthetic task's: 64)")
    p.add_argument("--micro-batch-tokens", type=int, default=0,
                   help="token budget of a policy forward/backward; 0 = the stage's default")
    p.add_argument("--logprob-tokens", type=int, default=8192, help="response length of the log-prob measurement")
    p.add_argument("--logprob-hidden", type=int, default=64, help="hidden size of the log-prob measurement")
    p.add_argument("--logprob-repeats", type=int, default=2,
                   help="timed runs per log-prob path (each about half a minute on 2 CPU cores)")
    p.add_argument("--shapes", nargs="+", default=["2B", "4B"], help="CUDA: published shapes (the first for align)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="CUDA: dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--hbm-tbps", type=float, default=3.35, help="CUDA: HBM bandwidth in TB/s (H100 SXM: 3.35)")
    p.add_argument("--sft-rows", type=int, default=4, help="CUDA: rows of the SFT micro-batch")
    p.add_argument("--sft-seq", type=int, default=2048, help="CUDA: tokens per SFT row")
    p.add_argument("--decode-prompts", type=int, default=8, help="CUDA: prompts of the decode measurement")
    p.add_argument("--decode-tokens", type=int, default=256, help="CUDA: new tokens of the decode measurement")
    p.add_argument("--pairs", type=int, default=4, help="trl: interleaved pairs of TRL and project processes")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker:
        return run_worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no GPU")
    chosen = args.sections or sections.SECTIONS[args.device]
    if "trl" in chosen and args.device != "cpu":
        sys.exit("error: --sections trl: the side-by-side with TRL is set up for the CPU setting only")
    start = dict(date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), load_at_start=[round(x, 2) for x in os.getloadavg()])
    t0 = time.perf_counter()
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="prism-bench-") as tmp:
        data_dir = synth_data(Path(tmp) / "data")
        for name in chosen:
            if name == "logprobs":
                rows += run_logprobs(args, data_dir)
                continue
            if name == "trl":
                rows += run_trl_pairs(args, data_dir)
                continue
            result = spawn(name, args, data_dir)
            if result is None:
                failed.append(name)
                rows.append(Row(f"{name}: section failed", [], "", "see the error above").summary())
            else:
                rows += result["rows"]
    info, setting = machine_info(args, start), settings(args)
    footnotes = number_footnotes(rows, args.device)
    table = render(info, setting, rows, footnotes)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine=info, settings=setting, rows=rows, footnotes=footnotes,
                                   failed=failed, table=table, seconds=round(time.perf_counter() - t0, 1)), indent=1))
    log(f"wrote {out} ({time.perf_counter() - t0:.0f} s in all)")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
