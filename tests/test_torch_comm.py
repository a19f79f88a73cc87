"""``TorchComm`` on a two-process gloo group (CPU tensors over NumPy memory): the
sharded optimizer's steps equal one process given the rank-order sum of the
gradients, bit for bit, as under MPI.

The test runs this file as a script (``python tests/test_torch_comm.py <out-dir>``),
which spawns the two ranks; each writes a JSON list of checks."""
import hashlib
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
CONFIG_NAMES = ("defaults", "clipnorm", "global_clipnorm", "weight_decay_exclude",
                "grad_accum_3", "ema_overwrite_3", "sched_cosine_warmup", "callable_lr",
                "kitchen_sink", "loss_scale_global_clipnorm_wd")
SHAPES = {"w_a": (7, 5), "bias_b": (5,), "w_c": (3, 4, 2), "empty": (0,), "big": (2600,)}


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _worker(rank, port, out):
    sys.path.insert(0, str(HERE))
    import torch.distributed as dist

    from numba_adamax.kernels import config as kernel_config
    kernel_config.CHUNK = 512  # split the variables over both ranks
    from configs import CONFIGS, Clock, make_kwargs

    import numba_adamax as na
    from numba_adamax import distributed as nad

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    comm = nad.TorchComm()
    checks = []
    for j, name in enumerate(CONFIG_NAMES):
        config = CONFIGS[name]
        for stage, deterministic, reduce in ((0, True, "sum"), (1, True, "mean"),
                                             (1, False, "mean")):
            clock = Clock()
            params = na.FlatBuffer(SHAPES, np.float32)
            ref_params = na.FlatBuffer(SHAPES, np.float32)
            params.data[:] = ref_params.data[:] = np.random.default_rng(j).standard_normal(
                params.data.size)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt = nad.ShardedAdamax(comm, zero_stage=stage, reduce=reduce,
                                        deterministic=deterministic,
                                        **make_kwargs(config, clock))
                ref = na.Adamax(**make_kwargs(config, clock))
            if config.exclude_names:
                opt.exclude_from_weight_decay(var_names=list(config.exclude_names))
                ref.exclude_from_weight_decay(var_names=list(config.exclude_names))
            for step in range(5):
                clock.step = step
                per_rank = [np.random.default_rng([j, step, r]).standard_normal(
                    params.data.size).astype(np.float32) for r in range(2)]
                g, rg = params.zeros_like(), ref_params.zeros_like()
                g.data[:] = per_rank[rank]
                np.add(per_rank[0], per_rank[1], out=rg.data)
                if reduce == "mean":
                    np.divide(rg.data, 2, out=rg.data)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    opt.apply(g, params)
                    ref.apply(rg, ref_params)
            exact = np.array_equal(params.data, ref_params.data) and all(
                np.array_equal(opt.gather_slot(p, s), ref.get_slot(q, s))
                for p, q in zip(params.arrays, ref_params.arrays) for s in opt.get_slot_names())
            close = np.allclose(params.data, ref_params.data, rtol=1e-6, atol=1e-7)
            checks.append({"name": name, "stage": stage, "deterministic": deterministic,
                           "exact": bool(exact), "close": bool(close),
                           "iterations": [opt.iterations, ref.iterations],
                           "digest": _digest(params.data)})
    # a sparse variable owned by one rank, rows from both
    arrays = [np.ones((40, 3), np.float32), np.ones(900, np.float32)]
    ref_arrays = [a.copy() for a in arrays]
    opt = nad.ShardedAdamax(comm, zero_stage=1, deterministic=True, reduce="sum",
                            sparse_variables=[0], learning_rate=0.1, global_clipnorm=0.5)
    ref = na.Adamax(learning_rate=0.1, global_clipnorm=0.5)
    for step in range(3):
        idx = [np.array([1, 5, 5, 39]), np.array([5, 0])]
        val = [np.full((4, 3), 1.0 + step, np.float32), np.full((2, 3), -2.0, np.float32)]
        dense = [np.full(900, 0.1 * (r + 1), np.float32) for r in range(2)]
        opt.apply([na.IndexedSlices(val[rank], idx[rank]), dense[rank]], arrays)
        ref.apply([na.IndexedSlices(np.concatenate(val), np.concatenate(idx)),
                   dense[0] + dense[1]], ref_arrays)
    checks.append({"name": "sparse", "stage": 1, "deterministic": True,
                   "exact": all(np.array_equal(a, b) for a, b in zip(arrays, ref_arrays)),
                   "close": True, "iterations": [opt.iterations, ref.iterations],
                   "digest": _digest(*arrays)})
    dist.destroy_process_group()
    with open(os.path.join(out, f"torch-{rank}.json"), "w") as f:
        json.dump(checks, f)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torch_comm_on_two_gloo_processes(tmp_path):
    pytest.importorskip("torch")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(Path(__file__)), str(tmp_path)], check=False,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    per_rank = [json.loads((tmp_path / f"torch-{r}.json").read_text()) for r in range(2)]
    assert [c["name"] for c in per_rank[0]] == [c["name"] for c in per_rank[1]]
    assert len(per_rank[0]) == 3 * len(CONFIG_NAMES) + 1
    for checks in per_rank:
        for c in checks:
            assert c["iterations"][0] == c["iterations"][1], c
            if c["deterministic"]:
                assert c["exact"], c
            else:
                assert c["close"], c
    for a, b in zip(*per_rank):
        assert a["digest"] == b["digest"], a["name"]


def test_torch_comm_needs_an_initialised_group():
    pytest.importorskip("torch")
    import torch.distributed as dist

    from numba_adamax import distributed as nad
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a default process group exists in this process")
    with pytest.raises(ValueError, match="init_process_group"):
        nad.TorchComm()


if __name__ == "__main__":
    import torch.multiprocessing as mp
    mp.spawn(_worker, args=(_free_port(), sys.argv[1]), nprocs=2, join=True)
