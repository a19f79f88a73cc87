"""CUDA kernels: the shared per-index bodies of ``elementwise`` in ``cuda.jit`` kernels,
and the launch geometry every CUDA kernel uses.

The same group tables as the CPU kernels (see the package docstring), copied to the
device: ``chunks[c] = (k, begin, end)``, ``table[k] = (data address, size, slot
offset, weight decay on)`` and ``refs[k]``, the device data address of variable
``k``'s gradient (0: none this call). One launch serves a whole dtype group: blocks
stride over the chunks and the threads of a block stride over the elements of a
chunk. ``cuda_pointers.array_at`` turns an address into a typed array.

Only the loops differ from the CPU: the element functions are ``elementwise``'s,
compiled with ``cuda.jit(device=True)`` with this module's ``widen`` and ``mul``.
Scalars arrive already converted on the host to the group's math dtype (float32 for
float16 variables, whose reads and writes convert element by element). Clipping by
norm reduces on the device (per-chunk partial sums, then per-variable sums in chunk
order) and small kernels finish the ``(clip_scale, clip_divisor)`` table that the
update kernel reads.

Real hardware and the simulator differ in ``cuda_pointers`` and in the three helpers
here that are typed per argument type on hardware (``window``, ``widen``, ``mul``);
the kernel source is the same in both. Importing this module imports ``numba.cuda``.
"""
import numpy as np
from numba import cuda, float64

from . import config, elementwise
from .cuda_pointers import SIMULATED, array_at

_device = cuda.jit(device=True)


def window(x, begin, end):
    """``x[begin:end]``, or None when ``x`` is None."""
    return None if x is None else x[begin:end]


def widen(x):
    """A loaded element in its math dtype: float32 for a float16, else itself."""
    return np.float32(x) if type(x) is np.float16 else x


def mul(a, b):
    """``a * b`` rounded on its own: never fused with a following addition."""
    return a * b


if not SIMULATED:
    # On hardware these are typed per argument type (under the simulator kernels are
    # Python and call the functions above). ``window``: a configured slot gives an
    # array and an absent one None, never an Optional that the element bodies would
    # test. ``widen``: float16 arithmetic would call numba-cuda's C++ half shims.
    # ``mul``: libdevice's round-to-nearest product is PTX ``mul.rn``, which neither
    # NVVM nor ptxas contracts into an FMA.
    from numba.cuda import libdevice, types
    from numba.cuda.extending import overload

    @overload(window, target="cuda", inline="always")
    def _window_impl(x, begin, end):
        if isinstance(x, types.NoneType):
            return lambda x, begin, end: None
        return lambda x, begin, end: x[begin:end]

    @overload(widen, target="cuda", inline="always")
    def _widen_impl(x):
        if x == types.float16:
            return lambda x: types.float32(x)
        return lambda x: x

    @overload(mul, target="cuda", inline="always")
    def _mul_impl(a, b):
        if a == b == types.float32:
            return lambda a, b: libdevice.fmul_rn(a, b)
        if a == b == types.float64:
            return lambda a, b: libdevice.dmul_rn(a, b)
        return None  # mixed or other types: a typing error, not a silent promotion

#: The element bodies compiled for the device.
elements = elementwise.compile_for(_device, float64, widen, mul)
# Kernels resolve callees as module globals, so name the bodies here.
update_at = elements.update_at
accumulate_at = elements.accumulate_at
without_gradient_at = elements.without_gradient_at
square_at = elements.square_at
is_finite = elements.is_finite
clipnorm_divisor = elements.clipnorm_divisor
global_clip_scale = elements.global_clip_scale


@_device
def _update_elements(first, end, stride, w, g, m, u, e, a, loss_scale, steps, clip, lr, has_wd,
                     wd, one_minus_beta_1, beta_2, epsilon, bias_correction, ema_momentum,
                     one_minus_ema_momentum, overwrite):
    """``update_at`` on elements ``first, first + stride, ...`` below ``end``."""
    for i in range(first, end, stride):
        update_at(i, w, g, m, u, e, a, loss_scale, steps, clip, lr, has_wd, wd,
                  one_minus_beta_1, beta_2, epsilon, bias_correction, ema_momentum,
                  one_minus_ema_momentum, overwrite)


@cuda.jit(cache=True)
def update_kernel(chunks, table, refs, like, clip, clip_table, inf, m, u, e, a, loss_scale, steps,
                  lr, wd, one_minus_beta_1, beta_2, epsilon, bias_correction, ema_momentum,
                  one_minus_ema_momentum, overwrite):
    """An update step on a group (see ``cpu.update``); ``like`` has the variables' dtype."""
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        k = chunks[c, 0]
        size = table[k, 1]
        base = table[k, 2]
        w = array_at(table[k, 0], size, like)
        es = window(e, base, base + size)
        acc = window(a, base, base + size)
        if refs[k] == 0:
            for i in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
                without_gradient_at(i, w, es, acc, ema_momentum, one_minus_ema_momentum,
                                    overwrite, True)
        else:
            g = array_at(refs[k], size, like)
            ms = m[base:base + size]
            us = u[base:base + size]
            has_wd = table[k, 3] != 0
            first, end, stride = chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x
            # Two calls rather than one with a chosen triple: numba keeps a value that
            # is None on one path Optional, and the clip triple must not be.
            if clip_table is None:
                _update_elements(first, end, stride, w, g, ms, us, es, acc, loss_scale, steps,
                                 clip, lr, has_wd, wd, one_minus_beta_1, beta_2, epsilon,
                                 bias_correction, ema_momentum, one_minus_ema_momentum,
                                 overwrite)
            else:
                _update_elements(first, end, stride, w, g, ms, us, es, acc, loss_scale, steps,
                                 (clip_table[k, 0], clip_table[k, 1], inf), lr, has_wd, wd,
                                 one_minus_beta_1, beta_2, epsilon, bias_correction,
                                 ema_momentum, one_minus_ema_momentum, overwrite)


@cuda.jit(cache=True)
def accumulate_kernel(chunks, table, refs, like, e, a, loss_scale, ema_momentum,
                      one_minus_ema_momentum, overwrite):
    """An accumulation micro-step on a group (see ``cpu.accumulate``; with ``a`` None,
    the EMA pass alone)."""
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        k = chunks[c, 0]
        size = table[k, 1]
        base = table[k, 2]
        w = array_at(table[k, 0], size, like)
        es = window(e, base, base + size)
        if refs[k] == 0:
            for i in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
                without_gradient_at(i, w, es, None, ema_momentum, one_minus_ema_momentum,
                                    overwrite, False)
        else:
            g = array_at(refs[k], size, like)
            acc = window(a, base, base + size)
            for i in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
                accumulate_at(i, w, g, es, acc, loss_scale, ema_momentum,
                              one_minus_ema_momentum, overwrite)


@cuda.jit(cache=True)
def sum_of_squares_kernel(chunks, table, refs, like, a, loss_scale, steps, partial):
    """``partial[c]``: the float64 sum of squared effective gradients of chunk ``c``
    (0 without a gradient). Each thread sums its elements in order, then thread 0
    adds the threads' sums in thread order (needs ``blockDim.x`` float64 of dynamic
    shared memory), so a launch configuration always gives the same bits."""
    sums = cuda.shared.array(0, dtype=float64)
    t = cuda.threadIdx.x
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        k = chunks[c, 0]
        total = 0.0
        if refs[k] != 0:
            size = table[k, 1]
            base = table[k, 2]
            g = array_at(refs[k], size, like)
            acc = window(a, base, base + size)
            for i in range(chunks[c, 1] + t, chunks[c, 2], cuda.blockDim.x):
                total += square_at(i, g, acc, loss_scale, steps)
        sums[t] = total
        cuda.syncthreads()
        if t == 0:
            block_total = 0.0
            for j in range(cuda.blockDim.x):
                block_total += sums[j]
            partial[c] = block_total
        cuda.syncthreads()


@cuda.jit(cache=True)
def variable_sums_kernel(chunk_starts, partial, sums, offset):
    """``sums[offset + k]``: variable ``k``'s chunk sums added in chunk order (its chunks
    are ``chunk_starts[k]:chunk_starts[k + 1]``), as ``cpu.fold_chunk_sums`` does."""
    k = cuda.grid(1)
    if k < chunk_starts.shape[0] - 1:
        total = 0.0
        for c in range(chunk_starts[k], chunk_starts[k + 1]):
            total += partial[c]
        sums[offset + k] = total


@cuda.jit(cache=True)
def total_kernel(sums, total):
    """``total[0]``: the sum of ``sums`` in order (one thread)."""
    if cuda.grid(1) == 0:
        s = 0.0
        for k in range(sums.shape[0]):
            s += sums[k]
        total[0] = s


@cuda.jit(cache=True)
def clipnorm_table_kernel(sums, offset, c, out):
    """``out[k] = (c, max(sqrt(sum_k), c))`` in ``out``'s dtype (``clipnorm``), as
    ``cpu.clip_table`` computes it. The sum is first stored in ``out``
    so that it is rounded to the dtype before the square root."""
    k = cuda.grid(1)
    if k < out.shape[0]:
        out[k, 1] = sums[offset + k]
        out[k, 1] = clipnorm_divisor(out[k, 1], c)
        out[k, 0] = c


@cuda.jit(cache=True)
def global_clip_table_kernel(total, c, one, out):
    """``out[k] = (c * min(1/N, 1/c) + (N - N), 1)`` with ``N = sqrt(total)`` in
    ``out``'s dtype (``global_clipnorm``), as ``cpu.clip_table`` computes it."""
    k = cuda.grid(1)
    if k < out.shape[0]:
        out[k, 0] = total[0]
        out[k, 0] = global_clip_scale(out[k, 0], c, one)
        out[k, 1] = one


@cuda.jit(cache=True)
def all_finite_kernel(chunks, table, refs, like, bad):
    """``bad[k] = 1`` when variable ``k``'s gradient holds NaN or +-inf (``bad`` starts
    at 0); every thread that sees one writes the same value."""
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        k = chunks[c, 0]
        if refs[k] != 0:
            g = array_at(refs[k], table[k, 1], like)
            for i in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
                if not is_finite(widen(g[i])):
                    bad[k] = 1


@cuda.jit(cache=True)
def assign_kernel(out, x):
    """``out[i] = x[i]`` converted to ``out``'s dtype (1-D arrays of equal size)."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = x[i]


# ---------------------------------------------------------------- launch geometry

def blocks_for(units):
    """Blocks of a launch whose blocks stride over ``units`` work units (chunks, rows)."""
    return max(1, min(units, config.MAX_BLOCKS))


def blocks_for_elements(count):
    """Blocks of a launch with one thread per element of ``count`` (grid-stride beyond
    ``MAX_BLOCKS`` blocks)."""
    return max(1, min(-(-count // config.BLOCK_SIZE), config.MAX_BLOCKS))


def stream_or_default(stream):
    """The launch stream argument: ``stream``, or 0 (the default stream) for None."""
    return 0 if stream is None else stream


def zeros(size, dtype, stream=None):
    """A zeroed device array of ``size`` elements."""
    out = cuda.device_array(size, dtype=dtype, stream=stream_or_default(stream))
    if size:
        out.copy_to_device(np.zeros(size, dtype), stream=stream_or_default(stream))
    return out


def assign(out, x, stream=None):
    """Copy device array ``x`` into device array ``out`` (same size), converting to
    ``out``'s dtype; mutates ``out``."""
    out, x = out.reshape(out.size), x.reshape(x.size)
    if out.size:
        assign_kernel[blocks_for_elements(out.size), config.BLOCK_SIZE,
                      stream_or_default(stream)](out, x)
