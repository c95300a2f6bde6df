"""The paper's efficiency and distribution views (spec §9.3–§9.4) of an eval.py run over benchmarks.

    python scripts/benchmarks_figure.py results.json --out benchmarks.png

Top row: per benchmark, accuracy against mean output tokens, one point per checkpoint (the paper's
token-efficiency figure). Bottom row: description items per caption and reasoning steps per <think>
of every checkpoint's well-formed responses, all benchmarks pooled.
"""

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import checkpoint_proxies, proxy_histograms  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="eval.py's --out JSON")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    names = list(results["benchmarks"])
    fig = plt.figure(figsize=(4 * max(len(names), 2), 8))
    top = fig.subplots(2, max(len(names), 2))
    for ax, bench in zip(top[0], names):
        for checkpoint, r in results["results"].items():
            s = r["benchmarks"][bench]["summary"]
            ax.scatter(s["mean_tokens"], 100 * s["accuracy"], label=checkpoint)
            ax.annotate(checkpoint, (s["mean_tokens"], 100 * s["accuracy"]), fontsize=8)
        ax.set(title=bench, xlabel="mean output tokens", ylabel="accuracy %")
        ax.grid(alpha=0.3)
    for ax in top[0][len(names):]:
        ax.axis("off")
    for ax in top[1][2:]:
        ax.axis("off")
    proxy_histograms(top[1][:2], checkpoint_proxies(results, skip=()))
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
