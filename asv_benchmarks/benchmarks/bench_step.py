"""Timing and peak-memory benchmarks for one Adamax step on a dense array.

numba_adamax is imported inside ``setup`` (not at module top) so that asv's
benchmark discovery never fails, even when the package is missing or broken.
The warm-up call in ``setup`` builds the optimizer slots and triggers Numba
compilation, so the timed body measures only the steady-state step.
"""
import numpy as np


class TimeDenseStep:
    params = ([1_000, 100_000, 10_000_000], ["float32", "float64"])
    param_names = ["size", "dtype"]

    def setup(self, size, dtype):
        import numba_adamax as na

        rng = np.random.default_rng(0)
        self.w = rng.standard_normal(size).astype(dtype)
        self.g = rng.standard_normal(size).astype(dtype)
        self.opt = na.Adamax(learning_rate=0.001)
        self.opt.apply([self.g], [self.w])  # warm-up: build slots + JIT compile

    def time_step(self, size, dtype):
        self.opt.apply([self.g], [self.w])

    def peakmem_step(self, size, dtype):
        self.opt.apply([self.g], [self.w])
