"""Where a sharded step keeps the buffers it hands to the communicator.

A step packs gradients into per-dtype exchange buffers, sums them across the ranks,
gives the kernels views of its range, and packs and unpacks the parameters it
all-gathers. ``ExchangeBuffers`` is the set of operations it needs on those buffers;
the communicator chooses the implementation (``Comm.exchange_buffers``):

* ``ExchangeBuffers`` itself keeps them in host memory (NumPy). Device variables are
  then staged: their gradients are copied to the host before the exchange, the
  kernels get uploaded copies of the reduced range, and the gathered parameters are
  copied back to the device. Every MPI wheel on PyPI needs this (none is CUDA-aware).
* ``TorchDeviceBuffers`` (in ``_torch_comm``) keeps them in CUDA memory as torch
  tensors, so a ``TorchComm`` over NCCL moves device memory directly.

Every method's ``buffer`` is a buffer (or a slice of one) this object made; a
``variable`` is a variable or gradient of the state (a NumPy array or a CUDA device
array), of the same number of elements.
"""
import numpy as np

from .. import _devices


class ExchangeBuffers:
    """Exchange buffers in host memory (NumPy arrays); ``upload`` (for device
    variables) makes ``for_kernels`` give device copies."""

    def __init__(self, upload=False):
        self.upload = upload
        self._scratch = {}

    def scratch(self, key, size, dtype):
        """A buffer of ``size`` elements of the NumPy ``dtype``, cached under ``key``
        (its contents are whatever the last user left)."""
        buf = self._scratch.get(key)
        if buf is None or not self._fits(buf, size, dtype):
            buf = self._scratch[key] = self._allocate(size, dtype)
        return buf

    def _fits(self, buf, size, dtype):
        """Whether the buffer ``buf`` has ``size`` elements of the NumPy ``dtype``."""
        return buf.size == size and buf.dtype == dtype

    def _allocate(self, size, dtype):
        """A new buffer of ``size`` elements of the NumPy ``dtype``."""
        return np.empty(size, dtype)

    def zero(self, buffer):
        """Fill ``buffer`` with zeros; mutates it."""
        buffer[:] = 0

    def put(self, buffer, variable):
        """Copy ``variable`` (flattened) into ``buffer``; mutates ``buffer``."""
        buffer[:] = host_copy(variable).reshape(-1)

    def take(self, variable, buffer):
        """Copy ``buffer`` into ``variable`` (shaped like it); mutates ``variable``."""
        write_host(variable, buffer)

    def assign(self, buffer, source):
        """Copy the buffer ``source`` into ``buffer``; mutates ``buffer``."""
        buffer[:] = source

    def add_(self, buffer, other):
        """``buffer += other`` in the buffers' dtype; mutates ``buffer``."""
        np.add(buffer, other, out=buffer)

    def divide_(self, buffer, n):
        """``buffer /= n`` in the buffers' dtype; mutates ``buffer``."""
        np.divide(buffer, n, out=buffer)

    def for_kernels(self, buffer):
        """The array the update kernels read for ``buffer``: itself, or with
        ``upload`` a new device array holding it."""
        return upload(buffer) if self.upload else buffer

    def kernel_stream(self):
        """The ``numba.cuda`` stream the kernels of a step run on (None: the default)."""
        return None


def host_copy(x):
    """``x`` as a host array: itself when it is one, else a copy of the device array."""
    if isinstance(x, np.ndarray):
        return x
    return _devices.as_device_array(x).copy_to_host()


def upload(host):
    """A new device array holding the host array ``host``."""
    from numba import cuda
    return cuda.to_device(host)


def write_host(target, values):
    """Copy the host ``values`` into the variable ``target`` (host or device), converted
    to its dtype and shape; mutates ``target``."""
    if isinstance(target, np.ndarray):
        np.copyto(target, values.reshape(target.shape), casting="same_kind")
        return
    device = _devices.as_device_array(target)
    device.copy_to_device(np.ascontiguousarray(values, dtype=device.dtype).reshape(device.shape))
