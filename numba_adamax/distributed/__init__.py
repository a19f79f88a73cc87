"""Adamax across processes: data-parallel and ZeRO-1 sharded state over an existing
engine (MPI through ``mpi4py``, or ``torch.distributed``).

The library chooses partitions and calls collectives through a communicator
(``MPIComm``, ``SelfComm``); it never moves bytes itself.
"""
from ._checkpoint import consolidate
from ._comm import Comm, MPIComm, SelfComm

__all__ = ["Comm", "MPIComm", "SelfComm", "consolidate"]
