"""The host-driver seam: both drivers offer the same operations, the EMA-only pass, squared
norms summed in float64 on every path, and warnings that point at the caller's line."""
import inspect
import warnings

import numpy as np
import pytest

import numba_adamax as na
from numba_adamax import backends
from numba_adamax.backends import cpu

OPERATIONS = ("device_arrays", "zeros", "data_address", "attach", "upload_table",
              "gradient_refs", "bound_refs", "nonfinite_flags", "values_finite", "chunk_square_partials",
              "new_square_sums", "fold_square_partials", "sparse_square_sum", "clip_tables",
              "update", "accumulate", "ema_only", "deduplicate", "rows", "scatter_accumulate",
              "update_rows", "assign")
#: What a driver may offer beyond the interface: the CPU driver's packed update.
OPTIONAL = ("packed_update",)


def _public_functions(module):
    return {name for name, value in vars(module).items()
            if callable(value) and not name.startswith("_") and not inspect.isclass(value)
            and getattr(value, "__module__", module.__name__) == module.__name__}


def test_both_drivers_offer_the_same_operations():
    # numba itself may still ship a `numba.cuda` without the modules numba-cuda adds
    pytest.importorskip("numba_cuda", reason="numba-cuda is not installed")
    from numba_adamax.backends import cuda
    for module in (cpu, cuda):
        missing = [name for name in OPERATIONS if not callable(getattr(module, name, None))]
        assert not missing, f"{module.__name__} lacks {missing}"
    assert _public_functions(cpu) - {"assign"} <= set(OPERATIONS + OPTIONAL)
    assert cpu.device is None and cuda.device == "cuda"


def test_numpy_variables_dispatch_to_the_cpu_driver():
    state = na.init([np.zeros(3, np.float32)])
    assert state.backend is cpu
    assert backends.for_arrays([np.zeros(2)]) is cpu


def test_the_ema_only_pass_moves_the_averages_and_nothing_else():
    w = [np.linspace(-1, 1, 7).astype(np.float32), np.arange(5.0)]
    state = na.init(w, use_ema=True, ema_momentum=0.75, gradient_accumulation_steps=2)
    na.step(w, [np.ones(7, np.float32), np.ones(5)], state)  # fills the accumulators
    before = [x.copy() for x in (*w, *state.ema, *state.accumulators, *state.m)]
    settings = type("Settings", (), {"ema_momentum": 0.75, "overwrite": False})()
    for group in state.groups:
        state.backend.ema_only(state, group, settings)
    for j, (average, variable) in enumerate(zip(state.ema, w)):
        dt = variable.dtype.type
        expected = dt(0.75) * before[2 + j] + (dt(1) - dt(0.75)) * variable
        np.testing.assert_array_equal(average, expected)
    after = [x.copy() for x in (*w, *state.accumulators, *state.m)]
    unchanged = before[:2] + before[4:]
    for a, b in zip(after, unchanged):
        np.testing.assert_array_equal(a, b)


def _float64_square_sum(values):
    """The squares of ``values`` in float64 (exact for float32 values), added in order."""
    total = 0.0
    for x in np.asarray(values, np.float64).ravel():
        total += x * x
    return total


def test_squared_norms_are_float64_sums_of_float64_squares():
    """Per chunk (dense) and per variable (sparse), the driver's squared norm is the float64
    sum, in element order, of float64 squares: no square or partial sum is rounded to
    float32 on the way."""
    rng = np.random.default_rng(5)
    w = [np.zeros(5000, np.float32), np.zeros((40, 3), np.float32)]
    g = (rng.standard_normal(5000) * 1e3).astype(np.float32)
    values = (rng.standard_normal((6, 3)) * 1e3).astype(np.float32)
    rows = na.IndexedSlices(values, np.array([4, 9, 4, 0, 31, 9]))
    state = na.init(w, clipnorm=1.0)
    backend, group = state.backend, state.groups[0]
    settings = type("Settings", (), {"loss_scale": None, "steps": 1.0})()
    refs = backend.gradient_refs(state, [g, None])[0]
    partials = backend.chunk_square_partials(state, group, refs, settings)
    expected = [_float64_square_sum(g[begin:end]) for k, begin, end in group.chunks if k == 0]
    assert partials[:len(expected)].tolist() == expected
    deduplicated = backend.deduplicate(state, 1, rows)
    sums = backend.new_square_sums(state)
    backend.sparse_square_sum(state, 1, deduplicated, settings, sums)
    assert sums[0][1] == _float64_square_sum(deduplicated.values)


def _warning_location(call):
    """Where the one warning ``call`` emits points: ``(filename, line)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert "Gradients do not exist" in str(caught[0].message)
    return caught[0].filename, caught[0].lineno


def test_none_gradient_warnings_point_at_the_callers_line():
    w = [np.zeros(3, np.float32), np.zeros(2, np.float32)]
    grads = [np.ones(3, np.float32), None]
    opt, state = na.Adamax(), na.init(w)
    calls = [
        lambda: opt.apply(grads, w),  # the first call builds
        lambda: opt.apply(grads, w),
        lambda: opt.apply([grads[0], None], [w[0], w[1]]),
        lambda: opt.apply({"variable_0": grads[0], "variable_1": None}),
        lambda: na.step(w, grads, state),
    ]
    for call in calls:
        assert _warning_location(call) == (__file__, call.__code__.co_firstlineno)


def test_the_torch_optimizer_warns_nothing_for_parameters_without_gradients():
    torch = pytest.importorskip("torch")
    from numba_adamax.integrations.torch import Adamax
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    a.grad = torch.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Adamax([a, b]).step()
    assert a.detach().numpy().tolist() != [0.0, 0.0, 0.0]


def test_the_cpu_driver_asks_openmp_for_sleeping_workers_unless_the_user_chose():
    from conftest import run_python
    code = ("import os, sys\n"
            "if sys.argv[1] == 'unset':\n"
            "    os.environ.pop('OMP_WAIT_POLICY', None)\n"
            "import numpy as np, numba_adamax as na\n"
            "na.init([np.zeros(3)])\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))\n")
    unset = run_python(["-c", code, "unset"])
    assert unset.returncode == 0, unset.stderr
    assert unset.stdout.split()[-1] == "PASSIVE"
    chosen = run_python(["-c", code, "kept"], env={"OMP_WAIT_POLICY": "ACTIVE"})
    assert chosen.stdout.split()[-1] == "ACTIVE"
