"""DDP + ZeroAdamax + torch.distributed.checkpoint, on 2 CPU processes (gloo).

Each process trains the same small network under ``DistributedDataParallel`` on its
own mini-batches. The optimizer state is sharded over the two processes by
``ZeroAdamax`` (torch's ``ZeroRedundancyOptimizer`` over numba_adamax's Adamax), with
``global_clipnorm`` taken over the whole model and ``nonfinite="skip"`` decided by
both processes together. After 4 steps the model and optimizer are saved with
``torch.distributed.checkpoint``; training goes on for 4 more steps. A second model
and optimizer then load the checkpoint and take the same 4 steps: both runs must
end with the same weights, bit for bit.

    python examples/torch_zero_ddp.py [CHECKPOINT_DIR] [PORT]

Exits with status 1 if the resumed run differs from the uninterrupted one.
"""
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel

from numba_adamax.integrations.torch import ZeroAdamax


def build():
    """The same network and optimizer on every process."""
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)))
    optimizer = ZeroAdamax(model.parameters(), lr=0.01, global_clipnorm=1.0,
                           nonfinite="skip")
    return model, optimizer


def train(model, optimizer, steps, rank):
    """One step per entry of ``steps``, on this process's own mini-batch."""
    for step in steps:
        generator = torch.Generator().manual_seed(1000 * step + rank)
        x = torch.randn(32, 8, generator=generator)
        y = x.sum(dim=1, keepdim=True).sin()
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()  # DDP averages the gradients
        optimizer.step()


def main(rank, checkpoint_dir, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)

    model, optimizer = build()
    train(model, optimizer, range(4), rank)
    # state_dict() needs the shards gathered on the calling process, and DCP calls it on
    # every process: gather them on each (to=None).
    optimizer.consolidate_state_dict(to=None)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state},
             checkpoint_id=checkpoint_dir)
    train(model, optimizer, range(4, 8), rank)

    resumed_model, resumed_optimizer = build()
    resumed_optimizer.consolidate_state_dict(to=None)
    model_state, optimizer_state = get_state_dict(resumed_model, resumed_optimizer)
    loaded = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(loaded, checkpoint_id=checkpoint_dir)
    set_state_dict(resumed_model, resumed_optimizer, model_state_dict=loaded["model"],
                   optim_state_dict=loaded["optimizer"])
    train(resumed_model, resumed_optimizer, range(4, 8), rank)

    same = all(torch.equal(p, q) for p, q in zip(model.parameters(),
                                                  resumed_model.parameters()))
    if rank == 0:
        print(f"resumed == uninterrupted: {same}")
    dist.destroy_process_group()
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    where = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 29533
    mp.spawn(main, args=(os.path.join(where, "checkpoint"), port), nprocs=2, join=True)
