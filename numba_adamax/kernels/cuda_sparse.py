"""CUDA kernels for sparse (``IndexedSlices``) gradients of device variables.

The device counterpart of ``cpu_sparse``. The deduplication is planned on the host
(distinct rows in order of first appearance and, CSR-like, each row's positions in
``indices``) and the plan is uploaded; every kernel then works on distinct rows:
blocks stride over rows, the threads of a block over the elements of a row. Rows
are distinct, so no two threads write the same element and the results do not
depend on the launch configuration.

The per-element work is ``elementwise``'s ``sparse_*`` bodies compiled with
``cuda.jit(device=True)`` (as ``cuda`` compiles the dense ones), with the gradient
index ``k = r * row_size + j`` and the variable index ``i = rows[r] * row_size + j``.
Scalars arrive converted to the variable's math dtype (float32 for float16
variables). Deduplicated rows are kept in that math dtype.

Importing this module imports ``numba.cuda``.
"""
from numba import cuda

from .cuda import elements, widen

# Kernels resolve callees as module globals, so name the bodies here.
scatter_accumulate_at = elements.scatter_accumulate_at
sparse_square_at = elements.sparse_square_at
sparse_update_at = elements.sparse_update_at
is_finite = elements.is_finite


@cuda.jit(cache=True)
def sum_rows_kernel(start, members, values, out):
    """``out[s] = sum of values[members[start[s]:start[s + 1]]]`` (2-D ``values`` and
    ``out``), the value rows added in order, converted to ``out``'s dtype."""
    row_size = out.shape[1]
    for s in range(cuda.blockIdx.x, out.shape[0], cuda.gridDim.x):
        first = members[start[s]]
        for j in range(cuda.threadIdx.x, row_size, cuda.blockDim.x):
            out[s, j] = values[first, j]
            for q in range(start[s] + 1, start[s + 1]):
                out[s, j] = out[s, j] + values[members[q], j]


@cuda.jit(cache=True)
def scatter_accumulate_kernel(rows, row_size, g, a, loss_scale):
    """``a[row] += g[row's values] / loss_scale`` for each distinct row (see
    ``cpu_sparse.scatter_accumulate``)."""
    for r in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
        base = rows[r] * row_size
        for j in range(cuda.threadIdx.x, row_size, cuda.blockDim.x):
            scatter_accumulate_at(r * row_size + j, base + j, g, a, loss_scale)


@cuda.jit(device=True)
def _update_row(r, row_size, base, w, g, m, u, a, loss_scale, steps, clip_scale, clip_divisor,
                clip_value, lr, has_wd, wd, one_minus_beta_1, beta_2, epsilon, bias_correction):
    for j in range(cuda.threadIdx.x, row_size, cuda.blockDim.x):
        sparse_update_at(r * row_size + j, base + j, w, g, m, u, a, loss_scale, steps,
                         clip_scale, clip_divisor, clip_value, lr, has_wd, wd,
                         one_minus_beta_1, beta_2, epsilon, bias_correction)


@cuda.jit(cache=True)
def update_rows_kernel(rows, row_size, w, g, m, u, a, loss_scale, steps, clip_table, k,
                       clip_scale, clip_divisor, clip_value, lr, has_wd, wd, one_minus_beta_1,
                       beta_2, epsilon, bias_correction):
    """The lazy update of the distinct ``rows`` of one flat variable (see
    ``cpu_sparse.update_rows``); mutates those rows of ``w``, ``m``, ``u`` (and resets
    them in ``a`` when given). With ``clip_table`` (clipping by norm, filled on the
    device), the clip scale and divisor are ``clip_table[k]``; otherwise
    ``clip_scale`` and ``clip_divisor``."""
    for r in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
        base = rows[r] * row_size
        # Two calls rather than one with chosen factors: see ``cuda.update_kernel``.
        if clip_table is None:
            _update_row(r, row_size, base, w, g, m, u, a, loss_scale, steps, clip_scale,
                        clip_divisor, clip_value, lr, has_wd, wd, one_minus_beta_1, beta_2,
                        epsilon, bias_correction)
        else:
            _update_row(r, row_size, base, w, g, m, u, a, loss_scale, steps, clip_table[k, 0],
                        clip_table[k, 1], clip_value, lr, has_wd, wd, one_minus_beta_1, beta_2,
                        epsilon, bias_correction)


@cuda.jit(cache=True)
def sum_of_squares_kernel(rows, row_size, rows_per_chunk, g, a, loss_scale, steps, partial):
    """``partial[c]``: the float64 sum of squared effective gradients of rows
    ``c * rows_per_chunk ...`` (one thread per chunk, elements in order, as the CPU
    adds them)."""
    c = cuda.grid(1)
    if c < partial.shape[0]:
        total = 0.0
        for r in range(c * rows_per_chunk, min(rows.shape[0], (c + 1) * rows_per_chunk)):
            base = rows[r] * row_size
            for j in range(row_size):
                total += sparse_square_at(r * row_size + j, base + j, g, a, loss_scale, steps)
        partial[c] = total


@cuda.jit(cache=True)
def store_total_kernel(partial, out, index):
    """``out[index]``: the sum of ``partial`` in order (one thread)."""
    if cuda.grid(1) == 0:
        total = 0.0
        for c in range(partial.shape[0]):
            total += partial[c]
        out[index] = total


@cuda.jit(cache=True)
def nonfinite_kernel(x, bad):
    """``bad[0] = 1`` when the 1-D ``x`` holds NaN or +-inf (``bad`` starts at 0)."""
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        if not is_finite(widen(x[i])):
            bad[0] = 1
