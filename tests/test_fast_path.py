"""The fast path of dense calls (``_apply.FastStep``): the same bits as the general path
for every configuration it serves, replaced when the settings change, never taken for
inputs the general path must check, and refusing bad inputs before any write."""
import numpy as np
import pytest
from configs import CONFIGS, Clock, build_optimizer
from conftest import assert_unchanged, snapshot_state

import numba_adamax as na
from numba_adamax import _apply
from numba_adamax.kernels import config as kernel_config

SHAPES = [(3, 4), (5,), (2, 2)]


def _arrays(seed, dtypes=(np.float32,) * 3, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape, dtype in zip(shapes, dtypes)]


def _run(config, dtypes, shapes, steps=7, entry="list"):
    """Variables and state after ``steps`` calls of ``config`` through ``entry``."""
    clock = Clock()
    opt = build_optimizer(config, clock)
    variables = _arrays(0, dtypes, shapes)
    rng = np.random.default_rng(1)
    stream = [[rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
              for _ in range(steps)]
    if entry == "flat":
        params = na.FlatBuffer.from_arrays(variables)
        grads = params.zeros_like()
        for s, call in enumerate(stream):
            clock.step = s
            for target, values in zip(grads.arrays, call):
                np.copyto(target, values)
            opt.apply(grads, params)
        return list(params.arrays), opt
    if entry == "functional":
        state = opt.build(variables) or opt.state
        for s, call in enumerate(stream):
            clock.step = s
            na.step(variables, call, state)
        return variables, opt
    for s, call in enumerate(stream):
        clock.step = s
        opt.apply(call, variables)
    return variables, opt


CASES = [
    ("float32", (np.float32,) * 3, SHAPES),
    ("two dtypes", (np.float32, np.float64, np.float32), SHAPES),
    ("ten variables", (np.float64,) * 10, [(i + 1,) for i in range(10)]),
]


def _results(config_name, case, entry):
    _, dtypes, shapes = case
    variables, opt = _run(CONFIGS[config_name], dtypes, shapes, entry=entry)
    return variables + list(opt.variables), opt


@pytest.mark.parametrize("entry", ["list", "functional", "flat"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_fast_path_gives_the_bits_of_the_general_path(name, entry, monkeypatch):
    cases = CASES[:1] if entry == "flat" else CASES
    for case in cases:
        fast, _ = _results(name, case, entry)
        with monkeypatch.context() as m:
            m.setattr(_apply.FastStep, "attach", staticmethod(
                lambda state: setattr(state, "fast_step", None)))
            general, _ = _results(name, case, entry)
        for a, b in zip(fast, general):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}, {case[0]}, {entry}")


def test_plain_settings_are_served_by_compiled_entry_points():
    w = _arrays(0)
    opt = na.Adamax(learning_rate=0.01, weight_decay=0.1, clipvalue=0.5, use_ema=True)
    opt.apply(_arrays(1), w)
    opt.apply(_arrays(2), w)
    fast = opt.state.fast_step
    assert fast.is_current(opt.state)
    kernel = fast.calls[0][0]
    assert not hasattr(kernel, "overloads"), "the dispatcher, not the compiled entry point"
    taken = []
    original = _apply.commit
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_apply, "commit", lambda call: taken.append(call) or original(call))
        opt.apply(_arrays(3), w)
    assert taken == [] and opt.iterations == 3


@pytest.mark.parametrize("kwargs", [{"clipnorm": 1.0}, {"global_clipnorm": 1.0},
                                    {"gradient_accumulation_steps": 2},
                                    {"nonfinite": "skip"}, {"nonfinite": "raise"}])
def test_settings_that_need_more_passes_keep_the_general_path(kwargs):
    w = _arrays(0)
    opt = na.Adamax(**kwargs)
    for seed in range(3):
        opt.apply(_arrays(seed + 1), w)
    fast = opt.state.fast_step
    assert fast is not None and fast.matches(opt.state) and not fast.is_current(opt.state)
    made = []
    with pytest.MonkeyPatch.context() as m:  # the verdict is kept: no new plan per call
        m.setattr(_apply.FastStep, "attach", staticmethod(made.append))
        opt.apply(_arrays(9), w)
    assert made == [] and opt.state.fast_step is fast


def _general_apply(opt, grads, variables):
    """``opt.apply`` on the general path: the plan the call leaves is dropped."""
    opt.apply(grads, variables)
    opt.state.fast_step = None


def test_changed_settings_replace_the_plan_and_take_effect():
    w_fast, w_general = _arrays(0), _arrays(0)
    fast, general = na.Adamax(learning_rate=0.01), na.Adamax(learning_rate=0.01)
    changes = [("learning_rate", 0.05), ("weight_decay", 0.2), ("clipvalue", 0.1),
               ("clipvalue", None), ("beta_1", 0.5), ("beta_2", 0.9), ("epsilon", 1e-3),
               ("loss_scale_factor", 4.0), ("clipnorm", 0.3), ("clipnorm", None),
               ("nonfinite", "skip"), ("nonfinite", "propagate"), ("decay", 0.1)]
    plans = []
    for s, (field, value) in enumerate(changes):
        grads = _arrays(10 + s)
        for _ in range(2):
            fast.apply(grads, w_fast)
            _general_apply(general, grads, w_general)
        plans.append(fast.state.fast_step)
        setattr(fast.state.hyperparameters, field, value)
        setattr(general.state.hyperparameters, field, value)
    for seed in (98, 99):
        fast.apply(_arrays(seed), w_fast)
        _general_apply(general, _arrays(seed), w_general)
    assert fast.state.fast_step.is_current(fast.state)
    assert len({id(p) for p in plans}) == len(plans)  # a new plan after every change
    for a, b in zip(w_fast + fast.variables, w_general + general.variables):
        np.testing.assert_array_equal(a, b)


def test_a_new_threshold_replaces_the_plan(monkeypatch):
    w = [np.ones(64, np.float32)]
    opt = na.Adamax()
    opt.apply([np.ones(64, np.float32)], w)
    opt.apply([np.ones(64, np.float32)], w)
    serial = opt.state.fast_step
    monkeypatch.setattr(kernel_config, "PARALLEL_THRESHOLD", 8)
    assert not serial.is_current(opt.state)
    opt.apply([np.ones(64, np.float32)], w)
    assert opt.state.fast_step is not serial and opt.state.fast_step.is_current(opt.state)
    assert opt.iterations == 3


def test_a_loaded_state_continues_on_the_fast_path():
    w_a, w_b = _arrays(0), _arrays(0)
    a, b = na.Adamax(learning_rate=0.01, use_ema=True, ema_overwrite_frequency=3), None
    for seed in range(4):
        a.apply(_arrays(seed + 1), w_a)
    saved = a.state_dict()
    b = na.Adamax(learning_rate=0.01, use_ema=True, ema_overwrite_frequency=3)
    b.build(w_b)
    for seed in range(2):
        b.apply(_arrays(seed + 50), w_b)  # b's plan exists, with other counters
    b.load_state_dict(saved)
    for x, y in zip(w_b, w_a):
        np.copyto(x, y)
    for seed in range(5):
        a.apply(_arrays(seed + 20), w_a)
        b.apply(_arrays(seed + 20), w_b)
    for x, y in zip(w_a + a.variables, w_b + b.variables):
        np.testing.assert_array_equal(x, y)


BAD_GRADIENTS = {
    "wrong dtype": lambda g: g.astype(np.float64),
    "wrong shape": lambda g: g.reshape(-1),
    "not contiguous": lambda g: np.asfortranarray(np.repeat(g, 2, axis=0))[::2],
    "a list": lambda g: g.tolist(),
    "an int array": lambda g: g.astype(np.int32),
}


@pytest.mark.parametrize("bad", sorted(BAD_GRADIENTS))
def test_bad_gradients_on_a_fast_state_raise_before_any_write(bad):
    w = _arrays(0)
    opt = na.Adamax(learning_rate=0.01)
    opt.apply(_arrays(1), w)
    opt.apply(_arrays(2), w)
    assert opt.state.fast_step.is_current(opt.state)
    grads = _arrays(3)
    grads[0] = BAD_GRADIENTS[bad](grads[0])
    before = snapshot_state(opt, w)
    with pytest.raises((TypeError, ValueError)):
        opt.apply(grads, w)
    assert_unchanged(before, snapshot_state(opt, w), bad)


def test_a_missing_gradient_on_a_fast_state_still_warns():
    w = _arrays(0)
    opt = na.Adamax(learning_rate=0.01)
    opt.apply(_arrays(1), w)
    opt.apply(_arrays(2), w)
    grads = _arrays(3)
    grads[1] = None
    with pytest.warns(UserWarning, match="variable_1"):
        opt.apply(grads, w)
    assert opt.iterations == 3


def test_unknown_variables_on_a_fast_state_are_refused():
    w = _arrays(0)
    opt = na.Adamax(learning_rate=0.01)
    opt.apply(_arrays(1), w)
    opt.apply(_arrays(2), w)
    other = [x.copy() for x in w]
    before = snapshot_state(opt, w)
    with pytest.raises(ValueError, match="Unknown variable"):
        opt.apply(_arrays(3), other)
    with pytest.raises(ValueError, match="Unknown variable"):
        na.step(other, _arrays(3), opt.state)
    assert_unchanged(before, snapshot_state(opt, w))


def test_nan_gradients_give_the_general_paths_bits():
    w = [_arrays(0), _arrays(0)]
    grads = _arrays(1)
    grads[0][0, 0] = np.nan
    grads[2][1, 1] = np.inf
    opts = [na.Adamax(learning_rate=0.01), na.Adamax(learning_rate=0.01)]
    for _ in range(4):
        opts[0].apply(grads, w[0])
        _general_apply(opts[1], grads, w[1])
    assert opts[0].state.fast_step.is_current(opts[0].state)
    for a, b in zip(w[0] + opts[0].variables, w[1] + opts[1].variables):
        np.testing.assert_array_equal(a, b)
