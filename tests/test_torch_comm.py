"""``TorchComm`` on a two-process gloo group: the sharded optimizer's steps equal one
process given the rank-order sum of the gradients, bit for bit, as under MPI.

* Host variables: CPU tensors over NumPy memory.
* Device variables under Numba's CUDA simulator, with a simulated CUDA build of torch
  (``simulated_torch_cuda``) standing in for NCCL's device memory: with
  ``device="cuda:0"`` the exchange buffers are device tensors and no gradient or
  parameter is copied to the host (every host transfer is counted), for Numba device
  arrays and for (simulated) CUDA tensors as variables, and a checkpoint saved and
  loaded over a group whose host buffers go through the device (as NCCL's do) restores
  every slot; with ``device=None`` the same variables are staged through host buffers.

* On GPUs (marked ``cuda``, so ``python -m numba_adamax.gpu_check`` runs it): a real
  NCCL group, one rank per GPU (one rank where there is one GPU), same checks.

The tests run this file as a script (``python tests/test_torch_comm.py <mode>
<out-dir> [<ranks>]``, mode ``host``, ``device`` or ``nccl``), which spawns the ranks;
each writes a JSON list of checks."""
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
    with open(os.path.join(out, f"host-{rank}.json"), "w") as f:
        json.dump(checks, f)


DEVICE_CONFIGS = ("global_clipnorm", "accum_2_ema_overwrite_1", "weight_decay_exclude",
                  "kitchen_sink", "nan_skip")
#: Options of the extra configuration "nan_skip" (a NaN on one rank's gradient at step 2).
NAN_SKIP = {"learning_rate": 0.05, "clipnorm": 1.0, "nonfinite": "skip"}
DEVICE_SHAPES = {"w_a": ((7, 5), np.float32), "bias_b": ((5,), np.float32),
                 "big": ((160,), np.float32), "empty": ((0,), np.float32),
                 "w64": ((3, 4, 2), np.float64), "v64": ((90,), np.float64)}
#: (zero_stage, deterministic, reduce) per mode of the device test.
DEVICE_RUNS = {"device": ((0, True, "sum"), (1, True, "mean"), (1, False, "mean")),
               "device-staged-host": ((1, True, "mean"),),
               "torch-tensors": ((1, True, "mean"),),
               "host-staging": ((1, True, "sum"),)}
STEPS = 3


class HostTraffic:
    """Counts the bytes copied between the host and the simulated device while
    ``counting``: ``DeviceNDArray.copy_to_host``/``copy_to_device`` and ``cuda.to_device``."""

    def __init__(self, cuda):
        from numba.cuda.simulator.cudadrv import devicearray
        self.bytes, self.counting = 0, False
        fake = devicearray.FakeCUDAArray
        to_host, to_device, upload = fake.copy_to_host, fake.copy_to_device, cuda.to_device

        def count(nbytes):
            if self.counting:
                self.bytes += int(nbytes)

        def copy_to_host(array, *args, **kwargs):
            count(array.nbytes)
            return to_host(array, *args, **kwargs)

        def copy_to_device(array, ary, *args, **kwargs):
            count(array.nbytes)
            return to_device(array, ary, *args, **kwargs)

        def to_device_counted(ary, *args, **kwargs):
            count(np.asarray(ary).nbytes)
            return upload(ary, *args, **kwargs)

        fake.copy_to_host, fake.copy_to_device = copy_to_host, copy_to_device
        cuda.to_device = to_device_counted


def _device_pair(comm, config, clocks, run, params, ref_params):
    """A ``ShardedAdamax`` over ``comm`` on ``params`` and its one-process twin on
    ``ref_params``, both built and with the configuration's exclusions; ``run`` is
    ``(zero_stage, deterministic, reduce)``."""
    import numba_adamax as na
    from configs import make_kwargs
    from numba_adamax import distributed as nad
    stage, deterministic, reduce = run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = nad.ShardedAdamax(comm, zero_stage=stage, reduce=reduce,
                                deterministic=deterministic, **make_kwargs(config, clocks[0]))
        ref = na.Adamax(**make_kwargs(config, clocks[1]))
    names = list(DEVICE_SHAPES)
    opt.build(params, names=names)
    ref.build(ref_params, names=names)
    if config.exclude_names:
        opt.exclude_from_weight_decay(var_names=list(config.exclude_names))
        ref.exclude_from_weight_decay(var_names=list(config.exclude_names))
    return opt, ref


def _rank_gradients(j, step, world, reduce, nan=False):
    """``(per_rank, folded)``: every rank's host gradients for ``DEVICE_SHAPES`` at
    ``step`` (with ``nan``, one NaN in the last rank's third), and their sum in rank
    order (divided by ``world`` for "mean"), in the gradients' dtype."""
    per_rank = [[np.random.default_rng([j, step, r, k]).standard_normal(sh).astype(dt)
                 for k, (sh, dt) in enumerate(DEVICE_SHAPES.values())] for r in range(world)]
    if nan:
        per_rank[-1][2][7] = np.nan
    folded = []
    for k in range(len(DEVICE_SHAPES)):
        total = per_rank[0][k].copy()
        for r in range(1, world):
            total = total + per_rank[r][k]
        if reduce == "mean":
            total = np.divide(total, world, dtype=total.dtype)
        folded.append(total)
    return per_rank, folded


def _device_differences(opt, ref, params, ref_params, deterministic, to_host):
    """What differs between the sharded optimizer and its twin: the parameters (bit for
    bit when ``deterministic``, else to rtol 1e-6) and, when ``deterministic``, every
    slot; ``to_host`` copies a variable to a NumPy array."""
    bad = []
    for name, p, q in zip(DEVICE_SHAPES, params, ref_params):
        got, want = to_host(p), q.copy_to_host()
        if not (np.array_equal(got, want) if deterministic
                else np.allclose(got, want, rtol=1e-6, atol=1e-7)):
            bad.append(f"param {name}")
        for slot in opt.get_slot_names() if deterministic else ():
            if not np.array_equal(opt.gather_slot(p, slot),
                                  ref.get_slot(q, slot).copy_to_host()):
                bad.append(f"slot {slot} of {name}")
    return bad


def _device_worker(rank, port, out):
    """Device variables (simulated) over a gloo group: ``device="cuda:0"`` (exchange in
    device memory), the same with host buffers staged through the device as on an
    NCCL-only group, and ``device=None`` (host staging); each against one process
    stepping device variables on the rank-order sum."""
    sys.path.insert(0, str(HERE))
    import torch
    import torch.distributed as dist
    from numba import cuda
    from simulated_torch_cuda import SimulatedCudaTensor, install

    from numba_adamax.kernels import config as kernel_config
    # the simulator runs every thread in Python: small blocks; small chunks split the
    # variables over both ranks
    kernel_config.BLOCK_SIZE, kernel_config.CHUNK = 4, 32
    from configs import CONFIGS, Clock, Config, make_kwargs

    from numba_adamax import distributed as nad

    configs = dict(CONFIGS, nan_skip=Config(NAN_SKIP))
    install(setattr)
    traffic = HostTraffic(cuda)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    names = list(DEVICE_SHAPES)
    grad_bytes = sum(int(np.prod(sh)) * np.dtype(dt).itemsize
                     for sh, dt in DEVICE_SHAPES.values())
    checks = []
    modes = {"device": {"device": "cuda:0"}, "device-staged-host": {"device": "cuda:0"},
             "torch-tensors": {"device": "cuda:0"}, "host-staging": {"device": None}}

    def on_device(host, mode):
        """``host`` on the simulated device: a Numba device array, or for "torch-tensors"
        a (simulated) CUDA tensor, as a torch user passes."""
        if mode == "torch-tensors":
            return torch.from_numpy(host.copy()).as_subclass(SimulatedCudaTensor)
        return cuda.to_device(host)

    def to_host(array):
        return array.numpy() if isinstance(array, torch.Tensor) else array.copy_to_host()

    for j, name in enumerate(DEVICE_CONFIGS):
        config = configs[name]
        for mode, options in modes.items():
            comm = nad.TorchComm(**options)
            if mode == "device-staged-host":
                comm._host_direct = False  # as on a group whose only backend is NCCL
            for run in DEVICE_RUNS[mode]:
                stage, deterministic, reduce = run
                clocks = Clock(), Clock()
                rng = np.random.default_rng(j)
                start = [rng.standard_normal(sh).astype(dt) for sh, dt in DEVICE_SHAPES.values()]
                params = [on_device(a, mode) for a in start]
                ref_params = [cuda.to_device(a) for a in start]
                opt, ref = _device_pair(comm, config, clocks, run, params, ref_params)
                traffic.bytes = 0
                for step in range(STEPS):
                    clocks[0].step = clocks[1].step = step
                    per_rank, folded = _rank_gradients(j, step, 2, reduce,
                                                       nan=name == "nan_skip" and step == 1)
                    grads = [on_device(g, mode) for g in per_rank[rank]]
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        traffic.counting = True
                        opt.apply(grads, params)
                        traffic.counting = False
                        ref.apply([cuda.to_device(g) for g in folded], ref_params)
                bad = _device_differences(opt, ref, params, ref_params, deterministic, to_host)
                if mode == "device-staged-host":  # a checkpoint round trip over that group
                    path = os.path.join(out, f"ckpt-{name}")
                    opt.save_state(path)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        twin = nad.ShardedAdamax(comm, zero_stage=stage, reduce=reduce,
                                                 deterministic=deterministic,
                                                 **make_kwargs(config, clocks[0]))
                    twin.build(params, names=names)
                    twin.load_state(path)
                    if twin.iterations != opt.iterations or not all(
                            np.array_equal(twin.gather_slot(p, slot), opt.gather_slot(p, slot))
                            for p in params for slot in opt.get_slot_names()):
                        bad.append("checkpoint round trip")
                buffers = opt._state.space
                checks.append({
                    "name": f"{name}/{mode}/stage{stage}/{reduce}/"
                            f"{'ordered' if deterministic else 'backend'}",
                    "mode": mode, "deterministic": deterministic,
                    "bad": bad,
                    "iterations": [opt.iterations, ref.iterations,
                                   opt.skipped_steps, ref.skipped_steps],
                    "host_bytes": traffic.bytes, "grad_bytes": STEPS * grad_bytes,
                    "device_buffers": type(buffers).__name__,
                    "buffer_types": sorted({type(b).__name__
                                            for b in buffers._scratch.values()}),
                    "digest": _digest(*[to_host(p) for p in params])})
    # the ranks disagree on where the exchange lives: every rank refuses
    mixed = nad.TorchComm(device="cuda:0" if rank == 0 else None)
    try:
        nad.ShardedAdamax(mixed)
        refused = "not refused"
    except ValueError as error:
        refused = "" if "different optimizer settings" in str(error) else str(error)
    checks.append({"name": "device_differs", "mode": "device", "deterministic": True,
                   "bad": [refused] if refused else [], "iterations": [0, 0, 0, 0],
                   "host_bytes": 0, "grad_bytes": 1, "device_buffers": "TorchDeviceBuffers",
                   "buffer_types": ["SimulatedCudaTensor"], "digest": ""})
    # broadcast_ of device variables moves device memory too
    comm = nad.TorchComm(device="cuda:0")
    values = [np.full(9, float(rank + 1), np.float32), np.full((2, 3), 5.0 * rank)]
    arrays = [cuda.to_device(v) for v in values]
    traffic.bytes, traffic.counting = 0, True
    nad.broadcast_(arrays, comm, root=1)
    traffic.counting = False
    checks.append({"name": "broadcast", "mode": "device", "deterministic": True,
                   "bad": [] if all(np.array_equal(a.copy_to_host(), np.full(a.shape, w))
                                    for a, w in zip(arrays, (2.0, 5.0))) else ["values"],
                   "iterations": [0, 0, 0, 0], "host_bytes": traffic.bytes, "grad_bytes": 1,
                   "device_buffers": "TorchDeviceBuffers",
                   "buffer_types": [SimulatedCudaTensor.__name__], "digest": ""})
    dist.destroy_process_group()
    with open(os.path.join(out, f"device-{rank}.json"), "w") as f:
        json.dump(checks, f)


def _nccl_worker(rank, world, port, out):
    """Real CUDA memory on an NCCL group, one GPU per rank: Numba device arrays and CUDA
    tensors as variables, against one process stepping device variables."""
    sys.path.insert(0, str(HERE))
    import torch
    import torch.distributed as dist
    from numba import cuda

    from configs import CONFIGS, Clock

    from numba_adamax import distributed as nad
    from numba_adamax.kernels import config as kernel_config
    kernel_config.CHUNK = 512  # split the variables over the ranks

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    comm = nad.TorchComm()
    checks = []
    for j, name in enumerate(("defaults", "global_clipnorm", "accum_2_ema_overwrite_1",
                              "kitchen_sink")):
        config = CONFIGS[name]
        for tensors in (False, True):
            for run in DEVICE_RUNS["device"]:
                stage, deterministic, reduce = run
                clocks = Clock(), Clock()
                rng = np.random.default_rng(j)
                start = [rng.standard_normal(sh).astype(dt) for sh, dt in DEVICE_SHAPES.values()]

                def on_device(host):
                    return (torch.from_numpy(host.copy()).cuda() if tensors
                            else cuda.to_device(host))

                def to_host(array):
                    return array.cpu().numpy() if tensors else array.copy_to_host()

                params = [on_device(a) for a in start]
                ref_params = [cuda.to_device(a) for a in start]
                opt, ref = _device_pair(comm, config, clocks, run, params, ref_params)
                for step in range(STEPS):
                    clocks[0].step = clocks[1].step = step
                    per_rank, folded = _rank_gradients(j, step, world, reduce)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        opt.apply([on_device(g) for g in per_rank[rank]], params)
                        ref.apply([cuda.to_device(g) for g in folded], ref_params)
                torch.cuda.synchronize()
                bad = _device_differences(opt, ref, params, ref_params, deterministic, to_host)
                checks.append({"name": f"{name}/{'tensors' if tensors else 'numba'}/stage{stage}/"
                                       f"{reduce}/{'ordered' if deterministic else 'backend'}",
                               "bad": bad, "buffers": type(opt._state.space).__name__,
                               "iterations": [opt.iterations, ref.iterations]})
    dist.destroy_process_group()
    with open(os.path.join(out, f"nccl-{rank}.json"), "w") as f:
        json.dump(checks, f)


def _run_ranks(mode, tmp_path, world=2, **env_changes):
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", **env_changes)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(Path(__file__)), mode, str(tmp_path),
                           str(world)], check=False, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"{mode}-{r}.json").read_text()) for r in range(world)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torch_comm_on_two_gloo_processes(tmp_path):
    pytest.importorskip("torch")
    per_rank = _run_ranks("host", tmp_path)
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


@pytest.mark.slow
def test_torch_comm_moves_device_memory_without_host_copies(tmp_path):
    """Under the simulator: with ``device="cuda:0"`` the step's buffers are device tensors
    and the host sees only the kernels' pointer tables, the clipping partials and the
    verdicts (under a tenth of the gradients' bytes), where host staging copies every
    gradient and parameter; both equal one process bit for bit (``deterministic``) and
    agree across the ranks."""
    pytest.importorskip("torch")
    pytest.importorskip("numba.cuda")
    per_rank = _run_ranks("device", tmp_path, NUMBA_ENABLE_CUDASIM="1")
    assert [c["name"] for c in per_rank[0]] == [c["name"] for c in per_rank[1]]
    assert len(per_rank[0]) == sum(map(len, DEVICE_RUNS.values())) * len(DEVICE_CONFIGS) + 2
    for checks in per_rank:
        for c in checks:
            assert not c["bad"], c
            assert c["iterations"][0] == c["iterations"][1], c
            assert c["iterations"][2] == c["iterations"][3], c
            if c["mode"] == "host-staging":
                assert c["device_buffers"] == "ExchangeBuffers", c
                assert c["host_bytes"] >= c["grad_bytes"], c
            else:
                assert c["device_buffers"] == "TorchDeviceBuffers", c
                assert c["buffer_types"] == ["SimulatedCudaTensor"], c
                assert c["host_bytes"] < c["grad_bytes"] / 10, c
        skipped = [c for c in checks if c["name"].startswith("nan_skip")]
        assert skipped and all(c["iterations"][2] == 1 for c in skipped)
    for a, b in zip(*per_rank):
        assert a["digest"] == b["digest"], a["name"]


@pytest.mark.slow
def test_the_torch_example_trains_two_processes_to_one_model():
    """``examples/distributed_torch.py`` (gloo and CPU tensors here; NCCL and CUDA tensors
    where each process has a GPU) ends with equal models and a fallen loss."""
    pytest.importorskip("torch")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(HERE.parent / "examples" / "distributed_torch.py"),
                           "60", str(_free_port())], check=False, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "models equal on every process: True" in done.stdout, done.stdout


@pytest.mark.cuda
def test_torch_comm_on_nccl_moves_real_device_memory(tmp_path):
    """On GPUs (one rank per GPU, at most two; one rank on a one-GPU machine): an NCCL
    group's ``TorchComm`` keeps the exchange in device memory, and the sharded steps equal
    one process bit for bit (``deterministic``) for Numba device arrays and CUDA tensors."""
    torch = pytest.importorskip("torch")
    import torch.distributed as dist
    if not torch.cuda.is_available() or not dist.is_nccl_available():
        pytest.skip("needs CUDA GPUs and torch's NCCL backend")
    world = min(2, torch.cuda.device_count())
    per_rank = _run_ranks("nccl", tmp_path, world=world)
    assert len(per_rank) == world and per_rank[0]
    for checks in per_rank:
        for c in checks:
            assert not c["bad"], c
            assert c["buffers"] == "TorchDeviceBuffers", c
            assert c["iterations"][0] == c["iterations"][1], c


def test_torch_comm_device_argument_is_checked(monkeypatch):
    """``TorchComm(device=...)``: 'auto' follows the backend, None means host buffers, a
    CUDA device is taken as given; anything else is refused with the reason."""
    torch = pytest.importorskip("torch")
    from numba_adamax.distributed._torch_comm import _wire_device
    assert _wire_device(torch, "auto", "gloo") is None
    assert _wire_device(torch, None, "nccl") is None
    with pytest.raises(TypeError, match="device must be 'auto', None"):
        _wire_device(torch, 3, "gloo")
    with pytest.raises(ValueError, match="not a device torch knows"):
        _wire_device(torch, "gpu7", "gloo")
    with pytest.raises(ValueError, match="must be a CUDA device"):
        _wire_device(torch, "cpu", "gloo")
    import torch.distributed as dist
    from numba_adamax import distributed as nad
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    with pytest.raises(ValueError, match="cannot move; pass device='auto'"):
        nad.TorchComm(device=None)  # an NCCL-only group cannot move host memory
    with pytest.raises(ValueError, match="must be a CUDA device"):
        nad.TorchComm(device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="is_available"):
            _wire_device(torch, "cuda:0", "gloo")
    else:
        assert _wire_device(torch, "cuda:0", "nccl") == torch.device("cuda", 0)
        assert _wire_device(torch, "auto", "nccl") == torch.device(
            "cuda", torch.cuda.current_device())


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
    mode, out, world = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 2
    if mode == "nccl":
        mp.spawn(_nccl_worker, args=(world, _free_port(), out), nprocs=world, join=True)
    else:
        worker = {"host": _worker, "device": _device_worker}[mode]
        mp.spawn(worker, args=(_free_port(), out), nprocs=2, join=True)
