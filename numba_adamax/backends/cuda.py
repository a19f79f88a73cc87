"""The CUDA host driver: each backend operation as launches of the ``kernels.cuda``
and ``kernels.cuda_sparse`` kernels (see ``backends`` for the interface).

A state's groups get a ``DeviceGroup`` each (their tables on the device and the
scratch arrays of their kernels) from ``attach``. A step copies nothing back to the
host: clipping by norm reduces on the device and fills a device clip table that
the update kernels read. Only the non-finite checks copy a small flag array back,
and a sparse gradient's device indices are copied to the host once, by the range
check of ``_validation.gradients``, whose copy then plans the deduplication.
Scalars are converted on the host to the group's math dtype (float32 for float16
variables).

Importing this module imports ``numba.cuda``; ``backends.for_arrays`` does so only
for device arrays.
"""
import math

import numpy as np
from numba import cuda

from .. import _devices
from ..kernels import config
from ..kernels import cuda as kernels
from ..kernels import cuda_sparse as sparse_kernels
from ..kernels.cuda import blocks_for, blocks_for_elements, stream_or_default
from ..kernels.cuda_pointers import device_address as data_address
from . import compile_log
from .rows import Rows, rows_per_chunk

device = "cuda"
compile_log.install()


def device_arrays(params):
    """Numba device views (zero-copy) of the device variables ``params``."""
    return tuple(_devices.as_device_array(p) for p in params)


def upload_table(group):
    """Copy ``group``'s host table (its weight-decay column changed) to the device."""
    group.device_group.table.copy_to_device(group.table)


def zeros(size, dtype):
    """A zeroed device slot buffer."""
    return kernels.zeros(size, dtype)


class DeviceGroup:
    """The device side of a ``SlotGroup``: its tables copied to the GPU and the
    scratch arrays its kernels use. ``offset`` is the group's first entry in the
    state-wide per-variable norm array."""

    def __init__(self, group, offset):
        n = len(group.indices)
        self.offset = offset
        self.chunk_count = group.chunks.shape[0]
        self.chunks = cuda.to_device(group.chunks)
        self.table = cuda.to_device(group.table)
        starts = np.searchsorted(group.chunks[:, 0], np.arange(n + 1)).astype(np.int64)
        self.chunk_starts = cuda.to_device(starts)
        self.like = cuda.device_array(1, dtype=group.dtype)
        self.refs = cuda.to_device(np.zeros(n, np.int64))
        self.no_gradients = cuda.to_device(np.zeros(n, np.int64))
        self.partial = cuda.device_array(max(1, self.chunk_count), dtype=np.float64)
        self.clip_table = cuda.device_array((n, 2), dtype=group.slot_dtype)
        self._refs_host = None

    def set_gradients(self, grads, stream):
        """Point ``refs`` at this call's gradients (device arrays or None); copies the
        addresses to the device only when they changed since the last call."""
        refs = np.array([0 if g is None else data_address(g) for g in grads], np.int64)
        if self._refs_host is None or not np.array_equal(refs, self._refs_host):
            self.refs.copy_to_device(refs, stream=stream_or_default(stream))
            self._refs_host = refs


class DeviceState:
    """Per-state device arrays: the per-variable squared norms and their total."""

    def __init__(self, groups):
        offsets = np.cumsum([0] + [len(g.indices) for g in groups])
        for group, offset in zip(groups, offsets):
            group.device_group = DeviceGroup(group, int(offset))
        self.variable_count = int(offsets[-1])
        self.sums = cuda.device_array(max(1, self.variable_count), dtype=np.float64)
        self.total = cuda.device_array(1, dtype=np.float64)


def attach(state):
    """Copy ``state``'s group tables to the device (``group.device_group``) and allocate the
    norm arrays (``state.device_state``)."""
    state.device_state = DeviceState(state.groups)


def _cast(value, dt):
    return None if value is None else dt(value)


def gradient_refs(state, grads):
    """Per group, the device array of this call's gradient addresses (uploaded only
    when they changed). Mutates the groups' device gradient tables."""
    for group in state.groups:
        group.device_group.set_gradients([grads[i] for i in group.indices], state.stream)
    return [group.device_group.refs for group in state.groups]


def bound_refs(state, grads):
    """Per group, a device array of its gradients' addresses of its own, to be reused
    by every call while the caller keeps the arrays alive."""
    return [cuda.to_device(np.array([0 if grads[i] is None else data_address(grads[i])
                                     for i in group.indices], np.int64))
            for group in state.groups]


def nonfinite_flags(state, group, refs):
    """Per variable of ``group``, True where its gradient holds NaN or inf: one read
    pass and one small device-to-host copy. Mutates nothing else."""
    dev, s = group.device_group, stream_or_default(state.stream)
    if not dev.chunk_count:
        return np.zeros(len(group.indices), bool)
    bad = kernels.zeros(len(group.indices), np.int32, state.stream)
    kernels.all_finite_kernel[blocks_for(dev.chunk_count), config.BLOCK_SIZE, s](
        dev.chunks, dev.table, refs, dev.like, bad)
    flags = bad.copy_to_host(stream=s)
    if s:
        s.synchronize()
    return flags.astype(bool)


def values_finite(state, values):
    """True when the device array ``values`` holds no NaN or inf; copies one flag to
    the host. Mutates nothing."""
    x = _devices.as_device_array(values)
    x = x.reshape(x.size)
    if not x.size:
        return True
    s = stream_or_default(state.stream)
    bad = kernels.zeros(1, np.int32, state.stream)
    sparse_kernels.nonfinite_kernel[blocks_for_elements(x.size), config.BLOCK_SIZE, s](x, bad)
    flag = bad.copy_to_host(stream=s)
    if s:
        s.synchronize()
    return not flag[0]


def chunk_square_partials(state, group, refs, settings):
    """Per chunk of ``group``, the float64 sum of squared effective gradients (the
    group's device ``partial`` array)."""
    dev, dt = group.device_group, group.slot_dtype.type
    if dev.chunk_count:
        kernels.sum_of_squares_kernel[blocks_for(dev.chunk_count), config.BLOCK_SIZE,
                                      stream_or_default(state.stream), config.BLOCK_SIZE * 8](
            dev.chunks, dev.table, refs, dev.like, group.accumulator,
            _cast(settings.loss_scale, dt), dt(settings.steps), dev.partial)
    return dev.partial


def new_square_sums(state):
    """The state-wide device array of per-variable squared norms."""
    return state.device_state.sums


def fold_square_partials(state, group, partials, sums):
    """Add ``group``'s chunk partials per variable, in chunk order, into ``sums`` at
    the group's offset; mutates ``sums``."""
    dev, n = group.device_group, len(group.indices)
    kernels.variable_sums_kernel[blocks_for_elements(n), config.BLOCK_SIZE,
                                 stream_or_default(state.stream)](
        dev.chunk_starts, partials, sums, dev.offset)


def sparse_square_sum(state, i, rows, settings, sums):
    """Store in ``sums`` the squared norm of variable ``i``'s sparse gradient ``rows``,
    with the CPU driver's bits (same chunking, same order); mutates only that entry."""
    view = state.views[i]
    dt = view.group.slot_dtype.type
    per_chunk = rows_per_chunk(rows.row_size)
    chunks = -(-rows.rows.size // per_chunk) if rows.row_size else 0
    s = stream_or_default(state.stream)
    partial = cuda.device_array(max(1, chunks), dtype=np.float64, stream=s)
    if chunks:
        sparse_kernels.sum_of_squares_kernel[blocks_for_elements(chunks), config.BLOCK_SIZE, s](
            rows.device_rows, rows.row_size, per_chunk, rows.values, view.accumulator,
            dt(settings.loss_scale or 1.0), dt(settings.steps), partial)
    sparse_kernels.store_total_kernel[1, 1, s](partial[:chunks], sums,
                                               view.group.device_group.offset + view.k)


def clip_tables(state, sums, settings):
    """Fill each group's device clip table from ``sums``: ``clipnorm`` per variable, or
    ``global_clipnorm`` from their total (added in group order); returns the tables."""
    s = stream_or_default(state.stream)
    device_state = state.device_state
    if not settings.clipnorm:
        kernels.total_kernel[1, 1, s](sums[:device_state.variable_count], device_state.total)
    for group in state.groups:
        dev, dt, n = group.device_group, group.slot_dtype.type, len(group.indices)
        grid = blocks_for_elements(n), config.BLOCK_SIZE, s
        if settings.clipnorm:
            kernels.clipnorm_table_kernel[grid](sums, dev.offset, dt(settings.clip_norm),
                                                dev.clip_table)
        else:
            kernels.global_clip_table_kernel[grid](device_state.total, dt(settings.clip_norm),
                                                   dt(1), dev.clip_table)
    return [group.device_group.clip_table for group in state.groups]


def update(state, group, refs, settings, clip_table):
    """The fused update launch over ``group``: mutates its variables and slots."""
    dev = group.device_group
    if not dev.chunk_count:
        return
    dt = group.slot_dtype.type
    momentum = dt(settings.ema_momentum)
    kernels.update_kernel[blocks_for(dev.chunk_count), config.BLOCK_SIZE,
                          stream_or_default(state.stream)](
        dev.chunks, dev.table, refs, dev.like, _cast_clip(settings.clip, dt), clip_table,
        dt(np.inf), group.m, group.u, group.ema, group.accumulator,
        _cast(settings.loss_scale, dt), dt(settings.steps), dt(settings.learning_rate),
        _cast(settings.weight_decay, dt), dt(settings.one_minus_beta_1), dt(settings.beta_2),
        dt(settings.epsilon), dt(settings.bias_correction[group.position]), momentum,
        dt(1) - momentum, settings.overwrite)


def _cast_clip(clip, dt):
    return None if clip is None else tuple(dt(x) for x in clip)


def _accumulate(state, group, refs, accumulator, loss_scale, settings):
    dev = group.device_group
    if not dev.chunk_count:
        return
    dt = group.slot_dtype.type
    momentum = dt(settings.ema_momentum)
    kernels.accumulate_kernel[blocks_for(dev.chunk_count), config.BLOCK_SIZE,
                              stream_or_default(state.stream)](
        dev.chunks, dev.table, refs, dev.like, group.ema, accumulator,
        _cast(loss_scale, dt), momentum, dt(1) - momentum, settings.overwrite)


def accumulate(state, group, refs, settings):
    """An accumulation micro-step launch over ``group``: mutates its accumulator (and,
    with an EMA, the EMA and the variables on an overwrite)."""
    _accumulate(state, group, refs, group.accumulator, settings.loss_scale, settings)


def ema_only(state, group, settings):
    """The EMA step alone over every variable of ``group`` (no gradient is read)."""
    _accumulate(state, group, group.device_group.no_gradients, None, None, settings)


# ---------------------------------------------------------------- sparse gradients

class Plan:
    """How to deduplicate one list of indices (``plan``): ``rows``, the distinct indices
    in order of first appearance; ``members[start[s]:start[s + 1]]``, the positions in
    the list of ``rows[s]``, in order (all int64 NumPy arrays)."""

    __slots__ = ("rows", "start", "members")

    def __init__(self, rows, start, members):
        self.rows, self.start, self.members = rows, start, members


def plan(indices):
    """The ``Plan`` of the 1-D integer host array ``indices``; mutates nothing.

    Summing ``values[members[start[s]]]``, then each next member in order, gives the
    CPU driver's deduplicated rows bit for bit.
    """
    indices = np.asarray(indices).astype(np.int64, copy=False)
    unique, first, inverse = np.unique(indices, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # groups in order of first appearance
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    group_of = rank[inverse.reshape(-1)]
    members = np.argsort(group_of, kind="stable").astype(np.int64)
    start = np.zeros(order.size + 1, np.int64)
    np.cumsum(np.bincount(group_of, minlength=order.size), out=start[1:])
    return Plan(unique[order].astype(np.int64), start, members)


def host_indices(indices):
    """``indices`` as a NumPy array: copied from the device when it is a device array
    (in a step they arrive on the host already, copied by the validation)."""
    if isinstance(indices, np.ndarray):
        return indices
    return _devices.as_device_array(indices).copy_to_host()


def _upload(rows, stream):
    return cuda.to_device(rows, stream=stream_or_default(stream))


def deduplicate(state, i, slices):
    """``Rows`` of a validated ``IndexedSlices`` of device variable ``i``: the distinct
    indices (host and device) and a device array of the value rows summed per index
    in the variable's math dtype (the values themselves when no index repeats and
    they already have that dtype). Mutates nothing."""
    s = stream_or_default(state.stream)
    p = plan(host_indices(slices.indices))
    values = _devices.as_device_array(slices.values)
    row_size = math.prod(values.shape[1:])
    values = values.reshape(p.members.size, row_size)
    math_dtype = state.views[i].group.slot_dtype
    n = p.rows.size
    if n != values.shape[0] or values.dtype != math_dtype:
        summed = cuda.device_array((n, row_size), dtype=math_dtype, stream=s)
        if n and row_size:
            sparse_kernels.sum_rows_kernel[blocks_for(n), config.BLOCK_SIZE, s](
                cuda.to_device(p.start, stream=s), cuda.to_device(p.members, stream=s),
                values, summed)
        values = summed
    return Rows(p.rows, values.reshape(values.size), row_size, _upload(p.rows, state.stream))


def rows(state, i, rows, row_size):
    """``Rows`` for the host ``rows`` of variable ``i`` (uploaded), their values in the
    accumulator."""
    return Rows(rows, None, row_size, _upload(rows, state.stream))


def scatter_accumulate(state, i, rows, settings):
    """Add ``rows``' values, divided by the loss scale, into variable ``i``'s
    accumulator; mutates it."""
    accumulator = state.views[i].accumulator
    if rows.rows.size and rows.row_size:
        sparse_kernels.scatter_accumulate_kernel[
            blocks_for(rows.rows.size), config.BLOCK_SIZE, stream_or_default(state.stream)](
            rows.device_rows, rows.row_size, rows.values, accumulator,
            accumulator.dtype.type(settings.loss_scale or 1.0))


def update_rows(state, i, rows, settings, clip_tables):
    """The lazy update launch over ``rows`` of variable ``i``: mutates those rows of
    the variable, ``m`` and ``u`` (and clears them in the accumulator). With
    ``clip_tables`` the group's device table gives the clip scale and divisor."""
    if not (rows.rows.size and rows.row_size):
        return
    view = state.views[i]
    dt = view.group.slot_dtype.type
    clip_scale, clip_divisor, clip_value = (settings.row_clip if clip_tables is None
                                            else (1.0, 1.0, math.inf))
    sparse_kernels.update_rows_kernel[blocks_for(rows.rows.size), config.BLOCK_SIZE,
                                      stream_or_default(state.stream)](
        rows.device_rows, rows.row_size, view.w, rows.values, view.m, view.u,
        view.accumulator, dt(settings.loss_scale or 1.0), dt(settings.steps),
        None if clip_tables is None else clip_tables[view.group.position], view.k,
        dt(clip_scale), dt(clip_divisor), dt(clip_value), dt(settings.learning_rate),
        bool(settings.decays(state, i)), dt(settings.weight_decay or 0.0),
        dt(settings.one_minus_beta_1), dt(settings.beta_2), dt(settings.epsilon),
        dt(settings.bias_correction[view.group.position]))


def assign(destination, source, stream=None):
    """Copy the device slot ``source`` into the device variable ``destination`` (any
    ``__cuda_array_interface__`` object), converting to its dtype."""
    kernels.assign(_devices.as_device_array(destination), source, stream)
