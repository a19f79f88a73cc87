"""Time one Adamax step: numba_adamax against a careful NumPy implementation.

Both run the same update (Keras 3 Adamax, float32 by default) on the same data in
the same process, one after the other, and the table reports medians and the ratio.
The NumPy version (``numba_adamax.benchmark.NumpyAdamax``) preallocates its
temporaries and uses ``out=`` everywhere, so it does no allocation per step.
``python -m numba_adamax.benchmark`` compares more implementations.

    python -m numba_adamax.benchmark.numpy --sizes 1e3 1e5 1e7
"""
import argparse
import time

import numpy as np

import numba_adamax as na

from .contenders import NumpyAdamax
from .problems import problem
from .runner import repeats_for


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def compare(size, dtype="float32", repeats=None, seed=0):
    """Median seconds per step for numba_adamax and NumPy on ``size`` elements."""
    (w,), (g,) = problem([(size,)], dtype, seed)
    w_np = w.copy()
    optimizer = na.Adamax(learning_rate=1e-3)
    baseline = NumpyAdamax(w_np, 1e-3)
    optimizer.apply([g], [w])  # compile / load from cache, allocate slots
    baseline.step(w_np, g)
    repeats = repeats or repeats_for(size)
    ours = _median_seconds(lambda: optimizer.apply([g], [w]), repeats)
    theirs = _median_seconds(lambda: baseline.step(w_np, g), repeats)
    return ours, theirs


def main(argv=None):
    """Print the table for ``argv`` (the command's options)."""
    parser = argparse.ArgumentParser(prog="python -m numba_adamax.benchmark.numpy",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e3, 1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    print(f"{'elements':>10}  {'numba_adamax':>14}  {'numpy':>12}  {'speed-up':>8}")
    for size in (int(s) for s in args.sizes):
        ours, theirs = compare(size, args.dtype)
        print(f"{size:>10}  {ours * 1e6:>11.1f} us  {theirs * 1e6:>9.1f} us  "
              f"{theirs / ours:>7.1f}x")


if __name__ == "__main__":
    main()
