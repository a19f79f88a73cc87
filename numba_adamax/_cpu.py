"""CPU kernels: the shared per-element math in ``@njit`` loops.

Kernels take 1-D contiguous arrays, a tuple of Python-float coefficients and a tuple
of int flags (layout in ``_coefficients``). They hold no Python-object logic: every
decision that is not per element was made by the caller. Each kernel exists as a
serial loop and a ``prange`` loop; the caller picks one by size
(``PARALLEL_THRESHOLD``). Compilation is lazy (first call per dtype) and cached on
disk.
"""
import numba
from numba import njit, prange
from numba.extending import overload

from . import _math

#: Arrays with at least this many elements use the multithreaded kernels.
PARALLEL_THRESHOLD = 32768

_JIT = dict(cache=True, error_model="numpy", nogil=True)
_element = _math.compile_for(njit(inline="always", error_model="numpy"))
fused_element = _element.fused_element
effective_gradient = _element.effective_gradient


def cast_like(value, like):
    """Return ``value`` converted to the element type of array ``like`` (jitted only)."""
    raise NotImplementedError("cast_like is only available inside jitted code")


@overload(cast_like, jit_options={"error_model": "numpy"})
def _cast_like_impl(value, like):
    dtype = like.dtype

    def impl(value, like):
        return dtype(value)

    return impl


@njit(inline="always", error_model="numpy")
def _typed(c, w):
    """Cast the coefficient tuple (layout: ``_core.Coefficients``) to ``w``'s dtype.

    Appends ``1 - ema_momentum``, computed in that dtype as Keras does.
    """
    mom = cast_like(c[10], w)
    return (cast_like(c[0], w), cast_like(c[1], w), cast_like(c[2], w),
            cast_like(c[3], w), cast_like(c[4], w), cast_like(c[5], w),
            cast_like(c[6], w), cast_like(c[7], w), cast_like(c[8], w),
            cast_like(c[9], w), mom, cast_like(1.0, w) - mom)


@njit(inline="always", error_model="numpy")
def _step_element(i, w, g, m, u, e, a, c, f):
    """Load element ``i``, run ``fused_element`` and store what this mode changes."""
    lr, wd, omb1, b2, eps, bc, ls, steps, ca, cb, mom, omm = c
    mode, has_ls, use_acc, clip_mode, has_wd, use_ema, overwrite = f
    wi = w[i]
    wi, mi, ui, ei, ai = fused_element(
        mode, wi, g[i], m[i], u[i], e[i] if use_ema else wi, a[i] if use_acc else wi,
        has_ls, ls, use_acc, steps, clip_mode, ca, cb,
        lr, has_wd, wd, omb1, b2, eps, bc,
        use_ema, mom, omm, overwrite)
    w[i] = wi
    if mode == 0:
        m[i] = mi
        u[i] = ui
    if use_ema:
        e[i] = ei
    if use_acc:
        a[i] = ai


@njit(**_JIT)
def fused_step_serial(w, g, m, u, e, a, coefficients, flags):
    """One optimizer call on one flat variable; mutates ``w``, ``m``, ``u``, ``e``, ``a``.

    Unused slots are passed as empty arrays; ``flags`` says which are used.
    """
    c = _typed(coefficients, w)
    for i in range(w.size):
        _step_element(i, w, g, m, u, e, a, c, flags)


@njit(parallel=True, **_JIT)
def fused_step_parallel(w, g, m, u, e, a, coefficients, flags):
    """Multithreaded ``fused_step_serial``; same arguments, same mutation."""
    c = _typed(coefficients, w)
    for i in prange(w.size):
        _step_element(i, w, g, m, u, e, a, c, flags)


@njit(inline="always", error_model="numpy")
def _square_at(i, g, a, c, f):
    x = effective_gradient(g[i], a[i] if f[2] else g[i], f[1], c[6], f[2], c[7])
    x64 = numba.float64(x)
    return x64 * x64


@njit(**_JIT)
def sum_of_squares_serial(g, a, coefficients, flags):
    """Sum over elements of the squared effective gradient, in float64. Mutates nothing."""
    c = _typed(coefficients, g)
    total = 0.0
    for i in range(g.size):
        total += _square_at(i, g, a, c, flags)
    return total


@njit(parallel=True, **_JIT)
def sum_of_squares_parallel(g, a, coefficients, flags):
    """Multithreaded ``sum_of_squares_serial``."""
    c = _typed(coefficients, g)
    total = 0.0
    for i in prange(g.size):
        total += _square_at(i, g, a, c, flags)
    return total


def fused_step(w, g, m, u, e, a, coefficients, flags):
    """Run the fused kernel that suits ``w.size``; see ``fused_step_serial``."""
    kernel = fused_step_parallel if w.size >= PARALLEL_THRESHOLD else fused_step_serial
    kernel(w, g, m, u, e, a, coefficients, flags)


def sum_of_squares(g, a, coefficients, flags):
    """Run the reduction kernel that suits ``g.size``; returns a Python float."""
    kernel = sum_of_squares_parallel if g.size >= PARALLEL_THRESHOLD else sum_of_squares_serial
    return kernel(g, a, coefficients, flags)


DISPATCHERS = (fused_step_serial, fused_step_parallel,
               sum_of_squares_serial, sum_of_squares_parallel)
