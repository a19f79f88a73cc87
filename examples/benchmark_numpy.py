"""Time one Adamax step: numba_adamax against a careful NumPy implementation.

Both run the same update (Keras 3 Adamax, float32 by default) on the same data in
the same process, alternating, and the table reports medians and the ratio.
The NumPy version preallocates its temporaries and uses ``out=`` everywhere, so it
does no allocation per step.

    python examples/benchmark_numpy.py --sizes 1e3 1e5 1e7
"""
import argparse
import time

import numpy as np

import numba_adamax as na


class NumpyAdamax:
    """Keras 3 Adamax in NumPy ufuncs with preallocated buffers (the baseline)."""

    def __init__(self, w, learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        dt = w.dtype.type
        self.lr, self.b1, self.b2, self.eps = dt(learning_rate), beta_1, dt(beta_2), dt(epsilon)
        self.one_minus_b1 = dt(1.0 - beta_1)
        self.m, self.u = np.zeros_like(w), np.zeros_like(w)
        self.tmp, self.tmp2 = np.empty_like(w), np.empty_like(w)
        self.t = 0

    def step(self, w, g):
        self.t += 1
        dt = w.dtype.type
        m, u, tmp, tmp2 = self.m, self.u, self.tmp, self.tmp2
        np.subtract(g, m, out=tmp)
        np.multiply(tmp, self.one_minus_b1, out=tmp)
        np.add(m, tmp, out=m)
        np.multiply(u, self.b2, out=u)
        np.abs(g, out=tmp)
        np.maximum(u, tmp, out=u)
        np.multiply(m, self.lr, out=tmp)
        np.add(u, self.eps, out=tmp2)
        np.multiply(tmp2, dt(1) - dt(self.b1) ** dt(self.t), out=tmp2)
        np.divide(tmp, tmp2, out=tmp)
        np.subtract(w, tmp, out=w)


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def compare(size, dtype="float32", repeats=None, seed=0):
    """Median seconds per step for numba_adamax and NumPy on ``size`` elements."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(size).astype(dtype)
    g = rng.standard_normal(size).astype(dtype)
    w_np = w.copy()
    optimizer = na.Adamax(learning_rate=1e-3)
    baseline = NumpyAdamax(w_np, 1e-3)
    optimizer.apply([g], [w])  # compile / load from cache, allocate slots
    baseline.step(w_np, g)
    repeats = repeats or int(min(2000, max(7, 3e8 / (28 * size))))
    ours = _median_seconds(lambda: optimizer.apply([g], [w]), repeats)
    theirs = _median_seconds(lambda: baseline.step(w_np, g), repeats)
    return ours, theirs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e3, 1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    print(f"{'elements':>10}  {'numba_adamax':>14}  {'numpy':>12}  {'speed-up':>8}")
    for size in (int(s) for s in args.sizes):
        ours, theirs = compare(size, args.dtype)
        print(f"{size:>10}  {ours * 1e6:>11.1f} us  {theirs * 1e6:>9.1f} us  {theirs / ours:>7.1f}x")


if __name__ == "__main__":
    main()
