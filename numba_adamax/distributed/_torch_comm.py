"""``TorchComm``: the communicator over a ``torch.distributed`` process group.

Host (NumPy) buffers travel as CPU tensors sharing their memory (``torch.from_numpy``),
which gloo moves. On a group with NCCL, a sharded step over device variables keeps
its exchange buffers in CUDA memory (``TorchDeviceBuffers``) and NCCL moves them as
they are: nothing is copied to the host. The few host buffers the library exchanges
there (clipping partials, checkpoint metadata) are copied to the device and back when
the group has no CPU backend. The gathers and the reduce-scatter of uneven blocks pad
every block to the largest one (the equal-size collectives are the ones every backend
has); the extra bytes are at most one block per rank.
"""
import numpy as np

from .. import _devices
from ._buffers import ExchangeBuffers
from ._comm import Comm, _check_counts, _check_root, _layout, allgather_concat


class TorchComm(Comm):
    """A ``torch.distributed`` process group (``group=None``: the default group, which
    must be initialised with ``torch.distributed.init_process_group``).

    ``device`` is the CUDA device whose memory the group's collectives move:
    ``"auto"`` (the default) picks ``torch.cuda.current_device()`` when the group has
    an NCCL backend and none otherwise; ``None`` keeps every exchange in host memory
    (device variables are then staged through host copies); a ``torch.device`` or a
    string such as ``"cuda:1"`` names one (each rank passes its own). Set the device
    with ``torch.cuda.set_device(local_rank)`` before creating the variables, so that
    Numba's kernels run on it too.
    """

    def __init__(self, group=None, *, device="auto"):
        try:
            import torch
            import torch.distributed as dist
        except ImportError:
            raise ImportError("TorchComm needs PyTorch: pip install torch") from None
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("torch.distributed is not initialised; call "
                             "torch.distributed.init_process_group(...) first")
        backend = str(dist.get_backend(group)).lower()
        self.device = _wire_device(torch, device, backend)
        # NCCL moves CUDA memory only: without a CPU backend, host buffers go through
        # device copies
        self._host_direct = "gloo" in backend or "mpi" in backend
        if self.device is None and not self._host_direct:
            raise ValueError(f"device=None keeps the exchange in host memory, which the group's "
                             f"backend ({backend}) cannot move; pass device='auto' or a CUDA "
                             "device, or use a group with gloo")
        self._torch, self._dist, self.group = torch, dist, group
        # the equal-block collectives, by the names this torch has (2.13 renamed them)
        self._all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        self._reduce_scatter = (getattr(dist, "reduce_scatter_single", None)
                                or dist.reduce_scatter_tensor)
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)

    @property
    def moves_device_memory(self):
        """Whether this group's collectives move CUDA memory (``device`` is set)."""
        return self.device is not None

    def exchange_buffers(self, device_variables):
        """Device buffers (``TorchDeviceBuffers``) for device variables when the group
        moves CUDA memory; host buffers otherwise."""
        if device_variables and self.moves_device_memory:
            return TorchDeviceBuffers(self._torch, self.device)
        return ExchangeBuffers(upload=device_variables)

    def _wire(self, buf):
        """``(tensor, host)``: the tensor the backend moves for ``buf`` (its memory, or a
        device copy of a host buffer the backend cannot reach) and the host tensor to
        copy the result back into (None when ``tensor`` is ``buf``'s own memory)."""
        torch = self._torch
        if isinstance(buf, np.ndarray):
            if not buf.flags.c_contiguous:
                raise TypeError("TorchComm's buffer collectives take contiguous arrays")
            buf = torch.from_numpy(buf)
        elif not isinstance(buf, torch.Tensor):
            if _devices.kind(buf) != _devices.CUDA:
                raise TypeError(f"TorchComm takes numpy arrays, torch tensors or CUDA device "
                                f"arrays, got {type(buf).__qualname__}")
            if self.device is None:
                raise TypeError("This TorchComm moves host memory only (device=None, or a "
                                "group without NCCL); the optimizer stages device arrays "
                                "through host copies for it")
            return torch.as_tensor(buf, device=self.device), None
        if self._host_direct or buf.device.type == "cuda":
            return buf, None
        wire = torch.empty(buf.shape, dtype=buf.dtype, device=self.device)
        wire.copy_(buf)
        return wire, buf

    @staticmethod
    def _unwire(tensor, host):
        """Copy a collective's result back into the host tensor ``_wire`` staged."""
        if host is not None:
            host.copy_(tensor)

    def allgather_object(self, obj):
        out = [None] * self.size
        self._dist.all_gather_object(out, obj, group=self.group)
        return out

    def bcast_object(self, obj, root=0):
        _check_root(root, self.size)
        box = [obj]
        self._dist.broadcast_object_list(box, src=self._global(root), group=self.group)
        return box[0]

    def barrier(self):
        self._dist.barrier(group=self.group)

    def _global(self, rank):
        return rank if self.group is None else self._dist.get_global_rank(self.group, rank)

    def allreduce_(self, buf):
        tensor, host = self._wire(buf)
        self._dist.all_reduce(tensor, group=self.group)
        self._unwire(tensor, host)

    def reduce_scatter(self, send, recv, counts):
        _check_counts(counts, self.size)
        counts, displs = _layout(counts)
        width = max(counts)
        tensor, _ = self._wire(send)
        padded = tensor.new_zeros(self.size * width)
        for r in range(self.size):
            padded[r * width:r * width + counts[r]] = tensor[displs[r]:displs[r] + counts[r]]
        out = tensor.new_empty(width)
        self._reduce_scatter(out, padded, group=self.group)
        target, host = self._wire(recv)
        target[:counts[self.rank]] = out[:counts[self.rank]]
        self._unwire(target, host)

    def allgatherv_(self, buf, counts):
        _check_counts(counts, self.size)
        counts, displs = _layout(counts)
        width = max(counts)
        if not width:
            return
        tensor, host = self._wire(buf)
        start = displs[self.rank]
        padded = tensor.new_zeros(width)
        padded[:counts[self.rank]] = tensor[start:start + counts[self.rank]]
        blocks = tensor.new_empty(self.size * width)
        self._all_gather(blocks, padded, group=self.group)
        for r in range(self.size):
            tensor[displs[r]:displs[r] + counts[r]] = blocks[r * width:r * width + counts[r]]
        self._unwire(tensor, host)

    def alltoallv(self, send, send_counts, recv, recv_counts):
        _check_counts(send_counts, self.size)
        _check_counts(recv_counts, self.size)
        send_counts, recv_counts = _layout(send_counts)[0], _layout(recv_counts)[0]
        (tensor, _), (out, host) = self._wire(send), self._wire(recv)
        self._dist.all_to_all_single(out[:sum(recv_counts)], tensor[:sum(send_counts)],
                                     output_split_sizes=recv_counts,
                                     input_split_sizes=send_counts, group=self.group)
        self._unwire(out, host)

    def gatherv(self, send, root=0):
        _check_root(root, self.size)
        out, lengths = allgather_concat(self, send)  # gloo has no uneven gather
        return (out if self.rank == root else None), lengths

    def bcast_(self, buf, root=0):
        _check_root(root, self.size)
        tensor, host = self._wire(buf)
        self._dist.broadcast(tensor, src=self._global(root), group=self.group)
        self._unwire(tensor, host)


class TorchDeviceBuffers(ExchangeBuffers):
    """Exchange buffers in the CUDA memory of ``device``, as torch tensors: the
    variables' memory is read and written through ``torch.as_tensor`` views (no host
    copy), the arithmetic runs on torch's current stream of ``device``, and so do the
    update kernels (``kernel_stream``), so the two are ordered."""

    def __init__(self, torch, device):
        super().__init__()
        self._torch, self.device = torch, device

    def _torch_dtype(self, dtype):
        return self._torch.from_numpy(np.empty(0, dtype)).dtype

    def _fits(self, buf, size, dtype):
        return buf.numel() == size and buf.dtype == self._torch_dtype(dtype)

    def _allocate(self, size, dtype):
        return self._torch.empty(size, dtype=self._torch_dtype(dtype), device=self.device)

    def _view(self, variable):
        """A flat tensor over the device memory of ``variable`` (a tensor, or a device
        array wrapped without a copy; not empty)."""
        torch = self._torch
        if not isinstance(variable, torch.Tensor):
            variable = torch.as_tensor(variable, device=self.device)
        return variable.reshape(-1)

    def zero(self, buffer):
        buffer.zero_()

    def put(self, buffer, variable):
        if buffer.numel():
            buffer.copy_(self._view(variable))

    def take(self, variable, buffer):
        if buffer.numel():
            self._view(variable).copy_(buffer)

    def assign(self, buffer, source):
        buffer.copy_(source)

    def add_(self, buffer, other):
        buffer.add_(other)

    def divide_(self, buffer, n):
        buffer.div_(n)

    def for_kernels(self, buffer):
        """A Numba device array over ``buffer``'s memory (no copy)."""
        if not buffer.numel():
            from numba import cuda
            return cuda.device_array(0, buffer.cpu().numpy().dtype)
        return _devices.as_device_array(buffer, "an exchange buffer")

    def kernel_stream(self):
        from ..integrations._torch_arrays import stream_on
        return stream_on(self.device)


def _wire_device(torch, device, backend):
    """The ``torch.device`` a ``TorchComm`` moves CUDA memory on, or None (see
    ``TorchComm``); raises ``TypeError``/``ValueError`` for a bad ``device``."""
    if isinstance(device, str) and device == "auto":
        if "nccl" not in backend:
            return None
        return torch.device("cuda", torch.cuda.current_device())
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be 'auto', None, a torch.device or a string such as "
                        f"'cuda:0', got {type(device).__qualname__}")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device {device!r} is not a device torch knows ({error}); pass "
                         "'auto', None or e.g. 'cuda:0'") from None
    if device.type != "cuda":
        raise ValueError(f"device must be a CUDA device (or None for host buffers), got "
                         f"{device}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device} was given, but torch.cuda.is_available() is False")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device
