"""The demo's multi-seed table: every seed's number, the mean and the sample standard deviation.

    python scripts/seeds.py runs/reproduce/seed* --out runs/reproduce

Reads each run's results.json (eval.py); writes OUT/seeds-<split>.md for --split (default the held-out
test split) and prints it.
Four tables: held-out accuracy per checkpoint, the caption facts the policy gets right, the answers
that follow the policy's own caption (report.caption_following), and the differences the issue's
targets are about (each RL run over its start, PRISM over SFT, the headline PRISM→RL over SFT→RL),
each per seed.
"""

import argparse
import json
import statistics
from pathlib import Path

from report import summaries as run_summaries


def summaries(run: Path, split: str) -> dict[str, dict]:
    """Checkpoint name → its summary on `split` (a --data-names entry of the demo's eval)."""
    return run_summaries(json.loads((run / "results.json").read_text()), run / "data", split)


def row(label: str, values: list[float | None]) -> str:
    """One table row: the per-seed values (– where a seed did not run it), mean ± std over those that did."""
    present = [v for v in values if v is not None]
    cells = [f"{v:+.1f}" if label.startswith("Δ") and v is not None else f"{v:.1f}" if v is not None else "–"
             for v in values]
    mean = statistics.mean(present) if present else float("nan")
    std = statistics.stdev(present) if len(present) > 1 else float("nan")
    return f"| {label} | " + " | ".join(cells) + f" | {mean:.1f} ± {std:.1f} (n={len(present)}) |"


def tables(runs: dict[str, dict[str, dict]]) -> str:
    seeds = list(runs)
    head = "| | " + " | ".join(seeds) + " | mean ± std |\n|---" + "|---" * (len(seeds) + 1) + "|"
    names = list(dict.fromkeys(n for s in runs.values() for n in s))

    def metric(key: str, name: str) -> list[float | None]:
        return [100 * runs[s][name][key] if name in runs[s] and runs[s][name].get(key) is not None else None
                for s in seeds]

    def delta(key: str, a: str, b: str) -> list[float | None]:
        return [x - y if x is not None and y is not None else None for x, y in zip(metric(key, a), metric(key, b))]

    out = ["### Held-out answer accuracy (%)", head] + [row(n, metric("accuracy", n)) for n in names]
    out += ["", "### Caption facts right (%, of those stated)", head]
    out += [row(n, metric("caption_fact_precision", n)) for n in names if n != "Base"]
    out += ["", "### Answers that follow the policy's own caption (%, of well-formed responses)", head]
    out += [row(n, metric("caption_following", n)) for n in names if n != "Base"]
    out += ["", "### Differences (accuracy points unless named)", head]
    algos = [n.split("+")[1] for n in names if n.startswith("SFT+")]
    for algo in algos:
        out.append(row(f"Δ SFT+{algo} − SFT", delta("accuracy", f"SFT+{algo}", "SFT")))
        out.append(row(f"Δ PRISM+{algo} − PRISM", delta("accuracy", f"PRISM+{algo}", "PRISM")))
    out.append(row("Δ PRISM − SFT", delta("accuracy", "PRISM", "SFT")))
    out.append(row("Δ PRISM − SFT, caption facts right", delta("caption_fact_precision", "PRISM", "SFT")))
    for algo in algos:
        out.append(row(f"Δ PRISM+{algo} − SFT+{algo} (headline)", delta("accuracy", f"PRISM+{algo}", f"SFT+{algo}")))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="one demo run directory per seed")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", default="synthetic-test", help="the eval benchmark to tabulate")
    args = parser.parse_args()
    runs = {run.name: summaries(run, args.split) for run in args.runs if (run / "results.json").is_file()}
    missing = [str(run) for run in args.runs if not (run / "results.json").is_file()]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)}: no results.json (did the run finish?)")
    md = f"Split: {args.split}\n\n" + tables(runs)
    (args.out / f"seeds-{args.split}.md").write_text(md + "\n")
    print(md)
    print(f"wrote {args.out / f'seeds-{args.split}.md'}")


if __name__ == "__main__":
    main()
