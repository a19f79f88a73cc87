"""Lazy updates for ``IndexedSlices`` gradients: the bookkeeping above the drivers.

A sparse gradient updates only the rows it names, as TF 1.x's Adamax did on
``IndexedSlices``: untouched rows of ``w``, ``m`` and ``u`` do not change (they do
not decay), repeated indices are summed in order of first appearance, weight decay
acts on the touched rows, and the bias correction uses the global step. The EMA
covers the whole variable and runs in the dense pass.

``prepare`` turns a call's sparse gradients into ``backends.Rows`` through the
state's driver (deduplication; with gradient accumulation, the scatter-add into
the accumulator) and keeps the accumulation window (``TouchedRows``): an update
step covers the union of the rows marked during the window, a dense gradient marks
every row of its variable, and the next window starts with none.
"""
import numpy as np

from ._indexed_slices import IndexedSlices


class TouchedRows:
    """The rows of each variable that gradients touched in the open accumulation
    window (kept only with gradient accumulation).

    A sparse gradient marks its rows in a per-variable bool mask over axis 0; a dense
    gradient marks every row of its variable without writing a mask, so dense-only
    training never touches the masks.
    """

    def __init__(self, arrays):
        self._masks = tuple(np.zeros(a.shape[0] if a.ndim else 1, bool) for a in arrays)
        self._marked, self._all_marked = set(), set()  # variables with some / all rows

    def snapshot(self):
        """Per variable, a bool mask of the touched rows (copies)."""
        return tuple(np.ones_like(mask) if i in self._all_marked else mask.copy()
                     for i, mask in enumerate(self._masks))

    def touched(self, i):
        """The rows of variable ``i`` touched in the open window, ascending (int64)."""
        if i in self._all_marked:
            return np.arange(self._masks[i].size)
        return np.flatnonzero(self._masks[i])

    def mark_all_rows(self, i):
        """Mark every row of variable ``i`` touched (a dense gradient in the window)."""
        self._all_marked.add(i)

    def mark_rows(self, i, rows):
        """Mark ``rows`` of variable ``i`` touched (a sparse gradient in the window)."""
        if i not in self._all_marked:
            self._masks[i][rows] = True
            self._marked.add(i)

    def clear(self):
        """Start a new window: no row is touched. Writes only the masks that sparse
        gradients marked."""
        for i in self._marked:
            self._masks[i].fill(False)
        self._marked.clear()
        self._all_marked.clear()

    def replace(self, rows_per_variable):
        """Replace the touched rows with exactly ``rows_per_variable`` (a checkpoint's
        lists, one per variable)."""
        self.clear()
        for i, rows in enumerate(rows_per_variable):
            if len(rows) == self._masks[i].size and len(set(rows)) == len(rows):
                self.mark_all_rows(i)
            elif len(rows):
                self.mark_rows(i, list(rows))


def has_sparse(grads):
    """True when the per-variable ``grads`` list holds an ``IndexedSlices``."""
    return IndexedSlices in map(type, grads)


def prepare(state, grads, settings):
    """Deduplicate the call's ``IndexedSlices`` gradients; returns ``{i: Rows}``.

    With gradient accumulation, also scatter-adds each sparse gradient (divided by
    the loss scale) into its accumulator and marks its rows, marks every row of a
    variable with a dense gradient on a micro-step, and on an update step returns
    the union of the marked rows and clears the window. Mutates the accumulators and
    ``state.window``.
    """
    backend, window = state.backend, state.window
    update = not settings.micro_step
    sparse = {}
    for i, g in enumerate(grads):
        if type(g) is not IndexedSlices:
            if g is not None and window is not None and not update:
                window.mark_all_rows(i)
            continue
        rows = backend.deduplicate(state, i, g)
        if state.views[i].accumulator is None:
            sparse[i] = rows
            continue
        backend.scatter_accumulate(state, i, rows, settings)
        window.mark_rows(i, rows.rows)
        sparse[i] = backend.rows(state, i, window.touched(i), rows.row_size) if update else rows
    if update and window is not None:
        window.clear()
    return sparse


def first_nonfinite(state, grads):
    """The index of the first variable whose ``IndexedSlices`` gradient in ``grads``
    holds NaN or inf in its values, or None; mutates nothing."""
    for i, g in enumerate(grads):
        if type(g) is IndexedSlices and not state.backend.values_finite(state, g.values):
            return i
    return None
