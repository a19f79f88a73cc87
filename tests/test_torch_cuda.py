"""The PyTorch optimizer on CUDA tensors (``numba_adamax.integrations._torch_arrays`` and its
callers).

Two parts:

* Without a CUDA build of torch: the conversion layer. CPU tensors become NumPy views; objects
  that expose ``__cuda_array_interface__`` (as CUDA tensors and CuPy arrays do) become Numba
  device arrays over the same memory, and run the kernels in place (under Numba's CUDA
  simulator, ``NUMBA_ENABLE_CUDASIM=1``, or on a GPU); the interface checks (dtype, contiguity,
  read-only, address); the one-device-per-group rule; the stream choice (torch's current
  stream of the group's device, None for the legacy default stream). Under the simulator,
  the optimizer itself runs on simulated CUDA tensors (CPU tensors that report ``cuda:0``
  and expose ``__cuda_array_interface__``, with stand-ins for ``torch.cuda.device``,
  ``torch.cuda.current_stream``, ``torch.as_tensor`` of a device array and device
  allocations): parity with the CPU optimizer over every configuration, with views and
  ``flat=True``, sparse and mixed gradients, device slots, state dicts, streams.
* With real CUDA tensors (``torch.cuda.is_available()``; skipped without a GPU, with that
  reason): the optimizer on CUDA equals the one on the CPU (parameters and every slot, bit for
  bit, except under clipping by norm where the device sums squares in another order:
  ``rtol=1e-6``), dense and sparse gradients, ``flat=True``, ``state_dict`` tensors on the
  parameter's device, loading a CPU state dict, the current stream.

Every test here is marked ``cuda``, so ``python -m numba_adamax.gpu_check`` runs this file on
the hardware.
"""
import contextlib
import types
import warnings
from pathlib import Path

import numba
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from configs import CONFIGS, NORM_CLIPPING_CONFIGS, Clock, make_kwargs
from conftest import REPO_ROOT

import numba_adamax as na
from numba_adamax import _devices
from numba_adamax.gpu_check import device as gpu_check
from numba_adamax.integrations import _torch_arrays as tensor_arrays
from numba_adamax.integrations import _torch_checks
from numba_adamax.integrations.torch import Adamax
from numba_adamax.kernels import config
from simulated_torch_cuda import SimulatedCudaTensor
from simulated_torch_cuda import install as install_simulated_cuda

try:
    from numba import cuda
except ImportError:  # pragma: no cover - numba-cuda not installed
    cuda = None

SIMULATED = bool(numba.config.ENABLE_CUDASIM)
#: numba.cuda can run kernels here: a GPU, or the simulator.
NUMBA_CUDA = cuda is not None and cuda.is_available()
TORCH_CUDA = torch.cuda.is_available() and not SIMULATED

pytestmark = pytest.mark.cuda
needs_numba_cuda = pytest.mark.skipif(
    not NUMBA_CUDA, reason="needs numba-cuda with a CUDA GPU or NUMBA_ENABLE_CUDASIM=1")
needs_gpu = pytest.mark.skipif(
    not TORCH_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
    if not torch.cuda.is_available() else "the CUDA simulator cannot reach torch's GPU memory")

#: Odd shapes, a 0-d and an empty parameter, two dtypes.
SHAPES = (((5, 3), torch.float32), ((7,), torch.float64), ((), torch.float32),
          ((2, 3, 4), torch.float32), ((0,), torch.float32))
#: (step, parameter) pairs that get no gradient.
MISSING = {(2, 1), (4, 0), (4, 3)}
#: CONFIGS entries expressible as constructor arguments (no TF 1.x decay, no name exclusions).
PARITY_CONFIGS = [name for name, c in CONFIGS.items() if not c.has_decay and not c.exclude_names]


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    """The simulator runs every thread in Python: small blocks and chunks keep it fast."""
    if SIMULATED:
        monkeypatch.setattr(config, "BLOCK_SIZE", 4)
        monkeypatch.setattr(config, "CHUNK", 6)


def _address(device_array):
    from numba_adamax.kernels.cuda_pointers import device_address
    return device_address(device_array)


class Interface:
    """An object that only exposes ``__cuda_array_interface__`` (version 2, as a torch CUDA
    tensor does), over the memory of ``owner``, a Numba device array; ``changes`` replace
    fields. With ``owner=None``, over the host memory of ``host`` (never read: for the
    checks that refuse an interface before wrapping it)."""

    def __init__(self, owner=None, host=None, **changes):
        self.owner = owner
        array = owner if owner is not None else host
        address = _address(owner) if owner is not None else host.ctypes.data
        self.__cuda_array_interface__ = {
            "shape": tuple(array.shape), "typestr": np.dtype(array.dtype).str,
            "data": (address, False), "strides": None, "version": 2, **changes}


class _ClaimsCuda(torch.nn.Parameter):
    """A CPU parameter whose ``device`` says ``cuda:0``: reaches the CUDA checks of the
    constructor without a CUDA build of torch (they refuse it before any conversion)."""

    @property
    def device(self):
        return torch.device("cuda", 0)


# ================================================================ without a CUDA torch

def test_cpu_tensors_become_numpy_views():
    p = torch.nn.Parameter(torch.arange(6, dtype=torch.float64).reshape(2, 3))
    a = tensor_arrays.as_array(p, "p")
    assert type(a) is np.ndarray and a.dtype == np.float64 and a.shape == (2, 3)
    assert a.ctypes.data == p.data_ptr()
    a[1, 2] = -4.0
    assert p[1, 2].item() == -4.0


def test_cpu_slot_tensors_share_the_slot_memory():
    slot = np.zeros((2, 3), np.float32)
    param = torch.zeros(2, 3)
    live = tensor_arrays.slot_tensor(slot, param)
    copy = tensor_arrays.slot_copy(slot, param)
    slot[0, 1] = 5.0
    assert live[0, 1].item() == 5.0 and copy[0, 1].item() == 0.0
    tensor_arrays.load_slot(slot, torch.full((2, 3), 2.0), param)
    assert (slot == 2.0).all()


@needs_numba_cuda
def test_device_view_shares_the_memory_of_an_interface_object():
    host = np.arange(15, dtype=np.float32).reshape(3, 5)
    memory = cuda.to_device(host)
    view = tensor_arrays.device_view(Interface(memory), "x", _address(memory))
    assert tuple(view.shape) == (3, 5) and view.dtype == np.float32
    assert _address(view) == _address(memory)
    view.copy_to_device(np.full((3, 5), 7.0, np.float32))
    np.testing.assert_array_equal(memory.copy_to_host(), np.full((3, 5), 7.0, np.float32))


@needs_numba_cuda
@pytest.mark.parametrize("name", ["weight_decay", "clipvalue_ema", "grad_accum_2", "clipnorm"])
def test_interface_objects_step_in_place_like_the_cpu(name):
    rng = np.random.default_rng(3)
    shapes, dtypes = [(3, 5), (7,), (0,)], [np.float32, np.float64, np.float32]
    host = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
    memory = [cuda.to_device(h) for h in host]
    params = [tensor_arrays.device_view(Interface(m), f"p{k}", _address(m))
              for k, m in enumerate(memory)]
    state = na.init(params, **make_kwargs(CONFIGS[name], Clock()))
    reference = na.init([h.copy() for h in host], **make_kwargs(CONFIGS[name], Clock()))
    assert state.device == "cuda" and reference.device is None
    for _ in range(3):
        grads = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
        gmem = [cuda.to_device(g) for g in grads]
        na.step(params, [tensor_arrays.device_view(Interface(m), f"g{k}", _address(m))
                         for k, m in enumerate(gmem)], state)
        na.step(list(reference.params), grads, reference)
    for k, m in enumerate(memory):  # the memory behind the interface objects was updated
        got, want = m.copy_to_host(), reference.params[k]
        if name in NORM_CLIPPING_CONFIGS:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(got, want)
        assert not np.array_equal(got, host[k]) or host[k].size == 0


INTERFACE_ERRORS = {
    "int32": ({"typestr": "<i4"}, TypeError, "dtype int32"),
    "float16": ({"typestr": "<f2"}, TypeError, "dtype float16"),
    "strided": ({"strides": (4, 24)}, ValueError, "not C-contiguous"),
    "read_only": ({"data": "read-only"}, ValueError, "read-only"),
    "elsewhere": ({"data": "elsewhere"}, ValueError, "points at"),
}


@pytest.mark.parametrize("case", list(INTERFACE_ERRORS))
def test_bad_interfaces_are_refused_before_wrapping(case, monkeypatch):
    changes, error, pattern = INTERFACE_ERRORS[case]
    host = np.zeros((3, 5), np.float32)
    if changes.get("data") == "read-only":
        changes = {"data": (host.ctypes.data, True)}
    elif changes.get("data") == "elsewhere":
        changes = {"data": (host.ctypes.data + 4, False)}
    monkeypatch.setattr(_devices, "as_device_array", _must_not_wrap)
    with pytest.raises(error, match=pattern) as info:
        tensor_arrays.device_view(Interface(host=host, **changes), "the gradient of 'w'",
                                  host.ctypes.data)
    assert "the gradient of 'w'" in str(info.value)


def _must_not_wrap(*args):
    raise AssertionError("an invalid interface was wrapped")


def test_an_object_without_the_interface_is_a_type_error():
    with pytest.raises(TypeError, match="does not expose __cuda_array_interface__"):
        tensor_arrays.device_view(np.zeros(3, np.float32), "p", 0)


@pytest.mark.skipif(NUMBA_CUDA, reason="numba.cuda is usable here")
def test_an_interface_without_a_usable_numba_cuda_is_refused():
    host = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="no usable GPU"):
        tensor_arrays.device_view(Interface(host=host), "p", host.ctypes.data)


@pytest.mark.parametrize(("shape", "strides", "contiguous"), [
    ((3, 5), None, True), ((3, 5), (20, 4), True), ((3, 5), (4, 12), False),
    ((1, 5), (999, 4), True), ((3, 1), (4, 77), True), ((0, 5), (4, 4), True),
    ((5,), (8,), False), ((3, 5), (4,), False), ((), (), True)])
def test_c_contiguity_of_interface_strides(shape, strides, contiguous):
    assert tensor_arrays.c_contiguous(shape, strides, 4) is contiguous


def _on(device):
    return types.SimpleNamespace(device=torch.device(device))


def test_a_group_shares_one_device():
    _torch_checks.one_device([_on("cuda:1"), _on("cuda:1")], ["a", "b"])
    _torch_checks.one_device([], [])
    for devices in (["cpu", "cpu", "cuda:0"], ["cuda:0", "cuda:0", "cuda:1"]):
        with pytest.raises(ValueError, match=f"'c' is on {devices[2]}, but 'a' is on "
                                             f"{devices[0]}.*group of their own"):
            _torch_checks.one_device([_on(d) for d in devices], ["'a'", "'b'", "'c'"])


def _snapshot(params):
    return [(p.detach().clone(), p.data_ptr()) for p in params]


def _assert_unchanged(params, before):
    for p, (value, pointer) in zip(params, before):
        assert torch.equal(p.detach(), value) and p.data_ptr() == pointer


@needs_numba_cuda
@pytest.mark.parametrize("flat", [False, True], ids=["views", "flat"])
def test_mixing_devices_in_a_group_is_refused_before_anything_changes(flat):
    params = [torch.nn.Parameter(torch.randn(3)), _ClaimsCuda(torch.randn(2))]
    before = _snapshot(params)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\] is on cuda:0, "
                                         r"but param_groups\[0\]\['params'\]\[0\] is on cpu"):
        Adamax(params, flat=flat)
    with pytest.raises(ValueError, match="parameter 'b' is on cuda:0, but parameter 'a'"):
        Adamax([("a", params[0]), ("b", params[1])], flat=flat)
    opt = Adamax([torch.nn.Parameter(torch.randn(2))], flat=flat)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[1\] is on cuda:0"):
        opt.add_param_group({"params": params})
    assert len(opt.param_groups) == 1 and len(opt._bindings) == 1
    _assert_unchanged(params, before)


@pytest.mark.skipif(NUMBA_CUDA, reason="numba.cuda is usable here")
def test_a_cuda_parameter_without_a_usable_gpu_is_refused():
    params = [torch.nn.Parameter(torch.randn(3)), _ClaimsCuda(torch.randn(2))]
    before = _snapshot(params)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\] \(cuda:0\) is a "
                                         "CUDA device array, but numba.cuda reports no usable"):
        Adamax(params)
    _assert_unchanged(params, before)


def test_a_cuda_parameter_without_numba_cuda_is_a_type_error(monkeypatch):
    def missing():
        raise ImportError("No module named 'numba.cuda'")

    monkeypatch.setattr(_devices, "_import_cuda", missing)
    params = [_ClaimsCuda(torch.randn(2))]
    before = _snapshot(params)
    with pytest.raises(TypeError, match="numba.cuda cannot be imported.*numba_adamax\\[cuda\\]"):
        Adamax(params)
    _assert_unchanged(params, before)


class _Recorder:
    """Stands in for torch's CUDA stream and device calls and numba.cuda's ``external_stream``,
    recording what the stream choice asks for."""

    def __init__(self, handle):
        self.handle, self.calls, self.current_device = handle, [], None

    def current_stream(self, device):
        self.calls.append(("current_stream", device))
        return types.SimpleNamespace(cuda_stream=self.handle)

    @contextlib.contextmanager
    def device(self, device):
        self.calls.append(("device", device))
        previous, self.current_device = self.current_device, device
        try:
            yield
        finally:
            self.current_device = previous

    def external_stream(self, handle):
        self.calls.append(("external_stream", handle, self.current_device))
        return ("external", handle)


@pytest.fixture
def recorder(monkeypatch):
    def install(handle):
        fake = _Recorder(handle)
        monkeypatch.setattr(torch.cuda, "current_stream", fake.current_stream)
        monkeypatch.setattr(torch.cuda, "device", fake.device)
        monkeypatch.setattr(tensor_arrays, "require_cuda", lambda label: fake)
        return fake
    return install


def test_cpu_groups_run_on_no_stream(recorder):
    fake = recorder(0x5A)
    assert tensor_arrays.stream_for([torch.zeros(2)]) is None
    assert tensor_arrays.stream_for([]) is None
    assert fake.calls == []
    with tensor_arrays.device_context([torch.zeros(2)]):
        pass
    assert fake.calls == []


def test_cuda_groups_run_on_torchs_current_stream_of_their_device(recorder):
    fake = recorder(0x5A)
    group = [_on("cuda:1"), _on("cuda:1")]
    assert tensor_arrays.stream_for(group) == ("external", 0x5A)
    cuda1 = torch.device("cuda:1")
    assert fake.calls == [("current_stream", cuda1), ("device", cuda1),
                          ("external_stream", 0x5A, cuda1)]
    with tensor_arrays.device_context(group):
        assert fake.current_device == cuda1


def test_the_legacy_default_stream_is_numbas_default_stream(recorder):
    fake = recorder(0)
    assert tensor_arrays.stream_for([_on("cuda:0")]) is None
    assert fake.calls == [("current_stream", torch.device("cuda:0"))]


def test_the_device_run_includes_this_file():
    this = Path(__file__).resolve().relative_to(REPO_ROOT).as_posix()
    assert this in gpu_check.TEST_FILES


# ================================================================ helpers of the parity tests

#: ``make_params``' device for the simulated CUDA tensors (``simulated_torch_cuda``).
SIM = "simulated cuda"


def put(tensor, device):
    """A copy of the CPU ``tensor`` on ``device`` (a torch device, or ``SIM``)."""
    if device == SIM and tensor.is_sparse:
        return torch.Tensor._make_subclass(SimulatedCudaTensor, tensor.detach().clone(), False)
    if device == SIM:
        return tensor.detach().clone().as_subclass(SimulatedCudaTensor)
    return tensor.to(device)


def make_params(device, seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    values = [torch.randn(shape, generator=g, dtype=dtype) for shape, dtype in shapes]
    if device == SIM:
        return [torch.Tensor._make_subclass(SimulatedCudaTensor, v, True) for v in values]
    return [torch.nn.Parameter(v.to(device)) for v in values]


def gradient_rows(steps, seed=1, shapes=SHAPES):
    """Per step, one CPU gradient tensor (or None) per parameter of ``make_params``."""
    g = torch.Generator().manual_seed(seed)
    return [[None if (s, k) in MISSING else torch.randn(shape, generator=g, dtype=dtype) * 2
             for k, (shape, dtype) in enumerate(shapes)] for s in range(steps)]


def set_grads(params, row):
    for p, grad in zip(params, row):
        device = SIM if isinstance(p, SimulatedCudaTensor) else p.device
        p.grad = None if grad is None else put(grad, device)


def _host(tensor):
    return tensor.detach().as_subclass(torch.Tensor).cpu().numpy()


def assert_same(got, want, exact, what=""):
    got, want = _host(got), _host(want)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if exact:
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=what)


def assert_optimizers_match(gpu_opt, gpu_params, cpu_opt, cpu_params, exact):
    """Parameters and every live slot equal; the slots live on the parameters' device."""
    for k, (pg, pc) in enumerate(zip(gpu_params, cpu_params)):
        assert_same(pg, pc, exact, f"param {k}")
        entry, reference = gpu_opt.state[pg], cpu_opt.state[pc]
        assert sorted(entry) == sorted(reference)
        for key in entry:
            if key == "step":
                assert int(entry[key]) == int(reference[key])
                continue
            assert entry[key].device == pg.device, key
            assert_same(entry[key], reference[key], exact, f"{key} of param {k}")


def _step(opt):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # missing gradients are skipped silently
        opt.step()


# ================================================================ a simulated CUDA build of torch

needs_simulator = pytest.mark.skipif(
    not SIMULATED, reason="needs NUMBA_ENABLE_CUDASIM=1 (its host memory stands in for a GPU's)")


@pytest.fixture
def simulated_torch_cuda(monkeypatch):
    """``simulated_torch_cuda.install``'s stand-ins for a CUDA build of torch, for one test;
    yields its namespace (``handle``: the current stream's handle; ``streams``: the
    ``numba.cuda.external_stream`` calls)."""
    return install_simulated_cuda(monkeypatch.setattr)


@needs_simulator
@pytest.mark.parametrize("flat", [False, True], ids=["views", "flat"])
@pytest.mark.parametrize("name", PARITY_CONFIGS)
def test_simulated_cuda_parameters_match_the_cpu(name, flat, simulated_torch_cuda):
    clocks = Clock(), Clock()
    cpu_params, sim_params = make_params("cpu"), make_params(SIM)
    cpu_opt = Adamax(cpu_params, flat=flat, **make_kwargs(CONFIGS[name], clocks[0]))
    sim_opt = Adamax(sim_params, flat=flat, **make_kwargs(CONFIGS[name], clocks[1]))
    state = sim_opt._bindings[0].state
    assert state.device == "cuda"
    for k, p in enumerate(sim_params):  # the kernels work on the tensors' own memory
        assert type(sim_opt.state[p]["exp_avg"]) is SimulatedCudaTensor  # a device slot
        if p.numel():
            assert _address(state.arrays[k]) == p.data_ptr()
            assert sim_opt.state[p]["exp_avg"].data_ptr() == _address(state.slot(k, "m"))
    if flat:
        buffers = sim_opt.flat_buffers[0]
        assert all(type(b) is SimulatedCudaTensor for b in buffers.values())
        assert all(p.untyped_storage().data_ptr() == buffers[p.dtype].untyped_storage()
                   .data_ptr() for p in sim_params)
    for s, row in enumerate(gradient_rows(5)):
        clocks[0].step = clocks[1].step = s
        set_grads(cpu_params, row)
        set_grads(sim_params, row)
        _step(cpu_opt)
        _step(sim_opt)
        assert_optimizers_match(sim_opt, sim_params, cpu_opt, cpu_params,
                                exact=name not in NORM_CLIPPING_CONFIGS)
    assert state.stream is None and simulated_torch_cuda.streams == []
    saved = sim_opt.state_dict()["state"][0]
    assert type(saved["exp_inf"]) is SimulatedCudaTensor and saved["step"].device.type == "cpu"
    assert saved["exp_inf"].data_ptr() != sim_opt.state[sim_params[0]]["exp_inf"].data_ptr()


@needs_simulator
@pytest.mark.parametrize("options", [{"lr": 0.05, "weight_decay": 0.01},
                                     {"lr": 0.05, "clipnorm": 0.5},
                                     {"lr": 0.05, "global_clipnorm": 0.5},
                                     {"lr": 0.05, "gradient_accumulation_steps": 2,
                                      "use_ema": True}],
                         ids=["decay", "clipnorm", "global_clipnorm", "accum_ema"])
def test_simulated_cuda_sparse_gradients_match_the_cpu(options, simulated_torch_cuda):
    shapes = (((12, 5), torch.float32), ((3,), torch.float32), ((8, 2), torch.float64))
    cpu_params, sim_params = make_params("cpu", shapes=shapes), make_params(SIM, shapes=shapes)
    cpu_opt, sim_opt = Adamax(cpu_params, **options), Adamax(sim_params, **options)
    g = torch.Generator().manual_seed(4)
    before = cpu_params[0].detach().clone()
    for rows in ([1, 4, 4, 2], [3, 3, 8], [4, 1, 7, 6, 2]):
        index = torch.tensor([rows])
        grads = [torch.sparse_coo_tensor(index, torch.randn(len(rows), 5, generator=g), (12, 5),
                                         check_invariants=True),
                 torch.randn(3, generator=g),  # a dense gradient in the same group
                 torch.sparse_coo_tensor(index[:, :2] % 8, torch.randn(
                     2, 2, generator=g, dtype=torch.float64), (8, 2), check_invariants=True)]
        set_grads(cpu_params, grads)
        set_grads(sim_params, grads)
        assert sim_params[0].grad.is_sparse and type(sim_params[0].grad) is SimulatedCudaTensor
        cpu_opt.step()
        sim_opt.step()
        # the dense gradient's norm is summed on the device: bit for bit only without it
        assert_optimizers_match(sim_opt, sim_params, cpu_opt, cpu_params,
                                exact="clipnorm" not in str(options))
    untouched = [0, 5, 9, 10, 11]
    assert torch.equal(_host_tensor(sim_params[0])[untouched], before[untouched])


def _host_tensor(tensor):
    return torch.from_numpy(_host(tensor))


@needs_simulator
def test_simulated_cuda_layout_and_device_errors_change_nothing(simulated_torch_cuda):
    strided = torch.Tensor._make_subclass(SimulatedCudaTensor, torch.randn(4, 3).t(), True)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\] is not contiguous"):
        Adamax([strided])
    params = make_params(SIM, shapes=(((4, 3), torch.float32), ((5, 2), torch.float32)))
    opt = Adamax(params, lr=0.05)
    set_grads(params, [torch.ones(4, 3), torch.ones(5, 2)])
    opt.step()
    before = _snapshot(params), {k: _host(v) for k, v in opt.state_dict()["state"][1].items()}
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 3]]), torch.ones(2, 2), (5, 2),
                                     check_invariants=True)
    bad_grads = {
        "strided": (put(torch.ones(3, 4), SIM).t(), ValueError, "of .* not contiguous"),
        "on_the_cpu": (torch.ones(4, 3), TypeError, "of .* is on cpu, its parameter on cuda:0"),
        "sparse_on_the_cpu": (sparse, TypeError, "sparse gradient of .* is on cpu"),
    }
    for case, (grad, error, pattern) in bad_grads.items():
        target = params[1] if grad.is_sparse else params[0]
        set_grads(params, [torch.ones(4, 3), torch.ones(5, 2)])
        target.grad = grad
        with pytest.raises(error, match=pattern):
            opt.step()
        _assert_unchanged(params, before[0])
        after = {k: _host(v) for k, v in opt.state_dict()["state"][1].items()}
        assert all(np.array_equal(after[k], v) for k, v in before[1].items()), case


@needs_simulator
def test_simulated_cuda_optimizer_loads_a_cpu_state_dict(simulated_torch_cuda):
    kwargs = {"lr": 0.05, "use_ema": True, "ema_overwrite_frequency": 2,
              "gradient_accumulation_steps": 2, "weight_decay": 0.1}
    rows = gradient_rows(6)
    cpu_params = make_params("cpu")
    cpu_opt = Adamax(cpu_params, **kwargs)
    for row in rows[:3]:
        set_grads(cpu_params, row)
        cpu_opt.step()
    sim_params = [put(p, SIM).requires_grad_() for p in cpu_params]
    sim_opt = Adamax(sim_params, **kwargs)
    sim_opt.load_state_dict(cpu_opt.state_dict())
    for row in rows[3:]:
        for params, opt in ((cpu_params, cpu_opt), (sim_params, sim_opt)):
            set_grads(params, row)
            opt.step()
    assert_optimizers_match(sim_opt, sim_params, cpu_opt, cpu_params, exact=True)
    back = Adamax(make_params("cpu"), **kwargs)
    back.load_state_dict(sim_opt.state_dict())  # and back onto the CPU
    for p, q in zip(back.param_groups[0]["params"], sim_params):
        assert_same(back.state[p]["ema"], sim_opt.state[q]["ema"], exact=True)


@needs_simulator
def test_simulated_cuda_steps_run_on_the_current_stream(simulated_torch_cuda):
    cpu_params = make_params("cpu")
    sim_params = make_params(SIM)
    cpu_opt, sim_opt = Adamax(cpu_params, lr=0.05), Adamax(sim_params, lr=0.05)
    state = sim_opt._bindings[0].state
    for s, row in enumerate(gradient_rows(3)):
        simulated_torch_cuda.handle = (0, 0x5A, 0x6B)[s]
        set_grads(cpu_params, row)
        set_grads(sim_params, row)
        cpu_opt.step()
        sim_opt.step()
        if s == 0:
            assert state.stream is None
        else:
            handle, stream = simulated_torch_cuda.streams[-1]
            assert handle == simulated_torch_cuda.handle and state.stream is stream
    assert [h for h, _ in simulated_torch_cuda.streams] == [0x5A, 0x6B]
    assert_optimizers_match(sim_opt, sim_params, cpu_opt, cpu_params, exact=True)


# ================================================================ real CUDA tensors

@needs_gpu
@pytest.mark.parametrize("flat", [False, True], ids=["views", "flat"])
@pytest.mark.parametrize("name", PARITY_CONFIGS)
def test_cuda_parameters_match_the_cpu(name, flat):
    clocks = Clock(), Clock()
    cpu_params, gpu_params = make_params("cpu"), make_params("cuda")
    cpu_opt = Adamax(cpu_params, flat=flat, **make_kwargs(CONFIGS[name], clocks[0]))
    gpu_opt = Adamax(gpu_params, flat=flat, **make_kwargs(CONFIGS[name], clocks[1]))
    pointers = [p.data_ptr() for p in gpu_params]
    for s, row in enumerate(gradient_rows(7)):
        clocks[0].step = clocks[1].step = s
        set_grads(cpu_params, row)
        set_grads(gpu_params, row)
        _step(cpu_opt)
        _step(gpu_opt)
        assert_optimizers_match(gpu_opt, gpu_params, cpu_opt, cpu_params,
                                exact=name not in NORM_CLIPPING_CONFIGS)
    torch.cuda.synchronize()
    assert [p.data_ptr() for p in gpu_params] == pointers  # updated in place
    state = gpu_opt._bindings[0].state
    assert state.device == "cuda"
    for k, p in enumerate(gpu_params):  # the kernels work on the tensors' own memory
        if p.numel():
            assert _address(state.arrays[k]) == p.data_ptr()


@needs_gpu
def test_flat_buffers_live_on_the_parameters_device():
    params = make_params("cuda")
    opt = Adamax([{"params": params[:3]}, {"params": params[3:]}], flat=True)
    buffers = opt.flat_buffers
    assert sorted(buffers[0], key=str) == [torch.float32, torch.float64]
    for group, members in zip(buffers, (params[:3], params[3:])):
        for p in members:
            buffer = group[p.dtype]
            assert buffer.device == p.device and buffer.is_cuda
            assert p.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()


@needs_gpu
@pytest.mark.parametrize("options", [{"lr": 0.05, "weight_decay": 0.01},
                                     {"lr": 0.05, "clipnorm": 0.5},
                                     {"lr": 0.05, "gradient_accumulation_steps": 2,
                                      "use_ema": True}], ids=["decay", "clipnorm", "accum_ema"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_cuda_gradients_match_the_cpu(dtype, options):
    models, opts = [], []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(12, 5, sparse=True).to(dtype).to(device)
        models.append(embedding)
        opts.append(Adamax(embedding.parameters(), **options))
    untouched = [0, 9, 11]
    before = models[0].weight.detach().clone()
    for batch in ([1, 4, 4, 2], [3, 3, 8], [4, 1, 7, 6, 2], [10, 10]):
        for embedding, opt in zip(models, opts):
            opt.zero_grad()
            index = torch.tensor(batch, device=embedding.weight.device)
            (embedding(index) ** 2).sum().backward()
            assert embedding.weight.grad.is_sparse
            assert embedding.weight.grad.device == embedding.weight.device
            opt.step()
        # the rows of the lazy path, summed in the CPU's order: bit for bit, clipnorm included
        assert_optimizers_match(opts[1], [models[1].weight], opts[0], [models[0].weight],
                                exact=True)
    assert torch.equal(models[1].weight.detach().cpu()[untouched], before[untouched])


@needs_gpu
def test_dense_and_sparse_gradients_in_one_cuda_group():
    torch.manual_seed(1)
    model = torch.nn.ModuleDict({"embed": torch.nn.Embedding(9, 4, sparse=True),
                                 "head": torch.nn.Linear(4, 2)})
    cpu_params = list(model.parameters())
    gpu_params = [torch.nn.Parameter(p.detach().to("cuda")) for p in cpu_params]
    cpu_opt, gpu_opt = Adamax(cpu_params, lr=0.02, use_ema=True), Adamax(gpu_params, lr=0.02,
                                                                         use_ema=True)
    for batch in ([1, 2, 2], [5, 0, 8, 1], [3]):
        # the gradients come from the CPU model (a GPU matmul may round differently)
        cpu_opt.zero_grad()
        model["head"](model["embed"](torch.tensor(batch))).square().mean().backward()
        assert cpu_params[0].grad.is_sparse and not cpu_params[1].grad.is_sparse
        set_grads(gpu_params, [p.grad for p in cpu_params])
        assert gpu_params[0].grad.is_sparse and gpu_params[0].grad.is_cuda
        cpu_opt.step()
        gpu_opt.step()
        assert_optimizers_match(gpu_opt, gpu_params, cpu_opt, cpu_params, exact=True)


@needs_gpu
def test_state_dict_tensors_live_on_the_parameters_device():
    params = make_params("cuda")
    opt = Adamax(params, lr=0.05, use_ema=True, gradient_accumulation_steps=2)
    for row in gradient_rows(3):
        set_grads(params, row)
        opt.step()
    state_dict = opt.state_dict()
    for k, p in enumerate(params):
        entry = state_dict["state"][k]
        assert sorted(entry) == ["accumulator", "ema", "exp_avg", "exp_inf", "step"]
        assert entry["step"].device.type == "cpu" and int(entry["step"]) == 3
        for key in ("exp_avg", "exp_inf", "ema", "accumulator"):
            saved, live = entry[key], opt.state[p][key]
            assert saved.device == p.device and saved.dtype == p.dtype
            assert saved.shape == p.shape
            assert torch.equal(saved, live)
            if p.numel():  # a copy; the live entry is the slot itself
                assert saved.data_ptr() != live.data_ptr()
    slot = opt._bindings[0].state.slot(0, "m")
    assert opt.state[params[0]]["exp_avg"].data_ptr() == _address(slot)
    copy = state_dict["state"][0]["exp_avg"].clone()
    set_grads(params, gradient_rows(1, seed=5)[0])
    opt.step()
    assert torch.equal(state_dict["state"][0]["exp_avg"], copy)  # later steps leave it alone


@needs_gpu
@pytest.mark.parametrize("direction", ["cpu_to_cuda", "cuda_to_cpu"])
def test_a_state_dict_loads_across_devices_and_resumes_exactly(direction):
    source, target = direction.split("_to_")
    kwargs = {"lr": 0.05, "use_ema": True, "ema_overwrite_frequency": 2, "weight_decay": 0.1,
              "gradient_accumulation_steps": 3}
    rows = gradient_rows(8)
    first = make_params(source)
    opt = Adamax(first, **kwargs)
    for row in rows[:4]:
        set_grads(first, row)
        opt.step()
    second = [torch.nn.Parameter(p.detach().to(target)) for p in first]
    resumed = Adamax(second, **kwargs)
    resumed.load_state_dict(opt.state_dict())
    for p in second:
        assert all(v.device == p.device for k, v in resumed.state[p].items() if k != "step")
    for row in rows[4:]:
        for params, o in ((first, opt), (second, resumed)):
            set_grads(params, row)
            o.step()
    assert_optimizers_match(*((resumed, second, opt, first) if target == "cuda"
                              else (opt, first, resumed, second)), exact=True)


@needs_gpu
def test_steps_run_on_torchs_current_stream():
    cpu_params, gpu_params = make_params("cpu"), make_params("cuda")
    cpu_opt, gpu_opt = Adamax(cpu_params, lr=0.05), Adamax(gpu_params, lr=0.05)
    rows = gradient_rows(4)
    set_grads(gpu_params, rows[0])
    gpu_opt.step()
    assert torch.cuda.current_stream().cuda_stream == 0
    assert gpu_opt._bindings[0].state.stream is None  # the legacy default stream
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for row in rows[1:]:
            for p, grad in zip(gpu_params, row):  # gradients written on the side stream
                p.grad = None if grad is None else grad.to("cuda", non_blocking=True)
            gpu_opt.step()
            assert int(gpu_opt._bindings[0].state.stream) == side.cuda_stream
    side.synchronize()
    for row in rows:
        set_grads(cpu_params, row)
        cpu_opt.step()
    assert_optimizers_match(gpu_opt, gpu_params, cpu_opt, cpu_params, exact=True)


@needs_gpu
@pytest.mark.parametrize("flat", [False, True], ids=["views", "flat"])
def test_cpu_and_cuda_parameters_in_one_group_are_refused(flat):
    params = [torch.nn.Parameter(torch.randn(3, device="cuda")),
              torch.nn.Parameter(torch.randn(3))]
    before = _snapshot(params)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\] is on cpu, but "
                                         r"param_groups\[0\]\['params'\]\[0\] is on cuda:0"):
        Adamax(params, flat=flat)
    _assert_unchanged(params, before)
    opt = Adamax([{"params": params[:1]}, {"params": params[1:]}], flat=flat)  # one each
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[params[0]]["exp_avg"].is_cuda
    assert not opt.state[params[1]]["exp_avg"].is_cuda


@needs_gpu
def test_half_precision_cuda_parameters_are_refused():
    with pytest.raises(TypeError, match="dtype torch.float16"):
        Adamax([torch.nn.Parameter(torch.zeros(3, device="cuda", dtype=torch.float16))])


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason=f"needs two CUDA GPUs ({torch.cuda.device_count()} here)")
@needs_gpu
def test_a_group_on_another_gpu_than_the_current_one():
    cpu_params, gpu_params = make_params("cpu"), make_params("cuda:1")
    cpu_opt, gpu_opt = Adamax(cpu_params, lr=0.05), Adamax(gpu_params, lr=0.05)
    assert torch.cuda.current_device() == 0
    for row in gradient_rows(4):
        set_grads(cpu_params, row)
        set_grads(gpu_params, row)
        cpu_opt.step()
        gpu_opt.step()
    assert_optimizers_match(gpu_opt, gpu_params, cpu_opt, cpu_params, exact=True)
    for key, saved in gpu_opt.state_dict()["state"][0].items():
        assert saved.device == torch.device("cpu" if key == "step" else "cuda:1"), key
