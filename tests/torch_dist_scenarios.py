"""Two-process gloo scenarios for the PyTorch adapter under torch's distributed tools.

Run as ``python tests/torch_dist_scenarios.py OUT_DIR PORT``: spawns 2 processes on
127.0.0.1:PORT; each runs every scenario and writes ``OUT_DIR/rank<r>.json`` with one
record per scenario (its measurements, or ``{"error": ...}``). ``test_torch_zero.py``
launches it once and checks the records. Every scenario compares with one process
running ``Adamax`` on copies of the same parameters fed the same gradients (the
gradients are identical on both ranks, as after DDP's all-reduce).
"""
import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SHAPES = ((30, 8), (8,), (8, 5), (5,), (7, 3))
STEPS = 5


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in SHAPES]


def gradients(step, params, missing=(), nan=()):
    """The gradients of ``step``, the same on every rank; None for ``missing``
    parameter indices, a NaN in those of ``nan``."""
    g = torch.Generator().manual_seed(100 + step)
    grads = [torch.randn(p.shape, generator=g) * 3 for p in params]
    for k in nan:
        grads[k].view(-1)[0] = float("nan")
    return [None if k in missing else grad for k, grad in enumerate(grads)]


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


def run(opt, params, steps, **pattern):
    for step in steps:
        set_grads(params, gradients(step, params, **{k: v.get(step, ()) for k, v in
                                                     pattern.items()}))
        opt.step()


def max_diff(params, reference):
    return max(float((p.detach() - q.detach()).abs().max()) for p, q in zip(params, reference))


def identical(params, reference):
    return all(torch.equal(p.detach(), q.detach()) for p, q in zip(params, reference))


def single(steps, **kwargs):
    """One process: plain Adamax over fresh parameters; returns (params, optimizer)."""
    from numba_adamax.integrations.torch import Adamax
    pattern = {key: kwargs.pop(key) for key in ("missing", "nan") if key in kwargs}
    params = make_params()
    opt = Adamax(params, **kwargs)
    run(opt, params, steps, **pattern)
    return params, opt


def zero(cls_name, **kwargs):
    from torch.distributed.optim import ZeroRedundancyOptimizer

    from numba_adamax.integrations import torch as adapter
    params = make_params()
    if cls_name == "plain":
        return params, ZeroRedundancyOptimizer(params, optimizer_class=adapter.Adamax,
                                               **kwargs)
    return params, adapter.ZeroAdamax(params, **kwargs)


def steps_of(opt):
    """Every local step counter of a ZeRO optimizer's local Adamax."""
    return sorted({int(entry["step"]) for entry in opt.optim.state.values()
                   if isinstance(entry, dict) and "step" in entry})


# ----------------------------------------------------------------- scenarios

def scenario_plain_defaults(rank):
    params, opt = zero("plain", lr=0.01)
    run(opt, params, range(STEPS))
    reference, _ = single(range(STEPS), lr=0.01)
    return {"identical": identical(params, reference)}


def scenario_global_clipnorm(rank):
    reference, _ = single(range(STEPS), lr=0.01, global_clipnorm=2.0)
    out = {}
    for name in ("plain", "zero"):
        try:
            params, opt = zero(name, lr=0.01, global_clipnorm=2.0)
            run(opt, params, range(STEPS))
            out[name] = {"max_diff": max_diff(params, reference),
                         "identical": identical(params, reference)}
        except Exception as exc:  # noqa: BLE001 (recorded for the test)
            out[name] = {"error": repr(exc)}
    return out


def scenario_missing_gradient(rank):
    # Parameter 0 (the largest) is the only one rank 0 owns; at step 1 it has no gradient.
    missing = {1: (0,)}
    reference, ref_opt = single(range(STEPS), lr=0.01, missing=missing)
    out = {"reference_steps": int(ref_opt.state[reference[0]]["step"])}
    for name in ("plain", "zero"):
        try:
            params, opt = zero(name, lr=0.01)
            run(opt, params, range(STEPS), missing=missing)
            out[name] = {"steps": steps_of(opt), "identical": identical(params, reference)}
        except Exception as exc:  # noqa: BLE001 (recorded for the test)
            out[name] = {"error": repr(exc)}
    return out


def _resume(name, rank, **kwargs):
    """3 steps, consolidate on rank 0, share the dict, load it into a new ZeRO optimizer
    over copies of the parameters, 2 more steps on both; compare with uninterrupted."""
    params, opt = zero(name, **kwargs)
    run(opt, params, range(3))
    opt.consolidate_state_dict(to=0)
    box = [opt.state_dict() if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    from torch.distributed.optim import ZeroRedundancyOptimizer

    from numba_adamax.integrations import torch as adapter
    resumed = (ZeroRedundancyOptimizer(twins, optimizer_class=adapter.Adamax, **kwargs)
               if name == "plain" else adapter.ZeroAdamax(twins, **kwargs))
    resumed.load_state_dict(box[0])
    restored = steps_of(resumed)
    run(opt, params, range(3, 5))
    run(resumed, twins, range(3, 5))
    return {"restored_steps": restored, "identical": identical(twins, params)}


def scenario_resume(rank):
    out = {}
    for name in ("plain", "zero"):
        try:
            out[name] = _resume(name, rank, lr=0.01, use_ema=True,
                                **({"global_clipnorm": 2.0} if name == "zero" else {}))
        except Exception as exc:  # noqa: BLE001 (recorded for the test)
            out[name] = {"error": repr(exc)}
    return out


def scenario_bucket_view(rank):
    params, opt = zero("plain", lr=0.01, parameters_as_bucket_view=True)
    run(opt, params, range(STEPS))
    reference, _ = single(range(STEPS), lr=0.01)
    return {"identical": identical(params, reference)}


def scenario_flat(rank):
    params, opt = zero("plain", lr=0.01, flat=True)
    run(opt, params, range(STEPS))
    reference, _ = single(range(STEPS), lr=0.01, flat=True)
    return {"identical": identical(params, reference)}


def scenario_nonfinite_skip(rank):
    # Parameter 0 belongs to rank 0, the others to rank 1: the NaN is in rank 1's shard.
    nan = {2: (3,)}
    reference, ref_opt = single(range(STEPS), lr=0.01, nonfinite="skip", nan=nan)
    params, opt = zero("zero", lr=0.01, nonfinite="skip")
    run(opt, params, range(STEPS), nan=nan)
    skipped = sorted({b.state.skipped_steps for b in opt.optim._bindings if b.state})
    return {"identical": identical(params, reference), "steps": steps_of(opt),
            "reference_steps": int(ref_opt.state[reference[0]]["step"]),
            "skipped": skipped}


def scenario_nonfinite_raise(rank):
    params, opt = zero("zero", lr=0.01, nonfinite="raise")
    run(opt, params, range(2))
    before = [p.detach().clone() for p in params]
    set_grads(params, gradients(2, params, nan=(3,)))
    try:
        opt.step()
        message = None
    except FloatingPointError as exc:
        message = str(exc)
    return {"message": message, "unchanged": identical(params, before),
            "steps": steps_of(opt)}


def scenario_rank_failure(rank):
    # Only rank 1 gets a bad (non-contiguous) gradient: both ranks raise, neither changes.
    params, opt = zero("zero", lr=0.01)
    run(opt, params, range(2))
    before = [p.detach().clone() for p in params]
    set_grads(params, gradients(2, params))
    if rank == 1:
        params[3].grad = None
        params[2].grad = torch.randn(5, 8).t()
    try:
        opt.step()
        error = None
    except (ValueError, RuntimeError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return {"error_seen": error, "unchanged": identical(params, before), "steps": steps_of(opt)}


def scenario_dcp(rank, out_dir):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.nn.parallel import DistributedDataParallel as DDP

    from numba_adamax.integrations.torch import Adamax

    def build():
        torch.manual_seed(0)
        model = DDP(torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(),
                                        torch.nn.Linear(4, 1)))
        return model, Adamax(model.parameters(), lr=0.02, use_ema=True)

    def train(model, opt, steps):
        for step in steps:
            g = torch.Generator().manual_seed(step * 2 + rank)
            x = torch.randn(8, 6, generator=g)
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()

    model, opt = build()
    train(model, opt, range(3))
    model_sd, optim_sd = get_state_dict(model, opt)
    where = os.path.join(out_dir, "dcp")
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=where)
    train(model, opt, range(3, 5))
    model2, opt2 = build()
    model_sd2, optim_sd2 = get_state_dict(model2, opt2)
    loaded = {"model": model_sd2, "optim": optim_sd2}
    dcp.load(loaded, checkpoint_id=where)
    set_state_dict(model2, opt2, model_state_dict=loaded["model"],
                   optim_state_dict=loaded["optim"])
    train(model2, opt2, range(3, 5))
    return {"identical": identical(list(model2.parameters()), list(model.parameters())),
            "files": sorted(os.listdir(where))}


SCENARIOS = [scenario_plain_defaults, scenario_global_clipnorm, scenario_missing_gradient,
             scenario_resume, scenario_bucket_view, scenario_flat, scenario_nonfinite_skip,
             scenario_nonfinite_raise, scenario_rank_failure]


def worker(rank, out_dir, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    results = {}
    for scenario in [*SCENARIOS, scenario_dcp]:
        name = scenario.__name__.removeprefix("scenario_")
        try:
            args = (rank, out_dir) if scenario is scenario_dcp else (rank,)
            results[name] = scenario(*args)
        except Exception:  # noqa: BLE001 (recorded for the test)
            results[name] = {"error": traceback.format_exc()}
        dist.barrier()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    mp.spawn(worker, args=(sys.argv[1], int(sys.argv[2])), nprocs=2, join=True)
