"""CPU kernels: loops over the shared per-index bodies of ``elementwise``.

One call serves a whole dtype group (every variable of one dtype) through the
group's tables (see the package docstring): ``chunks`` rows ``(k, begin, end)``
are the units of work, ``table`` rows ``(address, size, slot offset, weight decay
on)`` describe variable ``k``, and ``refs[k]`` locates its gradient (0: none this
call; an object address when ``object_data_offset >= 0``, else a data address; see
``addresses``). Slots are the group's flat buffers (``None`` when not configured),
and scalars are Python floats that the kernels cast once to the dtype. Every
decision that is not per element was made by the caller.

A kernel whose loop over the chunks is a ``prange`` exists twice
(``serial_and_parallel``): ``name`` is compiled without ``parallel`` (the ``prange``
runs as a plain loop: no thread-pool region, a shorter compile) and
``name_parallel`` with it. The driver picks one per call, so a configuration whose
groups stay small never compiles the parallel variant.
"""
import types

import numba
import numpy as np
from numba import njit, prange
from numba.extending import overload

from . import config, elementwise
from .pointers import pointer_to, read_address


def serial_and_parallel(py_func):
    """``(name, name_parallel)``: two dispatchers of ``py_func`` (named ``_name``),
    compiled with ``config.SERIAL_JIT`` and ``config.JIT``. Each wraps its own copy
    of the function under its own name, so the two never share a cache entry
    (numba's cache index does not key on the compile options)."""
    name = py_func.__name__.lstrip("_")
    variants = []
    for suffix, options in (("", config.SERIAL_JIT), ("_parallel", config.JIT)):
        copy = types.FunctionType(py_func.__code__, py_func.__globals__, name + suffix,
                                  py_func.__defaults__, py_func.__closure__)
        copy.__qualname__ = name + suffix
        copy.__doc__ = py_func.__doc__
        variants.append(njit(**options)(copy))
    return tuple(variants)


#: Inlined at the Numba IR level into the kernels that call it.
inline = njit(inline="always", error_model="numpy")
#: The element bodies compiled for the CPU.
elements = elementwise.compile_for(inline, numba.float64)
# numba resolves callees as module globals, so name the bodies here.
update_at = elements.update_at
accumulate_at = elements.accumulate_at
without_gradient_at = elements.without_gradient_at
square_at = elements.square_at
is_finite = elements.is_finite
clipnorm_divisor = elements.clipnorm_divisor
global_clip_scale = elements.global_clip_scale


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


@inline
def _ema_coefficients(momentum, like):
    momentum = cast_like(momentum, like)
    return momentum, cast_like(1.0, like) - momentum


@inline
def _variable(table, k, begin, end, like):
    """Elements ``begin:end`` of the variable described by ``table[k]``."""
    return numba.carray(pointer_to(table[k, 0], like), table[k, 1])[begin:end]


@inline
def _gradient(refs, object_data_offset, table, k, begin, end, like):
    """Elements ``begin:end`` of variable ``k``'s gradient (``refs[k]`` must be non-zero)."""
    address = refs[k]
    if object_data_offset >= 0:
        address = read_address(address + object_data_offset)
    return numba.carray(pointer_to(address, like), table[k, 1])[begin:end]


# The loops over one chunk are separate functions (not inlined into the kernels) so
# that each is compiled with its optional slots typed as arguments: numba only prunes
# ``if e is not None`` branches on arguments.
@njit(**config.SERIAL_JIT)
def _update_range(w, g, m, u, e, a, loss_scale, steps, clip, lr, has_wd, wd,
                  one_minus_beta_1, beta_2, epsilon, bias_correction, ema_momentum,
                  one_minus_ema_momentum, overwrite):
    for i in range(w.size):
        update_at(i, w, g, m, u, e, a, loss_scale, steps, clip, lr, has_wd, wd,
                  one_minus_beta_1, beta_2, epsilon, bias_correction, ema_momentum,
                  one_minus_ema_momentum, overwrite)


@njit(**config.SERIAL_JIT)
def _accumulate_range(w, g, e, a, loss_scale, ema_momentum, one_minus_ema_momentum,
                      overwrite):
    for i in range(w.size):
        accumulate_at(i, w, g, e, a, loss_scale, ema_momentum, one_minus_ema_momentum,
                      overwrite)


@njit(**config.SERIAL_JIT)
def _without_gradient_range(w, e, a, ema_momentum, one_minus_ema_momentum, overwrite,
                            reset_accumulator):
    for i in range(w.size):
        without_gradient_at(i, w, e, a, ema_momentum, one_minus_ema_momentum, overwrite,
                            reset_accumulator)


@njit(**config.SERIAL_JIT)
def _sum_of_squares_range(g, a, loss_scale, steps):
    total = 0.0
    for i in range(g.size):
        total += square_at(i, g, a, loss_scale, steps)
    return total


@njit(**config.SERIAL_JIT)
def all_finite(g):
    """True when the 1-D array ``g`` holds no NaN or +-inf; mutates nothing."""
    ok = True
    for i in range(g.size):
        ok &= is_finite(g[i])
    return ok


@inline
def _update_chunk(c, chunks, table, refs, object_data_offset, clip, clip_table, m, u, e, a,
                  loss_scale, steps, lr, wd, one_minus_beta_1, beta_2, epsilon,
                  bias_correction, ema_momentum, one_minus_ema_momentum, overwrite):
    k, begin, end = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    start = table[k, 2] + begin
    stop = start + end - begin
    w = _variable(table, k, begin, end, m)
    if refs[k] == 0:  # no gradient: only the EMA moves, and the accumulator resets
        _without_gradient_range(w, window(e, start, stop), window(a, start, stop),
                                ema_momentum, one_minus_ema_momentum, overwrite, True)
        return
    g = _gradient(refs, object_data_offset, table, k, begin, end, m)
    _update_range(w, g, m[start:stop], u[start:stop], window(e, start, stop),
                  window(a, start, stop), loss_scale, steps, clip_for(clip, clip_table, k, m),
                  lr, table[k, 3] != 0, wd, one_minus_beta_1, beta_2, epsilon,
                  bias_correction, ema_momentum, one_minus_ema_momentum, overwrite)


def _update(chunks, table, refs, object_data_offset, clip, clip_table, m, u, e, a,
            loss_scale, steps, lr, wd, one_minus_beta_1, beta_2, epsilon, bias_correction,
            ema_momentum, overwrite):
    """An update step on a group: mutates its variables, ``m``, ``u`` and ``e``/``a``
    when given. Variables without a gradient (``refs[k] == 0``) only get the EMA step
    and an accumulator reset. ``clip`` is None or ``(clip_scale, clip_divisor,
    clip_value)`` for every variable; ``clip_table[k] = (clip_scale, clip_divisor)``
    per variable replaces it when given. ``loss_scale`` and ``wd`` are None when off.
    ``bias_correction`` is ``1 - beta_1**t``, already rounded to the dtype. See
    ``elementwise.update_at``."""
    loss_scale, steps = cast_like(loss_scale, m), cast_like(steps, m)
    clip, lr, wd = cast_like(clip, m), cast_like(lr, m), cast_like(wd, m)
    one_minus_beta_1, beta_2 = cast_like(one_minus_beta_1, m), cast_like(beta_2, m)
    epsilon, bias_correction = cast_like(epsilon, m), cast_like(bias_correction, m)
    ema_momentum, one_minus_ema_momentum = _ema_coefficients(ema_momentum, m)
    for c in prange(chunks.shape[0]):
        _update_chunk(c, chunks, table, refs, object_data_offset, clip, clip_table, m, u,
                      e, a, loss_scale, steps, lr, wd, one_minus_beta_1, beta_2, epsilon,
                      bias_correction, ema_momentum, one_minus_ema_momentum, overwrite)


update, update_parallel = serial_and_parallel(_update)


@inline
def _accumulate_chunk(c, chunks, table, refs, object_data_offset, like, e, a, loss_scale,
                      ema_momentum, one_minus_ema_momentum, overwrite):
    k, begin, end = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    start = table[k, 2] + begin
    stop = start + end - begin
    w = _variable(table, k, begin, end, like)
    if refs[k] == 0:
        _without_gradient_range(w, window(e, start, stop), None, ema_momentum,
                                one_minus_ema_momentum, overwrite, False)
        return
    g = _gradient(refs, object_data_offset, table, k, begin, end, like)
    _accumulate_range(w, g, window(e, start, stop), window(a, start, stop), loss_scale,
                      ema_momentum, one_minus_ema_momentum, overwrite)


def _accumulate(chunks, table, refs, object_data_offset, like, e, a, loss_scale,
                ema_momentum, overwrite):
    """An accumulation micro-step on a group: ``a += g / loss_scale`` for variables
    with a gradient, then the EMA step; mutates ``a``, and ``e`` and the variables
    through the EMA. With ``a`` None only the EMA moves (an EMA-only pass). ``like``
    is any array of the group's math dtype."""
    loss_scale = cast_like(loss_scale, like)
    ema_momentum, one_minus_ema_momentum = _ema_coefficients(ema_momentum, like)
    for c in prange(chunks.shape[0]):
        _accumulate_chunk(c, chunks, table, refs, object_data_offset, like, e, a,
                          loss_scale, ema_momentum, one_minus_ema_momentum, overwrite)


accumulate, accumulate_parallel = serial_and_parallel(_accumulate)


@inline
def _chunk_sum_of_squares(c, chunks, table, refs, object_data_offset, a, loss_scale, steps,
                          like):
    k, begin, end = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    if refs[k] == 0:
        return 0.0
    start = table[k, 2] + begin
    return _sum_of_squares_range(_gradient(refs, object_data_offset, table, k, begin, end, like),
                                 window(a, start, start + end - begin), loss_scale, steps)


def _chunk_sums_of_squares(chunks, table, refs, object_data_offset, like, a, loss_scale,
                           steps):
    """Per chunk of a group, the float64 sum of its squared effective gradients, its
    elements added in order (0 for a variable without a gradient); ``like`` is any
    array of the group's dtype. Returns a new array; mutates nothing. Both variants,
    and any number of threads, give the same bits."""
    loss_scale, steps = cast_like(loss_scale, like), cast_like(steps, like)
    partial = np.empty(chunks.shape[0])
    for c in prange(chunks.shape[0]):
        partial[c] = _chunk_sum_of_squares(c, chunks, table, refs, object_data_offset, a,
                                           loss_scale, steps, like)
    return partial


chunk_sums_of_squares, chunk_sums_of_squares_parallel = serial_and_parallel(
    _chunk_sums_of_squares)


@njit(**config.SERIAL_JIT)
def fold_chunk_sums(chunks, partial, sums):
    """``sums[k]``: the chunk sums ``partial`` of variable ``k`` added in chunk order,
    starting from 0; mutates ``sums`` (one entry per variable of the group)."""
    for k in range(sums.size):
        sums[k] = 0.0
    for c in range(chunks.shape[0]):
        sums[chunks[c, 0]] += partial[c]


@njit(**config.SERIAL_JIT)
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


@inline
def _chunk_all_finite(c, chunks, table, refs, object_data_offset, like):
    k, begin, end = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    if refs[k] == 0:
        return True
    return all_finite(_gradient(refs, object_data_offset, table, k, begin, end, like))


def _nonfinite_flags(chunks, table, refs, object_data_offset, like, flags):
    """``flags[k] = 1`` for each variable of a group whose gradient holds NaN or +-inf
    (``flags`` starts at 0; ``like`` is any array of the group's dtype); mutates
    ``flags``. Returns True when no gradient does. Every chunk is read."""
    bad = 0
    for c in prange(chunks.shape[0]):
        if not _chunk_all_finite(c, chunks, table, refs, object_data_offset, like):
            flags[chunks[c, 0]] = 1
            bad += 1
    return bad == 0


nonfinite_flags, nonfinite_flags_parallel = serial_and_parallel(_nonfinite_flags)


#: Every CPU dispatcher of this module.
DISPATCHERS = (update, update_parallel, accumulate, accumulate_parallel, chunk_sums_of_squares,
               chunk_sums_of_squares_parallel, nonfinite_flags, nonfinite_flags_parallel,
               fold_chunk_sums, clip_table, all_finite)
