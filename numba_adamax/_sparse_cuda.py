"""CUDA kernels for sparse (``IndexedSlices``) gradients of device variables.

The device counterpart of ``_sparse_cpu``, driven by ``_sparse``. The deduplication
is planned on the host (``_sparse.plan``: distinct rows in order of first appearance
and, CSR-like, each row's positions in ``indices``) and the plan is uploaded; every
kernel then works on distinct rows: blocks stride over rows, the threads of a block
over the elements of a row. Rows are distinct, so no two threads write the same
element and the results do not depend on the launch configuration.

The per-element work is ``_math``'s ``sparse_*`` bodies compiled with
``cuda.jit(device=True)`` (as ``_cuda`` compiles the dense ones), with the gradient
index ``k = r * row_size + j`` and the variable index ``i = rows[r] * row_size + j``.
Scalars arrive converted to the variable's math dtype (float32 for float16
variables). Deduplicated rows are kept in that math dtype.

Importing this module imports ``numba.cuda``; ``_sparse`` does so only for device
variables.
"""
import numpy as np
from numba import cuda

from . import _cuda

_element = _cuda._element
# Kernels resolve callees as module globals, so name the bodies here.
scatter_accumulate_at = _element.scatter_accumulate_at
sparse_gradient_at = _element.sparse_gradient_at
sparse_update_at = _element.sparse_update_at

#: Elements per partial sum of ``sum_of_squares``, rounded to whole rows: the CPU's
#: chunking, so that the squared norm has the CPU's bits.
REDUCTION_CHUNK = 4096


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
def scatter_accumulate_kernel(rows, row_size, g, a, ls):
    """``a[row] += g[row's values] / ls`` for each distinct row (see ``_sparse_cpu``)."""
    for r in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
        base = rows[r] * row_size
        for j in range(cuda.threadIdx.x, row_size, cuda.blockDim.x):
            scatter_accumulate_at(r * row_size + j, base + j, g, a, ls)


@cuda.jit(device=True)
def _update_row(r, row_size, base, w, g, m, u, a, ls, st, cs, cd, cv, lr, has_wd, wd, omb1, b2,
                eps, bc):
    for j in range(cuda.threadIdx.x, row_size, cuda.blockDim.x):
        sparse_update_at(r * row_size + j, base + j, w, g, m, u, a, ls, st, cs, cd, cv, lr,
                         has_wd, wd, omb1, b2, eps, bc)


@cuda.jit(cache=True)
def update_rows_kernel(rows, row_size, w, g, m, u, a, ls, st, clip_table, k, cs, cd, cv, lr,
                       has_wd, wd, omb1, b2, eps, bc):
    """The lazy update of the distinct ``rows`` of one flat variable (see
    ``_sparse_cpu.update_rows``); mutates those rows of ``w``, ``m``, ``u`` (and resets
    them in ``a`` when given). With ``clip_table`` (clipping by norm, filled on the
    device by ``_cuda``), the clip scale and divisor are ``clip_table[k]``; otherwise
    ``cs`` and ``cd``."""
    for r in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
        base = rows[r] * row_size
        # Two calls rather than one with chosen factors: see ``_cuda.update_kernel``.
        if clip_table is None:
            _update_row(r, row_size, base, w, g, m, u, a, ls, st, cs, cd, cv, lr, has_wd, wd,
                        omb1, b2, eps, bc)
        else:
            _update_row(r, row_size, base, w, g, m, u, a, ls, st, clip_table[k, 0],
                        clip_table[k, 1], cv, lr, has_wd, wd, omb1, b2, eps, bc)


@cuda.jit(cache=True)
def sum_of_squares_kernel(rows, row_size, per_chunk, g, a, ls, st, partial):
    """``partial[c]``: the float64 sum of squared effective gradients of rows
    ``c * per_chunk ...`` (one thread per chunk, elements in order, as the CPU adds
    them)."""
    c = cuda.grid(1)
    if c < partial.shape[0]:
        total = 0.0
        for r in range(c * per_chunk, min(rows.shape[0], (c + 1) * per_chunk)):
            base = rows[r] * row_size
            for j in range(row_size):
                x = float(sparse_gradient_at(r * row_size + j, base + j, g, a, ls, st))
                total += x * x
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
        v = x[i]
        if v - v != v - v:
            bad[0] = 1


def _launch(count, stream):
    """Grid and block for a rows-by-columns kernel over ``count`` rows."""
    return _cuda._blocks(count), _cuda.BLOCK_SIZE, _cuda._stream(stream)


def deduplicate(plan, values, math_dtype, stream):
    """The summed value rows of ``plan`` (``_sparse.Plan``) for the 2-D device array
    ``values``: a new ``(len(plan.rows), row_size)`` device array of ``math_dtype``,
    or ``values`` itself when no index repeats and it already has that dtype.
    Uploads the plan; mutates nothing else."""
    n, row_size = plan.rows.size, values.shape[1]
    if n == values.shape[0] and values.dtype == math_dtype:
        return values
    s = _cuda._stream(stream)
    out = cuda.device_array((n, row_size), dtype=math_dtype, stream=s)
    if n and row_size:
        sum_rows_kernel[_launch(n, stream)](cuda.to_device(plan.start, stream=s),
                                            cuda.to_device(plan.members, stream=s), values, out)
    return out


def all_finite(values, stream):
    """True when the device array ``values`` holds no NaN or inf; copies one flag to the
    host. Mutates nothing."""
    from ._devices import as_device_array
    x = as_device_array(values)
    x = x.reshape(x.size)
    if not x.size:
        return True
    bad = _cuda.zeros(1, np.int32, stream)
    nonfinite_kernel[_cuda._threads_for(x.size), _cuda.BLOCK_SIZE, _cuda._stream(stream)](x, bad)
    s = _cuda._stream(stream)
    flag = bad.copy_to_host(stream=s)
    if s:
        s.synchronize()
    return not flag[0]


def upload_rows(rows, stream):
    """``rows`` (int64, host) as a device array."""
    return cuda.to_device(rows, stream=_cuda._stream(stream))


def scatter_accumulate(rows, row_size, g, a, loss_scale, stream):
    """``a[row] += g[row's values] / loss_scale`` for the distinct device ``rows``;
    mutates ``a``."""
    if rows.size and row_size:
        scatter_accumulate_kernel[_launch(rows.size, stream)](
            rows, row_size, g, a, a.dtype.type(loss_scale))


def sum_of_squares(rows, row_size, g, a, loss_scale, steps, math_dtype, out, index, stream):
    """Store in ``out[index]`` (a float64 device array) the squared norm of the
    effective gradient of the distinct device ``rows``, with the CPU's bits; mutates
    only ``out[index]``."""
    dt = math_dtype.type
    per_chunk = max(1, REDUCTION_CHUNK // max(1, row_size))
    chunks = -(-rows.size // per_chunk) if row_size else 0
    s = _cuda._stream(stream)
    partial = cuda.device_array(max(1, chunks), dtype=np.float64, stream=s)
    if chunks:
        sum_of_squares_kernel[_cuda._threads_for(chunks), _cuda.BLOCK_SIZE, s](
            rows, row_size, per_chunk, g, a, dt(loss_scale), dt(steps), partial)
    store_total_kernel[1, 1, s](partial[:chunks], out, index)


def update_rows(rows, row_size, w, g, m, u, a, loss_scale, steps, clip_table, k, clip, lr,
                has_wd, wd, one_minus_beta_1, beta_2, epsilon, bias_correction, math_dtype,
                stream):
    """The lazy update of the distinct device ``rows`` of one flat variable; mutates
    those rows of ``w``, ``m``, ``u`` (and resets them in ``a`` when given). ``clip``
    is the host ``(scale, divisor, value)``; with a device ``clip_table`` its entry
    ``k`` gives the scale and divisor."""
    if not (rows.size and row_size):
        return
    dt = math_dtype.type
    update_rows_kernel[_launch(rows.size, stream)](
        rows, row_size, w, g, m, u, a, dt(loss_scale), dt(steps), clip_table, k, dt(clip[0]),
        dt(clip[1]), dt(clip[2]), dt(lr), bool(has_wd), dt(wd), dt(one_minus_beta_1),
        dt(beta_2), dt(epsilon), dt(bias_correction))
