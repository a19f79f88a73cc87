"""Compile the kernels ahead of the first step."""
import numpy as np

_DTYPES = ("float32", "float64")


def warmup(dtypes=_DTYPES):
    """Compile (or load from the on-disk cache) every CPU kernel for ``dtypes``.

    Runs each kernel once on a tiny scratch array; touches no user state. Returns
    the number of kernel signatures now compiled.
    """
    from . import _cpu
    for name in dtypes:
        dtype = np.dtype(name)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"warmup: unsupported dtype {name!r}; expected float32 or float64.")
        w, g, m, u = (np.zeros(1, dtype) for _ in range(4))
        _cpu.update(False, w, g, m, u, None, None, 1.0, 1.0, 1.0, 1.0, np.inf, 0.0, False,
                    0.0, 0.1, 0.999, 1e-7, 0.1, 0.0, False)
        _cpu.sum_of_squares(False, g, None, 1.0, 1.0)
        _cpu.all_finite(False, g)
    return sum(len(k.signatures) for k in _cpu.DISPATCHERS)
