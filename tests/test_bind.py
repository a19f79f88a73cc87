"""``bind``: a step over fixed gradient arrays, packed once, gives the bits of ``apply`` /
``step`` and refuses, before any write, arrays it was not bound to."""
import warnings

import numpy as np
import pytest

import numba_adamax as na
from configs import CONFIGS, Clock, build_optimizer
from conftest import assert_unchanged, snapshot_state

NAMES = ["w_a", "bias_b", "w_c"]
SHAPES = [(3, 4), (5,), (2, 2)]
BIND_CONFIGS = sorted(CONFIGS)


def _arrays(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]


def _gradient_stream(seed, steps):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]
            for _ in range(steps)]


@pytest.mark.parametrize("name", BIND_CONFIGS)
def test_bound_steps_equal_apply_bit_for_bit(name):
    config = CONFIGS[name]
    stream = _gradient_stream(1, 7)
    plain_vars, bound_vars = _arrays(0), _arrays(0)
    clock = Clock()
    plain, bound_opt = build_optimizer(config, clock), build_optimizer(config, clock)
    plain.build(plain_vars, names=NAMES)
    bound_opt.build(bound_vars, names=NAMES)
    grads = [np.zeros(shape, np.float32) for shape in SHAPES]
    step = bound_opt.bind(grads, bound_vars)
    for s, call in enumerate(stream):
        clock.step = s
        plain.apply(call, plain_vars)
        for target, values in zip(grads, call):
            np.copyto(target, values)
        step(grads) if s % 2 else step()
    for a, b in zip(plain_vars, bound_vars):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(plain.variables, bound_opt.variables):
        np.testing.assert_array_equal(a, b)


def test_functional_bind_equals_step_and_builds_nothing_new():
    params_a, params_b = _arrays(2, np.float64), _arrays(2, np.float64)
    state_a = na.init(params_a, clipnorm=0.5, use_ema=True)
    state_b = na.init(params_b, clipnorm=0.5, use_ema=True)
    grads = [np.zeros(shape) for shape in SHAPES]
    step = na.bind(params_b, grads, state_b)
    for call in _gradient_stream(3, 4):
        call = [g.astype(np.float64) for g in call]
        na.step(params_a, call, state_a)
        for target, values in zip(grads, call):
            np.copyto(target, values)
        assert step() is state_b
    for a, b in zip(params_a, params_b):
        np.testing.assert_array_equal(a, b)
    assert state_a.raw_steps == state_b.raw_steps == 4


def test_bind_builds_an_unbuilt_optimizer_and_accepts_a_flat_buffer():
    params = na.FlatBuffer(SHAPES)
    grads = params.zeros_like()
    opt = na.Adamax(learning_rate=0.1)
    step = opt.bind(grads, params)
    assert opt.built
    grads.data[:] = 1.0
    step()
    assert opt.iterations == 1 and np.all(params.data[:3] < 0)


def test_a_bound_step_with_none_gradients_moves_only_the_others():
    w = _arrays(4)
    opt = na.Adamax(learning_rate=0.1)
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        opt.apply([np.ones(SHAPES[0], np.float32), None, None], w)
    before = [x.copy() for x in w]
    step = opt.bind([np.ones(SHAPES[0], np.float32), None, None], w)
    step()
    assert not np.array_equal(w[0], before[0])
    for a, b in zip(w[1:], before[1:]):
        np.testing.assert_array_equal(a, b)


def _bound_env():
    w = _arrays(5)
    grads = [np.ones(shape, np.float32) for shape in SHAPES]
    opt = na.Adamax(learning_rate=0.1)
    step = opt.bind(grads, w)
    step()
    return w, grads, opt, step


@pytest.mark.parametrize("case, exception, match", [
    ("other arrays", ValueError, "not the arrays this step was bound to"),
    ("fewer arrays", ValueError, "not the arrays this step was bound to"),
    ("reshaped", ValueError, "now has shape"),
    ("retyped", ValueError, "dtype"),
])
def test_a_bound_step_refuses_other_or_altered_arrays_and_changes_nothing(case, exception,
                                                                          match):
    w, grads, opt, step = _bound_env()
    before = snapshot_state(opt, w)
    if case == "other arrays":
        call = lambda: step([g.copy() for g in grads])  # noqa: E731
    elif case == "fewer arrays":
        call = lambda: step(grads[:2])  # noqa: E731
    else:
        with warnings.catch_warnings():  # NumPy 2.5 deprecates changing these in place
            warnings.simplefilter("ignore", DeprecationWarning)
            if case == "reshaped":
                grads[0].shape = (12,)
            else:
                grads[1].dtype = np.int32
        call = step
    with pytest.raises(exception, match=match):
        call()
    assert_unchanged(before, snapshot_state(opt, w), case)


@pytest.mark.parametrize("make, exception, match", [
    (lambda w: (na.Adamax().bind, [np.ones(3, np.float32)]), ValueError, "needs `variables`"),
    (lambda w: (na.Adamax().bind, [np.ones(4, np.float32)] * 3, w), ValueError,
     "has shape"),
    (lambda w: (na.Adamax().bind, [na.IndexedSlices(np.ones((1, 4), np.float32),
                                                     np.array([0])), None, None], w),
     TypeError, "IndexedSlices gradient cannot be bound"),
    (lambda w: (na.Adamax().bind, [None, None, None], w), ValueError, "No gradients"),
    (lambda w: (na.bind, w, [np.ones(s, np.float64) for s in SHAPES], na.init(w)),
     TypeError, "dtype float64"),
])
def test_bad_bind_arguments_raise_and_build_nothing(make, exception, match):
    w = _arrays(6)
    fn, *args = make(w)
    optimizer = getattr(fn, "__self__", None)
    before = [x.copy() for x in w]
    with pytest.raises(exception, match=match):
        fn(*args)
    if optimizer is not None:
        assert not optimizer.built
    for a, b in zip(w, before):
        np.testing.assert_array_equal(a, b)
