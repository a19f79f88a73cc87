"""Where the PyTorch optimizer's tensors become the arrays the kernels run on, and back.

* A CPU tensor becomes a NumPy view of its memory (``tensor.detach().numpy()``).
* A CUDA tensor becomes a Numba device array over its memory, through
  ``__cuda_array_interface__``, without a copy (``device_view``). The interface is
  checked first: float32 or float64, C-contiguous, writable, and its address must be
  the tensor's ``data_ptr()``; so must the address of the Numba array made from it.
* The slots are the core's: ``_state`` allocates one flat buffer per dtype and slot
  (NumPy on the CPU, Numba device memory on the variables' device for CUDA), laid
  out for its kernel tables. ``slot_tensor`` shows a slot to torch as a tensor over
  that same memory (``torch.from_numpy`` / ``torch.as_tensor``, which keeps the
  Numba array alive), so ``optimizer.state[p]`` holds live tensors on ``p``'s device
  and the CUDA path has a single allocation path, the one the NumPy API tests. The
  cost: slot memory is allocated by Numba, outside torch's caching allocator (it
  does not show in ``torch.cuda.memory_allocated()``).
* A CUDA group's steps run on torch's current stream of its device (``stream_for``),
  looked up at every step, so a step is ordered after the backward pass that wrote
  the gradients and before what torch queues next on that stream; to run a step on
  another stream, make it current (``with torch.cuda.stream(s): opt.step()``).
* Numba allocates and launches in the current CUDA context; ``device_context``
  makes that the group's device (``torch.cuda.device``), for parameters on a GPU
  other than the current one.

Nothing here imports ``numba.cuda`` until a CUDA tensor is met.
"""
import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch

from .. import _devices, _state
from .._host import copy_into, to_host

#: dtypes of the arrays ``device_view`` accepts (those of the optimizer's parameters).
DEVICE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def device_of(tensors: Sequence[torch.Tensor]) -> torch.device:
    """The device of a parameter group's tensors (checked to share one): the first
    one's, or the CPU for an empty group."""
    return tensors[0].device if len(tensors) else torch.device("cpu")


def is_cuda(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether a parameter group's tensors live on a CUDA device."""
    return device_of(tensors).type == "cuda"


def device_context(tensors: Sequence[torch.Tensor]) -> contextlib.AbstractContextManager:
    """A context manager in which the current CUDA device is the group's device
    (``torch.cuda.device``; Numba follows it); a no-op for CPU tensors."""
    if not is_cuda(tensors):
        return contextlib.nullcontext()
    return torch.cuda.device(device_of(tensors))


def require_cuda(label: str):
    """``numba.cuda``, for the CUDA tensor named by ``label``: raises ``TypeError`` when
    numba-cuda cannot be imported and ``ValueError`` when it reports no usable GPU."""
    return _devices.cuda_module(label)


def as_array(tensor: torch.Tensor, label: str):
    """The array the kernels use for ``tensor``, sharing its memory: a NumPy view for
    a CPU tensor, a Numba device array (``device_view``) for a CUDA tensor. The
    caller checks the dtype and layout of CPU tensors. Mutates nothing."""
    if tensor.device.type != "cuda":
        return tensor.detach().numpy()
    with device_context([tensor]):
        return device_view(tensor.detach(), label, tensor.data_ptr() if tensor.numel() else 0)


def device_view(obj, label: str, pointer: int):
    """A Numba device array over the memory ``obj`` describes with
    ``__cuda_array_interface__``; no copy. ``pointer`` is the address the memory must
    start at (what the tensor holds; 0 for an empty one).

    Raises ``TypeError`` when ``obj`` has no interface or a dtype other than float32
    or float64, and ``ValueError`` when it is not C-contiguous, is read-only, or
    points elsewhere than ``pointer`` (before or after wrapping). Mutates nothing.
    """
    try:
        interface = obj.__cuda_array_interface__
    except AttributeError:
        interface = None
    if not isinstance(interface, dict):
        raise TypeError(f"{label} does not expose __cuda_array_interface__; pass a CUDA "
                        "tensor (or a CPU tensor to the CPU path).")
    dtype = np.dtype(interface["typestr"])
    if dtype not in DEVICE_DTYPES:
        raise TypeError(f"{label} has dtype {dtype}; expected float32 or float64.")
    shape = tuple(int(n) for n in interface["shape"])
    if not c_contiguous(shape, interface.get("strides"), dtype.itemsize):
        raise ValueError(f"{label} is not C-contiguous (strides {interface['strides']}); "
                         "make it contiguous, e.g. with `.contiguous()`.")
    address, read_only = interface["data"]
    if read_only:
        raise ValueError(f"{label} is read-only; the optimizer writes to it.")
    size = math.prod(shape)
    if size and address != pointer:
        raise ValueError(f"{label}: __cuda_array_interface__ points at {address:#x}, but its "
                         f"memory starts at {pointer:#x}.")
    array = _devices.as_device_array(obj, label)
    from ..kernels.cuda_pointers import device_address
    if size and device_address(array) != pointer:
        raise ValueError(f"{label}: the device view starts at {device_address(array):#x}, not "
                         f"at the tensor's memory {pointer:#x}.")
    return array


def c_contiguous(shape: tuple, strides, itemsize: int) -> bool:
    """Whether byte ``strides`` (None: C-contiguous, as the interface says) lay out
    ``shape`` in C order; axes of length 1 may have any stride, and an empty array is
    contiguous."""
    if strides is None or 0 in shape:
        return True
    strides = tuple(strides)
    if len(strides) != len(shape):
        return False
    expected = itemsize
    for n, stride in zip(reversed(shape), reversed(strides)):
        if n != 1 and stride != expected:
            return False
        expected *= n
    return True


def host_indices(indices: torch.Tensor) -> np.ndarray:
    """The row indices of a sparse gradient as a NumPy array: a view of a CPU tensor,
    one device-to-host copy of a CUDA one (the deduplication is planned on the host)."""
    return indices.detach().contiguous().cpu().numpy()


def new_state(params: Sequence[torch.Tensor], arrays, names,
              hyperparameters) -> _state.AdamaxState:
    """A fresh ``AdamaxState`` over ``arrays`` (``as_array`` of the group's ``params``),
    its slots on their device. The core zeroes the slots and uploads its kernel
    tables on the default stream, which torch's side streams do not wait for, so a
    CUDA state is ready only once the device has finished them: this waits for it."""
    with device_context(params):
        state = _state.create(arrays, names, hyperparameters)
        if is_cuda(params):
            require_cuda("the parameters").synchronize()
    return state


def stream_for(tensors: Sequence[torch.Tensor]):
    """The ``numba.cuda`` stream a group's CUDA step runs on: torch's current stream
    of the group's device, wrapped with ``numba.cuda.external_stream``; None (the
    default stream) for CPU tensors and for the legacy default stream (handle 0, which
    is also numba.cuda's default)."""
    return stream_on(device_of(tensors)) if is_cuda(tensors) else None


def stream_on(device: torch.device):
    """Torch's current stream of the CUDA ``device`` as a ``numba.cuda`` stream
    (``numba.cuda.external_stream``), or None for the legacy default stream (handle 0,
    which is also numba.cuda's default)."""
    handle = torch.cuda.current_stream(device).cuda_stream
    if not handle:
        return None
    cuda = require_cuda("the parameters")
    with torch.cuda.device(device):
        return cuda.external_stream(handle)


def slot_tensor(array, param: torch.Tensor) -> torch.Tensor:
    """A tensor over the memory of the slot ``array`` (shaped like ``param``), on
    ``param``'s device; no copy. Raises ``RuntimeError`` if torch did not share the
    memory."""
    if param.device.type != "cuda":
        return torch.from_numpy(array)
    if not array.size:  # nothing to share; an empty interface has no address
        return torch.empty(tuple(array.shape), dtype=param.dtype, device=param.device)
    from ..kernels.cuda_pointers import device_address
    with device_context([param]):
        tensor = torch.as_tensor(array, device=param.device)
    if tensor.data_ptr() != device_address(array) or tensor.dtype != param.dtype:
        raise RuntimeError("torch.as_tensor copied a device slot instead of sharing it.")
    return tensor


def slot_copy(array, param: torch.Tensor) -> torch.Tensor:
    """A copy of the slot ``array`` as a tensor on ``param``'s device (a device-to-device
    copy on torch's current stream for CUDA). Mutates nothing."""
    if param.device.type != "cuda":
        return torch.from_numpy(to_host(array))
    return slot_tensor(array, param).clone()


def load_slot(array, value: torch.Tensor, param: torch.Tensor) -> None:
    """Write the tensor ``value`` (``param``'s shape and dtype, checked by the caller;
    any device) into the slot ``array``; mutates ``array``."""
    if param.device.type != "cuda":
        copy_into(array, value.detach().cpu().numpy())
        return
    slot_tensor(array, param).copy_(value.detach())
