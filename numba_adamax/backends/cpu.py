"""The CPU host driver: each backend operation as calls of the ``kernels.cpu`` and
``kernels.cpu_sparse`` kernels (see ``backends`` for the interface).

A dtype group whose total size reaches ``config.PARALLEL_THRESHOLD`` runs the
multithreaded loops; a sparse gradient does when its values do. This module (and
with it numba) is imported when the first CPU state is created, not with the
package; kernels compile on their first call.
"""
import math
import os

import numpy as np

from ..kernels import addresses, config
from ..kernels import cpu as _dense_kernels
from ..kernels import cpu_sparse as _sparse_kernels
from . import compile_log
from .rows import Rows, rows_per_chunk

device = None
compile_log.install()

# OpenMP workers that spin-wait for each other lose whole scheduler ticks (about 8 ms)
# whenever another process holds a core; sleeping workers cost tens of microseconds at
# most. Set before numba starts its OpenMP pool (its first parallel kernel); a user's own
# setting is kept. Measured by ``python -m numba_adamax.benchmark --busy``.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

data_address = addresses.data_address
def device_arrays(params):
    """The arrays the kernels see: the NumPy variables themselves."""
    return tuple(params)


def upload_table(group):
    """Nothing to copy: the kernels read the host tables."""


def zeros(size, dtype):
    """A zeroed slot buffer."""
    return np.zeros(size, dtype=dtype)


def attach(state):
    """Nothing to set up on the host."""


def _pair(module, name):
    return getattr(module, name), getattr(module, name + "_parallel")


_UPDATE = _pair(_dense_kernels, "update")
_ACCUMULATE = _pair(_dense_kernels, "accumulate")
_CHUNK_SUMS = _pair(_dense_kernels, "chunk_sums_of_squares")
_NONFINITE = _pair(_dense_kernels, "nonfinite_flags")
_DEDUPLICATE = _pair(_sparse_kernels, "deduplicate")
_SCATTER = _pair(_sparse_kernels, "scatter_accumulate")
_UPDATE_ROWS = _pair(_sparse_kernels, "update_rows")
_ROW_SUMS = _pair(_sparse_kernels, "sum_of_squares")


def _pick(kernels, elements):
    """The serial or the parallel one of ``kernels``, for work over ``elements``."""
    return kernels[elements >= config.PARALLEL_THRESHOLD]


def gradient_refs(state, grads):
    """Per group, ``(refs, object_data_offset)`` locating this call's gradients (see
    ``kernels.addresses``). ``grads`` is one entry per state variable (None: no
    gradient), or the int64 data addresses of a ``FlatBuffer`` laid out like the
    variables. Mutates only the groups' small scratch tables."""
    if isinstance(grads, np.ndarray):
        return [(grads, -1)]
    refs = []
    for group in state.groups:
        mine = grads if group.covers_all else [grads[i] for i in group.indices]
        refs.append(addresses.gradient_table(mine, group.gradient_refs))
    return refs


def bound_refs(state, grads):
    """``gradient_refs`` of ``grads`` in tables of their own, to be reused by every call
    while the caller keeps the arrays alive."""
    return [(np.array(table), offset) for table, offset in gradient_refs(state, grads)]


def nonfinite_flags(state, group, refs):
    """Per variable of ``group``, True where its gradient holds NaN or inf; one read
    pass over the gradients (stopping early on the serial path). Mutates nothing."""
    flags = np.zeros(len(group.indices), np.uint8)
    _pick(_NONFINITE, group.total)(group.chunks, group.table, *refs, group.m, flags)
    return flags.view(bool)


def values_finite(state, values):
    """True when the host array ``values`` holds no NaN or inf."""
    return bool(_dense_kernels.all_finite(values.reshape(-1)))


def chunk_square_partials(state, group, refs, settings):
    """Per chunk of ``group``, the float64 sum of squared effective gradients."""
    return _pick(_CHUNK_SUMS, group.total)(group.chunks, group.table, *refs, group.m,
                                           group.accumulator, settings.loss_scale,
                                           settings.steps)


def new_square_sums(state):
    """Per group, a host float64 array for its variables' squared norms."""
    return [np.empty(len(group.indices)) for group in state.groups]


def fold_square_partials(state, group, partials, sums):
    """Add ``group``'s chunk partials per variable, in chunk order, into its entry of
    ``sums``; mutates ``sums``."""
    _dense_kernels.fold_chunk_sums(group.chunks, partials, sums[group.position])


def sparse_square_sum(state, i, rows, settings, sums):
    """Store in ``sums`` the squared norm of variable ``i``'s sparse gradient ``rows``
    (that of the equivalent dense gradient); mutates ``sums``."""
    view = state.views[i]
    per_row = rows.rows.size * rows.row_size
    sums[view.group.position][view.k] = _pick(_ROW_SUMS, per_row)(
        rows.rows, rows.row_size,
        rows_per_chunk(rows.row_size), rows.values, view.accumulator,
        settings.loss_scale or 1.0, settings.steps, view.w)


def clip_tables(state, sums, settings):
    """Per group, the float64 ``(clip_scale, clip_divisor)`` rows of its variables,
    finished in the group's dtype; the global norm adds ``sums`` in group order."""
    total = 0.0
    for group_sums in sums:
        for value in group_sums:
            total += value
    by_global = not settings.clipnorm
    return [_dense_kernels.clip_table(group_sums, total, settings.clip_norm, by_global, group.m)
            for group, group_sums in zip(state.groups, sums)]


def update(state, group, refs, settings, clip_table):
    """The fused update pass over ``group``: mutates its variables and slots."""
    _pick(_UPDATE, group.total)(*_update_arguments(group, refs, settings, clip_table))


def _update_arguments(group, refs, settings, clip_table):
    """The argument list of ``group``'s update kernel for this call. The entries that
    change from call to call sit at the ``UPDATE_*`` positions."""
    return [group.chunks, group.table, *refs, settings.clip, clip_table,
            group.m, group.u, group.ema, group.accumulator, settings.loss_scale, settings.steps,
            settings.learning_rate, settings.weight_decay, settings.one_minus_beta_1,
            settings.beta_2, settings.epsilon, settings.bias_correction[group.position],
            settings.ema_momentum, settings.overwrite]


#: Positions in ``_update_arguments`` of the gradient references and object data
#: offset, the learning rate, the bias correction, the EMA momentum and the overwrite.
UPDATE_REFS, UPDATE_OFFSET = 2, 3
UPDATE_LEARNING_RATE, UPDATE_BIAS_CORRECTION, UPDATE_EMA_MOMENTUM, UPDATE_OVERWRITE = (
    12, 17, 18, 19)


def packed_update(state, group, refs, settings):
    """``(kernel, arguments)`` for ``group``'s update pass without clip table: ``kernel``
    (the serial or parallel variant this group runs) called as ``kernel(*arguments)``
    is ``update(state, group, refs, settings, None)``. A caller may reuse the list for
    later calls with the same settings, writing only the ``UPDATE_*`` entries (with
    values of the same Python types). ``kernel`` is then the compiled code for exactly
    these argument types, which skips numba's type dispatch, when it is compiled
    already (else the dispatcher). Mutates nothing."""
    dispatcher = _pick(_UPDATE, group.total)
    arguments = _update_arguments(group, refs, settings, None)
    return _compiled_for(dispatcher, arguments), arguments


def _compiled_for(dispatcher, arguments):
    """The entry point ``dispatcher`` compiled for the exact numba types of
    ``arguments``, or ``dispatcher`` itself when it has none (yet)."""
    import numba

    try:
        signature = tuple(numba.typeof(a) for a in arguments)
    except ValueError:
        return dispatcher
    compiled = dispatcher.overloads.get(signature)
    return dispatcher if compiled is None else compiled.entry_point


def accumulate(state, group, refs, settings):
    """An accumulation micro-step over ``group``: mutates its accumulator (and, with
    an EMA, the EMA and the variables on an overwrite)."""
    _pick(_ACCUMULATE, group.total)(group.chunks, group.table, *refs, group.m, group.ema,
                                    group.accumulator, settings.loss_scale,
                                    settings.ema_momentum, settings.overwrite)


def ema_only(state, group, settings):
    """The EMA step alone over every variable of ``group`` (no gradient is read)."""
    no_gradients = np.zeros(len(group.indices), np.int64)
    _pick(_ACCUMULATE, group.total)(group.chunks, group.table, no_gradients, -1, group.m,
                                    group.ema, None, None, settings.ema_momentum,
                                    settings.overwrite)


def deduplicate(state, i, slices):
    """``Rows`` of a validated ``IndexedSlices`` of variable ``i``: its distinct indices
    in order of first appearance and the value rows summed per index (in order).
    Mutates nothing."""
    indices = np.ascontiguousarray(slices.indices, dtype=np.int64)
    values = slices.values
    values = values.reshape(indices.size, math.prod(values.shape[1:]))
    rows, summed = _pick(_DEDUPLICATE, values.size)(indices, values)
    return Rows(rows, summed.reshape(-1), summed.shape[1])


def rows(state, i, rows, row_size):
    """``Rows`` for the host ``rows`` of variable ``i``, their values in the accumulator."""
    return Rows(rows, None, row_size)


def scatter_accumulate(state, i, rows, settings):
    """Add ``rows``' values, divided by the loss scale, into variable ``i``'s
    accumulator; mutates it."""
    accumulator = state.views[i].accumulator
    _pick(_SCATTER, rows.values.size)(rows.rows, rows.row_size, rows.values, accumulator,
                                      settings.loss_scale or 1.0)


def update_rows(state, i, rows, settings, clip_tables):
    """The lazy update of ``rows`` of variable ``i``: mutates those rows of the
    variable, ``m`` and ``u`` (and clears them in the accumulator)."""
    view = state.views[i]
    if clip_tables is None:
        clip_scale, clip_divisor, clip_value = settings.row_clip
    else:
        (clip_scale, clip_divisor), clip_value = clip_tables[view.group.position][view.k], math.inf
    _pick(_UPDATE_ROWS, rows.rows.size * rows.row_size)(
        rows.rows, rows.row_size, view.w, rows.values, view.m, view.u, view.accumulator,
        settings.loss_scale or 1.0, settings.steps, clip_scale, clip_divisor, clip_value,
        settings.learning_rate, settings.decays(state, i), settings.weight_decay or 0.0,
        settings.one_minus_beta_1, settings.beta_2, settings.epsilon,
        settings.bias_correction[view.group.position])


def assign(destination, source, stream=None):
    """Copy the slot ``source`` into the host variable ``destination``."""
    np.copyto(destination, source)
