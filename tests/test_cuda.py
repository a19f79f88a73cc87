"""The CUDA backend: parity with the CPU kernels, Keras vectors, float16, dispatch, and
sparse ``IndexedSlices`` gradients (parity with the CPU's lazy path, the legacy-TF vectors).

Runs under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) in CI and unchanged on a
real GPU; skipped otherwise. ``config.BLOCK_SIZE`` and ``config.CHUNK`` are patched small,
so the tiny variables here span several chunks, blocks and a partial block; on a GPU the
parity over every configuration also runs with the real launch sizes.

Every kernel launch of these tests records its argument types, and the last test checks
that each is one of the signatures ``numba_adamax.gpu_check`` compiles to PTX offline
(tests/test_ptx.py).

Tolerances: the CPU and CUDA kernels run the same float operations in the same order on
every element, so results are compared bit for bit, except under ``clipnorm`` /
``global_clipnorm``: the device sums squares in thread-strided order (then per chunk
and per variable in a fixed order), the CPU in element order, so the float64 norms may
differ in the last bits; there ``rtol=1e-6`` (float32). Sparse gradients' norms are summed in the CPU's order, so
calls whose gradients are all sparse are compared bit for bit under clipping by norm too.
"""
import os
import warnings

import numba
import numpy as np
import pytest

try:
    from numba import cuda
except ImportError:  # pragma: no cover - numba-cuda not installed
    cuda = None
if cuda is None or not (os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or cuda.is_available()):
    pytest.skip("needs a CUDA GPU or NUMBA_ENABLE_CUDASIM=1", allow_module_level=True)

import numba_adamax as na
from numba_adamax import _devices
from numba_adamax.gpu_check import signatures
from numba_adamax.kernels import config
from numba_adamax.kernels import cuda as cuda_kernels
from numba_adamax.kernels import cuda_sparse as cuda_sparse_kernels
from configs import CONFIGS, NORM_CLIPPING_CONFIGS, Clock, build_optimizer
from conformance import load_keras_configs, optimizer_kwargs
from conftest import (NAMES, assert_unchanged, recorded_tolerance,
                      snapshot_state)
from sparse_helpers import (PATTERNS, SPARSE_NAMES, TF, TF_NAMES, legacy_grads,
                            legacy_kwargs, make_gradient, replay_legacy)

pytestmark = [pytest.mark.cuda, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

SHAPES = ((3, 5), (7,), (2, 3), (0,), (13,))  # small: the simulator runs every thread in Python
#: Several chunks of the real ``config.CHUNK`` and partial blocks (GPU only).
FULL_SHAPES = ((70001,), (300, 129), (1,), (0,), (16384,))
SIMULATED = bool(numba.config.ENABLE_CUDASIM)
DEFAULT_LAUNCHES = {"BLOCK_SIZE": config.BLOCK_SIZE, "CHUNK": config.CHUNK}

#: ``(kernel module, kernel name, argument types)`` of every launch of this module's tests.
LAUNCHES = set()
KERNEL_MODULES = {"cuda": cuda_kernels, "cuda_sparse": cuda_sparse_kernels}


def _kernel_names(module):
    """The names of the kernels (not device functions) defined in ``module``."""
    return sorted(name for name, obj in vars(module).items() if _is_kernel(obj, module))


def _is_kernel(obj, module):
    if isinstance(obj, _RecordedKernel):
        return True
    if not hasattr(obj, "py_func") or obj.py_func.__module__ != module.__name__:
        return False
    if hasattr(obj, "_device"):  # the simulator's kernels and device functions
        return not obj._device
    return not obj.targetoptions.get("device", True)


def _argument_type(value):
    """The type the CUDA dispatcher gives a launch argument (a simulator device array
    wraps a NumPy array in ``_ary``)."""
    return numba.typeof(getattr(value, "_ary", value))


class _RecordedKernel:
    """A kernel whose launches add their argument types to ``LAUNCHES``."""

    def __init__(self, module, name, kernel):
        self.module, self.name, self.kernel = module, name, kernel

    def __getitem__(self, launch):
        configured = self.kernel[launch]

        def run(*args):
            LAUNCHES.add((self.module, self.name, tuple(_argument_type(a) for a in args)))
            return configured(*args)

        return run


@pytest.fixture(autouse=True, scope="module")
def recorded_launches():
    with pytest.MonkeyPatch.context() as patch:
        for label, module in KERNEL_MODULES.items():
            for name in _kernel_names(module):
                patch.setattr(module, name, _RecordedKernel(label, name, getattr(module, name)))
        yield


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    monkeypatch.setattr(config, "BLOCK_SIZE", 4)
    monkeypatch.setattr(config, "CHUNK", 6)


def _problem(seed, steps, dtype=np.float32, with_none=True, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    if with_none:
        grads[1][2] = None
    return params, grads


def _host(x):
    return x.copy_to_host() if hasattr(x, "copy_to_host") else np.array(x)


def _dev(grads):
    return [None if g is None else cuda.to_device(g) for g in grads]


def _assert_same(a, b, exact, what):
    a, b = _host(a), _host(b)
    if exact:
        np.testing.assert_array_equal(a, b, err_msg=what)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, equal_nan=True, err_msg=what)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_config_matches_the_cpu(name):
    _assert_config_matches_the_cpu(name, *_problem(1, 4))


@pytest.mark.skipif(SIMULATED, reason="real launch sizes: too slow for the simulator")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_config_matches_the_cpu_at_full_launch_size(name, dtype, monkeypatch):
    for key, value in DEFAULT_LAUNCHES.items():
        monkeypatch.setattr(config, key, value)
    _assert_config_matches_the_cpu(name, *_problem(1, 4, np.dtype(dtype), shapes=FULL_SHAPES))


def _assert_config_matches_the_cpu(name, params, grads):
    """CPU and CUDA optimizers of configuration ``name`` stepped on equal copies of
    ``params`` and ``grads``: equal variables, slots and finalized values (bit for bit,
    except under clipping by norm)."""
    config = CONFIGS[name]
    steps = len(grads)
    cpu_vars = [p.copy() for p in params]
    gpu_vars = [cuda.to_device(p) for p in params]
    clock = Clock()
    cpu, gpu = build_optimizer(config, clock), build_optimizer(config, clock)
    cpu.build(cpu_vars, names=list(NAMES))
    gpu.build(gpu_vars, names=list(NAMES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the None gradient of call 1
        for s in range(steps):
            clock.step = s
            cpu.apply([None if g is None else g.copy() for g in grads[s]], cpu_vars)
            gpu.apply(_dev(grads[s]), gpu_vars)
    exact = name not in NORM_CLIPPING_CONFIGS
    assert gpu.iterations == cpu.iterations
    for j, (a, b) in enumerate(zip(cpu_vars, gpu_vars)):
        _assert_same(a, b, exact, f"{name}: variable {j}")
    for j, (a, b) in enumerate(zip(cpu.variables[1:], gpu.variables[1:])):
        _assert_same(a, b, exact, f"{name}: slot {j}")
    if config.kwargs.get("use_ema"):
        cpu.finalize_variable_values(cpu_vars)
        gpu.finalize_variable_values(gpu_vars)
        for a, b in zip(cpu_vars, gpu_vars):
            _assert_same(a, b, exact, f"{name}: finalized")


KERAS = load_keras_configs()


@pytest.mark.parametrize("name", list(KERAS))
def test_keras_vectors_replay_on_cuda(name):
    cfg = KERAS[name]
    index = [0]
    opt = na.Adamax(**optimizer_kwargs(cfg, schedules_module=na.schedules,
                                       step_fn=lambda: index[0]))
    var_names, var_indices = cfg.exclusion()
    variables = [cuda.to_device(v) for v in cfg.initial_values()]
    if var_names or var_indices:
        opt.exclude_from_weight_decay(var_list=[variables[i] for i in var_indices],
                                      var_names=var_names)
    opt.build(variables, names=cfg.var_names)
    tol = recorded_tolerance(cfg.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for s in range(cfg.steps):
            index[0] = s
            grads = [None if g is None else cuda.to_device(np.ascontiguousarray(g))
                     for g in cfg.grads(s)]
            opt.apply(grads, variables)
            for j, v in enumerate(variables):
                np.testing.assert_allclose(v.copy_to_host(), cfg.arrays[f"value{j}"][s + 1],
                                           equal_nan=True, **tol)
                np.testing.assert_allclose(opt.state.m[j].copy_to_host(),
                                           cfg.arrays[f"m{j}"][s + 1], equal_nan=True, **tol)
    assert opt.iterations == cfg.arrays["iterations"][-1]


def test_float16_uses_float32_math_and_slots():
    steps = 3
    params, grads = _problem(2, steps, np.float16, with_none=False)
    reference = [p.astype(np.float32) for p in params]
    half = [cuda.to_device(p) for p in params]
    kwargs = dict(learning_rate=0.01, weight_decay=0.05, clipvalue=0.8, loss_scale_factor=2.0)
    ref_opt, opt = na.Adamax(**kwargs), na.Adamax(**kwargs)
    for s in range(steps):
        ref_opt.apply([g.astype(np.float32) for g in grads[s]], reference)
        for r in reference:  # the variables are float16: round after every step
            r[...] = r.astype(np.float16).astype(np.float32)
        opt.apply(_dev(grads[s]), half)
    for r, h in zip(reference, half):
        assert h.dtype == np.float16
        np.testing.assert_array_equal(h.copy_to_host(), r.astype(np.float16))
    for j in range(len(SHAPES)):
        assert opt.state.m[j].dtype == np.float32
        np.testing.assert_array_equal(opt.state.m[j].copy_to_host(), ref_opt.state.m[j])
        np.testing.assert_array_equal(opt.state.u[j].copy_to_host(), ref_opt.state.u[j])
    saved = opt.state.state_dict()
    assert saved["dtypes"][0] == "float16" and saved["slots"][0].dtype == np.float32


def test_float16_stays_refused_on_the_cpu():
    with pytest.raises(TypeError, match="float16 is supported on CUDA only"):
        na.Adamax().build([np.zeros(3, np.float16)])


def test_nan_propagates_like_the_cpu():
    params, grads = _problem(3, 2, with_none=False)
    grads[0][0][1, 2] = np.nan
    grads[1][1][3] = np.inf
    cpu_vars, gpu_vars = [p.copy() for p in params], [cuda.to_device(p) for p in params]
    cpu, gpu = na.Adamax(0.1), na.Adamax(0.1)
    for g in grads:
        cpu.apply([x.copy() for x in g], cpu_vars)
        gpu.apply(_dev(g), gpu_vars)
    assert np.isnan(cpu_vars[0]).any()
    for a, b in zip(cpu.variables[1:] + cpu_vars, gpu.variables[1:] + gpu_vars):
        np.testing.assert_array_equal(a, _host(b))


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_nonfinite_policies_change_nothing(policy):
    params, grads = _problem(4, 2, with_none=False)
    variables = [cuda.to_device(p) for p in params]
    opt = na.Adamax(0.1, nonfinite=policy)
    opt.apply(_dev(grads[0]), variables)
    bad = [g.copy() for g in grads[1]]
    bad[4][5] = np.inf
    before = snapshot_state(opt, variables)
    if policy == "raise":
        with pytest.raises(FloatingPointError, match="'variable_4'"):
            opt.apply(_dev(bad), variables)
    else:
        opt.apply(_dev(bad), variables)
        assert opt.skipped_steps == 1
    assert_unchanged(before, snapshot_state(opt, variables), skipped=int(policy == "skip"))
    assert opt.iterations == 1


class CudaInterfaceArray:
    """A stand-in for a CuPy array / PyTorch CUDA tensor: ``__cuda_array_interface__`` only.

    Under the simulator, "device" memory is host memory, so it exposes a NumPy buffer."""

    def __init__(self, array):
        self.array = array
        self.__cuda_array_interface__ = {
            "shape": array.shape, "typestr": array.dtype.str, "strides": None,
            "data": (array.__array_interface__["data"][0], False), "version": 3}


def test_cuda_array_interface_objects_are_updated_in_place():
    params, grads = _problem(5, 2, with_none=False)
    held = [p.copy() for p in params]
    variables = [CudaInterfaceArray(p) for p in held]
    cpu_vars = [p.copy() for p in params]
    opt, cpu = na.Adamax(0.1), na.Adamax(0.1)
    for g in grads:
        opt.apply([CudaInterfaceArray(x.copy()) for x in g], variables)
        cpu.apply([x.copy() for x in g], cpu_vars)
    for a, b in zip(cpu_vars, held):  # the objects' own memory changed: zero-copy
        np.testing.assert_array_equal(a, b)
    assert opt.get_slot(variables[0], "m").shape == (3, 5)


def test_mixing_cpu_and_gpu_arrays_is_refused_before_anything_changes():
    params, grads = _problem(6, 2, with_none=False)
    with pytest.raises(TypeError, match="variable 'variable_1' is a numpy.ndarray"):
        na.Adamax().build([cuda.to_device(params[0]), params[1]])
    variables = [cuda.to_device(p) for p in params]
    opt = na.Adamax(0.1)
    opt.apply(_dev(grads[0]), variables)
    before = snapshot_state(opt, variables)
    mixed = _dev(grads[1])
    mixed[2] = grads[1][2]
    with pytest.raises(TypeError, match="gradient for variable 'variable_2'.*cannot be mixed"):
        opt.apply(mixed, variables)
    with pytest.raises(TypeError, match="must be a numpy.ndarray or a CUDA device array"):
        na.Adamax().build([[1.0, 2.0]])
    with pytest.raises(TypeError, match="dtype int32"):
        na.Adamax().build([cuda.to_device(np.zeros(3, np.int32))])
    cpu_vars = [p.copy() for p in params]
    cpu = na.Adamax(0.1)
    cpu.apply([g.copy() for g in grads[0]], cpu_vars)
    cpu_before = snapshot_state(cpu, cpu_vars)
    with pytest.raises(TypeError, match="cannot be mixed"):
        cpu.apply(_dev(grads[1]), cpu_vars)
    assert_unchanged(before, snapshot_state(opt, variables))
    assert_unchanged(cpu_before, snapshot_state(cpu, cpu_vars))


def test_device_arrays_without_numba_cuda_are_refused(monkeypatch):
    def missing():
        raise ImportError("No module named 'numba.cuda'")

    monkeypatch.setattr(_devices, "_import_cuda", missing)
    variable = cuda.to_device(np.ones(4, np.float32))
    opt = na.Adamax()
    with pytest.raises(TypeError, match="variable 'variable_0' is a CUDA device array, but "
                                        "numba.cuda cannot be imported"):
        opt.apply([cuda.to_device(np.ones(4, np.float32))], [variable])
    assert not opt.built
    np.testing.assert_array_equal(variable.copy_to_host(), np.ones(4, np.float32))


def test_stream_argument_runs_the_same_steps():
    params, grads = _problem(7, 3, with_none=False)
    a_vars, b_vars = [cuda.to_device(p) for p in params], [cuda.to_device(p) for p in params]
    stream = cuda.stream()
    opt = na.Adamax(0.1, clipnorm=0.5, stream=stream)
    assert opt.stream is stream
    state = na.init(b_vars, learning_rate=0.1, clipnorm=0.5)
    for g in grads:
        opt.apply(_dev(g), a_vars)
        na.step(b_vars, _dev(g), state, stream=stream)
    assert state.stream is stream
    for a, b in zip(a_vars, b_vars):
        np.testing.assert_array_equal(a.copy_to_host(), b.copy_to_host())
    with pytest.raises(TypeError, match="`stream`"):
        na.Adamax(stream="default")


def test_checkpoints_move_between_cpu_and_cuda():
    params, grads = _problem(8, 4, with_none=False)
    kwargs = dict(learning_rate=0.1, use_ema=True, gradient_accumulation_steps=2)
    cpu_vars = [p.copy() for p in params]
    cpu = na.Adamax(**kwargs)
    for g in grads[:3]:
        cpu.apply([x.copy() for x in g], cpu_vars)
    gpu_vars = [cuda.to_device(v) for v in cpu_vars]
    gpu = na.Adamax(**kwargs)
    gpu.build(gpu_vars)
    gpu.load_state_dict(cpu.state_dict())
    assert isinstance(gpu.state.m[0], type(gpu_vars[0]))
    cpu.apply([x.copy() for x in grads[3]], cpu_vars)
    gpu.apply(_dev(grads[3]), gpu_vars)
    for a, b in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_array_equal(a, b)
    back = na.Adamax(**kwargs)
    back.build([_host(v) for v in gpu_vars])
    back.set_weights(gpu.get_weights())
    for a, b in zip(cpu.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)


# ============================================================ sparse gradients (IndexedSlices)

SPARSE_SHAPES = [(6, 3), (9,), (4, 2, 2)]


def _to_device_slices(g, rng):
    """``g`` with its ``values`` on the device, and its ``indices`` there half of the time."""
    if not isinstance(g, na.IndexedSlices):
        return None if g is None else cuda.to_device(g)
    indices = cuda.to_device(g.indices) if rng.random() < 0.5 else g.indices.copy()
    return na.IndexedSlices(cuda.to_device(g.values), indices, g.dense_shape)


def _copy_slices(g):
    if isinstance(g, na.IndexedSlices):
        return na.IndexedSlices(g.values.copy(), g.indices.copy(), g.dense_shape)
    return None if g is None else g.copy()


def _sparse_calls(seed, steps, kinds=("sparse", "sparse", "dense", "none"), dtype=np.float32):
    """Random calls mixing sparse (every index pattern), dense and missing gradients."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(shape).astype(dtype) for shape in SPARSE_SHAPES]
    calls = []
    for _ in range(steps):
        chosen = [kinds[rng.integers(len(kinds))] for _ in SPARSE_SHAPES]
        if all(k == "none" for k in chosen):
            chosen[0] = "sparse"
        calls.append([make_gradient(rng, kind, PATTERNS[rng.integers(len(PATTERNS))], shape,
                                    dtype) for kind, shape in zip(chosen, SPARSE_SHAPES)])
    return init, calls


def _run_cpu_and_cuda(config, init, calls, seed=0):
    """Run ``calls`` through a CPU and a CUDA optimizer; returns both (optimizer, variables)."""
    rng = np.random.default_rng(seed)
    clock = Clock()
    cpu_vars, gpu_vars = [p.copy() for p in init], [cuda.to_device(p) for p in init]
    cpu, gpu = build_optimizer(config, clock), build_optimizer(config, clock)
    cpu.build(cpu_vars, names=SPARSE_NAMES)
    gpu.build(gpu_vars, names=SPARSE_NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # missing gradients
        for s, call in enumerate(calls):
            clock.step = s
            cpu.apply([_copy_slices(g) for g in call], cpu_vars)
            gpu.apply([_to_device_slices(g, rng) for g in call], gpu_vars)
    return (cpu, cpu_vars), (gpu, gpu_vars)


def _assert_same_state(cpu_run, gpu_run, exact, what):
    (cpu, cpu_vars), (gpu, gpu_vars) = cpu_run, gpu_run
    assert gpu.iterations == cpu.iterations
    for j, (a, b) in enumerate(zip(cpu_vars, gpu_vars)):
        _assert_same(a, b, exact, f"{what}: variable {j}")
    for j, (a, b) in enumerate(zip(cpu.variables[1:], gpu.variables[1:])):
        _assert_same(a, b, exact, f"{what}: slot {j}")
    assert len(cpu.state.touched_rows) == len(gpu.state.touched_rows)
    for a, b in zip(cpu.state.touched_rows, gpu.state.touched_rows):
        np.testing.assert_array_equal(a, b, err_msg=f"{what}: touched rows")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sparse_gradients_match_the_cpu(name):
    """Sparse, dense and missing gradients mixed: duplicates, empty index lists, every row,
    one row many times; under accumulation, windows that mix dense and sparse calls."""
    init, calls = _sparse_calls(sum(map(ord, name)), 5)
    cpu_run, gpu_run = _run_cpu_and_cuda(CONFIGS[name], init, calls)
    _assert_same_state(cpu_run, gpu_run, name not in NORM_CLIPPING_CONFIGS, name)


@pytest.mark.parametrize("name", sorted(NORM_CLIPPING_CONFIGS))
def test_sparse_only_calls_match_the_cpu_bit_for_bit_under_norm_clipping(name):
    init, calls = _sparse_calls(11, 5, kinds=("sparse",))
    cpu_run, gpu_run = _run_cpu_and_cuda(CONFIGS[name], init, calls)
    _assert_same_state(cpu_run, gpu_run, True, name)


def test_sparse_index_patterns_match_the_cpu():
    """Each index pattern on its own, with weight decay, EMA and accumulation."""
    config = CONFIGS["kitchen_sink"]
    rng = np.random.default_rng(12)
    init = [rng.standard_normal(shape).astype(np.float32) for shape in SPARSE_SHAPES]
    calls = [[make_gradient(rng, "sparse", pattern, shape, np.float32)
              for shape in SPARSE_SHAPES] for pattern in PATTERNS for _ in range(3)]
    cpu_run, gpu_run = _run_cpu_and_cuda(config, init, calls)
    _assert_same_state(cpu_run, gpu_run, True, "patterns")
    assert any(m.any() for m in cpu_run[0].state.m)
    # the last window ended on an update step: every mask is clear
    assert not any(mask.any() for mask in gpu_run[0].state.touched_rows)


def test_sparse_touched_rows_are_kept_within_a_window():
    rng = np.random.default_rng(13)
    init = [rng.standard_normal(shape).astype(np.float32) for shape in SPARSE_SHAPES]
    g = [na.IndexedSlices(np.ones((3, 3), np.float32), np.array([4, 1, 4])), None,
         rng.standard_normal(SPARSE_SHAPES[2]).astype(np.float32)]
    cpu_run, gpu_run = _run_cpu_and_cuda(CONFIGS["grad_accum_3"], init, [g])
    _assert_same_state(cpu_run, gpu_run, True, "window")
    masks = gpu_run[0].state.touched_rows
    np.testing.assert_array_equal(masks[0], [False, True, False, False, True, False])
    assert not masks[1].any() and masks[2].all()


def test_sparse_deduplication_sums_rows_in_order_on_the_device():
    from numba_adamax.kernels import cpu_sparse
    rng = np.random.default_rng(14)
    indices = np.array([5, 2, 5, 5, 0, 2, 7])
    values = (rng.standard_normal((7, 3)) * 10.0 ** rng.integers(-8, 8, (7, 1))).astype(
        np.float32)
    rows, summed = cpu_sparse.deduplicate(indices, values)
    slices = na.IndexedSlices(cuda.to_device(values), cuda.to_device(indices))
    state = na.init([cuda.to_device(np.zeros((8, 3), np.float32))])
    got = state.backend.deduplicate(state, 0, slices)
    np.testing.assert_array_equal(got.rows, rows)
    np.testing.assert_array_equal(got.values.copy_to_host().reshape(summed.shape), summed)
    np.testing.assert_array_equal(rows, [5, 2, 0, 7])


def test_sparse_float16_uses_float32_math_and_slots():
    rng = np.random.default_rng(15)
    shape = (6, 3)
    init = rng.standard_normal(shape).astype(np.float16)
    reference = init.astype(np.float32)
    half = cuda.to_device(init)
    kwargs = dict(learning_rate=0.01, weight_decay=0.05, clipnorm=0.8, loss_scale_factor=2.0)
    ref_opt, opt = na.Adamax(**kwargs), na.Adamax(**kwargs)
    for _ in range(4):
        indices = rng.integers(0, 6, 5)
        values = rng.standard_normal((5, 3)).astype(np.float16)
        ref_opt.apply([na.IndexedSlices(values.astype(np.float32), indices)], [reference])
        reference[...] = reference.astype(np.float16).astype(np.float32)
        opt.apply([na.IndexedSlices(cuda.to_device(values), indices)], [half])
    assert half.dtype == np.float16 and opt.state.m[0].dtype == np.float32
    np.testing.assert_array_equal(half.copy_to_host(), reference.astype(np.float16))
    np.testing.assert_array_equal(opt.state.m[0].copy_to_host(), ref_opt.state.m[0])
    np.testing.assert_array_equal(opt.state.u[0].copy_to_host(), ref_opt.state.u[0])


def test_sparse_cuda_array_interface_values_and_indices():
    rng = np.random.default_rng(16)
    table = rng.standard_normal((5, 2)).astype(np.float32)
    held, cpu_table = table.copy(), table.copy()
    variable = CudaInterfaceArray(held)
    opt, cpu = na.Adamax(0.1), na.Adamax(0.1)
    for _ in range(3):
        indices = rng.integers(0, 5, 4)
        values = rng.standard_normal((4, 2)).astype(np.float32)
        opt.apply([na.IndexedSlices(CudaInterfaceArray(values.copy()),
                                    CudaInterfaceArray(indices.copy()))], [variable])
        cpu.apply([na.IndexedSlices(values, indices)], [cpu_table])
    np.testing.assert_array_equal(held, cpu_table)


@pytest.mark.parametrize("name", TF_NAMES)
def test_legacy_tf_sparse_vectors_replay_on_cuda(name):
    """The recorded legacy-TF trajectories, on device variables: the CPU replay's bits at
    every step, and the recordings within the CPU test's tolerances."""
    cfg = TF[name]
    want, _ = replay_legacy(name, "class")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # lr and decay are deprecated
        opt = na.Adamax(**legacy_kwargs(cfg))
    variables = [cuda.to_device(np.array(cfg.arrays[f"value{j}"][0])) for j in range(cfg.n_vars)]
    opt.build(variables, names=cfg.var_names)
    for s in range(cfg.steps):
        grads = [_to_device_slices(g, np.random.default_rng(s)) for g in legacy_grads(cfg, s)]
        opt.apply(grads, variables)
        for j in range(cfg.n_vars):
            for key, got in (("value", variables[j]), ("m", opt.state.m[j]),
                             ("v", opt.state.u[j])):
                got = got.copy_to_host()
                np.testing.assert_array_equal(got, want[f"{key}{j}"][s + 1],
                                              err_msg=f"{name}/{key}{j} after {s + 1} steps")
                recorded = cfg.arrays[f"{key}{j}"][s + 1]
                np.testing.assert_allclose(got, recorded, **recorded_tolerance(recorded.dtype))
    assert opt.iterations == cfg.arrays["iterations"][-1]


def _sparse_bad_inputs():
    """(label, builder of a bad gradient for a (6, 3) float32 device variable, exception,
    message)."""
    v = np.ones((2, 3), np.float32)
    i = np.array([0, 5])
    return [
        ("host values", lambda: na.IndexedSlices(v, i), TypeError, "cannot be mixed"),
        ("values list", lambda: na.IndexedSlices([[1.0] * 3] * 2, i), TypeError,
         "`values` must be a CUDA device array"),
        ("values dtype", lambda: na.IndexedSlices(cuda.to_device(v.astype(np.float64)), i),
         TypeError, "`values` has dtype float64"),
        ("row shape", lambda: na.IndexedSlices(cuda.to_device(np.ones((2, 4), np.float32)), i),
         ValueError, r"expected \(2, 3\)"),
        ("length mismatch", lambda: na.IndexedSlices(cuda.to_device(v), np.array([0, 1, 2])),
         ValueError, "length 3"),
        ("values not contiguous",
         lambda: na.IndexedSlices(cuda.to_device(np.ones((3, 2), np.float32).T), i), ValueError,
         "not C-contiguous"),
        ("indices list", lambda: na.IndexedSlices(cuda.to_device(v), [0, 5]), TypeError,
         "`indices` must be a numpy.ndarray or a CUDA device array"),
        ("device indices float",
         lambda: na.IndexedSlices(cuda.to_device(v), cuda.to_device(i.astype(float))), TypeError,
         "integer dtype"),
        ("device indices 2-D",
         lambda: na.IndexedSlices(cuda.to_device(v), cuda.to_device(i.reshape(2, 1))),
         ValueError, "1-D"),
        ("device index too large",
         lambda: na.IndexedSlices(cuda.to_device(v), cuda.to_device(np.array([0, 6]))),
         ValueError, r"contains 6, outside \[0, 6\)"),
        ("negative index", lambda: na.IndexedSlices(cuda.to_device(v), np.array([-1, 0])),
         ValueError, "contains -1"),
        ("dense_shape", lambda: na.IndexedSlices(cuda.to_device(v), i, dense_shape=(6, 4)),
         ValueError, "`dense_shape` is"),
    ]


SPARSE_BAD = _sparse_bad_inputs()


@pytest.mark.parametrize("label,make,exc,message", SPARSE_BAD, ids=[b[0] for b in SPARSE_BAD])
def test_bad_sparse_device_gradient_changes_nothing(label, make, exc, message):
    rng = np.random.default_rng(17)
    variables = [cuda.to_device(rng.standard_normal(4).astype(np.float32)),
                 cuda.to_device(rng.standard_normal((6, 3)).astype(np.float32))]
    good = na.IndexedSlices(cuda.to_device(np.ones(2, np.float32)), np.array([1, 1]))
    opt = na.Adamax(0.1, use_ema=True, gradient_accumulation_steps=2)
    with pytest.raises(exc, match=message):  # a failed first call builds nothing
        opt.apply([good, make()], variables)
    assert not opt.built
    opt.apply([good, na.IndexedSlices(cuda.to_device(np.ones((1, 3), np.float32)),
                                      np.array([2]))], variables)
    before = snapshot_state(opt, variables)
    with pytest.raises(exc, match=message) as info:
        opt.apply([good, make()], variables)
    assert "gradient for variable 'variable_1'" in str(info.value)
    assert_unchanged(before, snapshot_state(opt, variables))


def test_device_values_for_a_cpu_variable_are_refused():
    w = np.ones((4, 2), np.float32)
    opt = na.Adamax()
    with pytest.raises(TypeError, match="`values` must be a numpy.ndarray.*cannot be mixed"):
        opt.apply([na.IndexedSlices(cuda.to_device(np.ones((1, 2), np.float32)),
                                    np.array([1]))], [w])
    assert not opt.built
    np.testing.assert_array_equal(w, np.ones((4, 2), np.float32))


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_sparse_nonfinite_policies_change_nothing(policy):
    rng = np.random.default_rng(18)
    variables = [cuda.to_device(rng.standard_normal((6, 3)).astype(np.float32)),
                 cuda.to_device(rng.standard_normal(4).astype(np.float32))]
    opt = na.Adamax(0.1, nonfinite=policy)
    dense = cuda.to_device(np.ones(4, np.float32))
    opt.apply([na.IndexedSlices(cuda.to_device(np.ones((2, 3), np.float32)), np.array([0, 3])),
               dense], variables)
    values = np.ones((2, 3), np.float32)
    values[1, 2] = np.nan
    bad = na.IndexedSlices(cuda.to_device(values), np.array([1, 1]))
    before = snapshot_state(opt, variables)
    if policy == "raise":
        with pytest.raises(FloatingPointError, match="'variable_0'"):
            opt.apply([bad, dense], variables)
    else:
        opt.apply([bad, dense], variables)
        assert opt.skipped_steps == 1
    assert_unchanged(before, snapshot_state(opt, variables), skipped=int(policy == "skip"))
    assert opt.iterations == 1


@pytest.mark.parametrize("weight_decay", [None, 0.0, 0.1])
def test_special_weights_match_the_cpu_with_and_without_weight_decay(weight_decay):
    """inf and -0.0 weights: no decay keeps them (sign included); any weight decay, 0
    included, turns inf into NaN on the decayed variable only, as on the CPU."""
    w = np.array([np.inf, -0.0, 1.0], np.float32)
    g = np.array([1.0, 0.0, 1.0], np.float32)
    results = []
    for device in (False, True):
        params = [cuda.to_device(w) if device else w.copy() for _ in range(2)]
        opt = na.Adamax(learning_rate=0.05, weight_decay=weight_decay)
        opt.exclude_from_weight_decay(var_names=["kept"])
        opt.build(params, names=["decayed", "kept"])
        opt.apply([cuda.to_device(g) if device else g.copy() for _ in range(2)], params)
        results.append([p.copy_to_host() if device else p for p in params])
    for cpu, gpu in zip(*results):
        np.testing.assert_array_equal(cpu, gpu)
        np.testing.assert_array_equal(np.signbit(cpu), np.signbit(gpu))
    assert np.isnan(results[1][0][0]) == (weight_decay is not None)
    assert np.isinf(results[1][1][0]) and np.signbit(results[1][1][1])


def test_sparse_device_indices_are_copied_to_the_host_once(monkeypatch):
    indices = cuda.to_device(np.array([3, 1, 3, 0, 1]))
    copies = []
    copy_to_host = type(indices).copy_to_host

    def counted(self, *args, **kwargs):
        if self is indices:
            copies.append(1)
        return copy_to_host(self, *args, **kwargs)

    monkeypatch.setattr(type(indices), "copy_to_host", counted)
    rng = np.random.default_rng(17)
    table = rng.standard_normal((5, 2)).astype(np.float32)
    variable = cuda.to_device(table)
    values = cuda.to_device(rng.standard_normal((5, 2)).astype(np.float32))
    cpu = table.copy()
    na.Adamax(0.1).apply([na.IndexedSlices(values, indices)], [variable])
    assert len(copies) == 1  # the validation's range check; the deduplication reuses it
    na.Adamax(0.1).apply([na.IndexedSlices(values.copy_to_host(), indices.copy_to_host())],
                         [cpu])
    np.testing.assert_array_equal(variable.copy_to_host(), cpu)


def test_every_kernel_is_listed_for_the_ptx_check():
    listed = {(module, kernel) for module, kernel, _, _ in signatures.signatures()}
    defined = {(label, name) for label, module in KERNEL_MODULES.items()
               for name in _kernel_names(module)}
    assert defined == listed


def test_every_launch_has_a_signature_the_ptx_check_compiles():
    """Runs last: the launches of every test above, against ``gpu_check.signatures``."""
    if not LAUNCHES:
        pytest.skip("no launch recorded (this test checks the launches of the others)")
    listed = {(module, kernel, argtypes) for module, kernel, argtypes, _ in
              signatures.signatures()}
    unlisted = sorted(f"{m}.{k}{a}" for m, k, a in LAUNCHES - listed)
    assert not unlisted, "launches gpu_check.signatures does not list:\n" + "\n".join(unlisted)


def test_the_device_ema_only_pass_equals_the_cpu_one():
    values = [np.linspace(-1, 1, 13).astype(np.float32), np.arange(7.0)]
    settings = type("Settings", (), {"ema_momentum": 0.75, "overwrite": True})()
    cpu_vars = [v.copy() for v in values]
    gpu_vars = [cuda.to_device(v) for v in values]
    results = []
    for variables in (cpu_vars, gpu_vars):
        state = na.init(variables, use_ema=True)
        for group in state.groups:
            state.backend.ema_only(state, group, settings)
        results.append(state)
    cpu_state, gpu_state = results
    for j in range(2):
        np.testing.assert_array_equal(gpu_state.ema[j].copy_to_host(), cpu_state.ema[j])
        np.testing.assert_array_equal(gpu_vars[j].copy_to_host(), cpu_vars[j])
    np.testing.assert_array_equal(cpu_vars[0], 0.25 * values[0])  # overwrite: w = e
