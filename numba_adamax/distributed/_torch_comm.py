"""``TorchComm``: the communicator over a ``torch.distributed`` process group.

Host (NumPy) buffers travel as CPU tensors sharing their memory (``torch.from_numpy``),
which gloo moves; CUDA tensors go to NCCL as they are. The gathers and the
reduce-scatter of uneven blocks pad every block to the largest one (the equal-size
collectives are the ones every backend has); the extra bytes are at most one block
per rank.
"""
import numpy as np

from ._comm import Comm, _check_counts, _check_root, _layout, allgather_concat


class TorchComm(Comm):
    """A ``torch.distributed`` process group (``group=None``: the default group, which
    must be initialised with ``torch.distributed.init_process_group``)."""

    def __init__(self, group=None):
        try:
            import torch
            import torch.distributed as dist
        except ImportError:
            raise ImportError("TorchComm needs PyTorch: pip install torch") from None
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("torch.distributed is not initialised; call "
                             "torch.distributed.init_process_group(...) first")
        self._torch, self._dist, self.group = torch, dist, group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)

    def _tensor(self, buf):
        if isinstance(buf, np.ndarray):
            if not buf.flags.c_contiguous:
                raise TypeError("TorchComm's buffer collectives take contiguous arrays")
            return self._torch.from_numpy(buf)
        if isinstance(buf, self._torch.Tensor):
            return buf
        raise TypeError(f"TorchComm takes numpy arrays or torch tensors, got "
                        f"{type(buf).__qualname__}")

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
        self._dist.all_reduce(self._tensor(buf), group=self.group)

    def reduce_scatter(self, send, recv, counts):
        _check_counts(counts, self.size)
        counts, displs = _layout(counts)
        width = max(counts)
        tensor = self._tensor(send)
        padded = tensor.new_zeros(self.size * width)
        for r in range(self.size):
            padded[r * width:r * width + counts[r]] = tensor[displs[r]:displs[r] + counts[r]]
        out = tensor.new_empty(width)
        self._dist.reduce_scatter_tensor(out, padded, group=self.group)
        self._tensor(recv)[:counts[self.rank]] = out[:counts[self.rank]]

    def allgatherv_(self, buf, counts):
        _check_counts(counts, self.size)
        counts, displs = _layout(counts)
        width = max(counts)
        if not width:
            return
        tensor = self._tensor(buf)
        start = displs[self.rank]
        padded = tensor.new_zeros(width)
        padded[:counts[self.rank]] = tensor[start:start + counts[self.rank]]
        blocks = tensor.new_empty(self.size * width)
        self._dist.all_gather_into_tensor(blocks, padded, group=self.group)
        for r in range(self.size):
            tensor[displs[r]:displs[r] + counts[r]] = blocks[r * width:r * width + counts[r]]

    def alltoallv(self, send, send_counts, recv, recv_counts):
        _check_counts(send_counts, self.size)
        _check_counts(recv_counts, self.size)
        send_counts, recv_counts = _layout(send_counts)[0], _layout(recv_counts)[0]
        tensor, out = self._tensor(send), self._tensor(recv)
        self._dist.all_to_all_single(out[:sum(recv_counts)], tensor[:sum(send_counts)],
                                     output_split_sizes=recv_counts,
                                     input_split_sizes=send_counts, group=self.group)

    def gatherv(self, send, root=0):
        _check_root(root, self.size)
        out, lengths = allgather_concat(self, send)  # gloo has no uneven gather
        return (out if self.rank == root else None), lengths

    def bcast_(self, buf, root=0):
        _check_root(root, self.size)
        self._dist.broadcast(self._tensor(buf), src=self._global(root), group=self.group)
