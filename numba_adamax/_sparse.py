"""Lazy sparse updates for ``IndexedSlices`` gradients (the spec's decision A3).

``_core.run_step`` hands every ``IndexedSlices`` gradient of a call to this module:

* ``prepare`` deduplicates each one (repeated indices summed) and keeps the
  accumulation bookkeeping: with gradient accumulation, a sparse gradient is
  scatter-added into the accumulator and its rows are marked in the variable's
  touched rows (``AdamaxState.touched``); a dense gradient marks every row. An
  update step then covers the union of the rows marked during the window, and the
  next window starts with none.
* ``sum_of_squares`` gives the squared norm of the equivalent dense gradient, for
  clipping by norm;
* ``update`` runs the Adamax update on the touched rows only: untouched rows of
  ``w``, ``m`` and ``u`` do not change (no decay), weight decay acts on the touched
  rows, and the bias correction uses the global step. The EMA, which covers the
  whole variable, stays with ``_core``.

Device variables (``state.device``) take the same steps with the kernels of
``_sparse_cuda``: the deduplication is planned on the host (``plan``; device indices
are copied to the host for it, a small array) and the summed rows, the accumulator
scatter and the row update run on the device. The touched-row masks stay on the host.
"""
import math

import numpy as np

from ._indexed_slices import IndexedSlices

_backend = None


def _kernels():
    """The sparse CPU kernel module, imported on first use (see ``_core._kernels``)."""
    global _backend
    if _backend is None:
        from . import _sparse_cpu
        _backend = _sparse_cpu
    return _backend


def _device_kernels():
    """The sparse CUDA kernel module (imports ``numba.cuda``), for device variables."""
    from . import _sparse_cuda
    return _sparse_cuda


class Rows:
    """The rows one sparse gradient updates in a call.

    ``rows``: distinct row numbers (int64, on the host). ``values``: the flat summed
    gradient rows aligned with ``rows``, or None when the accumulator holds the
    gradient (accumulation on). ``row_size``: elements per row. ``on_device``: for a
    device variable, ``rows`` copied to the device (else None); ``values`` is then a
    device array too.
    """

    __slots__ = ("rows", "values", "row_size", "on_device")

    def __init__(self, rows, values, row_size, on_device=None):
        self.rows, self.values, self.row_size = rows, values, row_size
        self.on_device = on_device


class Plan:
    """How to deduplicate one list of indices (``plan``): ``rows``, the distinct indices
    in order of first appearance; ``members[start[s]:start[s + 1]]``, the positions in
    the list of ``rows[s]``, in order (all int64 NumPy arrays)."""

    __slots__ = ("rows", "start", "members")

    def __init__(self, rows, start, members):
        self.rows, self.start, self.members = rows, start, members


def plan(indices):
    """The ``Plan`` of the 1-D integer array ``indices`` (NumPy); mutates nothing.

    Summing ``values[members[start[s]]]``, then each next member in order, gives
    ``deduplicate``'s rows bit for bit.
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
    """``indices`` as a NumPy array: copied from the device when it is a device array."""
    if isinstance(indices, np.ndarray):
        return indices
    from ._devices import as_device_array
    return as_device_array(indices).copy_to_host()


def deduplicate_on_device(slices, math_dtype, stream):
    """The device counterpart of ``deduplicate`` for a validated ``IndexedSlices`` of a
    device variable: returns ``(rows, values)``, the distinct indices (int64, host)
    and a 2-D device array of summed rows in ``math_dtype``. Mutates nothing."""
    from ._devices import as_device_array
    p = plan(host_indices(slices.indices))
    values = as_device_array(slices.values)
    values = values.reshape(p.members.size, math.prod(values.shape[1:]))
    return p.rows, _device_kernels().deduplicate(p, values, math_dtype, stream)


def deduplicate(slices, threshold):
    """Sum the value rows of repeated indices of ``slices`` (a validated ``IndexedSlices``).

    Returns ``(rows, values)``: the distinct indices (int64, in order of first
    appearance) and a ``(len(rows), row_size)`` array of summed rows (``slices``'
    own values, reshaped, when no index repeats). Mutates nothing.
    """
    indices = np.ascontiguousarray(slices.indices, dtype=np.int64)
    values = slices.values
    values = values.reshape(indices.size, math.prod(values.shape[1:]))
    return _kernels().deduplicate(values.size >= threshold, indices, values)


def prepare(state, grads, update, loss_scale, threshold):
    """Deduplicate the call's ``IndexedSlices`` gradients; returns ``{i: Rows}``.

    With gradient accumulation, also scatter-adds each sparse gradient (divided by
    ``loss_scale``) into its accumulator and marks its rows, marks every row of a
    variable with a dense gradient on a micro-step, and on an update step (``update``)
    returns the union of the marked rows and clears every mask. Mutates the
    accumulators and ``state.touched_rows``.
    """
    on_device = state.device is not None
    kernels = _device_kernels() if on_device else _kernels()
    tracking = state.tracks_touched_rows
    sparse = {}
    for i, g in enumerate(grads):
        if not isinstance(g, IndexedSlices):
            if g is not None and tracking and not update:
                state.mark_all_rows(i)
            continue
        a = state.flat[i][5]
        if on_device:
            rows, values = deduplicate_on_device(g, state.flat[i][0].slot_dtype, state.stream)
            device_rows = kernels.upload_rows(rows, state.stream)
            row_size = values.shape[1]
            flat_values = values.reshape(values.size)
        else:
            rows, values = deduplicate(g, threshold)
            row_size = values.shape[1]
            flat_values = values.reshape(-1)
        if a is None:
            sparse[i] = _rows(state, rows, flat_values, row_size,
                              device_rows if on_device else None)
            continue
        if on_device:
            kernels.scatter_accumulate(device_rows, row_size, flat_values, a, loss_scale,
                                       state.stream)
        else:
            kernels.scatter_accumulate(values.size >= threshold, rows, row_size, flat_values,
                                       a, loss_scale)
        state.mark_rows(i, rows)
        if update:
            sparse[i] = _rows(state, state.touched(i), None, row_size)
        else:
            sparse[i] = _rows(state, rows, None, row_size, device_rows if on_device else None)
    if update:
        state.clear_touched_rows()
    return sparse


def first_nonfinite(state, grads):
    """The index of the first variable whose ``IndexedSlices`` gradient in ``grads``
    holds NaN or inf in its values, or None; mutates nothing. For device variables one
    read pass and one flag copied to the host per sparse gradient."""
    for i, g in enumerate(grads):
        if type(g) is not IndexedSlices:
            continue
        if state.device is not None:
            if not _device_kernels().all_finite(g.values, state.stream):
                return i
        elif not np.isfinite(g.values).all():
            return i
    return None


def _rows(state, rows, values, row_size, device_rows=None):
    """A ``Rows``; for a device variable with the rows uploaded (``device_rows`` when
    they already are)."""
    if state.device is not None and device_rows is None:
        device_rows = _device_kernels().upload_rows(rows, state.stream)
    return Rows(rows, values, row_size, device_rows)


def sum_of_squares(rows, flat, loss_scale, steps, threshold):
    """Squared norm (float64) of the effective gradient of ``rows`` (a ``Rows``) for the
    variable whose flat views are ``flat``; mutates nothing."""
    w, a = flat[1], flat[5]
    return _kernels().sum_of_squares(rows.rows.size * rows.row_size >= threshold, rows.rows,
                                     rows.row_size, rows.values, a, loss_scale, steps, w)


def update(rows, flat, threshold, loss_scale, steps, clip_scale, clip_divisor, clip_value, lr,
           has_wd, wd, one_minus_beta_1, beta_2, epsilon, bias_correction):
    """The lazy update of ``rows`` (a ``Rows``) of the variable whose flat views are
    ``flat``: mutates those rows of the variable, ``m`` and ``u`` (and clears them in
    the accumulator). Scalars as in ``_cpu.update``."""
    _, w, m, u, _, a = flat
    _kernels().update_rows(rows.rows.size * rows.row_size >= threshold, rows.rows,
                           rows.row_size, w, rows.values, m, u, a, loss_scale, steps,
                           clip_scale, clip_divisor, clip_value, lr, has_wd, wd,
                           one_minus_beta_1, beta_2, epsilon, bias_correction)


def sum_of_squares_on_device(rows, flat, loss_scale, steps, out, index, stream):
    """The device counterpart of ``sum_of_squares``: stores the squared norm (float64,
    the CPU's bits) in ``out[index]`` of the device array ``out``; mutates nothing else."""
    group, a = flat[0], flat[5]
    _device_kernels().sum_of_squares(rows.on_device, rows.row_size, rows.values, a, loss_scale,
                                     steps, group.slot_dtype, out, index, stream)


def update_on_device(rows, flat, stream, loss_scale, steps, clip_table, k, clip, lr, has_wd,
                     wd, one_minus_beta_1, beta_2, epsilon, bias_correction):
    """The device counterpart of ``update``: the lazy update of ``rows`` of a device
    variable. ``clip`` is ``(scale, divisor, value)``; with ``clip_table`` (the group's
    device table when clipping by norm) its entry ``k`` gives the scale and divisor.
    Mutates those rows of the variable, ``m`` and ``u`` (and clears them in the
    accumulator)."""
    group, w, m, u, _, a = flat
    _device_kernels().update_rows(rows.on_device, rows.row_size, w, rows.values, m, u, a,
                                  loss_scale, steps, clip_table, k, clip, lr, has_wd, wd,
                                  one_minus_beta_1, beta_2, epsilon, bias_correction,
                                  group.slot_dtype, stream)
