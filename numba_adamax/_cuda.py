"""CUDA kernels: the shared per-index bodies of ``_math`` in ``cuda.jit`` kernels.

The same group tables as the CPU kernels (see ``_cpu`` and ``_state.SlotGroup``),
copied to the device: ``chunks[c] = (k, begin, end)``, ``table[k] = (data address,
size, slot offset, weight decay on)`` and ``refs[k]``, the device data address of
variable ``k``'s gradient (0: none this call). One launch serves a whole dtype group:
blocks stride over the chunks and the threads of a block stride over the elements of
a chunk. ``_cuda_addresses.array_at`` turns an address into a typed array (the only
place real hardware and the simulator differ).

Only the loops differ from the CPU: the element functions are ``_math``'s, compiled
with ``cuda.jit(device=True)``. Scalars arrive already converted on the host to the
group's math dtype (float32 for float16 variables, whose reads and writes convert
element by element). A step runs without device-to-host copies: clipping by norm
reduces on the device (per-chunk partial sums, then per-variable sums in chunk
order) and a small kernel finishes the ``(clip_scale, clip_divisor)`` table that the
update kernel reads. Only the ``"skip"``/``"raise"`` non-finite policies copy a
per-variable flag array back to the host.

Importing this module imports ``numba.cuda``; ``_devices`` does so only for device
arrays.
"""
import math

import numpy as np
from numba import cuda, float64

from . import _math
from . import _sparse
from ._cuda_addresses import array_at, device_address

#: Threads per block of every kernel (a power of two).
BLOCK_SIZE = 256
#: At most this many blocks per launch; blocks stride over the chunks beyond it.
MAX_BLOCKS = 4096

_device = cuda.jit(device=True)
# For helpers that return an array view or choose between None and a value: inlined
# at the Numba IR level, since a compiled device function cannot return an array it
# did not receive, and the None tests are then pruned on the kernel's own arguments.
_inline = cuda.jit(device=True, inline="always")
_element = _math.compile_for(_device)
# Kernels resolve callees as module globals, so name the bodies here.
update_at = _element.update_at
accumulate_at = _element.accumulate_at
ema_at = _element.ema_at
effective_gradient_at = _element.effective_gradient_at
clipnorm_divisor = _element.clipnorm_divisor
global_clip_scale = _element.global_clip_scale


@_inline
def _window(x, begin, end):
    """``x[begin:end]``, or None when ``x`` is None."""
    if x is None:
        return None
    return x[begin:end]


@_device
def _update_elements(first, end, stride, w, g, m, u, e, a, ls, st, clip, lr, has_wd, wd, omb1,
                     b2, eps, bc, mom, omm, overwrite):
    """``update_at`` on elements ``first, first + stride, ...`` below ``end``."""
    for i in range(first, end, stride):
        update_at(i, w, g, m, u, e, a, ls, st, clip, lr, has_wd, wd, omb1, b2, eps, bc, mom,
                  omm, overwrite)


@_device
def _without_gradient_at(i, w, e, a, mom, omm, overwrite, reset):
    """Element ``i`` of a variable without a gradient: the EMA step, and the
    accumulator reset when ``reset``."""
    if e is not None:
        ema_at(i, w, e, mom, omm, overwrite)
    if a is not None:
        if reset:
            a[i] = 0


@cuda.jit(cache=True)
def update_kernel(chunks, table, refs, like, clip, clip_table, inf, m, u, e, a, ls, st, lr, wd,
                  omb1, b2, eps, bc, mom, omm, overwrite):
    """An update step on a group (see ``_cpu.update``); ``like`` has the variables' dtype."""
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        k = chunks[c, 0]
        size = table[k, 1]
        base = table[k, 2]
        w = array_at(table[k, 0], size, like)
        es = _window(e, base, base + size)
        acc = _window(a, base, base + size)
        if refs[k] == 0:
            for i in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
                _without_gradient_at(i, w, es, acc, mom, omm, overwrite, True)
        else:
            g = array_at(refs[k], size, like)
            ms = m[base:base + size]
            us = u[base:base + size]
            has_wd = table[k, 3] != 0
            first, end, stride = chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x
            # Two calls rather than one with a chosen triple: numba keeps a value that
            # is None on one path Optional, and the clip triple must not be.
            if clip_table is None:
                _update_elements(first, end, stride, w, g, ms, us, es, acc, ls, st, clip, lr,
                                 has_wd, wd, omb1, b2, eps, bc, mom, omm, overwrite)
            else:
                _update_elements(first, end, stride, w, g, ms, us, es, acc, ls, st,
                                 (clip_table[k, 0], clip_table[k, 1], inf), lr, has_wd, wd,
                                 omb1, b2, eps, bc, mom, omm, overwrite)


@cuda.jit(cache=True)
def accumulate_kernel(chunks, table, refs, like, e, a, ls, mom, omm, overwrite):
    """An accumulation micro-step on a group (see ``_cpu.accumulate``)."""
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        k = chunks[c, 0]
        size = table[k, 1]
        base = table[k, 2]
        w = array_at(table[k, 0], size, like)
        es = _window(e, base, base + size)
        if refs[k] == 0:
            for i in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
                _without_gradient_at(i, w, es, None, mom, omm, overwrite, False)
        else:
            g = array_at(refs[k], size, like)
            acc = a[base:base + size]
            for i in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
                accumulate_at(i, w, g, es, acc, ls, mom, omm, overwrite)


@cuda.jit(cache=True)
def sum_of_squares_kernel(chunks, table, refs, like, a, ls, st, partial):
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
            acc = _window(a, base, base + size)
            for i in range(chunks[c, 1] + t, chunks[c, 2], cuda.blockDim.x):
                x = float(effective_gradient_at(i, g, acc, ls, st))
                total += x * x
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
    are ``chunk_starts[k]:chunk_starts[k + 1]``), as ``_cpu.sum_of_squares`` does."""
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
    ``_core._clip_tables`` computes it on the CPU. The sum is first stored in ``out``
    so that it is rounded to the dtype before the square root."""
    k = cuda.grid(1)
    if k < out.shape[0]:
        out[k, 1] = sums[offset + k]
        out[k, 1] = clipnorm_divisor(out[k, 1], c)
        out[k, 0] = c


@cuda.jit(cache=True)
def global_clip_table_kernel(total, c, one, out):
    """``out[k] = (c * min(1/N, 1/c) + (N - N), 1)`` with ``N = sqrt(total)`` in
    ``out``'s dtype (``global_clipnorm``), as ``_core._clip_tables`` computes it."""
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
                x = g[i]
                if x - x != x - x:
                    bad[k] = 1


@cuda.jit(cache=True)
def assign_kernel(out, x):
    """``out[i] = x[i]`` converted to ``out``'s dtype (1-D arrays of equal size)."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = x[i]


def _blocks(count):
    return max(1, min(count, MAX_BLOCKS))


def _threads_for(count):
    return max(1, min(-(-count // BLOCK_SIZE), MAX_BLOCKS))


def _stream(stream):
    return 0 if stream is None else stream


def zeros(size, dtype, stream=None):
    """A zeroed device array of ``size`` elements."""
    out = cuda.device_array(size, dtype=dtype, stream=_stream(stream))
    if size:
        out.copy_to_device(np.zeros(size, dtype), stream=_stream(stream))
    return out


def assign(out, x, stream=None):
    """Copy device array ``x`` into device array ``out`` (same size), converting to
    ``out``'s dtype; mutates ``out``."""
    out, x = out.reshape(out.size), x.reshape(x.size)
    if out.size:
        assign_kernel[_threads_for(out.size), BLOCK_SIZE, _stream(stream)](out, x)


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
        self.partial = cuda.device_array(max(1, self.chunk_count), dtype=np.float64)
        self.clip_table = cuda.device_array((n, 2), dtype=group.slot_dtype)
        self._refs_host = None

    def upload_table(self, table):
        """Copy the host ``table`` (weight-decay column changed) to the device."""
        self.table.copy_to_device(table)

    def set_gradients(self, grads, stream):
        """Point ``refs`` at this call's gradients (device arrays or None); copies the
        addresses to the device only when they changed since the last call."""
        refs = np.array([0 if g is None else device_address(g) for g in grads], np.int64)
        if self._refs_host is None or not np.array_equal(refs, self._refs_host):
            self.refs.copy_to_device(refs, stream=_stream(stream))
            self._refs_host = refs


class DeviceState:
    """Per-state device arrays: the per-variable squared norms and their total."""

    def __init__(self, groups):
        offsets = np.cumsum([0] + [len(g.indices) for g in groups])
        for group, offset in zip(groups, offsets):
            group.device = DeviceGroup(group, int(offset))
        self.sums = cuda.device_array(max(1, int(offsets[-1])), dtype=np.float64)
        self.total = cuda.device_array(1, dtype=np.float64)


def _set_gradients(state, grads, stream):
    for group in state.groups:
        group.device.set_gradients([grads[i] for i in group.indices], stream)


def first_nonfinite(state, grads, stream):
    """The index of the first variable (in group order) whose gradient holds NaN or inf,
    or None. One read pass per group and one small device-to-host copy per group.
    Mutates only the device gradient tables."""
    _set_gradients(state, grads, stream)
    s = _stream(stream)
    for group in state.groups:
        dev = group.device
        if not dev.chunk_count:
            continue
        bad = zeros(len(group.indices), np.int32, stream)
        all_finite_kernel[_blocks(dev.chunk_count), BLOCK_SIZE, s](
            dev.chunks, dev.table, dev.refs, dev.like, bad)
        flags = bad.copy_to_host(stream=s)
        if s:
            s.synchronize()
        if flags.any():
            return group.indices[int(np.flatnonzero(flags)[0])]
    return None


def accumulate(state, grads, settings, stream):
    """An accumulation micro-step (see ``_cpu.accumulate``) on every group."""
    _set_gradients(state, grads, stream)
    s = _stream(stream)
    for group in state.groups:
        dev = group.device
        if not dev.chunk_count:
            continue
        dt = group.slot_dtype.type
        mom = dt(settings.ema_momentum)
        accumulate_kernel[_blocks(dev.chunk_count), BLOCK_SIZE, s](
            dev.chunks, dev.table, dev.refs, dev.like, group.ema, group.accumulator,
            _cast(settings.loss_scale, dt), mom, dt(1) - mom, settings.overwrite)


def _cast(value, dt):
    return None if value is None else dt(value)


def _clip_tables(state, settings, stream, sparse):
    """Fill each group's device ``clip_table`` when clipping by norm (see
    ``_core._clip_tables``); returns True when it did. The variables in ``sparse``
    (``{i: _sparse.Rows}``) count with the norm of their rows."""
    c = settings.clipnorm or settings.global_clipnorm
    if not c:
        return False
    s = _stream(stream)
    device = state.device_state
    for group in state.groups:
        dev = group.device
        dt = group.slot_dtype.type
        if dev.chunk_count:
            sum_of_squares_kernel[_blocks(dev.chunk_count), BLOCK_SIZE, s, BLOCK_SIZE * 8](
                dev.chunks, dev.table, dev.refs, dev.like, group.accumulator,
                _cast(settings.loss_scale, dt), dt(settings.steps), dev.partial)
        n = len(group.indices)
        variable_sums_kernel[_threads_for(n), BLOCK_SIZE, s](
            dev.chunk_starts, dev.partial, device.sums, dev.offset)
    for i, rows in sparse.items():  # --- sparse gradients
        group, k = state.group_of(i)
        _sparse.sum_of_squares_on_device(rows, state.flat[i], settings.loss_scale or 1.0,
                                         settings.steps, device.sums, group.device.offset + k,
                                         stream)
    if settings.global_clipnorm and not settings.clipnorm:
        total_kernel[1, 1, s](device.sums[:sum(len(g.indices) for g in state.groups)],
                              device.total)
    for group in state.groups:
        dev = group.device
        dt = group.slot_dtype.type
        n = len(group.indices)
        if settings.clipnorm:
            clipnorm_table_kernel[_threads_for(n), BLOCK_SIZE, s](
                device.sums, dev.offset, dt(c), dev.clip_table)
        else:
            global_clip_table_kernel[_threads_for(n), BLOCK_SIZE, s](
                device.total, dt(c), dt(1), dev.clip_table)
    return True


def update(state, grads, lr, settings, stream, sparse=None):
    """An update step on every group (see ``_cpu.update``), with the norm passes first
    when clipping by norm. Mutates the variables and the slots.

    ``sparse`` (``{i: _sparse.Rows}``, from ``_sparse.prepare``) lists the variables
    with a sparse gradient (None in ``grads``): their rows get the lazy update before
    the dense pass, which then moves only their EMA (and resets their accumulator).
    """
    sparse = sparse or {}
    _set_gradients(state, grads, stream)
    s = _stream(stream)
    by_norm = _clip_tables(state, settings, stream, sparse)
    if sparse:
        _update_sparse(state, sparse, settings, lr, by_norm, stream)
    for group in state.groups:
        dev = group.device
        if not dev.chunk_count:
            continue
        dt = group.slot_dtype.type
        one = dt(1)
        clip = None
        if settings.clipvalue and not by_norm:
            clip = (one, one, dt(settings.clipvalue))
        mom = dt(settings.ema_momentum)
        update_kernel[_blocks(dev.chunk_count), BLOCK_SIZE, s](
            dev.chunks, dev.table, dev.refs, dev.like, clip,
            dev.clip_table if by_norm else None, dt(np.inf), group.m, group.u, group.ema,
            group.accumulator, _cast(settings.loss_scale, dt), dt(settings.steps), dt(lr),
            _cast(settings.weight_decay, dt), dt(1.0 - settings.beta_1), dt(settings.beta_2),
            dt(settings.epsilon), dt(settings.bias_correction(group.slot_dtype)), mom,
            one - mom, settings.overwrite)


def _update_sparse(state, sparse, settings, lr, by_norm, stream):
    """The lazy row updates of the variables in ``sparse`` (see ``_core._update_sparse``),
    with the clip factors the dense pass uses (the device ``clip_table`` when
    ``by_norm``); mutates their touched rows."""
    hp = state.hyperparameters
    inf = math.inf
    clip = (1.0, 1.0, settings.clipvalue) if settings.clipvalue and not by_norm else \
        (1.0, 1.0, inf)
    for i, rows in sparse.items():
        group, k = state.group_of(i)
        has_wd = hp.weight_decay is not None and state.weight_decay_mask[i]
        _sparse.update_on_device(rows, state.flat[i], stream, settings.loss_scale or 1.0,
                                 settings.steps, group.device.clip_table if by_norm else None,
                                 k, clip, lr, has_wd, settings.weight_decay or 0.0,
                                 1.0 - settings.beta_1, settings.beta_2, settings.epsilon,
                                 settings.bias_correction(group.slot_dtype))
