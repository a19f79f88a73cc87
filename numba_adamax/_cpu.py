"""CPU kernels: loops over the shared per-index bodies of ``_math``.

Kernels take 1-D contiguous arrays (``None`` for a slot that is not configured) and
Python scalars, which they cast once to the arrays' dtype. They hold no
Python-object logic: every decision that is not per element was made by the
caller. Each kernel has a serial loop and a ``prange`` loop; its ``parallel``
argument (``size >= PARALLEL_THRESHOLD``, decided by ``_core``) picks one.
Compilation is lazy and cached on disk; a configuration compiles one signature per
dtype and kernel.
"""
import numba
import numpy as np
from numba import njit, prange
from numba.extending import overload

from . import _math

#: Arrays with at least this many elements use the multithreaded loops.
PARALLEL_THRESHOLD = 32768

_JIT = dict(parallel=True, cache=True, error_model="numpy", nogil=True)
_inline = njit(inline="always", error_model="numpy")
_element = _math.compile_for(_inline)
# numba resolves callees as module globals, so name the bodies here.
update_at = _element.update_at
accumulate_at = _element.accumulate_at
ema_at = _element.ema_at
effective_gradient_at = _element.effective_gradient_at


def cast_like(value, like):
    """``value`` converted to the element type of array ``like`` (jitted code only)."""
    raise NotImplementedError("cast_like is only available inside jitted code")


@overload(cast_like, jit_options={"error_model": "numpy"})
def _cast_like_impl(value, like):
    dtype = like.dtype

    def impl(value, like):
        return dtype(value)

    return impl


@_inline
def _ema_coefficients(momentum, w):
    mom = cast_like(momentum, w)
    return mom, cast_like(1.0, w) - mom


@njit(**_JIT)
def update(parallel, w, g, m, u, e, a, loss_scale, steps, clip_scale, clip_divisor,
           clip_value, lr, has_wd, wd, one_minus_beta_1, beta_2, epsilon, bias_correction,
           ema_momentum, overwrite):
    """An update step on one flat variable: mutates ``w``, ``m``, ``u`` and ``e``/``a``
    when given (``None`` otherwise). See ``_math.update_at``."""
    ls, st = cast_like(loss_scale, w), cast_like(steps, w)
    cs, cd, cv = cast_like(clip_scale, w), cast_like(clip_divisor, w), cast_like(clip_value, w)
    lr_, wd_ = cast_like(lr, w), cast_like(wd, w)
    omb1, b2 = cast_like(one_minus_beta_1, w), cast_like(beta_2, w)
    eps, bc = cast_like(epsilon, w), cast_like(bias_correction, w)
    mom, omm = _ema_coefficients(ema_momentum, w)
    if parallel:
        for i in prange(w.size):
            update_at(i, w, g, m, u, e, a, ls, st, cs, cd, cv, lr_, has_wd, wd_,
                               omb1, b2, eps, bc, mom, omm, overwrite)
    else:
        for i in range(w.size):
            update_at(i, w, g, m, u, e, a, ls, st, cs, cd, cv, lr_, has_wd, wd_,
                               omb1, b2, eps, bc, mom, omm, overwrite)


@njit(**_JIT)
def accumulate(parallel, w, g, e, a, loss_scale, ema_momentum, overwrite):
    """An accumulation micro-step: mutates ``a`` (and ``e``, ``w`` through the EMA)."""
    ls = cast_like(loss_scale, w)
    mom, omm = _ema_coefficients(ema_momentum, w)
    if parallel:
        for i in prange(w.size):
            accumulate_at(i, w, g, e, a, ls, mom, omm, overwrite)
    else:
        for i in range(w.size):
            accumulate_at(i, w, g, e, a, ls, mom, omm, overwrite)


@njit(**_JIT)
def ema(parallel, w, e, ema_momentum, overwrite):
    """The EMA step of a variable without gradient: mutates ``e`` (and ``w`` on overwrite)."""
    mom, omm = _ema_coefficients(ema_momentum, w)
    if parallel:
        for i in prange(w.size):
            ema_at(i, w, e, mom, omm, overwrite)
    else:
        for i in range(w.size):
            ema_at(i, w, e, mom, omm, overwrite)


#: Elements per partial sum of ``sum_of_squares``; fixed so results never depend on threads.
REDUCTION_CHUNK = 4096


@_inline
def _chunk_sum_of_squares(chunk, g, a, ls, st):
    total = 0.0
    for i in range(chunk * REDUCTION_CHUNK, min(g.size, (chunk + 1) * REDUCTION_CHUNK)):
        x = numba.float64(effective_gradient_at(i, g, a, ls, st))
        total += x * x
    return total


@njit(**_JIT)
def sum_of_squares(parallel, g, a, loss_scale, steps):
    """Sum of the squared effective gradients, in float64; mutates nothing.

    Partial sums over fixed chunks are added in order, so the serial and parallel
    loops (and any thread count) give the same bits.
    """
    ls, st = cast_like(loss_scale, g), cast_like(steps, g)
    partial = np.empty((g.size + REDUCTION_CHUNK - 1) // REDUCTION_CHUNK)
    if parallel:
        for c in prange(partial.size):
            partial[c] = _chunk_sum_of_squares(c, g, a, ls, st)
    else:
        for c in range(partial.size):
            partial[c] = _chunk_sum_of_squares(c, g, a, ls, st)
    total = 0.0
    for c in range(partial.size):
        total += partial[c]
    return total


@_inline
def _chunk_all_finite(chunk, g):
    ok = True
    for i in range(chunk * REDUCTION_CHUNK, min(g.size, (chunk + 1) * REDUCTION_CHUNK)):
        x = g[i]
        ok &= x - x == x - x  # False exactly when x is NaN or +-inf; branch-free
    return ok


@njit(**_JIT)
def all_finite(parallel, g):
    """True when no element of ``g`` is NaN or +-inf; mutates nothing.

    Works in chunks of ``REDUCTION_CHUNK`` elements; the serial loop returns at the
    first chunk holding a non-finite value, the parallel loop checks every chunk.
    """
    chunks = (g.size + REDUCTION_CHUNK - 1) // REDUCTION_CHUNK
    if parallel:
        bad = 0
        for c in prange(chunks):
            if not _chunk_all_finite(c, g):
                bad += 1
        return bad == 0
    for c in range(chunks):
        if not _chunk_all_finite(c, g):
            return False
    return True


DISPATCHERS = (update, accumulate, ema, sum_of_squares, all_finite)
