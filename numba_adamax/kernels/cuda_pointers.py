"""Device memory addresses for the CUDA kernels, where real hardware and Numba's CUDA
simulator differ most (``cuda`` holds the other difference: helpers typed per argument).

The CUDA group kernels reach every variable of a dtype group through a device table
of data addresses (as the CPU kernels do, see ``addresses``), so device code must
turn an integer address into a typed array:

* on a GPU, ``array_at`` is a device function: an intrinsic emits LLVM ``inttoptr``
  to a ``CPointer`` of ``like``'s element type and ``numba.cuda``'s ``carray`` wraps
  it.
* under the simulator (``NUMBA_ENABLE_CUDASIM=1``) device arrays are NumPy arrays
  in host memory and kernels run as Python, so ``array_at`` returns a NumPy view of
  the host memory at the address.

The choice is made once, at import, from ``numba.config.ENABLE_CUDASIM``; the kernel
source is the same in both. This module imports ``numba.cuda``: import it only when
a CUDA state is created.
"""
import ctypes

import numba
import numpy as np

SIMULATED = bool(numba.config.ENABLE_CUDASIM)

if SIMULATED:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    def array_at(address, size, like):
        """The ``size`` elements of ``like``'s dtype at host ``address`` (a NumPy view)."""
        dtype = np.dtype(like.dtype)
        if size == 0:
            return np.empty(0, dtype)
        raw = (ctypes.c_byte * (int(size) * dtype.itemsize)).from_address(int(address))
        return np.frombuffer(raw, dtype)

    def device_address(array):
        """Address of the first element of a (simulated) device array."""
        interface = getattr(array, "__cuda_array_interface__", None)
        if interface is None:
            interface = array.__array_interface__
        return interface["data"][0]

    def as_cuda_array(obj):
        """A simulated device array over the memory an ``__cuda_array_interface__``
        object describes (the simulator's "device" memory is host memory); no copy."""
        interface = obj.__cuda_array_interface__
        dtype = np.dtype(interface["typestr"])
        shape = tuple(interface["shape"])
        size = int(np.prod(shape, dtype=np.int64))
        view = array_at(interface["data"][0], size, np.empty(0, dtype))
        strides = interface.get("strides")
        view = (view.reshape(shape) if strides is None
                else np.lib.stride_tricks.as_strided(view, shape, strides))
        return FakeCUDAArray(view)

else:
    from numba import cuda
    from numba.cuda import types
    from numba.cuda.extending import intrinsic
    from numba.cuda.np.numpy_support import carray

    from .pointers import pointer_intrinsic

    pointer_to = pointer_intrinsic(intrinsic, types)

    # Inlined at the Numba IR level: a device function cannot return a new array.
    @cuda.jit(device=True, inline="always")
    def array_at(address, size, like):
        """The ``size`` elements of ``like``'s dtype at device ``address`` (device code)."""
        return carray(pointer_to(address, like), size)

    def device_address(array):
        """Address of the first element of a device array (``__cuda_array_interface__``)."""
        return array.__cuda_array_interface__["data"][0]

    as_cuda_array = cuda.as_cuda_array
