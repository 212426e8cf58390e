"""What the 95 % intervals cost: ``classification_metrics`` with and without them, after every run.

Random labels and probabilities (the cost does not depend on how good the model is) for a few
test-set sizes and class counts; with and without ``intervals`` alternate in rounds, and the
medians and the difference are printed. The bootstrap (1000 resamples) is what the difference is.

    python benchmarks/metrics_intervals.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from resnexus.reports import classification_metrics

CASES = ((30, 2), (150, 2), (1000, 2), (1000, 10), (5000, 2), (5000, 10))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"median of {args.rounds} alternating rounds")
    print("| images | classes | with intervals (ms) | without (ms) | intervals cost (ms) |")
    print("|---:|---:|---:|---:|---:|")
    for n, k in CASES:
        y = rng.integers(0, k, n)
        probs = rng.random((n, k))
        probs /= probs.sum(axis=1, keepdims=True)
        names = [f"class{c}" for c in range(k)]
        times: dict[bool, list[float]] = {True: [], False: []}
        classification_metrics(y, probs, names)  # warm-up
        for _ in range(args.rounds):
            for intervals in (True, False):
                start = time.perf_counter()
                classification_metrics(y, probs, names, intervals=intervals)
                times[intervals].append(time.perf_counter() - start)
        with_ci, without = (1000 * statistics.median(times[flag]) for flag in (True, False))
        print(f"| {n:,} | {k} | {with_ci:.0f} | {without:.0f} | {with_ci - without:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
