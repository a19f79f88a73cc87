"""FlatBuffer and the one-call-per-dtype step: layout, parity with separate arrays, the
O(1) path, dicts, copies, and errors that change nothing."""
import copy
import pickle
import re
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
    # a bare int is not a shape: one shape given where a list of shapes is expected ...
    ((3, 4), ValueError, re.escape("`shapes` must be a list of shapes, got (3, 4): for one array "
                                   "of shape (3, 4) pass [(3, 4)], for 1-D arrays pass "
                                   "[(3,), (4,)].")),
    ([5], ValueError, re.escape("got (5,): for one array of shape (5,) pass [(5,)].")),
    # ... or an int among shapes
    ([(3,), 4], ValueError, re.escape("`shapes[1]` must be a tuple of non-negative ints, got the "
                                      "int 4; a 1-D array of 4 elements has the shape (4,).")),
    ({"w": 3}, ValueError, re.escape("`shapes['w']` must be a tuple of non-negative ints, got the int 3")),
    (np.array([3, 4]), TypeError, "^`shapes` must be a list, a tuple or a dict, got numpy.ndarray.$"),
], ids=["negative", "float", "str", "one-shape", "one-int", "int-among-shapes", "dict-of-int",
        "ndarray"])
def test_bad_shapes_raise(bad, error, match):
    with pytest.raises(error, match=match):
        na.FlatBuffer(bad)


def test_dicts_are_accepted_like_everywhere_else():
    """A dict name -> shape (or name -> array for ``from_arrays``) names the arrays by its keys,
    as a dict of variables does for the optimizer."""
    shaped = na.FlatBuffer({"w": (2, 3), "b": (3,)}, np.float64)
    assert shaped.names == ("w", "b") and [a.shape for a in shaped] == [(2, 3), (3,)]
    arrays = {"w": np.arange(6.0).reshape(2, 3), "b": np.ones(3)}
    copied = na.FlatBuffer.from_arrays(arrays)
    assert copied.names == ("w", "b") and copied.layout == shaped.layout
    for a, b in zip(arrays.values(), copied):
        np.testing.assert_array_equal(a, b)
        assert not np.shares_memory(a, b)
    with pytest.raises(ValueError, match="`names` cannot be given when `arrays` is a dict"):
        na.FlatBuffer.from_arrays(arrays, names=["x", "y"])
    with pytest.raises(ValueError, match="`names` cannot be given when `shapes` is a dict"):
        na.FlatBuffer({"w": (2,)}, names=["x"])
    opt = na.Adamax(weight_decay=0.5)
    opt.exclude_from_weight_decay(var_names=["^b$"])
    opt.apply(copied.zeros_like(), copied)
    assert opt.state.names == ("w", "b") and opt.state.weight_decay_mask == [True, False]


@pytest.mark.parametrize("call, match", [
    (lambda: na.FlatBuffer([(2,)], names="w"),
     r"^`names` must be a list or a tuple of str, got the str 'w'; for one entry pass \['w'\]\.$"),
    (lambda: na.FlatBuffer.from_arrays(np.ones((2, 3))),
     r"^`arrays` must be a list, a tuple or a dict, got numpy\.ndarray\.$"),
], ids=["names-str", "arrays-ndarray"])
def test_messages_name_only_what_is_accepted(call, match):
    with pytest.raises(TypeError, match=match):
        call()


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda b: pickle.loads(pickle.dumps(b))],
                         ids=["deepcopy", "pickle"])
def test_copies_are_buffers_over_their_own_data(copier):
    buf = _filled(na.FlatBuffer(SHAPES, np.float32, names=list("abcde")), 3)
    twin = copier(buf)
    assert twin.names == buf.names and twin.layout == buf.layout
    assert twin.data.tobytes() == buf.data.tobytes() and not np.shares_memory(twin.data, buf.data)
    for a, b, address in zip(twin, buf, twin.addresses):
        assert a.base is twin.data and a.shape == b.shape and a.flags.writeable
        assert address == a.__array_interface__["data"][0] or a.size == 0
    twin[0][...] = 7.0
    assert not (buf[0] == 7.0).any()
    params, grads = twin, twin.zeros_like()  # the O(1) path works on the copy
    opt = na.Adamax()
    opt.apply(grads, params)
    assert opt.iterations == 1


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
