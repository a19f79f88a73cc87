"""Compile the kernels ahead of the first step."""
import numpy as np

_DTYPES = ("float32", "float64")


def warmup(dtypes=_DTYPES):
    """Compile (or load from the on-disk cache) every CPU kernel for ``dtypes``.

    Runs each kernel once on a tiny scratch array; touches no user state. Returns
    the number of kernel signatures now compiled.
    """
    from . import _cpu
    from ._core import init
    for name in dtypes:
        dtype = np.dtype(name)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"warmup: unsupported dtype {name!r}; expected float32 or float64.")
        state = init([np.zeros(1, dtype)])
        group = state.groups[0]
        no_gradient = np.zeros(1, np.int64)
        for parallel in (False, True):
            _cpu.update(parallel, group.chunks, group.table, no_gradient, -1, None, None,
                        group.m, group.u, None, None, None, 1.0, 0.0, None, 0.1, 0.9, 0.999,
                        1e-7, 1.0, 0.0, False)
            _cpu.sum_of_squares(parallel, group.chunks, group.table, no_gradient, -1, group.m,
                                None, None, 1.0)
            _cpu.all_finite(parallel, group.chunks, group.table, no_gradient, -1, group.m)
    return sum(len(k.signatures) for k in _cpu.DISPATCHERS)
