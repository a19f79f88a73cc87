"""Data-parallel training with the optimizer state sharded over MPI ranks (ZeRO-1).

Run with, for example, two processes:

    mpiexec -n 2 python -m mpi4py examples/distributed_mpi.py

Every rank fits the same linear model to its own slice of the data; the optimizer
averages the ranks' gradients, updates its shard of the state and all-gathers the
parameters, so the ranks' parameters stay identical. ``python -m mpi4py`` makes a
rank that raises abort the whole job instead of leaving the others waiting.
"""
import numpy as np
from mpi4py import MPI

import numba_adamax as na
from numba_adamax import distributed as nad

comm = nad.MPIComm(MPI.COMM_WORLD)

# the model: y = x @ w + b, with w of 2000 inputs so that the state is split
features = 2000
params = na.FlatBuffer({"w": (features,), "b": (1,)}, np.float32)
params.arrays[0][:] = np.random.default_rng(comm.rank).standard_normal(features) * 0.01
nad.broadcast_(params, comm, root=0)  # every rank starts from rank 0's values
grads = params.zeros_like()

# this rank's data: the same true model everywhere, different samples per rank
true_w = np.random.default_rng(0).standard_normal(features).astype(np.float32) / 10
rng = np.random.default_rng(100 + comm.rank)
x = rng.standard_normal((256, features)).astype(np.float32)
y = x @ true_w + 0.5

opt = nad.ShardedAdamax(comm, zero_stage=1, reduce="mean", learning_rate=0.01,
                        global_clipnorm=10.0, deterministic=True)
w, b = params.arrays
dw, db = grads.arrays
for step in range(300):
    error = x @ w + b - y                                # this rank's residuals
    np.matmul(x.T, error, out=dw)
    dw *= 2 / len(y)
    db[:] = 2 * error.mean()
    opt.apply(grads, params)                             # collective

loss = comm.allgather_object(float(np.mean((x @ w + b - y) ** 2)))
same = comm.allgather_object(params.data.tobytes())
assert all(s == same[0] for s in same), "the ranks' parameters differ"
assert max(loss) < 0.05, loss
assert opt.iterations == 300
assert opt.local_nbytes <= 2 * 4 * (features + 16) // comm.size + 2 * 4 * 16384
if comm.rank == 0:
    print(f"{comm.size} ranks, {opt.iterations} steps, loss per rank "
          f"{[round(v, 5) for v in loss]}, optimizer state on this rank "
          f"{opt.local_nbytes} bytes")
