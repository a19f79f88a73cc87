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
        x = np.zeros(1, dtype)
        empty = np.zeros(0, dtype)
        coefficients = (0.0, 0.0, 0.1, 0.999, 1e-7, 0.1, 1.0, 1.0, 0.0, 0.0, 0.0)
        flags = (0, 0, 0, 0, 0, 0, 0)
        for kernel in (_cpu.fused_step_serial, _cpu.fused_step_parallel):
            kernel(x, x.copy(), x.copy(), x.copy(), empty, empty, coefficients, flags)
        for kernel in (_cpu.sum_of_squares_serial, _cpu.sum_of_squares_parallel):
            kernel(x, empty, coefficients, flags)
    return sum(len(k.signatures) for k in _cpu.DISPATCHERS)
