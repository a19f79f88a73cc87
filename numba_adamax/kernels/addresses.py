"""Memory addresses of arrays, so one kernel call can reach many separate arrays
(the host side; ``pointers`` holds the intrinsics that read them in jitted code).

A step over many variables passes the kernel a table of addresses instead of the
arrays themselves (numba would otherwise need a typed list, whose construction
costs microseconds per array). Two kinds of table entry:

* a data address, for arrays whose buffer is fixed for the optimizer's lifetime
  (the variables, a ``FlatBuffer``), read once with ``data_address``;
* the address of the array *object*, ``id(array)``, for gradients, which are
  usually new arrays every step. ``id`` costs ~50 ns where ``__array_interface__``
  costs ~1 µs; the kernel then reads the data pointer from the object itself, at
  ``OBJECT_DATA_OFFSET``. That field (``PyArrayObject.data``, read by numpy's own
  ``PyArray_DATA`` macro in every compiled extension) is part of numpy's C ABI; its
  offset is measured at import rather than assumed, and ``OBJECT_DATA_OFFSET`` is
  -1 (the caller then passes data addresses) if the measurement fails.

The caller keeps every array alive for the duration of the kernel call. This
module imports only NumPy, so a state can be laid out without importing numba.
"""
import ctypes

import numpy as np


def data_address(array):
    """Address of the first element of a host ``numpy`` array."""
    return array.__array_interface__["data"][0]


def _measure_object_data_offset():
    found = set()
    for probe in (np.arange(3.0), np.zeros(5, np.float32)[1:], np.empty((2, 2))):
        address = data_address(probe)
        found.update(offset for offset in range(0, 64, ctypes.sizeof(ctypes.c_void_p))
                     if ctypes.c_size_t.from_address(id(probe) + offset).value == address)
    return found.pop() if len(found) == 1 else -1


#: Byte offset of the data pointer inside a numpy array object; -1 if unknown.
OBJECT_DATA_OFFSET = _measure_object_data_offset()


def gradient_table(grads, out):
    """What the kernels dereference for each of ``grads`` (``None`` entries: 0), and
    the object data offset they must pass with it: ``(table, offset)``, object
    addresses with ``OBJECT_DATA_OFFSET`` or data addresses with -1. A short table
    is written into ``out`` (int64, one entry per gradient); a long one is a new
    array."""
    locate = id if OBJECT_DATA_OFFSET >= 0 else data_address
    if len(grads) <= 8:
        for k, g in enumerate(grads):
            out[k] = 0 if g is None else locate(g)
        return out, OBJECT_DATA_OFFSET
    table = np.fromiter([0 if g is None else locate(g) for g in grads], np.int64, len(grads))
    return table, OBJECT_DATA_OFFSET
