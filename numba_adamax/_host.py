"""Moving slot arrays between the optimizer's memory and host NumPy arrays.

Every copy a checkpoint, ``get_weights`` or ``set_weights`` makes goes through these
two functions, so a device backend only has to extend them.
"""
import numpy as np


def to_host(array):
    """A NumPy copy of ``array``: ``array.copy_to_host()`` for a device array that has it
    (Numba CUDA), else ``np.array(array, copy=True)``. Mutates nothing."""
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    return np.array(array, copy=True)


def copy_into(destination, source):
    """Write the host array ``source`` into the slot ``destination`` (same shape and
    dtype, checked by the caller); a device slot gets a host-to-device copy. Mutates
    ``destination``."""
    if hasattr(destination, "copy_to_device"):
        if destination.size:
            destination.copy_to_device(np.ascontiguousarray(source))
        return
    np.copyto(destination, source)
