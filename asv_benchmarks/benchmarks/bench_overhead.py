"""The fixed cost of one call at small sizes, where it dominates the memory traffic.

``TimeFixedCost.time_call`` times one call of each entry point (``apply`` on a list,
``apply`` on ``FlatBuffer`` parameters and gradients, the bound step of ``bind``) at
1e3 and 1e4 float32 elements. ``TrackFixedCost.track_ratio_to_roofline`` divides the
median of such calls by the median of the streaming roofline kernel with the same
memory traffic, measured in the same process: a ratio that machine noise moves far
less than the times themselves.
"""
import statistics
import time

SIZES = [1_000, 10_000]
MODES = ["apply", "flat", "bound"]


def _step(mode, size):
    from numba_adamax.benchmark import random_arrays
    from numba_adamax.benchmark.contenders import (numba_adamax_bound, numba_adamax_flat,
                                                   numba_adamax_list)
    w, g = random_arrays([(size,), (size,)], "float32")
    build = {"apply": numba_adamax_list, "flat": numba_adamax_flat,
             "bound": numba_adamax_bound}[mode]
    step = build([w], [g])
    step()  # warm-up: slots and compilation
    return step


def _median_seconds(step, calls=2000, rounds=7):
    medians = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        medians.append((time.perf_counter() - start) / calls)
    return statistics.median(medians)


class TimeFixedCost:
    params = (SIZES, MODES)
    param_names = ["size", "mode"]

    def setup(self, size, mode):
        self.step = _step(mode, size)

    def time_call(self, size, mode):
        self.step()


class TrackFixedCost:
    params = (SIZES, MODES)
    param_names = ["size", "mode"]

    def setup(self, size, mode):
        from numba_adamax.benchmark import random_arrays
        from numba_adamax.benchmark.contenders import roofline
        self.step = _step(mode, size)
        w, g = random_arrays([(size,), (size,)], "float32")
        self.roofline = roofline([w], [g])
        self.roofline()

    def track_ratio_to_roofline(self, size, mode):
        return _median_seconds(self.step) / _median_seconds(self.roofline)

    track_ratio_to_roofline.unit = "ratio"
