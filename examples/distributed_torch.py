"""Sharded Adamax over a torch.distributed group: 2 processes fit one linear model.

Each process computes the gradient of the mean squared error on its own mini-batches;
``ShardedAdamax`` averages the two gradients in rank order, updates its half of the
optimizer state and all-gathers the parameters, so both processes hold the same model
after every step.

With a CUDA GPU for each process, the parameters and gradients are torch CUDA tensors
and the group is NCCL: ``TorchComm`` then keeps the exchange in device memory, and
nothing the size of the model goes through the host. Without GPUs, they are CPU tensors
(shown to the optimizer as NumPy arrays over the same memory) and the group is gloo.

    python examples/distributed_torch.py [STEPS] [PORT]

Exits with status 1 if the processes' models differ or the loss did not fall.
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from numba_adamax import distributed as nad

WORLD = 2
FEATURES = 16


def as_array(tensor):
    """What the optimizer takes for a tensor, over the same memory: the CUDA tensor
    itself (it exposes ``__cuda_array_interface__``), a NumPy view of a CPU tensor."""
    return tensor if tensor.is_cuda else tensor.numpy()


def batch(step, rank, device):
    """This process's mini-batch of step ``step``: y = x . w* + 0.5 plus noise."""
    generator = torch.Generator().manual_seed(1000 * step + rank)
    true_w = torch.linspace(-1.0, 1.0, FEATURES)
    x = torch.randn(64, FEATURES, generator=generator)
    y = x @ true_w + 0.5 + 0.01 * torch.randn(64, generator=generator)
    return x.to(device), y.to(device)


def main(rank, port, steps, failed):
    use_gpu = torch.cuda.is_available() and torch.cuda.device_count() >= WORLD
    device = torch.device("cuda", rank) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)  # Numba's kernels follow the current device
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if use_gpu else "gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)

    w = torch.zeros(FEATURES, device=device)
    b = torch.zeros(1, device=device)
    grad_w, grad_b = torch.zeros_like(w), torch.zeros_like(b)
    opt = nad.ShardedAdamax(nad.TorchComm(), zero_stage=1, reduce="mean", deterministic=True,
                            learning_rate=0.05)
    params, grads = [as_array(w), as_array(b)], [as_array(grad_w), as_array(grad_b)]
    losses = []
    for step in range(steps):
        x, y = batch(step, rank, device)
        error = x @ w + b - y
        losses.append(float((error ** 2).mean()))
        torch.mul(x.T @ error, 2.0 / len(y), out=grad_w)
        torch.mul(error.sum(), 2.0 / len(y), out=grad_b[0])
        opt.apply(grads, params)  # collective: both processes call it every step
    model = torch.cat([w, b]).cpu()
    models = [torch.zeros_like(model) for _ in range(WORLD)]
    dist.all_gather_object(models, model)
    same = all(torch.equal(m, models[0]) for m in models)
    if rank == 0:
        where = "NCCL, CUDA tensors" if use_gpu else "gloo, CPU tensors"
        print(f"{where}: loss {losses[0]:.4f} -> {losses[-1]:.4f} after {steps} steps; "
              f"models equal on every process: {same}; optimizer state on this process: "
              f"{opt.local_nbytes} bytes")
    if not same or not losses[-1] < 0.1 * losses[0]:
        failed.value = 1
    dist.destroy_process_group()


if __name__ == "__main__":
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 29517
    failed = mp.get_context("spawn").Value("i", 0)
    mp.spawn(main, args=(port, steps, failed), nprocs=WORLD, join=True)
    sys.exit(failed.value)
