"""Shared parameters of the asv suite: feature sets and devices.

Everything else the benchmarks use (data, contenders, device placement, the skip of a
device that is not there) comes from ``numba_adamax.benchmark``, imported inside
``setup``, so that asv's discovery of the suite never imports numba_adamax (or
numba.cuda).
"""

#: The feature sets: the names of ``numba_adamax.benchmark.VARIANTS``, whose entry
#: gives the optimizer options and the ``apply`` calls of one timed step (with
#: accumulation a whole window, a micro-step and an update step).
FEATURES = ["plain", "clipnorm", "global_clipnorm", "ema", "accumulation", "weight_decay"]

DEVICES = ["cpu", "cuda"]


def feature_set(name):
    """``(options, calls)`` of the feature set ``name``."""
    from numba_adamax.benchmark import VARIANTS
    options, calls, _ = VARIANTS[name]
    return options, calls
