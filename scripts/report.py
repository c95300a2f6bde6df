"""The demo's report: the paper-style table of the checkpoints, the training curves, and the paper's
distribution proxies (spec §9.4) — description items per caption and reasoning steps per <think> —
for the teacher's demonstrations and each checkpoint.

    python scripts/report.py runs/demo
    python scripts/report.py runs/demo/ablations --table-only

Reads OUT/results.json (eval.py), OUT/data (the teacher's texts) and the metrics.jsonl of the alignment
and RL runs; writes OUT/table.md, OUT/curves.png and OUT/proxies.png, and prints the table.
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import matplotlib
import pyarrow.parquet as pq

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
from toy.world import caption_answer  # noqa: E402

COLUMNS = [("accuracy", "accuracy %", 100), ("format_rate", "format %", 100),
           ("caption_fact_precision", "caption facts right %", 100), ("caption_right_rate", "captions right %", 100),
           ("caption_items_mean", "items / caption", 1), ("reasoning_steps_mean", "steps / think", 1),
           ("caption_following", "answers following own caption %", 100), ("mean_tokens", "tokens", 1)]


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def curve(rows: list[dict], key: str, window: int = 5) -> tuple[list[int], list[float]]:
    """A trailing moving average: single RL steps on 32 rollouts are noisy."""
    steps = [r["step"] for r in rows if key in r]
    values = [r[key] for r in rows if key in r]
    smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
              for i in range(len(values))]
    return steps, smooth


def caption_following(results: dict, split: str, data_dir: Path) -> dict[str, float | None]:
    """Checkpoint name → the share of its answers on `split` that are the ones its own caption implies
    (toy.world.caption_answer): does the policy answer from what it described, so that a fixed caption
    fixes the answer? Counted over well-formed responses whose caption and question the world can
    derive an answer from; None for a checkpoint with no such response.

    The split's questions come from the JSONL files eval.py recorded for it in `results`: at the
    recorded path, or by name in `data_dir` (a recorded path may be relative to wherever the demo ran).
    Raises SystemExit with an `error:` line when a file or an item's question is missing.
    """
    questions = {}
    for recorded in map(Path, results["benchmarks"][split]["files"]):
        path = recorded if recorded.is_file() else data_dir / recorded.name
        if not path.is_file():
            raise SystemExit(f"error: {recorded}: the questions of {split} are neither there nor in {data_dir}")
        questions |= {r["id"]: r["question"] for r in map(json.loads, path.read_text().splitlines())}
    shares = {}
    for name, r in results["results"].items():
        follows = []
        for item in r["benchmarks"][split]["items"]:
            if item["id"] not in questions:
                raise SystemExit(f"error: {split}: item {item['id']} of {name} is in no question file of the split")
            parsed = data.parse_response(item["response"])
            implied = caption_answer(parsed.caption, questions[item["id"]]) if parsed.valid and parsed.caption else None
            if implied is not None:
                follows.append(parsed.answer == implied)
        shares[name] = sum(follows) / len(follows) if follows else None
    return shares


def summaries(results: dict, data_dir: Path, split: str | None = None) -> dict[str, dict]:
    """Checkpoint name → its summary on `split` (default: the run's first benchmark, the held-out test
    split), with "caption_following" (over the questions found as caption_following says) added."""
    split = split or next(iter(results["benchmarks"]))
    follows = caption_following(results, split, data_dir)
    return {name: r["benchmarks"][split]["summary"] | {"caption_following": follows[name]}
            for name, r in results["results"].items()}


def table(results: dict, data_dir: Path) -> str:
    s = summaries(results, data_dir)
    types = sorted(next(iter(s.values()))["accuracy_by_type"])
    head = [label for _, label, _ in COLUMNS] + [f"{t} %" for t in types]
    lines = ["| model | " + " | ".join(head) + " |", "|---" * (1 + len(head)) + "|"]
    for name, summary in s.items():
        cells = [f"{scale * summary[key]:.1f}" if summary.get(key) is not None else "–" for key, _, scale in COLUMNS]
        cells += [f"{100 * summary['accuracy_by_type'][t]['accuracy']:.0f}" for t in types]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def teacher_proxies(data_dir: Path) -> tuple[list[int], list[int]]:
    """(items per caption, steps per think) of the teacher's demonstrations in the alignment parquet."""
    rows = pq.read_table(data_dir / "align.parquet", columns=["teacher_caption", "teacher_cot"]).to_pylist()
    return ([len(data.caption_items(r["teacher_caption"])) for r in rows],
            [data.reasoning_steps(r["teacher_cot"]) for r in rows])


def checkpoint_proxies(results: dict, skip: tuple[str, ...] = ("Base",)) -> dict[str, tuple[list[int], list[int]]]:
    """Checkpoint name → (items per caption, steps per think) of its well-formed responses, all benchmarks pooled."""
    sources = {}
    for name, r in results["results"].items():
        if name not in skip:
            items = [i for b in r["benchmarks"].values() for i in b["items"]]
            sources[name] = ([i["caption_items"] for i in items if i["caption_items"] is not None],
                             [i["reasoning_steps"] for i in items if i["reasoning_steps"] is not None])
    return sources


def proxy_histograms(axes, sources: dict[str, tuple[list[int], list[int]]]) -> None:
    """Two panels: the share of responses with each count of description items, and of reasoning steps."""
    width = 0.8 / len(sources)
    for ax, k, title in ((axes[0], 0, "description items per caption"), (axes[1], 1, "reasoning steps per <think>")):
        for j, (name, values) in enumerate(sources.items()):
            counts = Counter(values[k])
            xs = sorted(counts)
            ax.bar([x + (j - len(sources) / 2) * width + width / 2 for x in xs],
                   [counts[x] / max(len(values[k]), 1) for x in xs], width, label=name)
        ax.set(title=title, xlabel="count", ylabel="share of well-formed responses")
        ax.legend()
        ax.grid(alpha=0.3)


def proxies_figure(results: dict, data_dir: Path, out: Path) -> None:
    """Histograms of the two structural proxies, teacher first, then each trained checkpoint."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    proxy_histograms(axes, {"teacher": teacher_proxies(data_dir)} | checkpoint_proxies(results))
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def curves_figure(out_dir: Path, out: Path) -> None:
    runs = {p.name: metrics(p) for p in sorted(out_dir.glob("*_*")) if (p / "metrics.jsonl").is_file()
            and p.name.split("_")[0] in ("sft", "prism")}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    align = metrics(out_dir / "prism")
    for expert in ("perception", "reasoning"):
        axes[0].plot(*curve(align, f"disc/{expert}/gap"), label=f"{expert} expert")
    axes[0].set(title="alignment: teacher − policy score (per expert)", xlabel="step", ylabel="gap")
    for name, rows in runs.items():
        axes[1].plot(*curve(rows, "reward/mean"), label=name.replace("_", "→").upper())
        axes[2].plot(*curve(rows, "reward/accuracy"), label=name.replace("_", "→").upper())
    axes[1].set(title="RLVR: mean reward", xlabel="step")
    axes[2].set(title="RLVR: training accuracy", xlabel="step")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description="the demo's table and figures")
    parser.add_argument("out", type=Path, nargs="?", default=Path("runs/demo"), help="a demo (or ablations) run")
    parser.add_argument("--table-only", action="store_true", help="write table.md only (scripts/ablations.sh)")
    args = parser.parse_args()
    out = args.out
    results = json.loads((out / "results.json").read_text())
    # The ablations run (OUT = a demo's ablations/) answers the demo's own data.
    data_dir = out / "data" if (out / "data").is_dir() else out.parent / "data"
    md = table(results, data_dir)
    (out / "table.md").write_text(md + "\n")
    print(md)
    if args.table_only:
        print(f"wrote {out / 'table.md'}")
        return
    curves_figure(out, out / "curves.png")
    proxies_figure(results, data_dir, out / "proxies.png")
    print(f"wrote {out / 'table.md'}, {out / 'curves.png'} and {out / 'proxies.png'}")


if __name__ == "__main__":
    main()
