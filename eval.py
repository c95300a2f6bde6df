r"""Evaluation — accuracy, format validity and response length of checkpoints on benchmarks (spec §8, §0.1).

Each checkpoint answers every item of every benchmark once in the caption/think/answer format,
and the answer inside <answer> is graded by the project's rule judge (grading.example_reward; no LLM
judge, so no step can flip a wrong answer to a right one):

    accuracy   = mean_i acc_i      acc_i = 1 iff the response is well formed and its answer matches the truth
    format     = mean_i fmt_i      fmt_i = 1 iff the response follows the format of spec §2.2
    tokens     = mean and median tokens generated per item (the closing <|im_end|> included)
    truncation = fraction of items that reached --max-new-tokens before <|im_end|>

plus accuracy per question type where the benchmark has types (MathVista's types, MathVerse's
problem versions, the subjects of MathVision, MMMU and MMMU-Pro), the benchmark's own metrics
(HallusionBench aAcc / fAcc / qAcc, WeMath strict / loose), and the paper's structural proxies
(description items per caption, reasoning steps per <think>, spec §9.4). Decoding is greedy by
default, so every number is reproducible; `--sample` gives the paper's setting (temperature 1.0,
top_p 0.7, one sample per item), seeded per batch.

Benchmarks (benchmarks.py): the evaluation JSONL and the RL parquet, and local parquet copies of the
paper's seven (MathVista, MathVerse, MathVision, WeMath, MMMU, MMMU-Pro, HallusionBench) in their
published schemas, told apart by their columns, each with the release's prompt and max_new_tokens
(spec §8). A --data entry may be a quoted glob whose files together form one benchmark (MMMU/MMMU
ships one parquet per subject).

Under torchrun, every rank holds the whole model and answers its share of the items; the records
are gathered on rank 0. The per-item results do not depend on the number of ranks.

Usage:
    # CPU, the tiny world (see `make demo`)
    python eval.py --policy runs/demo/sft/model runs/demo/prism/model --policy-names sft prism \
        --data runs/demo/data/test.jsonl --max-new-tokens 128 --batch-size 16 --out runs/demo/eval.json
    # 8×H100, the published checkpoints on the paper's seven benchmarks (README: which file is which)
    torchrun --nproc_per_node 8 eval.py --policy Qwen3-VL-4B-Instruct-SFT Qwen3-VL-4B-Instruct-SFT-PRISM \
        --data 'MathVista/data/testmini-*.parquet' MathVerse-lmmseval/testmini.parquet \
            'MathVision/data/testmini-*.parquet' 'We-Math/testmini-*.parquet' 'MMMU/*/validation-*.parquet' \
            'MMMU_Pro/*[1v][0i]*/test-*.parquet' HallusionBench/image.parquet \
        --data-names MathVista MathVerse MathVision WeMath MMMU MMMU-Pro HallusionBench --out results.json
    # the paper's sampled decoding instead of greedy: add  --sample --temperature 1.0 --top-p 0.7

Writes --out (JSON: the settings, each benchmark's files, schema and generation limit, and per
checkpoint and benchmark the summary and every item's response, parsed answer, grade, token count
and truncation flag) and prints the paper-shaped table: one row per checkpoint, one accuracy column
per benchmark and their average, then each benchmark's own metrics. scripts/benchmarks_figure.py
draws accuracy against mean output tokens (spec §9.3) and the proxies per checkpoint.
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
    max_new_tokens: int = arg(0, "response length limit for every benchmark; 0 = each benchmark's published one "
                                 "(spec §8: 8192 to 49152); longer responses count as truncated", check=NON_NEGATIVE)
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
    parsed = data.parse_response(response, example.response_format)
    _, accuracy, fmt = grading.example_reward(response, example)
    record = {"index": index, "id": example.id, "qtype": example.qtype, "meta": example.meta, "truth": example.answer,
              "response": response, "parsed_answer": parsed.answer if parsed.valid else None,
              "accuracy": accuracy, "format": fmt, "tokens": tokens, "truncated": truncated,
              "caption_items": len(data.caption_items(parsed.caption)) if parsed.valid and parsed.caption else None,
              "reasoning_steps": data.reasoning_steps(parsed.reasoning) if parsed.valid else None}
    if example.teacher_caption and parsed.valid:
        # Perception against the item's reference caption: which stated facts are true, which true ones stated.
        stated, true = data.caption_items(parsed.caption), set(data.caption_items(example.teacher_caption))
        right = sum(item in true for item in stated)
        record |= {"caption_facts_right": right, "caption_facts_stated": len(stated), "caption_facts_true": len(true),
                   "caption_right": bool(stated) and right == len(stated)}
    return record


def summarise(records: list[dict], kind: str = "prompts") -> dict:
    """A benchmark's metrics from its item records (fractions in [0, 1]).

    accuracy_by_type covers the records that have a qtype: {qtype: {"n", "accuracy"}}. The structural
    proxies of spec §9.4 are means over well-formed responses: description items per caption, reasoning
    steps per <think>. Where items carry a reference caption: caption fact precision (stated facts that
    are true) and recall (true facts stated), the share of captions that state nothing false ("right":
    a terser caption may leave facts out), and accuracy split by whether the caption was right.
    kind: the benchmark's schema; its own metrics (benchmarks.benchmark_metrics) go under "benchmark".
    """
    n = len(records)
    tokens = [r["tokens"] for r in records]
    by_type: dict[str, list[float]] = {}
    for r in records:
        if r["qtype"] is not None:
            by_type.setdefault(r["qtype"], []).append(r["accuracy"])
    well_formed = [r for r in records if r["reasoning_steps"] is not None]
    captioned_well = [r for r in well_formed if r["caption_items"] is not None]
    summary = {
        "n": n,
        "accuracy": sum(r["accuracy"] for r in records) / n,
        "format_rate": sum(r["format"] for r in records) / n,
        "mean_tokens": sum(tokens) / n,
        "median_tokens": statistics.median(tokens),
        "truncation_rate": sum(r["truncated"] for r in records) / n,
        "accuracy_by_type": {t: {"n": len(acc), "accuracy": sum(acc) / len(acc)} for t, acc in sorted(by_type.items())},
        "caption_items_mean": statistics.mean(r["caption_items"] for r in captioned_well) if captioned_well else None,
        "reasoning_steps_mean": statistics.mean(r["reasoning_steps"] for r in well_formed) if well_formed else None,
        "benchmark": benchmarks.benchmark_metrics(kind, records),
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
    """The paper's main-table shape: one row per checkpoint, accuracy % per benchmark and, with several
    benchmarks, their unweighted average (spec §9.1); then format-valid %, mean output tokens and the
    benchmark's own metrics (in %) per benchmark.

    summaries: checkpoint name → benchmark name → summarise(...) output.
    """
    names = list(summaries)
    bench_names = list(summaries[names[0]])

    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + \
               ["| " + " | ".join(row) + " |" for row in rows]

    average = len(bench_names) > 1
    accuracy = [[name] + [f"{100 * s[b]['accuracy']:.1f}" for b in bench_names] +
                ([f"{100 * statistics.mean(s[b]['accuracy'] for b in bench_names):.1f}"] if average else [])
                for name, s in summaries.items()]
    lines = table(["model"] + [f"{b} acc %" for b in bench_names] + (["Avg"] if average else []), accuracy)
    extra = {b: [k for k, v in summaries[names[0]][b]["benchmark"].items() if isinstance(v, float)]
             for b in bench_names}
    header = ["model"] + [f"{b} {col}" for b in bench_names for col in ["format %", "tokens", *extra[b]]]
    rows = [[name] + [cell for b in bench_names for cell in
                      [f"{100 * s[b]['format_rate']:.1f}", f"{s[b]['mean_tokens']:.0f}",
                       *(f"{100 * s[b]['benchmark'][k]:.1f}" for k in extra[b])]]
            for name, s in summaries.items()]
    return "\n".join(lines + [""] + table(header, rows))


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


def evaluate_shard(policy: model.Policy, processor, examples: list[Example], max_new_tokens: int, args: Args,
                   d: run.Dist, desc: str) -> list[dict]:
    """This rank's item records: one response per item, generated batch by batch."""
    tokenizer = processor.tokenizer
    records = []
    for items in tqdm(my_batches(len(examples), args.batch_size, d), disable=not d.is_main, desc=desc):
        batch = [examples[i] for i in items]
        prompts = batching.encode_prompts(processor, batch).to(d.device)
        # Seeded by the batch, not the rank, so that sampled results too are the same under any number of ranks.
        run.seed_everything(args.seed * 100_003 + items.start // args.batch_size)
        rollouts = model.generate_rollouts(policy, prompts, tokenizer, n=1, max_new_tokens=max_new_tokens,
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

    def limit(suite: benchmarks.Benchmark) -> int:
        return args.max_new_tokens or suite.max_new_tokens

    dtype = torch.bfloat16 if args.bf16 and d.device.type == "cuda" else torch.float32
    if d.is_main:
        decoding = f"sampled, T={args.temperature}, top_p={args.top_p}" if args.sample else "greedy"
        sizes = ", ".join(f"{b} ({len(s.examples)} items, {s.kind}, up to {limit(s)} new tokens)"
                          for b, s in suites.items())
        print(f"eval: {len(names)} checkpoints on {sizes}; {decoding}, {d.world_size} ranks")

    # ------------------------------------------------------------------ generation and grading
    results = {}
    for name, path, processor in zip(names, args.policy, processors):
        policy = model.Policy.from_pretrained(path, dtype=dtype, device=d.device)
        results[name] = {"model": path, "benchmarks": {}}
        for bench, suite in suites.items():
            t0 = time.time()
            records = gather_records(evaluate_shard(policy, processor, suite.examples, limit(suite), args, d,
                                                    f"{name}/{bench}"), len(suite.examples), d)
            summary = summarise(records, suite.kind)
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
                  "benchmarks": {b: {"files": [str(f) for f in s.files], "schema": s.kind,
                                     "max_new_tokens": limit(s)} for b, s in suites.items()},
                  "results": results}
        out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(markdown_table({name: {b: r["summary"] for b, r in res["benchmarks"].items()}
                              for name, res in results.items()}))
        print(f"wrote {out}")


if __name__ == "__main__":
    run.run_stage(main, Args)
