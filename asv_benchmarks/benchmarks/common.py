"""Shared pieces of the asv suite: feature sets, devices and array placement.

numba_adamax (and numba.cuda) are imported inside functions that ``setup`` calls, so
that asv's discovery of the suite never imports them.
"""
import numpy as np

#: Optimizer options of each feature set.
FEATURES = {
    "plain": {},
    "clipnorm": {"clipnorm": 1.0},
    "global_clipnorm": {"global_clipnorm": 1.0},
    "ema": {"use_ema": True},
    "accumulation": {"gradient_accumulation_steps": 2},
    "weight_decay": {"weight_decay": 1e-4},
}

#: Calls of ``apply`` per timed step: with accumulation a whole window (a micro-step
#: and an update step), so that every timed body does the same work.
CALLS = {"accumulation": 2}

DEVICES = ["cpu", "cuda"]


def require(device):
    """Raise ``NotImplementedError`` (asv's skip) when ``device`` is not usable here."""
    if device == "cpu":
        return
    try:
        from numba import cuda
    except ImportError as exc:
        raise NotImplementedError(f"numba.cuda is not importable: {exc}") from None
    if not cuda.is_available():
        raise NotImplementedError("no CUDA GPU is available")


def place(arrays, device):
    """``arrays`` (NumPy) as the arrays a step on ``device`` takes: themselves on the
    CPU, ``numba.cuda`` device copies on CUDA."""
    if device == "cpu":
        return list(arrays)
    from numba import cuda
    return [cuda.to_device(a) for a in arrays]


def synchronizer(device):
    """A callable that waits for the work queued on ``device`` (a no-op on the CPU)."""
    if device == "cpu":
        return lambda: None
    from numba import cuda
    return cuda.synchronize


def random_arrays(shapes, dtype, seed=0):
    """Seeded standard-normal arrays of ``shapes``, made without temporaries."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.dtype(dtype)) for shape in shapes]
