"""Time what the ``nonfinite`` policies cost: one Adamax step per policy, same data.

Three optimizers (``"propagate"``, ``"skip"``, ``"raise"``) step on copies of the same
variable with finite gradients, alternating call by call in one process; the table
reports median microseconds per step and the overhead of the check over
``"propagate"`` (which does not look at the gradients).

    python -m numba_adamax.benchmark.nonfinite --sizes 1e3 1e5 1e7 [--clipnorm 1.0]
"""
import argparse
import time

import numpy as np

import numba_adamax as na

from .problems import problem
from .runner import repeats_for

POLICIES = ("propagate", "skip", "raise")


def compare(size, dtype="float32", repeats=None, clipnorm=None, seed=0):
    """Median seconds per step for each policy on ``size`` elements (finite gradients)."""
    (w,), (g,) = problem([(size,)], dtype, seed)
    runs = {}
    for policy in POLICIES:
        params = [w.copy()]
        optimizer = na.Adamax(learning_rate=1e-3, clipnorm=clipnorm, nonfinite=policy)
        optimizer.apply([g], params)  # compile / load from cache, allocate slots
        runs[policy] = (optimizer, params)
    repeats = repeats or repeats_for(size)
    times = {policy: [] for policy in POLICIES}
    for _ in range(repeats):
        for policy, (optimizer, params) in runs.items():
            start = time.perf_counter()
            optimizer.apply([g], params)
            times[policy].append(time.perf_counter() - start)
    return {policy: float(np.median(t)) for policy, t in times.items()}


def main(argv=None):
    """Print the table for ``argv`` (the command's options)."""
    parser = argparse.ArgumentParser(prog="python -m numba_adamax.benchmark.nonfinite",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e3, 1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--clipnorm", type=float, default=None)
    args = parser.parse_args(argv)
    print(f"{'elements':>10}  {'propagate':>11}  {'skip':>11}  {'raise':>11}  {'overhead':>8}")
    for size in (int(s) for s in args.sizes):
        t = compare(size, args.dtype, clipnorm=args.clipnorm)
        overhead = (t["skip"] + t["raise"]) / 2 / t["propagate"] - 1
        print(f"{size:>10}  {t['propagate'] * 1e6:>8.1f} us  {t['skip'] * 1e6:>8.1f} us  "
              f"{t['raise'] * 1e6:>8.1f} us  {overhead:>+7.0%}")


if __name__ == "__main__":
    main()
