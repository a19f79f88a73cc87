"""Which kind of memory an array lives in: host (NumPy) or CUDA device.

NumPy arrays are host arrays. Numba CUDA device arrays (the simulator's included) and any
object exposing ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA tensors) are device
arrays, used zero-copy: they are wrapped, not copied, with ``numba.cuda.as_cuda_array``.
``backends.for_arrays`` picks the driver from this. ``numba.cuda`` is imported only when a
device array is met, so importing ``numba_adamax`` never needs numba-cuda or a GPU.
"""
import numpy as np

CPU = "cpu"
CUDA = "cuda"


def kind(x):
    """``CPU`` for a NumPy array, ``CUDA`` for a device array, None for anything else."""
    if isinstance(x, np.ndarray):
        return CPU
    if is_device_array(x):
        return CUDA
    return None


def is_device_array(x):
    """True for a Numba device array or an object with ``__cuda_array_interface__``.

    Objects are not converted; a PyTorch CPU tensor (whose interface attribute
    raises) is not a device array."""
    if isinstance(x, np.ndarray):
        return False
    try:
        if hasattr(x, "__cuda_array_interface__"):
            return True
    except Exception:  # an interface property that fails is not a device array
        return False
    return getattr(type(x), "__cuda_ndarray__", False) is True


def _import_cuda():
    from numba import cuda
    return cuda


def cuda_module(label):
    """``numba.cuda``, for the device array named by ``label``; raises ``TypeError``
    when numba-cuda cannot be imported and ``ValueError`` when no GPU (or simulator)
    is usable."""
    try:
        cuda = _import_cuda()
    except ImportError as exc:
        raise TypeError(f"{label} is a CUDA device array, but numba.cuda cannot be imported "
                        f"({exc}); install numba-cuda (pip install numba_adamax[cuda]).") from None
    if not cuda.is_available():
        raise ValueError(f"{label} is a CUDA device array, but numba.cuda reports no usable "
                         "GPU (numba.cuda.is_available() is False).")
    return cuda


def as_device_array(x, label="array"):
    """A Numba device array sharing ``x``'s memory (``x`` itself when it is one)."""
    cuda_module(label)
    if getattr(type(x), "__cuda_ndarray__", False) is True:
        return x
    from .kernels.cuda_pointers import as_cuda_array
    return as_cuda_array(x)


def read_only(x):
    """True when ``x`` declares its device memory read-only (``__cuda_array_interface__``)."""
    try:
        interface = x.__cuda_array_interface__
    except Exception:
        return False
    return bool(interface.get("data", (0, False))[1])
