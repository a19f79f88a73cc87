"""CPU kernels: loops over the shared per-index bodies of ``_math``.

One call serves a whole ``SlotGroup`` (every variable of one dtype). The kernels
take the group's tables (see ``_state.SlotGroup``): ``chunks`` rows ``(k, begin,
end)`` are the units of work, ``table`` rows ``(address, size, slot offset, weight
decay on)`` describe variable ``k``, and ``refs[k]`` locates its gradient (0: none
this call; an object address when ``deref >= 0``, else a data address; see
``_addresses``). Slots are the group's flat buffers (``None`` when not
configured), and scalars are Python floats that the kernels cast once to the
dtype. The kernels hold no Python-object logic: every decision that is not per
element was made by the caller. Each has a serial and a ``prange`` loop over the
chunks; its ``parallel`` argument (group size ``>= PARALLEL_THRESHOLD``, decided by
``_core``) picks one. Compilation is lazy and cached on disk: one signature per
dtype and configuration.
"""
import numba
import numpy as np
from numba import njit, prange
from numba.extending import overload

from . import _math
from ._intrinsics import pointer_to, read_address

#: Groups with at least this many elements use the multithreaded loops.
PARALLEL_THRESHOLD = 32768

_JIT = dict(parallel=True, cache=True, error_model="numpy", nogil=True)
_inline = njit(inline="always", error_model="numpy")
_element = _math.compile_for(_inline)
# numba resolves callees as module globals, so name the bodies here.
update_at = _element.update_at
accumulate_at = _element.accumulate_at
ema_at = _element.ema_at
effective_gradient_at = _element.effective_gradient_at
clipnorm_divisor = _element.clipnorm_divisor
global_clip_scale = _element.global_clip_scale


def cast_like(value, like):
    """``value`` converted to the element type of array ``like``; a 3-tuple is converted
    element-wise and None stays None (jitted code only)."""
    raise NotImplementedError("cast_like is only available inside jitted code")


@overload(cast_like, jit_options={"error_model": "numpy"})
def _cast_like_impl(value, like):
    dtype = like.dtype
    if isinstance(value, numba.types.NoneType):
        return lambda value, like: None
    if isinstance(value, numba.types.BaseTuple):
        return lambda value, like: (dtype(value[0]), dtype(value[1]), dtype(value[2]))
    return lambda value, like: dtype(value)


def clip_for(clip, clip_table, k, like):
    """Variable ``k``'s clip triple: from row ``k`` of ``clip_table`` (scale, divisor;
    no clip value) when there is a table, else the shared ``clip`` (jitted code only)."""
    raise NotImplementedError("clip_for is only available inside jitted code")


@overload(clip_for, jit_options={"error_model": "numpy"})
def _clip_for_impl(clip, clip_table, k, like):
    if isinstance(clip_table, numba.types.NoneType):
        return lambda clip, clip_table, k, like: clip
    dtype = like.dtype
    return lambda clip, clip_table, k, like: (dtype(clip_table[k, 0]), dtype(clip_table[k, 1]),
                                              dtype(np.inf))


def window(x, begin, end):
    """``x[begin:end]``, or None when ``x`` is None (jitted code only)."""
    raise NotImplementedError("window is only available inside jitted code")


@overload(window, jit_options={"error_model": "numpy"})
def _window_impl(x, begin, end):
    if x is None or isinstance(x, numba.types.NoneType):
        return lambda x, begin, end: None
    return lambda x, begin, end: x[begin:end]


@_inline
def _ema_coefficients(momentum, w):
    mom = cast_like(momentum, w)
    return mom, cast_like(1.0, w) - mom


@_inline
def _variable(table, k, begin, end, like):
    """Elements ``begin:end`` of the variable described by ``table[k]``."""
    return numba.carray(pointer_to(table[k, 0], like), table[k, 1])[begin:end]


@_inline
def _gradient(refs, deref, table, k, begin, end, like):
    """Elements ``begin:end`` of variable ``k``'s gradient (``refs[k]`` must be non-zero)."""
    address = refs[k]
    if deref >= 0:
        address = read_address(address + deref)
    return numba.carray(pointer_to(address, like), table[k, 1])[begin:end]


# The loops over one chunk are separate functions (not inlined into the kernels) so
# that each is compiled with its optional slots typed as arguments: numba only prunes
# ``if e is not None`` branches on arguments.
@njit(error_model="numpy", cache=True)
def _update_range(w, g, m, u, e, a, ls, st, clip, lr, has_wd, wd, omb1, b2, eps, bc, mom,
                  omm, overwrite):
    for i in range(w.size):
        update_at(i, w, g, m, u, e, a, ls, st, clip, lr, has_wd, wd, omb1, b2, eps, bc, mom,
                  omm, overwrite)


@njit(error_model="numpy", cache=True)
def _accumulate_range(w, g, e, a, ls, mom, omm, overwrite):
    for i in range(w.size):
        accumulate_at(i, w, g, e, a, ls, mom, omm, overwrite)


@njit(error_model="numpy", cache=True)
def _without_gradient_range(w, e, a, mom, omm, overwrite, reset_accumulator):
    if e is not None:
        for i in range(w.size):
            ema_at(i, w, e, mom, omm, overwrite)
    if a is not None and reset_accumulator:
        a[:] = 0


@njit(error_model="numpy", cache=True)
def _sum_of_squares_range(g, a, ls, st):
    total = 0.0
    for i in range(g.size):
        x = numba.float64(effective_gradient_at(i, g, a, ls, st))
        total += x * x
    return total


@_inline
def _update_chunk(c, chunks, table, refs, deref, clip, clip_table, m, u, e, a, ls, st, lr, wd,
                  omb1, b2, eps, bc, mom, omm, overwrite):
    k, begin, end = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    start = table[k, 2] + begin
    stop = start + end - begin
    w = _variable(table, k, begin, end, m)
    if refs[k] == 0:  # no gradient: only the EMA moves, and the accumulator resets
        _without_gradient_range(w, window(e, start, stop), window(a, start, stop), mom, omm,
                                overwrite, True)
        return
    g = _gradient(refs, deref, table, k, begin, end, m)
    _update_range(w, g, m[start:stop], u[start:stop], window(e, start, stop),
                  window(a, start, stop), ls, st, clip_for(clip, clip_table, k, m), lr,
                  table[k, 3] != 0, wd, omb1, b2, eps, bc, mom, omm, overwrite)


@njit(**_JIT)
def update(parallel, chunks, table, refs, deref, clip, clip_table, m, u, e, a, loss_scale,
           steps, lr, wd, one_minus_beta_1, beta_1, beta_2, epsilon, t, ema_momentum,
           overwrite):
    """An update step on a group: mutates its variables, ``m``, ``u`` and ``e``/``a``
    when given. Variables without a gradient (``refs[k] == 0``) only get the EMA step
    and an accumulator reset. ``clip`` is None or ``(clip_scale, clip_divisor,
    clip_value)`` for every variable; ``clip_table[k] = (clip_scale, clip_divisor)``
    per variable replaces it when given. ``loss_scale`` is None when off. The bias
    correction ``1 - beta_1**t`` is computed here in the dtype, as Keras does. See
    ``_math.update_at``."""
    ls, st, cl = cast_like(loss_scale, m), cast_like(steps, m), cast_like(clip, m)
    lr_, wd_ = cast_like(lr, m), cast_like(wd, m)
    omb1, b2, eps = cast_like(one_minus_beta_1, m), cast_like(beta_2, m), cast_like(epsilon, m)
    bc = cast_like(1.0, m) - cast_like(beta_1, m) ** cast_like(t, m)
    mom, omm = _ema_coefficients(ema_momentum, m)
    if parallel:
        for c in prange(chunks.shape[0]):
            _update_chunk(c, chunks, table, refs, deref, cl, clip_table, m, u, e, a, ls, st,
                          lr_, wd_, omb1, b2, eps, bc, mom, omm, overwrite)
    else:
        for c in range(chunks.shape[0]):
            _update_chunk(c, chunks, table, refs, deref, cl, clip_table, m, u, e, a, ls, st,
                          lr_, wd_, omb1, b2, eps, bc, mom, omm, overwrite)


@_inline
def _accumulate_chunk(c, chunks, table, refs, deref, e, a, ls, mom, omm, overwrite):
    k, begin, end = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    start = table[k, 2] + begin
    stop = start + end - begin
    w = _variable(table, k, begin, end, a)
    if refs[k] == 0:
        _without_gradient_range(w, window(e, start, stop), None, mom, omm, overwrite, False)
        return
    g = _gradient(refs, deref, table, k, begin, end, a)
    _accumulate_range(w, g, window(e, start, stop), a[start:stop], ls, mom, omm, overwrite)


@njit(**_JIT)
def accumulate(parallel, chunks, table, refs, deref, e, a, loss_scale, ema_momentum,
               overwrite):
    """An accumulation micro-step on a group: ``a += g / loss_scale`` for variables
    with a gradient; mutates ``a`` (and ``e`` and the variables through the EMA)."""
    ls = cast_like(loss_scale, a)
    mom, omm = _ema_coefficients(ema_momentum, a)
    if parallel:
        for c in prange(chunks.shape[0]):
            _accumulate_chunk(c, chunks, table, refs, deref, e, a, ls, mom, omm, overwrite)
    else:
        for c in range(chunks.shape[0]):
            _accumulate_chunk(c, chunks, table, refs, deref, e, a, ls, mom, omm, overwrite)


@_inline
def _chunk_sum_of_squares(c, chunks, table, refs, deref, a, ls, st, like):
    k, begin, end = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    if refs[k] == 0:
        return 0.0
    start = table[k, 2] + begin
    return _sum_of_squares_range(_gradient(refs, deref, table, k, begin, end, like),
                                 window(a, start, start + end - begin), ls, st)


@njit(**_JIT)
def sum_of_squares(parallel, chunks, table, refs, deref, like, a, loss_scale, steps):
    """Per variable of a group, the sum of its squared effective gradients in float64
    (0 without a gradient); ``like`` is any array of the group's dtype. Mutates
    nothing. Each chunk is summed in order and the chunk sums are added in order,
    so the serial and parallel loops (and any thread count) give the same bits."""
    ls, st = cast_like(loss_scale, like), cast_like(steps, like)
    partial = np.empty(chunks.shape[0])
    if parallel:
        for c in prange(chunks.shape[0]):
            partial[c] = _chunk_sum_of_squares(c, chunks, table, refs, deref, a, ls, st, like)
    else:
        for c in range(chunks.shape[0]):
            partial[c] = _chunk_sum_of_squares(c, chunks, table, refs, deref, a, ls, st, like)
    # Plain loops: in a parallel=True function numba would run np.zeros on the threads.
    sums = np.empty(table.shape[0])
    for k in range(table.shape[0]):
        sums[k] = 0.0
    for c in range(chunks.shape[0]):
        sums[chunks[c, 0]] += partial[c]
    return sums


@njit(error_model="numpy", cache=True)
def clip_table(squared_norms, total, clip_norm, by_global, like):
    """The ``(clip_scale, clip_divisor)`` of each variable of a group, computed in
    ``like``'s dtype and returned as float64 rows: ``clipnorm = c`` gives ``(c,
    max(||g_k||, c))``; ``global_clipnorm = c`` (``by_global``) gives every variable
    ``(c * min(1/N, 1/c) + (N - N), 1)`` with ``N**2 = total``. Mutates nothing."""
    c, one = cast_like(clip_norm, like), cast_like(1.0, like)
    out = np.empty((squared_norms.size, 2))
    scale = global_clip_scale(cast_like(total, like), c, one)
    for k in range(squared_norms.size):
        if by_global:
            out[k, 0], out[k, 1] = scale, one
        else:
            out[k, 0], out[k, 1] = c, clipnorm_divisor(cast_like(squared_norms[k], like), c)
    return out


@njit(error_model="numpy", cache=True)
def _all_finite_range(g):
    ok = True
    for i in range(g.size):
        x = g[i]
        ok &= x - x == x - x  # False exactly when x is NaN or +-inf; branch-free
    return ok


@_inline
def _chunk_all_finite(c, chunks, table, refs, deref, like):
    k, begin, end = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    if refs[k] == 0:
        return True
    return _all_finite_range(_gradient(refs, deref, table, k, begin, end, like))


@njit(**_JIT)
def all_finite(parallel, chunks, table, refs, deref, like):
    """True when no gradient of a group holds NaN or +-inf; ``like`` is any array of
    the group's dtype. Mutates nothing. The serial loop stops at the first chunk
    holding a non-finite value; the parallel loop checks every chunk."""
    if parallel:
        bad = 0
        for c in prange(chunks.shape[0]):
            if not _chunk_all_finite(c, chunks, table, refs, deref, like):
                bad += 1
        return bad == 0
    for c in range(chunks.shape[0]):
        if not _chunk_all_finite(c, chunks, table, refs, deref, like):
            return False
    return True


DISPATCHERS = (update, accumulate, sum_of_squares, all_finite)
