"""Communicators: the one interface the distributed optimizer talks to.

A communicator wraps an existing engine's process group and exposes the few
collectives the library needs. Every method is collective: all ranks of the group
must call it, in the same order, with compatible arguments.

* ``SelfComm``: one process, no engine needed; every collective is a local copy.
* ``MPIComm``: an ``mpi4py`` communicator (``MPI.COMM_WORLD`` or any other).

Object collectives (``allgather_object``, ``bcast_object``) pickle small Python
values (metadata, verdicts, error descriptions); bulk data goes through the buffer
collectives on NumPy arrays.
"""


class Comm:
    """Base class of the communicators. Subclasses set ``rank`` and ``size`` and
    implement the collectives below."""

    rank: int
    size: int

    def allgather_object(self, obj):
        """Every rank's ``obj``, as a list indexed by rank (on every rank)."""
        raise NotImplementedError

    def bcast_object(self, obj, root=0):
        """``root``'s ``obj`` on every rank (the others' ``obj`` is ignored)."""
        raise NotImplementedError

    def barrier(self):
        """Return once every rank has entered the barrier."""
        raise NotImplementedError

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


def _check_root(root, size):
    if isinstance(root, bool) or not isinstance(root, int) or not 0 <= root < size:
        raise ValueError(f"root must be a rank in [0, {size}), got {root!r}")
