r"""Evaluation — accuracy, format validity and response length of checkpoints on benchmarks (spec §8, §0.1).

Each checkpoint answers every item of every benchmark once in the caption/think/answer format,
and the answer inside <answer> is graded by the project's rule judge (grading.example_reward; no LLM
judge, so no step can flip a wrong answer to a right one):

    accuracy   = mean_i acc_i      acc_i = 1 iff the response is well formed and its answer matches the truth
    format     = mean_i fmt_i      fmt_i = 1 iff the response follows the format of spec §2.2
    tokens     = mean and median tokens generated per item (the closing <|im_end|> included)
    truncation = fraction of items that reached --max-new-tokens before <|im_end|>

plus accuracy per question type where the benchmark has types. Decoding is greedy by default, so
every number is reproducible; `--sample` gives the paper's setting (temperature 1.0, top_p 0.7,
one sample per item), seeded per batch.

Benchmarks (benchmarks.py): the evaluation JSONL and the RL parquet, and local parquet copies of
MathVista (AI4Math/MathVista, testmini) and MMMU (MMMU/MMMU or lmms-lab/MMMU, validation), told
apart by their columns. A --data entry may be a quoted glob whose files together form one
benchmark (MMMU/MMMU ships one parquet per subject).

Under torchrun, every rank holds the whole model and answers its share of the items; the records
are gathered on rank 0. The per-item results do not depend on the number of ranks.

Usage:
    # CPU, the tiny world (see `make demo`)
    python eval.py --policy runs/demo/sft/model runs/demo/prism/model --policy-names sft prism \
        --data runs/demo/data/test.jsonl --max-new-tokens 128 --batch-size 16 --out runs/demo/eval.json
    # 8×H100, the published checkpoints on MathVista testmini and MMMU validation
    torchrun --nproc_per_node 8 eval.py --policy Qwen3-VL-4B-Instruct-SFT Qwen3-VL-4B-Instruct-SFT-PRISM \
        --data 'MathVista/data/testmini-*.parquet' 'MMMU/*/validation-*.parquet' --data-names mathvista mmmu \
        --out results.json
    # the paper's sampled decoding instead of greedy: add  --sample --temperature 1.0 --top-p 0.7

Writes --out (JSON: the settings, each benchmark's files, and per checkpoint and benchmark the
summary and every item's response, parsed answer, grade, token count and truncation flag) and
prints a markdown table with one row per checkpoint.
"""

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import batching
import benchmarks
import data
import grading
import hf_checkpoint
import model
import run
from data import DataError, Example
from run import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, PROBABILITY, arg


@dataclass
class Args:
    policy: list[str] = arg([], "HF directories of the checkpoints to compare", required=True)
    data: list[str] = arg([], "benchmark files (JSONL or parquet); a quoted glob makes one benchmark of its files",
                          required=True)
    policy_names: list[str] = arg([], "one name per --policy for the table (default: the shortest distinct path "
                                      "endings)")
    data_names: list[str] = arg([], "one name per --data (default: the shortest distinct path endings)")
    out: str = arg("results.json", "JSON file for the summaries and every item's record")
    max_new_tokens: int = arg(8192, "response length limit (the paper's MMMU setting); longer ones count as truncated",
                              check=AT_LEAST_ONE)
    batch_size: int = arg(16, "prompts per generate call on each rank", check=AT_LEAST_ONE)
    sample: bool = arg(False, "sample (--temperature, --top-p) instead of greedy decoding")
    temperature: float = arg(1.0, "sampling temperature (with --sample)", check=POSITIVE)
    top_p: float = arg(0.7, "nucleus sampling threshold (with --sample)", check=PROBABILITY)
    seed: int = arg(0, "seed of --sample; each batch draws from (seed, batch index)")
    limit: int = arg(0, "evaluate only the first N items of each benchmark (0 = all)", check=NON_NEGATIVE)
    bf16: bool = arg(True, "bf16 weights on GPU (ignored on CPU)")
    compile_decode: bool = arg(False, "static KV cache and a torch.compile'd decode step in generate (CUDA graphs "
                                      "on GPU); compiles once per 64-token prompt-length bucket")
    device: str | None = arg(None, "cpu or cuda; default: cuda when available")


# ----------------------------------------------------------------------------------------------
# Grading and metrics
# ----------------------------------------------------------------------------------------------


def grade_item(index: int, example: Example, response: str, tokens: int, truncated: bool) -> dict:
    """One item's record, with everything needed to audit its grade by hand.

    response: decoded with special tokens skipped. accuracy and format are reward_parts' parts,
    so evaluation grades exactly as the RL reward does.
    """
    parsed = data.parse_response(response)
    _, accuracy, fmt = grading.example_reward(response, example)
    record = {"index": index, "id": example.id, "qtype": example.qtype, "truth": example.answer,
              "response": response, "parsed_answer": parsed.answer if parsed.valid else None,
              "accuracy": accuracy, "format": fmt, "tokens": tokens, "truncated": truncated,
              "caption_items": len(data.caption_items(parsed.caption)) if parsed.valid else None,
              "reasoning_steps": data.reasoning_steps(parsed.reasoning) if parsed.valid else None}
    if example.teacher_caption and parsed.valid:
        # Perception against the item's reference caption: which stated facts are true, which true ones stated.
        stated, true = data.caption_items(parsed.caption), set(data.caption_items(example.teacher_caption))
        record |= {"caption_facts_right": sum(item in true for item in stated), "caption_facts_stated": len(stated),
                   "caption_facts_true": len(true), "caption_right": set(stated) == true}
    return record


def summarise(records: list[dict]) -> dict:
    """A benchmark's metrics from its item records (fractions in [0, 1]).

    accuracy_by_type covers the records that have a qtype: {qtype: {"n", "accuracy"}}. The structural
    proxies of spec §9.4 are means over well-formed responses: description items per caption, reasoning
    steps per <think>. Where items carry a reference caption: caption fact precision (stated facts that
    are true) and recall (true facts stated), the share of captions exactly right, and accuracy split
    by whether the caption was right.
    """
    n = len(records)
    tokens = [r["tokens"] for r in records]
    by_type: dict[str, list[float]] = {}
    for r in records:
        if r["qtype"] is not None:
            by_type.setdefault(r["qtype"], []).append(r["accuracy"])
    well_formed = [r for r in records if r["caption_items"] is not None]
    summary = {
        "n": n,
        "accuracy": sum(r["accuracy"] for r in records) / n,
        "format_rate": sum(r["format"] for r in records) / n,
        "mean_tokens": sum(tokens) / n,
        "median_tokens": statistics.median(tokens),
        "truncation_rate": sum(r["truncated"] for r in records) / n,
        "accuracy_by_type": {t: {"n": len(acc), "accuracy": sum(acc) / len(acc)} for t, acc in sorted(by_type.items())},
        "caption_items_mean": statistics.mean(r["caption_items"] for r in well_formed) if well_formed else None,
        "reasoning_steps_mean": statistics.mean(r["reasoning_steps"] for r in well_formed) if well_formed else None,
    }
    if captioned := [r for r in records if "caption_right" in r]:
        right = [r for r in captioned if r["caption_right"]]
        wrong = [r for r in captioned if not r["caption_right"]]
        summary |= {
            "caption_fact_precision": sum(r["caption_facts_right"] for r in captioned) /
            max(sum(r["caption_facts_stated"] for r in captioned), 1),
            "caption_fact_recall": sum(r["caption_facts_right"] for r in captioned) /
            max(sum(r["caption_facts_true"] for r in captioned), 1),
            "caption_right_rate": len(right) / n,
            "accuracy_caption_right": sum(r["accuracy"] for r in right) / len(right) if right else None,
            "accuracy_caption_wrong": sum(r["accuracy"] for r in wrong) / len(wrong) if wrong else None}
    return summary


def markdown_table(summaries: dict[str, dict[str, dict]]) -> str:
    """Checkpoints side by side: one row each; per benchmark, accuracy %, format-valid % and mean tokens.

    summaries: checkpoint name → benchmark name → summarise(...) output.
    """
    benchmarks = list(next(iter(summaries.values())))
    header = ["model"] + [f"{b} {col}" for b in benchmarks for col in ("acc %", "format %", "tokens")]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, per_benchmark in summaries.items():
        cells = [name]
        for b in benchmarks:
            s = per_benchmark[b]
            cells += [f"{100 * s['accuracy']:.1f}", f"{100 * s['format_rate']:.1f}", f"{s['mean_tokens']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Data-parallel generation
# ----------------------------------------------------------------------------------------------


def my_batches(n_items: int, batch_size: int, d: run.Dist) -> list[range]:
    """This rank's batches: the benchmark cut into batches of consecutive items, dealt round-robin.

    An item's batch (its neighbours, hence its padding and numerics, and its seed when sampling)
    is the same under any number of ranks, so 1 and N ranks give identical results.
    """
    starts = range(0, n_items, batch_size)
    return [range(s, min(s + batch_size, n_items)) for s in starts[d.rank::d.world_size]]


def evaluate_shard(policy: model.Policy, processor, examples: list[Example], args: Args, d: run.Dist,
                   desc: str) -> list[dict]:
    """This rank's item records: one response per item, generated batch by batch."""
    tokenizer = processor.tokenizer
    records = []
    for items in tqdm(my_batches(len(examples), args.batch_size, d), disable=not d.is_main, desc=desc):
        batch = [examples[i] for i in items]
        prompts = batching.encode_prompts(processor, batch).to(d.device)
        # Seeded by the batch, not the rank, so that sampled results too are the same under any number of ranks.
        run.seed_everything(args.seed * 100_003 + items.start // args.batch_size)
        rollouts = model.generate_rollouts(policy, prompts, tokenizer, n=1, max_new_tokens=args.max_new_tokens,
                                           temperature=args.temperature, top_p=args.top_p, greedy=not args.sample,
                                           compile_decode=args.compile_decode)
        for i, example, ids, truncated in zip(items, batch, rollouts.responses(), rollouts.truncated.tolist()):
            records.append(grade_item(i, example, tokenizer.decode(ids, skip_special_tokens=True), len(ids),
                                      truncated))
    return records


def gather_records(records: list[dict], n_items: int, d: run.Dist) -> list[dict]:
    """Every rank's records, in item order; an item missing or answered twice is an error."""
    if d.distributed:
        parts = [None] * d.world_size
        dist.all_gather_object(parts, records)
        records = [r for part in parts for r in part]
    records = sorted(records, key=lambda r: r["index"])
    if [r["index"] for r in records] != list(range(n_items)):
        raise RuntimeError(f"gathered {len(records)} records for {n_items} items: some are missing or doubled")
    return records


def main(args: Args) -> None:
    # ------------------------------------------------------------------ setup
    d = run.init_distributed(args.device)
    names = args.policy_names or benchmarks.short_names(args.policy, "--policy-names")
    if len(names) != len(args.policy) or len(set(names)) != len(names):
        raise DataError(f"--policy-names needs {len(args.policy)} distinct names, got {names}")
    # Every benchmark is read and checked before any model is loaded: bad data fails here, naming the record.
    # No text may spell a control token of any of the checkpoints' tokenizers.
    processors = [hf_checkpoint.load_processor(path) for path in args.policy]
    control = frozenset().union(*(data.control_tokens(p.tokenizer) for p in processors))
    suites = benchmarks.load_benchmarks(args.data, args.data_names, args.limit, control)
    dtype = torch.bfloat16 if args.bf16 and d.device.type == "cuda" else torch.float32
    if d.is_main:
        decoding = f"sampled, T={args.temperature}, top_p={args.top_p}" if args.sample else "greedy"
        sizes = ", ".join(f"{b} ({len(ex)} items)" for b, (_, ex) in suites.items())
        print(f"eval: {len(names)} checkpoints on {sizes}; {decoding}, up to {args.max_new_tokens} new tokens, "
              f"{d.world_size} ranks")

    # ------------------------------------------------------------------ generation and grading
    results = {}
    for name, path, processor in zip(names, args.policy, processors):
        policy = model.Policy.from_pretrained(path, dtype=dtype, device=d.device)
        results[name] = {"model": path, "benchmarks": {}}
        for bench, (_, examples) in suites.items():
            t0 = time.time()
            records = gather_records(evaluate_shard(policy, processor, examples, args, d, f"{name}/{bench}"),
                                     len(examples), d)
            summary = summarise(records)
            results[name]["benchmarks"][bench] = {"summary": summary, "items": records}
            if d.is_main:
                print(f"{name} / {bench}: accuracy {summary['accuracy']:.4f}, format {summary['format_rate']:.4f}, "
                      f"mean tokens {summary['mean_tokens']:.1f}, truncated {summary['truncation_rate']:.4f} "
                      f"({time.time() - t0:.0f}s)")
        del policy

    # ------------------------------------------------------------------ report
    if d.is_main:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {"settings": dataclasses.asdict(args) | {"world_size": d.world_size},
                  "benchmarks": {b: [str(f) for f in files] for b, (files, _) in suites.items()},
                  "results": results}
        out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(markdown_table({name: {b: r["summary"] for b, r in res["benchmarks"].items()}
                              for name, res in results.items()}))
        print(f"wrote {out}")


if __name__ == "__main__":
    run.run_stage(main, Args)
