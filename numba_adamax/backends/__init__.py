"""Host drivers, one per target, behind one dispatch point.

``for_arrays(arrays)`` is the only place that decides where a state runs: NumPy
arrays give the ``cpu`` driver, CUDA device arrays the ``cuda`` driver (imported
only then, so importing the package never imports ``numba.cuda``). An
``AdamaxState`` keeps its driver as ``state.backend``; everything above calls it
without asking which one it is.

Both drivers are modules with the same functions. Each takes the state and works
on one dtype group (``state.groups``) or one sparse variable, so that a caller can
put work of its own (a collective, say) between any two of them:

* ``device``: None or ``"cuda"`` (the state's ``device``).
* ``device_arrays(params)``, ``zeros(size, dtype)``, ``data_address(array)``,
  ``attach(state)``, ``upload_table(group)``: memory for a new state (the arrays the
  kernels see, slot buffers, kernel tables; ``attach`` runs once the groups exist,
  ``upload_table`` after a group's weight-decay column changed).
* ``gradient_refs(state, grads)``: per group, what the kernels read this call's
  gradients through (one entry per state variable in ``grads``, None for none);
  ``bound_refs(state, grads)``: the same, in tables of their own that a
  ``BoundStep`` reuses on every call.
* ``nonfinite_flags(state, group, refs)``: per variable of ``group``, whether its
  gradient holds NaN or inf (a host bool array).
* ``values_finite(state, values)``: whether a sparse gradient's values are finite.
* ``chunk_square_partials(state, group, refs, settings)``: per chunk of ``group``,
  the float64 sum of squared effective gradients (the driver's memory).
* ``new_square_sums(state)``, ``fold_square_partials(state, group, partials,
  sums)``, ``sparse_square_sum(state, i, rows, settings, sums)``: per-variable
  squared norms, the partials added in chunk order.
* ``clip_tables(state, sums, settings)``: per group, the ``(clip_scale,
  clip_divisor)`` table of its variables (the global norm folds ``sums`` in group
  order).
* ``update(state, group, refs, settings, clip_table)``: the fused update pass.
* ``accumulate(state, group, refs, settings)``: an accumulation micro-step.
* ``ema_only(state, group, settings)``: the EMA step alone, every variable.
* ``deduplicate(state, i, slices)``, ``rows(state, i, rows)``,
  ``scatter_accumulate(state, i, rows, settings)``, ``update_rows(state, i, rows,
  settings, clip_tables)``: the lazy sparse path (see ``_sparse``), exchanging
  ``rows.Rows`` records.
* ``assign(destination, source, stream)``: copy a slot into a variable.

Optional (the CPU driver has it; ``_apply.FastStep`` uses it where it exists):

* ``packed_update(state, group, refs, settings)``: ``(kernel, arguments)``, the
  update pass of ``group`` as one callable and its argument list, which a caller
  reuses from call to call, rewriting only the entries at the driver's
  ``UPDATE_REFS``, ``UPDATE_OFFSET``, ``UPDATE_LEARNING_RATE``,
  ``UPDATE_BIAS_CORRECTION``, ``UPDATE_EMA_MOMENTUM`` and ``UPDATE_OVERWRITE``
  positions.
"""
from .. import _devices


def for_arrays(arrays):
    """The driver module for a state over ``arrays`` (already checked to share one
    device): ``backends.cuda`` for CUDA device arrays, else ``backends.cpu``."""
    if arrays and _devices.kind(arrays[0]) == _devices.CUDA:
        from . import cuda
        return cuda
    from . import cpu
    return cpu
