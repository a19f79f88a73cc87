"""Compile the kernels ahead of the first step."""
import numpy as np

from . import _validation as check

_DTYPES = ("float32", "float64")


def warmup(dtypes=_DTYPES):
    """Compile (or load from the on-disk cache) the CPU kernels of the default
    configuration (no clipping, EMA, accumulation or loss scaling) for ``dtypes``:
    the update, the squared-norm and the finite-check passes, serial and parallel.
    Other configurations compile on their first step.

    Runs each kernel once on a tiny scratch array; touches no user state. Returns
    the number of CPU kernel signatures now compiled.
    """
    from .functional import init
    from .kernels import cpu
    for name in dtypes:
        dtype = check.float_dtype(name, "warmup: `dtypes` entry")
        group = init([np.zeros(1, dtype)]).groups[0]
        no_gradient = np.zeros(1, np.int64)
        for parallel in (False, True):
            cpu.update(parallel, group.chunks, group.table, no_gradient, -1, None, None,
                       group.m, group.u, None, None, None, 1.0, 0.0, None, 0.1, 0.999, 1e-7,
                       0.1, 0.0, False)
            cpu.chunk_sums_of_squares(parallel, group.chunks, group.table, no_gradient, -1,
                                      group.m, None, None, 1.0)
            cpu.nonfinite_flags(parallel, group.chunks, group.table, no_gradient, -1, group.m,
                                np.zeros(1, np.uint8))
    return sum(len(k.signatures) for k in cpu.DISPATCHERS)
