"""Agreement of the answer grader with a careful human grader, on labelled answer pairs, kind by kind.

    python scripts/grading_agreement.py tests/data/grading_pairs.jsonl [--show-disagreements]

Each line of the file: {"kind", "prediction", "truth" (a string or a list), optional "options" and
"precision", "verdict" (the human grader's), "why"}. Prints agreement, false accepts (wrong answers
the grader accepts) and false rejects (right answers it rejects) per kind and overall, and the time
per pair (math-verify's first import is paid before the clock starts).
"""

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grading import grade_answer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", type=Path)
    parser.add_argument("--show-disagreements", action="store_true")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.pairs.read_text(encoding="utf-8").splitlines() if line.strip()]
    grade_answer("2x+1", "1+2x")  # math-verify's first import and sympy's caches
    counts = defaultdict(lambda: defaultdict(int))
    seconds, disagreements = [], []
    for row in rows:
        start = time.perf_counter()
        verdict = grade_answer(row["prediction"], row["truth"], row.get("options"), row.get("precision"))
        seconds.append(time.perf_counter() - start)
        for kind in (row["kind"], "all"):
            c = counts[kind]
            c["n"] += 1
            c["right" if row["verdict"] else "wrong"] += 1
            c["agree"] += verdict == row["verdict"]
            c["false_accept"] += verdict and not row["verdict"]
            c["false_reject"] += row["verdict"] and not verdict
        if verdict != row["verdict"]:
            disagreements.append(row)
    print("| kind | pairs | agreement % | false accepts (of wrong) | false rejects (of right) |")
    print("|---|---:|---:|---:|---:|")
    for kind in sorted(counts, key=lambda k: (k == "all", k)):
        c = counts[kind]
        print(f"| {kind} | {c['n']} | {100 * c['agree'] / c['n']:.1f} | {c['false_accept']} of {c['wrong']} | "
              f"{c['false_reject']} of {c['right']} |")
    ms = sorted(1000 * s for s in seconds)
    print(f"\ntime per pair: median {statistics.median(ms):.2f} ms, p99 {ms[int(0.99 * (len(ms) - 1))]:.1f} ms, "
          f"max {ms[-1]:.1f} ms")
    if args.show_disagreements:
        for row in disagreements:
            extra = {k: row[k] for k in ("options", "precision") if row.get(k) is not None}
            print(f"{row['kind']}: {row['prediction']!r} vs {row['truth']!r} {extra or ''} → human "
                  f"{row['verdict']} ({row['why']})")


if __name__ == "__main__":
    main()
