"""CPU kernels for sparse (``IndexedSlices``) gradients: deduplication and row loops.

Same conventions as ``cpu``: contiguous arrays (``None`` for a slot that is not
configured) and Python scalars cast once to the variables' dtype, a serial and a
parallel variant of each kernel (``cpu.serial_and_parallel``), lazy compilation cached
on disk.
The per-element work is ``elementwise``'s ``sparse_*`` bodies. They take the gradient
index ``k`` and the variable index ``i`` separately (a GPU thread can map
``k = r * row_size + j`` to ``i = rows[r] * row_size + j``); the loops here instead
pass views of one row of each array and ``k = i = j``: with indices that are
plainly non-negative, numba drops its negative-index checks and the row loop
compiles like the dense one (several times faster than computed indices).
"""
import numpy as np
from numba import prange

from .cpu import cast_like, elements, inline, serial_and_parallel

# numba resolves callees as module globals, so name the bodies here.
scatter_accumulate_at = elements.scatter_accumulate_at
sparse_square_at = elements.sparse_square_at
sparse_update_at = elements.sparse_update_at

#: Multiplier of the Fibonacci hash (2**64 / golden ratio), for the index table.
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


@inline
def _row(x, row, size):
    """Row ``row`` of the flat array ``x`` with rows of ``size`` elements (a view)."""
    return x[row * size:(row + 1) * size]


@inline
def _sum_group(s, start, members, values, out):
    """``out[s] = sum of values[members[start[s]:start[s + 1]]]``, rows added in order."""
    target = out[s]
    source = values[members[start[s]]]
    for j in range(target.size):
        target[j] = source[j]
    for q in range(start[s] + 1, start[s + 1]):
        source = values[members[q]]
        for j in range(target.size):
            target[j] = target[j] + source[j]


def _deduplicate(indices, values):
    """Sum the rows of ``values`` (shape ``(k, row_size)``) that share an index.

    Returns ``(rows, summed)``: the distinct entries of ``indices`` (int64) in order
    of first appearance, and for each the sum of its value rows, added in order of
    appearance (so both variants give the same bits). When no index
    repeats, ``summed`` is ``values`` itself. Mutates nothing.

    An open-addressing hash table maps each index to its group in one pass; a
    counting sort then lists each group's positions, and the groups are summed
    independently.
    """
    k = indices.size
    bits = 4
    while (1 << bits) < 2 * k:
        bits += 1
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    keys = np.full(1 << bits, -1, np.int64)
    groups = np.empty(1 << bits, np.int64)
    group_of = np.empty(k, np.int64)
    counts = np.zeros(k, np.int64)
    rows = np.empty(k, np.int64)
    n = 0
    for p in range(k):
        r = indices[p]
        h = np.int64((np.uint64(r) * _HASH_MULTIPLIER) >> shift)
        while keys[h] != r and keys[h] != -1:
            h = (h + 1) & mask
        if keys[h] == -1:
            keys[h] = r
            groups[h] = n
            rows[n] = r
            n += 1
        s = groups[h]
        group_of[p] = s
        counts[s] += 1
    if n == k:
        return rows, values
    start = np.empty(n + 1, np.int64)
    start[0] = 0
    for s in range(n):
        start[s + 1] = start[s] + counts[s]
    fill = start[:n].copy()
    members = np.empty(k, np.int64)
    for p in range(k):
        s = group_of[p]
        members[fill[s]] = p
        fill[s] += 1
    out = np.empty((n, values.shape[1]), values.dtype)
    for s in prange(n):
        _sum_group(s, start, members, values, out)
    return rows[:n].copy(), out


deduplicate, deduplicate_parallel = serial_and_parallel(_deduplicate)


@inline
def _accumulate_row(r, rows, row_size, g, a, loss_scale):
    gr, ar = _row(g, r, row_size), _row(a, rows[r], row_size)
    for j in range(row_size):
        scatter_accumulate_at(j, j, gr, ar, loss_scale)


def _scatter_accumulate(rows, row_size, g, a, loss_scale):
    """``a[row] += g[row's values] / loss_scale`` for each (distinct) row; mutates ``a``."""
    loss_scale = cast_like(loss_scale, a)
    for r in prange(rows.size):
        _accumulate_row(r, rows, row_size, g, a, loss_scale)


scatter_accumulate, scatter_accumulate_parallel = serial_and_parallel(_scatter_accumulate)


# Exactly one of ``g`` and ``a`` is given. numba compiles a branch away only when its
# test is on a None argument, so the row helpers test each of the two and pass a
# literal None for the other: each configuration compiles one row loop.

@inline
def _update_row(r, rows, row_size, w, g, m, u, a, loss_scale, steps, clip_scale, clip_divisor,
                clip_value, lr, has_wd, wd, one_minus_beta_1, beta_2, epsilon, bias_correction):
    row = rows[r]
    wr, mr, ur = _row(w, row, row_size), _row(m, row, row_size), _row(u, row, row_size)
    if g is not None:
        gr = _row(g, r, row_size)
        for j in range(row_size):
            sparse_update_at(j, j, wr, gr, mr, ur, None, loss_scale, steps, clip_scale,
                             clip_divisor, clip_value, lr, has_wd, wd, one_minus_beta_1, beta_2,
                             epsilon, bias_correction)
    if a is not None:
        ar = _row(a, row, row_size)
        for j in range(row_size):
            sparse_update_at(j, j, wr, None, mr, ur, ar, loss_scale, steps, clip_scale,
                             clip_divisor, clip_value, lr, has_wd, wd, one_minus_beta_1, beta_2,
                             epsilon, bias_correction)


def _update_rows(rows, row_size, w, g, m, u, a, loss_scale, steps, clip_scale, clip_divisor,
                 clip_value, lr, has_wd, wd, one_minus_beta_1, beta_2, epsilon,
                 bias_correction):
    """The lazy update of the (distinct) ``rows`` of one flat variable: mutates those
    rows of ``w``, ``m``, ``u`` (and resets them in ``a`` when given). ``g`` holds
    the deduplicated gradient rows, or is None when ``a`` holds them. See
    ``elementwise.sparse_update_at``."""
    loss_scale, steps = cast_like(loss_scale, w), cast_like(steps, w)
    clip_scale, clip_divisor = cast_like(clip_scale, w), cast_like(clip_divisor, w)
    clip_value, lr, wd = cast_like(clip_value, w), cast_like(lr, w), cast_like(wd, w)
    one_minus_beta_1, beta_2 = cast_like(one_minus_beta_1, w), cast_like(beta_2, w)
    epsilon, bias_correction = cast_like(epsilon, w), cast_like(bias_correction, w)
    for r in prange(rows.size):
        _update_row(r, rows, row_size, w, g, m, u, a, loss_scale, steps, clip_scale,
                    clip_divisor, clip_value, lr, has_wd, wd, one_minus_beta_1, beta_2,
                    epsilon, bias_correction)


update_rows, update_rows_parallel = serial_and_parallel(_update_rows)


@inline
def _chunk_sum_of_squares(c, rows_per_chunk, rows, row_size, g, a, loss_scale, steps):
    total = 0.0
    for r in range(c * rows_per_chunk, min(rows.size, (c + 1) * rows_per_chunk)):
        if g is not None:
            gr = _row(g, r, row_size)
            for j in range(row_size):
                total += sparse_square_at(j, j, gr, None, loss_scale, steps)
        if a is not None:
            ar = _row(a, rows[r], row_size)
            for j in range(row_size):
                total += sparse_square_at(j, j, None, ar, loss_scale, steps)
    return total


def _sum_of_squares(rows, row_size, rows_per_chunk, g, a, loss_scale, steps, like):
    """Sum of the squared effective gradients of ``rows``, in float64; mutates nothing.

    ``like`` is any array of the variables' dtype (``g`` may be None). Partial sums
    over chunks of ``rows_per_chunk`` rows are added in order, so both variants (and
    the CUDA kernel given the same chunking) give the same bits.
    """
    loss_scale, steps = cast_like(loss_scale, like), cast_like(steps, like)
    partial = np.empty((rows.size + rows_per_chunk - 1) // rows_per_chunk)
    for c in prange(partial.size):
        partial[c] = _chunk_sum_of_squares(c, rows_per_chunk, rows, row_size, g, a,
                                           loss_scale, steps)
    total = 0.0
    for c in range(partial.size):
        total += partial[c]
    return total


sum_of_squares, sum_of_squares_parallel = serial_and_parallel(_sum_of_squares)

#: Every CPU dispatcher of this module.
DISPATCHERS = (deduplicate, deduplicate_parallel, scatter_accumulate,
               scatter_accumulate_parallel, update_rows, update_rows_parallel, sum_of_squares,
               sum_of_squares_parallel)
