"""Timing and peak-memory benchmarks for one Adamax step on a dense array.

``TimeDenseStep`` covers sizes up to 1e6 for both dtypes and every feature set;
``TimeLargeDenseStep`` adds 1e7 and 5e7 for float32 without options, so that a
``--quick`` run stays short. The CUDA half of the ``device`` parameter passes
``numba.cuda`` device arrays to ``Adamax().apply`` exactly like NumPy arrays; it is
skipped (``NotImplementedError`` in ``setup``) where there is no GPU.

numba_adamax is imported inside ``setup`` (not at module top) so that asv's
benchmark discovery never fails, even when the package is missing or broken.
The warm-up call in ``setup`` builds the optimizer slots and triggers Numba
compilation, so the timed body measures only the steady-state step.
"""
import resource
import sys

from .common import DEVICES, FEATURES, feature_set


class _Step:
    """A warmed-up optimizer over one array of ``size`` elements on ``device``."""

    def _build(self, size, dtype, feature, device):
        import numba_adamax as na
        from numba_adamax.benchmark import place, random_arrays, require, synchronizer

        require(device)
        w, g = random_arrays([(size,), (size,)], dtype)
        self.w, self.g = place([w], device), place([g], device)
        options, self.calls = feature_set(feature)
        self.opt = na.Adamax(learning_rate=0.001, **options)
        self.sync = synchronizer(device)
        self.step()  # warm-up: build slots + JIT compile

    def step(self):
        for _ in range(self.calls):
            self.opt.apply(self.g, self.w)
        self.sync()


class TimeDenseStep(_Step):
    params = ([1_000, 10_000, 100_000, 1_000_000], ["float32", "float64"], FEATURES,
              DEVICES)
    param_names = ["size", "dtype", "feature", "device"]

    def setup(self, size, dtype, feature, device):
        self._build(size, dtype, feature, device)

    def time_step(self, size, dtype, feature, device):
        self.step()


class TimeLargeDenseStep(_Step):
    params = ([10_000_000, 50_000_000], DEVICES)
    param_names = ["size", "device"]

    def setup(self, size, device):
        self._build(size, "float32", "plain", device)

    def time_step(self, size, device):
        self.step()


class MemDenseStep:
    """Memory of a step: the state is built and its pages touched in ``setup``, and the
    kernels are compiled on a tiny array first, so what a step adds to the peak is
    its own temporaries (there should be none proportional to the size).

    ``peakmem_step`` is the process's peak (arrays and slots included);
    ``track_peak_growth`` is how far a step raises it, in bytes.
    """
    params = ([1_000_000, 10_000_000], FEATURES)
    param_names = ["size", "feature"]

    def setup(self, size, feature):
        import numba_adamax as na
        from numba_adamax.benchmark import random_arrays

        options, calls = feature_set(feature)
        tiny_w, tiny_g = random_arrays([(8,), (8,)], "float32")
        small = na.init([tiny_w], **options)
        for _ in range(calls):  # compile every kernel the feature uses
            na.step([tiny_w], [tiny_g], small)
        self.w, self.g = random_arrays([(size,), (size,)], "float32")
        self.state = na.init([self.w], **options)
        for slots in (self.state.m, self.state.u, self.state.ema, self.state.accumulators):
            for slot in slots:
                slot[...] = 0  # touch the pages, so that a step does not fault them in
        for mask in self.state.touched_rows:  # accumulation's row masks: state, too
            mask[...] = False
        self.calls = calls
        self.na = na

    def step(self):
        for _ in range(self.calls):
            self.na.step([self.w], [self.g], self.state)

    def peakmem_step(self, size, feature):
        self.step()

    def track_peak_growth(self, size, feature):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(3):
            self.step()
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        return grown * (1 if sys.platform == "darwin" else 1024)  # Linux counts KiB

    track_peak_growth.unit = "bytes"
