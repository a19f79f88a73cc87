"""Adamax across processes: data-parallel and ZeRO-1 sharded state over an existing
engine (MPI through ``mpi4py``, or ``torch.distributed``).

The library chooses partitions and calls collectives through a communicator
(``MPIComm``, ``TorchComm``, ``SelfComm``); it never moves bytes itself.

* ``ShardedAdamax(comm, zero_stage=1, reduce="mean", deterministic=False, **kw)``: the
  ``Adamax`` interface; ``init``/``step``: the functional pair.
* ``shard_plan(params, world_size)``: which rank owns which part of the state.
* ``broadcast_(params, comm, root=0)``: make every rank's variables equal to root's.
* ``consolidate(path, out)``: a sharded checkpoint as one ``numba_adamax.load_state``
  file, offline.
"""
from ._checkpoint_bridge import consolidate
from ._comm import Comm, MPIComm, SelfComm
from ._optimizer import ShardedAdamax, broadcast_, init, step
from ._plan import ShardPlan, shard_plan
from ._sharded import ShardedState
from ._torch_comm import TorchComm

__all__ = ["Comm", "MPIComm", "SelfComm", "ShardPlan", "ShardedAdamax", "ShardedState",
           "TorchComm", "broadcast_", "consolidate", "init", "shard_plan", "step"]
