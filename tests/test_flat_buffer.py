"""FlatBuffer and the one-call-per-dtype step: layout, parity with separate arrays, the
O(1) path, and errors that change nothing."""
import warnings

import numpy as np
import pytest

import numba_adamax as na
from configs import CONFIGS, Clock, make_kwargs

SHAPES = [(3, 5), (7,), (0,), (2, 1, 3), (33,)]


def _filled(buffer, seed):
    rng = np.random.default_rng(seed)
    for a in buffer:
        a[...] = rng.standard_normal(a.shape)
    return buffer


def test_layout_is_aligned_views_of_one_buffer():
    buf = na.FlatBuffer(SHAPES, np.float64, names=list("abcde"))
    assert [a.shape for a in buf] == SHAPES and len(buf) == 5
    assert buf.names == tuple("abcde") and buf.dtype == np.float64
    for a in buf:
        assert a.base is buf.data and a.flags.c_contiguous and a.flags.writeable
        assert a.__array_interface__["data"][0] % 64 == buf.data.__array_interface__["data"][0] % 64
    sized = [a for a in buf if a.size]  # numpy may point an empty view anywhere
    ends = [a.__array_interface__["data"][0] + a.nbytes for a in sized]
    starts = [a.__array_interface__["data"][0] for a in sized]
    assert all(s >= e for s, e in zip(starts[1:], ends[:-1]))  # no overlap
    twin = buf.zeros_like()
    assert twin.layout == buf.layout and twin.data is not buf.data and not twin.data.any()


def test_from_arrays_copies_values():
    arrays = [np.arange(6.0).reshape(2, 3), np.ones(4)]
    buf = na.FlatBuffer.from_arrays(arrays, names=["x", "y"])
    for a, b in zip(arrays, buf):
        np.testing.assert_array_equal(a, b)
        assert not np.shares_memory(a, b)


@pytest.mark.parametrize("bad, error, match", [
    ([(2, -1)], ValueError, "non-negative"),
    ([(2.0,)], ValueError, "non-negative"),
    ("abc", TypeError, "shapes"),
])
def test_bad_shapes_raise(bad, error, match):
    with pytest.raises(error, match=match):
        na.FlatBuffer(bad)


@pytest.mark.parametrize("dtype", ["float16", "int32", "nonsense"])
def test_bad_dtype_raises(dtype):
    with pytest.raises(TypeError, match="dtype"):
        na.FlatBuffer([(2,)], dtype)


def test_from_arrays_refuses_mixed_dtypes():
    with pytest.raises(TypeError, match="one dtype"):
        na.FlatBuffer.from_arrays([np.ones(2, np.float32), np.ones(2)])


def _run(config, make_params, make_grads, api, steps=4):
    params = make_params()
    clock = Clock()
    kwargs = make_kwargs(config, clock)
    exclude = list(config.exclude_names) or None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if api == "class":
            opt = na.Adamax(**kwargs)
            opt.exclude_from_weight_decay(var_names=exclude)
            for s in range(steps):
                clock.step = s
                opt.apply(make_grads(s), params)
            return params, opt.variables
        state = na.init(params, exclude_from_weight_decay=exclude, **kwargs)
        for s in range(steps):
            clock.step = s
            na.step(params, make_grads(s), state)
        return params, [state.raw_steps, *state.state_arrays()]


@pytest.mark.parametrize("api", ["class", "functional"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_flat_path_equals_separate_arrays(name, api):
    config = CONFIGS[name]
    dtype = np.float32

    def flat_params():
        return _filled(na.FlatBuffer(SHAPES, dtype), 0)

    def list_params():
        return [np.ascontiguousarray(a.copy()) for a in flat_params()]

    template = na.FlatBuffer(SHAPES, dtype)

    def flat_grads(s):
        g = _filled(template.zeros_like(), 10 + s)
        return g

    def list_grads(s):
        return [a.copy() for a in flat_grads(s)]

    p_flat, v_flat = _run(config, flat_params, flat_grads, api)
    p_list, v_list = _run(config, list_params, list_grads, api)
    for a, b in zip(p_flat, p_list):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(v_flat, v_list):
        np.testing.assert_array_equal(a, b)


def test_mixed_dtypes_make_one_kernel_call_per_dtype(monkeypatch):
    from numba_adamax.backends import cpu as cpu_driver
    calls = []

    def counting(kernel):
        def call(*args):
            calls.append(args[6].dtype)  # m
            return kernel(*args)
        return call

    monkeypatch.setattr(cpu_driver, "_UPDATE", tuple(map(counting, cpu_driver._UPDATE)))
    params = [np.ones(n, np.float32 if n % 2 else np.float64) for n in range(1, 40)]
    opt = na.Adamax()
    opt.apply([np.ones_like(p) for p in params], params)
    assert sorted(map(str, calls)) == ["float32", "float64"]


def test_flat_gradients_of_another_layout_are_checked_array_by_array():
    params = na.FlatBuffer([(3,), (4,)])
    opt = na.Adamax()
    opt.apply(params.zeros_like(), params)
    wrong = na.FlatBuffer([(4,), (3,)])
    before = [a.copy() for a in params], [a.copy() for a in opt.variables]
    with pytest.raises(ValueError, match="shape"):
        opt.apply(wrong, params)
    for a, b in zip(params, before[0]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(opt.variables, before[1]):
        np.testing.assert_array_equal(a, b)


def test_another_buffer_as_variables_is_refused_and_changes_nothing():
    params = na.FlatBuffer([(3,)])
    opt = na.Adamax()
    opt.apply(params.zeros_like(), params)
    other = na.FlatBuffer([(3,)])
    with pytest.raises(ValueError, match="FlatBuffer"):
        opt.apply(other.zeros_like(), other)
    assert opt.iterations == 1
    state = na.init(params)
    with pytest.raises(ValueError, match="FlatBuffer"):
        na.step(other, other.zeros_like(), state)
    assert state.raw_steps == 0


def test_flat_gradients_under_the_nonfinite_policy():
    params = na.FlatBuffer([(5,), (2, 2)])
    grads = params.zeros_like()
    grads[1][0, 1] = np.nan
    opt = na.Adamax(nonfinite="skip")
    opt.apply(grads, params)
    assert opt.iterations == 0 and opt.skipped_steps == 1 and not params.data.any()
    raising = na.Adamax(nonfinite="raise")
    with pytest.raises(FloatingPointError, match="variable_1"):
        raising.apply(grads, params)
    assert raising.iterations == 0
    state = na.init(params, nonfinite="skip")
    na.step(params, grads, state)
    assert state.raw_steps == 0 and state.skipped_steps == 1 and not params.data.any()
