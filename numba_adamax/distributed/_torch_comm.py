"""``TorchComm``: the communicator over a ``torch.distributed`` process group.

Host (NumPy) buffers travel as CPU tensors sharing their memory (``torch.from_numpy``),
which gloo moves; CUDA tensors go to NCCL as they are. Collectives gloo lacks for
uneven blocks are built from the ones it has: blocks are padded to the largest one
for ``all_gather``, and the reduce-scatter sums the whole buffer.
"""
import numpy as np

from ._comm import Comm, _check_counts, _check_root, _layout


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
            if buf.dtype == np.float16:
                return self._torch.from_numpy(buf.view(np.int16)).view(self._torch.float16)
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
        whole = np.array(send, copy=True) if isinstance(send, np.ndarray) else send.clone()
        self.allreduce_(whole)
        start = displs[self.rank]
        recv[:counts[self.rank]] = whole[start:start + counts[self.rank]]

    def allgatherv_(self, buf, counts):
        _check_counts(counts, self.size)
        counts, displs = _layout(counts)
        width = max(counts) if counts else 0
        if not width:
            return
        tensor = self._tensor(buf)
        start = displs[self.rank]
        padded = tensor.new_zeros(width)
        padded[:counts[self.rank]] = tensor[start:start + counts[self.rank]]
        blocks = [tensor.new_empty(width) for _ in range(self.size)]
        self._dist.all_gather(blocks, padded, group=self.group)
        for r, block in enumerate(blocks):
            tensor[displs[r]:displs[r] + counts[r]] = block[:counts[r]]

    def alltoallv(self, send, send_counts, recv, recv_counts):
        _check_counts(send_counts, self.size)
        _check_counts(recv_counts, self.size)
        send_counts, send_displs = _layout(send_counts)
        recv_counts, recv_displs = _layout(recv_counts)
        tensor, out = self._tensor(send), self._tensor(recv)
        # one broadcast-free round per destination: every rank gathers the blocks
        # addressed to it (gloo has no uneven all-to-all)
        for q in range(self.size):
            width = max(self.allgather_object(send_counts[q]))
            padded = tensor.new_zeros(width)
            padded[:send_counts[q]] = tensor[send_displs[q]:send_displs[q] + send_counts[q]]
            blocks = [tensor.new_empty(width) for _ in range(self.size)]
            self._dist.all_gather(blocks, padded, group=self.group)
            if q == self.rank:
                for r, block in enumerate(blocks):
                    out[recv_displs[r]:recv_displs[r] + recv_counts[r]] = block[:recv_counts[r]]

    def gatherv(self, send, root=0):
        _check_root(root, self.size)
        send = np.ascontiguousarray(send)
        lengths = self.allgather_object(int(send.size))
        buf = np.zeros(sum(lengths), send.dtype)
        start = sum(lengths[:self.rank])
        buf[start:start + send.size] = send
        self.allgatherv_(buf, lengths)
        return (buf if self.rank == root else None), lengths

    def bcast_(self, buf, root=0):
        _check_root(root, self.size)
        self._dist.broadcast(self._tensor(buf), src=self._global(root), group=self.group)
