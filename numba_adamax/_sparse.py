"""Lazy sparse updates for ``IndexedSlices`` gradients (the spec's decision A3).

``_core.run_step`` hands every ``IndexedSlices`` gradient of a call to this module:

* ``prepare`` deduplicates each one (repeated indices summed) and keeps the
  accumulation bookkeeping: with gradient accumulation, a sparse gradient is
  scatter-added into the accumulator and its rows are marked in the variable's
  touched-row mask (``AdamaxState.touched_rows``); a dense gradient marks every
  row. An update step then covers the union of the rows marked during the window,
  and every mask starts over.
* ``sum_of_squares`` gives the squared norm of the equivalent dense gradient, for
  clipping by norm;
* ``update`` runs the Adamax update on the touched rows only: untouched rows of
  ``w``, ``m`` and ``u`` do not change (no decay), weight decay acts on the touched
  rows, and the bias correction uses the global step. The EMA, which covers the
  whole variable, stays with ``_core``.
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


class Rows:
    """The rows one sparse gradient updates in a call.

    ``rows``: distinct row numbers (int64). ``values``: the flat summed gradient
    rows aligned with ``rows``, or None when the accumulator holds the gradient
    (accumulation on). ``row_size``: elements per row.
    """

    __slots__ = ("rows", "values", "row_size")

    def __init__(self, rows, values, row_size):
        self.rows, self.values, self.row_size = rows, values, row_size


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
    kernels = _kernels()
    masks = state.touched_rows
    sparse = {}
    for i, g in enumerate(grads):
        if not isinstance(g, IndexedSlices):
            if g is not None and masks and not update:
                masks[i].fill(True)
            continue
        a = state.flat[i][5]
        rows, values = deduplicate(g, threshold)
        row_size = values.shape[1]
        if a is None:
            sparse[i] = Rows(rows, values.reshape(-1), row_size)
            continue
        kernels.scatter_accumulate(values.size >= threshold, rows, row_size,
                                   values.reshape(-1), a, loss_scale)
        masks[i][rows] = True
        sparse[i] = Rows(np.flatnonzero(masks[i]) if update else rows, None, row_size)
    if update:
        for mask in masks:
            mask.fill(False)
    return sparse


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
