"""Communicators: the one interface the distributed optimizer talks to.

A communicator wraps an existing engine's process group and exposes the few
collectives the library needs. Every method is collective: all ranks of the group
must call it, in the same order, with compatible arguments.

* ``SelfComm``: one process, no engine needed; every collective is a local copy.
* ``MPIComm``: an ``mpi4py`` communicator (``MPI.COMM_WORLD`` or any other).
* ``TorchComm``: a ``torch.distributed`` process group (gloo for host arrays, NCCL
  for CUDA memory, which it moves without host copies), in ``_torch_comm``.

Object collectives (``allgather_object``, ``bcast_object``) pickle small Python
values (metadata, verdicts, error descriptions); bulk data goes through the buffer
collectives on NumPy arrays.

Buffer collectives take contiguous 1-D arrays of one dtype; ``counts`` lists how many
elements each rank contributes or receives, and rank ``r``'s block starts at
``sum(counts[:r])`` (blocks are contiguous, in rank order). Reductions are sums.
"""
import numpy as np

from ._buffers import ExchangeBuffers


class Comm:
    """Base class of the communicators. Subclasses set ``rank`` and ``size`` and
    implement the collectives below."""

    rank: int
    size: int
    #: Whether the buffer collectives move CUDA device arrays themselves (else the
    #: optimizer stages device arrays through host copies).
    moves_device_memory = False

    def allgather_object(self, obj):
        """Every rank's ``obj``, as a list indexed by rank (on every rank)."""
        raise NotImplementedError

    def bcast_object(self, obj, root=0):
        """``root``'s ``obj`` on every rank (the others' ``obj`` is ignored)."""
        raise NotImplementedError

    def barrier(self):
        """Return once every rank has entered the barrier."""
        raise NotImplementedError

    def allreduce_(self, buf):
        """Replace ``buf`` by the sum of every rank's ``buf`` (in the engine's order)."""
        raise NotImplementedError

    def reduce_scatter(self, send, recv, counts):
        """Sum every rank's ``send`` (``sum(counts)`` elements) and write this rank's
        block of the sum (``counts[rank]`` elements) into ``recv``."""
        raise NotImplementedError

    def allgatherv_(self, buf, counts):
        """In place: every rank's block of ``buf`` (its ``counts[rank]`` elements at its
        displacement) is copied into the others' ``buf``."""
        raise NotImplementedError

    def alltoallv(self, send, send_counts, recv, recv_counts):
        """Rank ``r`` sends block ``q`` of ``send`` (``send_counts[q]`` elements) to rank
        ``q``, which writes it as block ``r`` (``recv_counts[r]`` elements) of ``recv``."""
        raise NotImplementedError

    def gatherv(self, send, root=0):
        """Every rank's 1-D ``send`` (any lengths, one dtype) concatenated in rank
        order on ``root``, with the list of lengths; ``(None, lengths)`` elsewhere."""
        raise NotImplementedError

    def bcast_(self, buf, root=0):
        """Copy ``root``'s ``buf`` into every rank's ``buf``."""
        raise NotImplementedError

    def exchange_buffers(self, device_variables):
        """The ``ExchangeBuffers`` a sharded step over this group uses, for variables in
        device memory (``device_variables``) or on the host: host buffers, with device
        variables staged through them. A communicator that moves device memory returns
        device buffers instead."""
        return ExchangeBuffers(upload=device_variables)

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SelfComm(Comm):
    """A group of one process: rank 0 of size 1. Lets the distributed API run (and be
    tested) without MPI or torch.distributed."""

    rank = 0
    size = 1

    def allgather_object(self, obj):
        return [obj]

    def bcast_object(self, obj, root=0):
        _check_root(root, 1)
        return obj

    def barrier(self):
        pass

    def allreduce_(self, buf):
        pass

    def reduce_scatter(self, send, recv, counts):
        _check_counts(counts, 1)
        recv[:] = send[:counts[0]]

    def allgatherv_(self, buf, counts):
        _check_counts(counts, 1)

    def alltoallv(self, send, send_counts, recv, recv_counts):
        _check_counts(send_counts, 1)
        recv[:recv_counts[0]] = send[:send_counts[0]]

    def gatherv(self, send, root=0):
        _check_root(root, 1)
        return np.array(send, copy=True), [len(send)]

    def bcast_(self, buf, root=0):
        _check_root(root, 1)


class MPIComm(Comm):
    """An ``mpi4py`` communicator, e.g. ``MPIComm(MPI.COMM_WORLD)``."""

    def __init__(self, comm):
        try:
            from mpi4py import MPI
        except ImportError:
            raise ImportError("MPIComm needs mpi4py: pip install 'numba_adamax[distributed]' "
                              "(mpi4py and the MPICH wheel)") from None
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"comm must be an mpi4py communicator such as MPI.COMM_WORLD, got "
                            f"{type(comm).__module__}.{type(comm).__qualname__}")
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def allgather_object(self, obj):
        return self.comm.allgather(obj)

    def bcast_object(self, obj, root=0):
        _check_root(root, self.size)
        return self.comm.bcast(obj, root=root)

    def barrier(self):
        self.comm.Barrier()

    def allreduce_(self, buf):
        from mpi4py import MPI
        self.comm.Allreduce(MPI.IN_PLACE, _host(buf), op=MPI.SUM)

    def reduce_scatter(self, send, recv, counts):
        from mpi4py import MPI
        _check_counts(counts, self.size)
        self.comm.Reduce_scatter(_host(send), _host(recv), recvcounts=[int(c) for c in counts],
                                 op=MPI.SUM)

    def allgatherv_(self, buf, counts):
        from mpi4py import MPI
        _check_counts(counts, self.size)
        counts, displs = _layout(counts)
        self.comm.Allgatherv(MPI.IN_PLACE, [_host(buf), (counts, displs)])

    def alltoallv(self, send, send_counts, recv, recv_counts):
        _check_counts(send_counts, self.size)
        _check_counts(recv_counts, self.size)
        self.comm.Alltoallv([_host(send), _layout(send_counts)],
                            [_host(recv), _layout(recv_counts)])

    def gatherv(self, send, root=0):
        _check_root(root, self.size)
        send = np.ascontiguousarray(send)
        lengths = self.comm.allgather(int(send.size))
        recv = None
        if self.rank == root:
            recv = np.empty(sum(lengths), send.dtype)
            self.comm.Gatherv(send, [recv, _layout(lengths)], root=root)
        else:
            self.comm.Gatherv(send, None, root=root)
        return recv, lengths

    def bcast_(self, buf, root=0):
        _check_root(root, self.size)
        self.comm.Bcast(_host(buf), root=root)


def allgather_concat(comm, send):
    """Every rank's 1-D ``send`` (any lengths, one dtype) concatenated in rank order, on
    every rank, with the list of lengths (collective: one small object all-gather, then
    ``comm.allgatherv_``). Mutates nothing."""
    send = np.ascontiguousarray(send)
    lengths = comm.allgather_object(int(send.size))
    out = np.empty(sum(lengths), send.dtype)
    start = sum(lengths[:comm.rank])
    out[start:start + send.size] = send
    comm.allgatherv_(out, lengths)
    return out, lengths


def _layout(counts):
    """``(counts, displacements)`` as lists of ints, blocks back to back."""
    counts = [int(c) for c in counts]
    return counts, [int(d) for d in np.cumsum([0] + counts[:-1])]


def _host(buf):
    """``buf`` as something MPI reads and writes: a NumPy array as is (no copy)."""
    if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous:
        raise TypeError("MPIComm's buffer collectives take contiguous numpy arrays, got "
                        f"{type(buf).__qualname__}; the optimizer stages device arrays "
                        "through host copies for MPI")
    return buf


def _check_counts(counts, size):
    if len(counts) != size:
        raise ValueError(f"`counts` must have one entry per rank ({size}), got {len(counts)}")


def _check_root(root, size):
    if isinstance(root, bool) or not isinstance(root, int) or not 0 <= root < size:
        raise ValueError(f"root must be a rank in [0, {size}), got {root!r}")
