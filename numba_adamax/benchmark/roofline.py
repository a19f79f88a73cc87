"""Streaming kernels that bound what a fused Adamax step can cost: the benchmark's
roofline, a bandwidth reference and not an implementation.

Each kernel makes the passes over memory that the matching numba_adamax step makes,
and nothing else: one flat loop over one buffer per array, with the bare Adamax
update and none of the per-call options (no loss scale, clip triple, weight-decay
flag, address tables or chunks). They are compiled with the package kernels' options
(``JIT``: ``parallel``, ``cache``, ``error_model="numpy"``, ``nogil``, no fastmath)
and, like them, run a ``prange`` loop when ``parallel`` is true and a serial loop
otherwise; callers pick ``parallel`` with the package's ``config.PARALLEL_THRESHOLD``.
Bytes per element below are for float32 (twice that for float64); they mutate the
arrays named as written.

==================  ==============================================  ===========
kernel              reads / writes                                  B / element
==================  ==============================================  ===========
``update``          reads g, w, m, u; writes w, m, u                28
``sum_of_squares``  reads g (the norm pass of clipping)             4
``update_ema``      ``update`` + reads and writes e                 36
``accumulate``      reads g, a; writes a (a micro-step)             12
``update_mean``     reads g, a, w, m, u; writes w, m, u, a          36
==================  ==============================================  ===========

The update takes ``u = max(b2 * u, |g|)`` with Python's ``max``, which, unlike the
package's kernels, does not propagate NaN (a NaN gradient leaves ``u`` finite). That
is the same traffic and about the same work, all a timing needs, but not the
package's results for non-finite input.
"""
import numpy as np
from numba import njit, prange

# The package's kernel tunables, read here and nowhere else in the benchmarks.
from numba_adamax.kernels import config

JIT = config.JIT

_inline = njit(inline="always", error_model="numpy")


@_inline
def _adamax_at(i, x, w, m, u, scale, omb1, b2, lr, eps):
    gi = x * scale
    mi = m[i] + (gi - m[i]) * omb1
    ui = max(b2 * u[i], abs(gi))
    m[i] = mi
    u[i] = ui
    wi = w[i] - lr * mi / (ui + eps)
    w[i] = wi
    return wi


@njit(**JIT)
def update(parallel, w, g, m, u, scale, omb1, b2, lr, eps):
    """The bare Adamax update of ``w`` with gradient ``g * scale``; mutates w, m, u."""
    dt = w.dtype.type
    s, o, b, r, e = dt(scale), dt(omb1), dt(b2), dt(lr), dt(eps)
    if parallel:
        for i in prange(w.size):
            _adamax_at(i, g[i], w, m, u, s, o, b, r, e)
    else:
        for i in range(w.size):
            _adamax_at(i, g[i], w, m, u, s, o, b, r, e)


@njit(**JIT)
def sum_of_squares(parallel, g):
    """The float64 sum of ``g**2``; mutates nothing."""
    total = 0.0
    if parallel:
        for i in prange(g.size):
            x = np.float64(g[i])
            total += x * x
    else:
        for i in range(g.size):
            x = np.float64(g[i])
            total += x * x
    return total


@njit(**JIT)
def update_ema(parallel, w, g, m, u, e, omb1, b2, lr, eps, mom):
    """``update``, then ``e = mom * e + (1 - mom) * w``; mutates w, m, u, e."""
    dt = w.dtype.type
    one, o, b, r, ep, mo = dt(1), dt(omb1), dt(b2), dt(lr), dt(eps), dt(mom)
    if parallel:
        for i in prange(w.size):
            e[i] = mo * e[i] + (one - mo) * _adamax_at(i, g[i], w, m, u, one, o, b, r, ep)
    else:
        for i in range(w.size):
            e[i] = mo * e[i] + (one - mo) * _adamax_at(i, g[i], w, m, u, one, o, b, r, ep)


@njit(**JIT)
def accumulate(parallel, g, a):
    """``a += g``; mutates a."""
    if parallel:
        for i in prange(a.size):
            a[i] += g[i]
    else:
        for i in range(a.size):
            a[i] += g[i]


@njit(**JIT)
def update_mean(parallel, w, g, m, u, a, steps, omb1, b2, lr, eps):
    """``update`` with the gradient ``(g + a) / steps``, then ``a = 0``; mutates w, m,
    u, a."""
    dt = w.dtype.type
    one, o, b, r, ep, n = dt(1), dt(omb1), dt(b2), dt(lr), dt(eps), dt(steps)
    if parallel:
        for i in prange(w.size):
            _adamax_at(i, (g[i] + a[i]) / n, w, m, u, one, o, b, r, ep)
            a[i] = 0
    else:
        for i in range(w.size):
            _adamax_at(i, (g[i] + a[i]) / n, w, m, u, one, o, b, r, ep)
            a[i] = 0
